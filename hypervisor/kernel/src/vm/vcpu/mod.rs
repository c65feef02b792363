//! One vCPU on the physical CPU it is pinned to: the state that CPU owns (guest registers, the
//! controls as last written to the VMCS, the APIC timer, exit counters and budgets) and typed
//! access to the guest state in its VMCS, every VMCS error propagated. Set-up and the start
//! states (multiboot hand-off, INIT, SIPI): `setup`; the APIC timer: `timer`; interrupts as the
//! VM's interrupt path delivers them: `interrupts`; the run loop
//! that enters the guest and dispatches exits: `super::run`.

pub mod interrupts;
pub mod lapic;
pub mod setup;
pub mod timer;

use alloc::string::String;

use hvcore::apic::timer::ApicTimer;
use hvcore::budget::ExitBudget;
use hvcore::exits::counters::ExitCounters;
use hvcore::vmx::controls::Controls;
use hvcore::vmx::events;
use hvcore::vmx::fields::{Vmcs32, VmcsNatural};

use super::Vm;
use super::vapic::VcpuApic;
use crate::host::Host;
use crate::vmx::entry::GuestRegs;
use crate::vmx::vmcs::{Access, VmxInstrError};

const BLOCKING_BY_STI_OR_MOV_SS: u32 =
    events::interruptibility::BLOCKING_BY_STI | events::interruptibility::BLOCKING_BY_MOV_SS;

pub struct Vcpu<'a> {
    pub vm: &'a Vm,
    pub host: &'a Host,
    pub index: u32,
    pub regs: GuestRegs,
    /// The controls as last written to the VMCS (a shadow: mode switches change them).
    pub controls: Controls,
    pub apic: &'a VcpuApic,
    /// The guest APIC's global mode (`lapic`).
    pub apic_mode: hvcore::apic::base::ApicMode,
    /// The local APIC timer (`timer`).
    pub timer: ApicTimer,
    /// Exit counters, owned by this vCPU while it runs; published to the VM when it ends.
    pub counters: ExitCounters,
    pub(super) launched: bool,
    /// The guest's TSC minus the host's (the VMCS's TSC offset; 0 until the guest writes
    /// IA32_TSC).
    pub tsc_offset: u64,
    /// The VPID in the VMCS (0: none, the processor flushes at every entry and exit).
    pub(in crate::vm) vpid: u16,
    /// TSC value at which the watchdog ends the VM.
    pub deadline_tsc: u64,
    /// Exits per second this vCPU may cause (the manifest's `max_exits_per_second`).
    pub(super) exit_budget: ExitBudget,
    /// The VMX-preemption timer counts TSC >> this (IA32_VMX_MISC[4:0]).
    timer_shift: u32,
    /// The EOI-exit bitmap generation the VMCS holds (`super::devices`).
    pub(super) eoi_exit_generation: u32,
    /// The TPR threshold the VMCS holds (the injection path: `interrupts`).
    tpr_threshold: u32,
    /// The last line this vCPU printed (quoted in failure reasons).
    pub last_line: String,
    /// The census epoch this vCPU has recorded its counters for.
    census_seen: u32,
}

impl<'a> Vcpu<'a> {
    /// Tells the straggler watch where this vCPU is (`Vm::watch_stragglers`).
    pub(in crate::vm) fn set_where(&self, at: super::VcpuWhere) {
        self.vm.vcpu_where[self.index as usize].store(at.encode(), core::sync::atomic::Ordering::Relaxed);
    }

    /// Records this vCPU's counters for every REPORT made since it last looked (before the
    /// exit now being handled is counted: hvcore::exits::census).
    pub(in crate::vm) fn census_catch_up(&mut self) {
        let epoch = self.vm.census_epoch.load(core::sync::atomic::Ordering::Acquire);
        if epoch != self.census_seen {
            hvcore::exits::census::catch_up(
                &mut self.vm.census[self.index as usize].lock(),
                epoch as usize,
                &self.counters,
            );
            self.census_seen = epoch;
        }
    }

