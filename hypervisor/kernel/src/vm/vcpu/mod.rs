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

const RFLAGS_TF: u64 = 1 << 8;
const DR6_BS: u64 = 1 << 14;
const DEBUGCTL_BTF: u64 = 1 << 1;
use hvcore::arch::vector::DB;
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
    /// The architectural MSRs this vCPU keeps (IA32_MISC_ENABLE, IA32_MTRR_DEF_TYPE).
    pub msrs: hvcore::exits::msr::MsrState,
    /// CR0.CD and NW for the next SIPI start: set after power-up, kept by INIT.
    pub(in crate::vm) cd_nw_at_init: u64,
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
    /// Sets the primary processor-based controls: the VMCS and the shadow `controls` together,
    /// with a VMWRITE only when they change. Every change after set-up goes through here (or
    /// [`Vcpu::toggle_primary`], [`Vcpu::set_secondary`]), so the shadow the handlers read is
    /// the VMCS's.
    #[inline(always)]
    pub(in crate::vm) fn set_primary(&mut self, primary: u32) -> Result<(), VmxInstrError> {
        if primary != self.controls.primary {
            Vmcs32::PrimaryProcBasedVmExecControl.write(primary)?;
            self.controls.primary = primary;
        }
        Ok(())
    }

    /// Flips `bits` of the primary controls: a change by construction, so one VMWRITE and no
    /// test (the interrupt- and NMI-window toggles on the injection path's exit path).
    #[inline(always)]
    pub(in crate::vm) fn toggle_primary(&mut self, bits: u32) -> Result<(), VmxInstrError> {
        self.controls.primary ^= bits;
        Vmcs32::PrimaryProcBasedVmExecControl.write(self.controls.primary)
    }

    /// Sets the secondary processor-based controls, as [`Vcpu::set_primary`] does.
    pub(in crate::vm) fn set_secondary(&mut self, secondary: u32) -> Result<(), VmxInstrError> {
        if secondary != self.controls.secondary {
            Vmcs32::SecondaryProcBasedVmExecControl.write(secondary)?;
            self.controls.secondary = secondary;
        }
        Ok(())
    }

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
            timer: ApicTimer::for_tsc(host.tsc_hz),
            counters: ExitCounters::default(),
            launched: false,
            vpid: 0,
            tsc_offset: 0,
            cd_nw_at_init: hvcore::start_state::CR0_CD_NW,
            msrs: hvcore::exits::msr::MsrState::new(),
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

    /// Whether the guest runs 64-bit code: CS.L with EFER.LMA (SDM Vol. 3A §5.2.1).
    pub fn in_64_bit_mode(&self) -> Result<bool, VmxInstrError> {
        Ok(Vmcs32::GuestCsAccessRights.read()? & (1 << 13) != 0
            && hvcore::vmx::fields::Vmcs64::GuestIa32Efer.read()? & (1 << 10) != 0)
    }

    /// The guest's current privilege level: SS.DPL (SDM Vol. 3C §25.4.1).
    pub fn cpl(&self) -> Result<u8, VmxInstrError> {
        Ok(((Vmcs32::GuestSsAccessRights.read()? >> 5) & 3) as u8)
    }

    /// Skips the instruction that caused the exit (its length is in the VMCS).
    pub fn skip_instruction(&self) -> Result<(), VmxInstrError> {
        self.skip_emulated(Vmcs32::VmExitInstructionLength.read()? as u64)
    }

    /// Completes an instruction of `len` bytes the hypervisor emulated, as the processor
    /// completes one:
    /// - the instruction pointer advances by the operand size of the code: 64 bits in 64-bit
    ///   mode, else EIP wraps at 4 GiB (SDM Vol. 3A §3.3.7 "the EIP register is 32 bits"; a
    ///   flat 32-bit segment may execute across the wrap). 16-bit code is not cut at 64 KiB:
    ///   sequential execution takes EIP past 0FFFFH, and the next fetch faults on the segment
    ///   limit (Vol. 3B §22.33.1), as it does on hardware;
    /// - blocking by STI and by MOV SS ends (Vol. 3C §25.4.2, interruptibility bits 0 and 1),
    ///   as KVM's skip does: otherwise "STI; HLT" would leave the next entry blocked for no
    ///   reason, and an NMI or interrupt injected then would fail the VM entry;
    /// - with RFLAGS.TF = 1 the single-step trap follows (Vol. 3A §18.3.1.4: #DB with DR6.BS),
    ///   delivered at the next entry.
    pub fn skip_emulated(&self, len: u64) -> Result<(), VmxInstrError> {
        let rip = self.rip()?;
        let next = if self.in_64_bit_mode()? { rip.wrapping_add(len) } else { rip.wrapping_add(len) & 0xffff_ffff };
        VmcsNatural::GuestRip.write(next)?;
        let state = Vmcs32::GuestInterruptibilityState.read()?;
        if state & BLOCKING_BY_STI_OR_MOV_SS != 0 {
            Vmcs32::GuestInterruptibilityState.write(state & !BLOCKING_BY_STI_OR_MOV_SS)?;
        }
        // With DEBUGCTL.BTF the trap flag single-steps branches only (SDM Vol. 3A §18.4.3):
        // no emulated instruction is one.
        if VmcsNatural::GuestRflags.read()? & RFLAGS_TF != 0
            && hvcore::vmx::fields::Vmcs64::GuestIa32Debugctl.read()? & DEBUGCTL_BTF == 0
        {
            self.single_step_trap()?;
        }
        Ok(())
    }

    /// The single-step #DB after an instruction the hypervisor completed: DR6.BS set (the
    /// guest's DR6 is the live register, which VM transitions do not switch and the hypervisor
    /// does not use) and #DB injected, a trap delivered before any interrupt (Vol. 3A §6.9,
    /// priority 4 against 5).
    #[cold]
    fn single_step_trap(&self) -> Result<(), VmxInstrError> {
        // SAFETY: DR6 only records debug conditions; this core runs only this vCPU, and the
        // hypervisor sets no breakpoints.
        unsafe {
            let dr6: u64;
            core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack));
            core::arch::asm!("mov dr6, {}", in(reg) dr6 | DR6_BS, options(nomem, nostack));
        }
        self.inject_exception(DB, None)
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
    /// In real mode (an unrestricted guest with CR0.PE = 0) exceptions push no error code, and
    /// VM entry refuses one there on processors without IA32_VMX_BASIC[56] (SDM Vol. 3C
    /// §27.2.1.3): it is dropped.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<(), VmxInstrError> {
        // SDM Vol. 3C §25.8.3: vector, type 3 (hardware exception), deliver-error-code, valid.
        let mut info = vector as u32 | (3 << 8) | events::info::VALID;
        let protected = VmcsNatural::GuestCr0.read()? & 1 != 0;
        if let Some(code) = error_code.filter(|_| protected) {
            info |= 1 << 11;
            Vmcs32::VmEntryExceptionErrorCode.write(code)?;
        }
        Vmcs32::VmEntryInterruptionInfo.write(info)
    }
}