    pub(super) fn new(vm: &'a Vm, index: u32, host: &'a Host, controls: Controls) -> Self {
        let now = crate::time::rdtsc();
        Self {
            vm,
            host,
            index,
            regs: GuestRegs::default(),
            controls,
            apic: &vm.apic.vcpus[index as usize],
            apic_mode: hvcore::apic::base::ApicMode::XApic,
            timer: ApicTimer::new(timer::min_timer_period(host.tsc_hz)),
            counters: ExitCounters::default(),
            launched: false,
            vpid: 0,
            tsc_offset: 0,
            deadline_tsc: now + vm.spec.timeout_ms * (host.tsc_hz / 1000),
            exit_budget: ExitBudget::new(vm.spec.max_exits_per_second, host.tsc_hz, now),
            timer_shift: host.caps.preemption_timer_shift(),
            eoi_exit_generation: 0,
            tpr_threshold: 0,
            last_line: String::new(),
            census_seen: 0,
        }
    }

    pub fn watchdog_expired(&self) -> bool {
        crate::time::rdtsc() >= self.deadline_tsc
    }

    pub fn rip(&self) -> Result<u64, VmxInstrError> {
        VmcsNatural::GuestRip.read()
    }

    /// The guest's current privilege level: SS.DPL (SDM Vol. 3C §25.4.1).
    pub fn cpl(&self) -> Result<u8, VmxInstrError> {
        Ok(((Vmcs32::GuestSsAccessRights.read()? >> 5) & 3) as u8)
    }

    /// Skips the instruction that caused the exit (its length is in the VMCS).
    pub fn skip_instruction(&self) -> Result<(), VmxInstrError> {
        self.skip_emulated(Vmcs32::VmExitInstructionLength.read()? as u64)
    }

    /// Completes an instruction of `len` bytes the hypervisor emulated. Completing an
    /// instruction ends blocking by STI and by MOV SS (SDM Vol. 3C §25.4.2, interruptibility
    /// bits 0 and 1), as KVM's skip does: otherwise "STI; HLT" would leave the next entry
    /// blocked for no reason, and an NMI or interrupt injected then would fail the VM entry.
    pub fn skip_emulated(&self, len: u64) -> Result<(), VmxInstrError> {
        VmcsNatural::GuestRip.write(self.rip()? + len)?;
        let state = Vmcs32::GuestInterruptibilityState.read()?;
        if state & BLOCKING_BY_STI_OR_MOV_SS != 0 {
            Vmcs32::GuestInterruptibilityState.write(state & !BLOCKING_BY_STI_OR_MOV_SS)?;
        }
        Ok(())
    }

    /// General-purpose register `n` in hardware order (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP,
    /// 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15); RSP lives in the VMCS.
    pub fn gpr(&self, n: u8) -> Result<u64, VmxInstrError> {
        let r = &self.regs;
        Ok(match n {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => return VmcsNatural::GuestRsp.read(),
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            _ => r.r15,
        })
    }

    pub fn set_gpr(&mut self, n: u8, value: u64) -> Result<(), VmxInstrError> {
        let r = &mut self.regs;
        let slot = match n {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => return VmcsNatural::GuestRsp.write(value),
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            _ => &mut r.r15,
        };
        *slot = value;
        Ok(())
    }

    /// Drops the guest's cached linear translations, as a MOV to CR0 or CR4 that changes the
    /// paging mode does (SDM Vol. 3A §4.10.4.1): INVVPID for this vCPU's VPID (single-context,
    /// else all-context: only this vCPU runs on this CPU). Without a VPID every entry flushes.
    pub fn flush_guest_tlb(&self) -> Result<(), VmxInstrError> {
        use hvcore::vmx::caps::ept_cap_bits::{INVVPID_ALL_CONTEXT, INVVPID_SINGLE_CONTEXT};
        if self.vpid == 0 {
            return Ok(());
        }
        let caps = &self.host.caps;
        if caps.ept_vpid_allows(INVVPID_SINGLE_CONTEXT) {
            crate::vmx::vmcs::invvpid(1, self.vpid)
        } else if caps.ept_vpid_allows(INVVPID_ALL_CONTEXT) {
            crate::vmx::vmcs::invvpid(2, 0)
        } else {
            Ok(())
        }
    }

    /// Injects a hardware exception (with its error code, if it has one) at the next entry.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<(), VmxInstrError> {
        // SDM Vol. 3C §25.8.3: vector, type 3 (hardware exception), deliver-error-code, valid.
        let mut info = vector as u32 | (3 << 8) | events::info::VALID;
        if let Some(code) = error_code {
            info |= 1 << 11;
            Vmcs32::VmEntryExceptionErrorCode.write(code)?;
        }
        Vmcs32::VmEntryInterruptionInfo.write(info)
    }
}
