//! One vCPU on the physical CPU it is pinned to: VMCS set-up (controls, host state, guest
//! state) and the run loop that enters the guest and dispatches exits.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU16, Ordering};

use hvcore::bootcfg::FaultInjection;
use hvcore::budget::ExitBudget;
use hvcore::exits::counters::ExitCounters;
use hvcore::manifest::{ApicMode, HltMode, VmResult};
use hvcore::start_state::{self, StartState};
use hvcore::vmx::caps::VmxCaps;
use hvcore::vmx::controls::{Controls, VcpuControlOptions, vcpu_controls};
use hvcore::vmx::events::{self, NmiGate};
use hvcore::vmx::exit_reason::ExitReason;
use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, GsBase, Msr};

use super::Vm;
use super::exits::{self, Flow};
use super::vapic::{POSTED_INTR_VECTOR, VcpuApic};
use crate::vmx::entry::{self, Entry, GuestRegs};
use crate::vmx::vmcs::{self, Access, Vmcs, VmxInstrError};

/// VPIDs: one per vCPU, never reused within a run (so no INVVPID is needed).
static NEXT_VPID: AtomicU16 = AtomicU16::new(1);

const IA32_PAT: u32 = 0x277;
const BLOCKING_BY_STI_OR_MOV_SS: u32 =
    events::interruptibility::BLOCKING_BY_STI | events::interruptibility::BLOCKING_BY_MOV_SS;
const NMI_WINDOW_EXITING: u32 = 1 << hvcore::vmx::caps::primary_bits::NMI_WINDOW_EXITING;
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
const HOST_TR_SELECTOR: u16 = 0x18;
const CR4_VMXE: u64 = 1 << 13;
const AR_UNUSABLE: u32 = 1 << 16;
const X2APIC_ENABLE: u64 = 1 << 10;

/// DS, ES, FS, GS and SS: each start loads them alike.
const DATA_SEGMENTS: [(Vmcs16, VmcsNatural, Vmcs32, Vmcs32); 5] = [
    (Vmcs16::GuestSsSelector, VmcsNatural::GuestSsBase, Vmcs32::GuestSsLimit, Vmcs32::GuestSsAccessRights),
    (Vmcs16::GuestDsSelector, VmcsNatural::GuestDsBase, Vmcs32::GuestDsLimit, Vmcs32::GuestDsAccessRights),
    (Vmcs16::GuestEsSelector, VmcsNatural::GuestEsBase, Vmcs32::GuestEsLimit, Vmcs32::GuestEsAccessRights),
    (Vmcs16::GuestFsSelector, VmcsNatural::GuestFsBase, Vmcs32::GuestFsLimit, Vmcs32::GuestFsAccessRights),
    (Vmcs16::GuestGsSelector, VmcsNatural::GuestGsBase, Vmcs32::GuestGsLimit, Vmcs32::GuestGsAccessRights),
];

pub struct Vcpu<'a> {
    pub vm: &'a Vm,
    pub index: u32,
    pub regs: GuestRegs,
    /// The controls as last written to the VMCS (a shadow: mode switches change them).
    pub controls: Controls,
    pub apic: &'a VcpuApic,
    /// The guest's APIC is in x2APIC mode.
    pub x2apic: bool,
    /// Exit counters, owned by this vCPU while it runs; published to the VM when it ends.
    pub counters: ExitCounters,
    launched: bool,
    /// TSC value at which the watchdog ends the VM.
    pub deadline_tsc: u64,
    /// Exits per second this vCPU may cause (the manifest's `max_exits_per_second`).
    exit_budget: ExitBudget,
    pub timer_shift: u32,
    /// COM1 output collected until a newline.
    pub console_line: heapless_line::Line,
    /// The last line this vCPU printed (quoted in failure reasons).
    pub last_line: String,
}

/// A fixed-size line buffer (no allocation on the I/O exit path).
pub mod heapless_line {
    pub struct Line {
        buf: [u8; 160],
        len: usize,
    }

    impl Line {
        pub const fn new() -> Self {
            Self { buf: [0; 160], len: 0 }
        }
        /// Appends a byte; returns the full line when it ends or the buffer fills.
        pub fn push(&mut self, b: u8) -> Option<&str> {
            if b != b'\n' {
                self.buf[self.len] = b;
                self.len += 1;
            }
            if b == b'\n' || self.len == self.buf.len() {
                let n = core::mem::take(&mut self.len);
                return Some(core::str::from_utf8(&self.buf[..n]).unwrap_or("<non-UTF-8 output>"));
            }
            None
        }
    }
}

impl<'a> Vcpu<'a> {
    /// Runs vCPU `index` of `vm` on this CPU until the VM stops or this vCPU exits.
    pub fn run(vm: &'a Vm, index: u32, caps: &VmxCaps, tsc_hz: u64) {
        let Some(vmcs) = Vmcs::new(caps.revision_id) else {
            vm.stop(VmResult::Fail, format!("vCPU {index}: no memory for its VMCS"));
            vm.vcpu_done();
            return;
        };
        let opts = VcpuControlOptions {
            ipiv: vm.ipiv,
            x2apic: false,
            hlt_exiting: vm.spec.hlt == HltMode::Exit,
            unrestricted_guest: true,
        };
        let controls = match vcpu_controls(caps, opts) {
            Ok(c) => c,
            Err(e) => {
                vm.stop(VmResult::Fail, format!("vCPU {index}: {e}"));
                vmcs.release();
                vm.vcpu_done();
                return;
            }
        };
        let now = crate::time::rdtsc();
        let mut vcpu = Vcpu {
            vm,
            index,
            regs: GuestRegs::default(),
            controls,
            apic: &vm.apic.vcpus[index as usize],
            x2apic: false,
            counters: ExitCounters::default(),
            launched: false,
            deadline_tsc: now + vm.spec.timeout_ms * (tsc_hz / 1000),
            exit_budget: ExitBudget::new(vm.spec.max_exits_per_second, tsc_hz, now),
            timer_shift: caps.preemption_timer_shift(),
            console_line: heapless_line::Line::new(),
            last_line: String::new(),
        };
        match vmcs.load().and_then(|_| vcpu.setup()).and_then(|_| vcpu.first_start(caps)) {
            Ok(true) => vcpu.run_loop(caps),
            Ok(false) => {}
            Err(e) => vm.stop(VmResult::Fail, format!("vCPU {index}: VMCS set-up: {e}")),
        }
        vmcs.release();
        *vm.exits[index as usize].lock() = vcpu.counters;
        vm.vcpu_done();
    }

    /// Controls, host state and the guest state every start shares.
    fn setup(&mut self) -> Result<(), VmxInstrError> {
        let c = &self.controls;
        Vmcs32::PinBasedVmExecControl.write(c.pin)?;
        Vmcs32::PrimaryProcBasedVmExecControl.write(c.primary)?;
        Vmcs32::SecondaryProcBasedVmExecControl.write(c.secondary)?;
        if c.tertiary != 0 {
            Vmcs64::TertiaryVmExecControl.write(c.tertiary)?;
        }
        Vmcs32::VmExitControls.write(c.exit)?;
        Vmcs32::VmEntryControls.write(c.entry)?;
        Vmcs32::ExceptionBitmap.write(0)?;
        Vmcs32::Cr3TargetCount.write(0)?;
        Vmcs32::VmExitMsrStoreCount.write(0)?;
        Vmcs32::VmExitMsrLoadCount.write(0)?;
        Vmcs32::VmEntryMsrLoadCount.write(0)?;
        Vmcs32::VmEntryInterruptionInfo.write(0)?;
        Vmcs64::MsrBitmap.write(self.vm.apic.msr_bitmap_xapic)?;
        // APIC virtualization (SDM Vol. 3C §25.6.8, ch. 30): virtual-APIC page, APIC-access
        // page (xAPIC mode), posted interrupts, no EOI exits, and IPIv's PID-pointer table.
        Vmcs64::VirtualApicPageAddr.write(self.apic.page_pa)?;
        Vmcs64::ApicAccessAddr.write(self.vm.apic.apic_access_pa)?;
        Vmcs16::PostedIntrNv.write(POSTED_INTR_VECTOR as u16)?;
        Vmcs64::PostedIntrDescAddr.write(self.apic.pid_pa)?;
        Vmcs32::TprThreshold.write(0)?;
        for f in [Vmcs64::EoiExitBitmap0, Vmcs64::EoiExitBitmap1, Vmcs64::EoiExitBitmap2, Vmcs64::EoiExitBitmap3] {
            f.write(0)?;
        }
        Vmcs16::GuestInterruptStatus.write(0)?;
        if self.vm.ipiv {
            Vmcs64::PidPointerTable.write(self.vm.apic.pid_table_pa)?;
            Vmcs16::LastPidPointerIndex.write(self.vm.apic.last_pid_index)?;
        }
        Vmcs64::EptPointer.write(self.vm.eptp)?;
        Vmcs16::Vpid.write(NEXT_VPID.fetch_add(1, Ordering::Relaxed))?;
        Vmcs64::VmcsLinkPointer.write(u64::MAX)?;

        // Host state: this CPU as it runs now (SDM Vol. 3C §25.5).
        Vmcs16::HostCsSelector.write(0x08)?;
        for f in [Vmcs16::HostSsSelector, Vmcs16::HostDsSelector, Vmcs16::HostEsSelector] {
            f.write(0x10)?;
        }
        Vmcs16::HostFsSelector.write(0)?;
        Vmcs16::HostGsSelector.write(0)?;
        Vmcs16::HostTrSelector.write(HOST_TR_SELECTOR)?;
        VmcsNatural::HostCr0.write(Cr0::read_raw())?;
        VmcsNatural::HostCr3.write(Cr3::read_raw().0.start_address().as_u64() | Cr3::read_raw().1 as u64)?;
        VmcsNatural::HostCr4.write(Cr4::read_raw())?;
        VmcsNatural::HostFsBase.write(0)?;
        VmcsNatural::HostGsBase.write(GsBase::read().as_u64())?;
        VmcsNatural::HostTrBase.write(crate::cpu::tss_base())?;
        VmcsNatural::HostGdtrBase.write(sgdt().base.as_u64())?;
        VmcsNatural::HostIdtrBase.write(sidt().base.as_u64())?;
        VmcsNatural::HostIa32SysenterEsp.write(0)?;
        VmcsNatural::HostIa32SysenterEip.write(0)?;
        Vmcs32::HostIa32SysenterCs.write(0)?;
        // SAFETY: IA32_PAT exists on every CPU with VMX.
        Vmcs64::HostIa32Pat.write(unsafe { Msr::new(IA32_PAT).read() })?;
        Vmcs64::HostIa32Efer.write(Efer::read_raw())?;
        VmcsNatural::HostRip.write(entry::exit_landing())?;

        Vmcs64::GuestIa32Pat.write(DEFAULT_PAT)?;
        Vmcs64::GuestIa32Debugctl.write(0)?;
        Vmcs16::GuestLdtrSelector.write(0)?;
        VmcsNatural::GuestLdtrBase.write(0)?;
        Vmcs32::GuestLdtrLimit.write(0)?;
        Vmcs32::GuestLdtrAccessRights.write(AR_UNUSABLE)?;
        VmcsNatural::GuestIa32SysenterEsp.write(0)?;
        VmcsNatural::GuestIa32SysenterEip.write(0)?;
        Vmcs32::GuestIa32SysenterCs.write(0)?;
        // Hide CR4.VMXE (forced on by the fixed bits) from the guest.
        VmcsNatural::Cr4GuestHostMask.write(CR4_VMXE)?;
        VmcsNatural::Cr0GuestHostMask.write(0)?;
        VmcsNatural::Cr0ReadShadow.write(0)?;
        if self.vm.spec.apic == ApicMode::X2Apic {
            // As firmware does when asked: the kernel finds its APIC in x2APIC mode.
            self.enter_x2apic()?;
            self.apic.apic_base.fetch_or(X2APIC_ENABLE, Ordering::AcqRel);
        }
        self.arm_watchdog();
        Ok(())
    }

    /// The state the vCPU first enters with: the multiboot hand-off on the first, wait-for-SIPI
    /// on the others; false if the VM stopped before it could start.
    fn first_start(&mut self, caps: &VmxCaps) -> Result<bool, VmxInstrError> {
        if self.index == 0 && crate::fault_injection() == FaultInjection::BadGuestState {
            self.load_start(caps, &start_state::multiboot(0, 0))?;
            log::warn!("injecting an invalid guest state (boot config fault = bad-guest-state)");
            VmcsNatural::GuestRflags.write(0)?;
            return Ok(true);
        }
        if self.index == 0 {
            let b = self.vm.boot;
            self.load_start(caps, &start_state::multiboot(b.entry, b.info))?;
            return Ok(true);
        }
        self.wait_for_sipi(caps)
    }

    /// A multiboot hand-off or a SIPI start: protected mode without paging or real mode, an
    /// unrestricted guest (SDM Vol. 3C §27.3.1.2), everything else as INIT leaves it (SDM Vol. 3A
    /// §9.1.1, Table 9-1): no paging, EFER 0, descriptor tables at 0 with limit 0xFFFF, no
    /// pending events.
    fn load_start(&mut self, caps: &VmxCaps, s: &StartState) -> Result<(), VmxInstrError> {
        VmcsNatural::GuestCr0.write(caps.fix_cr0_unrestricted(s.cr0))?;
        let cr4 = caps.fix_cr4(0);
        VmcsNatural::GuestCr4.write(cr4)?;
        VmcsNatural::Cr4ReadShadow.write(cr4 & !CR4_VMXE)?;
        VmcsNatural::GuestCr3.write(0)?;
        Vmcs64::GuestIa32Efer.write(0)?;
        const IA32E_MODE_GUEST: u32 = 1 << hvcore::vmx::controls::entry_bits::IA32E_MODE_GUEST;
        // The processor keeps this bit equal to EFER.LMA across exits (SDM Vol. 3C §28.2).
        Vmcs32::VmEntryControls.write(self.controls.entry & !IA32E_MODE_GUEST)?;
        Vmcs16::GuestCsSelector.write(s.cs.selector)?;
        VmcsNatural::GuestCsBase.write(s.cs.base)?;
        Vmcs32::GuestCsLimit.write(s.cs.limit)?;
        Vmcs32::GuestCsAccessRights.write(s.cs.access)?;
        for (sel, base, limit, ar) in DATA_SEGMENTS {
            sel.write(s.data.selector)?;
            base.write(s.data.base)?;
            limit.write(s.data.limit)?;
            ar.write(s.data.access)?;
        }
        Vmcs16::GuestTrSelector.write(0)?;
        VmcsNatural::GuestTrBase.write(0)?;
        Vmcs32::GuestTrLimit.write(0xffff)?;
        Vmcs32::GuestTrAccessRights.write(start_state::access::TSS32_BUSY)?;
        VmcsNatural::GuestGdtrBase.write(0)?;
        Vmcs32::GuestGdtrLimit.write(0xffff)?;
        VmcsNatural::GuestIdtrBase.write(0)?;
        Vmcs32::GuestIdtrLimit.write(0xffff)?;
        VmcsNatural::GuestDr7.write(0x400)?;
        VmcsNatural::GuestRsp.write(0)?;
        VmcsNatural::GuestRip.write(s.rip)?;
        VmcsNatural::GuestRflags.write(0x2)?;
        VmcsNatural::GuestPendingDebugExceptions.write(0)?;
        Vmcs32::GuestInterruptibilityState.write(0)?;
        Vmcs32::GuestActivityState.write(0)?;
        Vmcs32::VmEntryInterruptionInfo.write(0)?;
        self.regs = GuestRegs { rax: s.rax, rbx: s.rbx, rdx: s.rdx, ..GuestRegs::default() };
        Ok(())
    }

    /// INIT (SDM Vol. 3A §11.4.7.3): the local APIC as after power-up but for its ID and mode
    /// (an x2APIC stays in x2APIC mode, §11.12.5.1), nothing pending, then wait-for-SIPI.
    fn init(&mut self, caps: &VmxCaps) -> Result<bool, VmxInstrError> {
        self.apic.page().reset(self.index, self.x2apic);
        self.apic.pid().take();
        self.apic.pending_nmi.store(false, Ordering::Release);
        Vmcs16::GuestInterruptStatus.write(0)?;
        if self.controls.primary & NMI_WINDOW_EXITING != 0 {
            self.controls.primary &= !NMI_WINDOW_EXITING;
            Vmcs32::PrimaryProcBasedVmExecControl.write(self.controls.primary)?;
        }
        self.counters.inits += 1;
        self.wait_for_sipi(caps)
    }

    /// Wait-for-SIPI, kept in the hypervisor: the CPU sleeps until a kick, then looks. True
    /// with the SIPI's real-mode start loaded; false if the VM stopped meanwhile.
    fn wait_for_sipi(&mut self, caps: &VmxCaps) -> Result<bool, VmxInstrError> {
        loop {
            // An INIT while waiting changes nothing: the vCPU is in its INIT state.
            self.apic.startup.take_init();
            if self.vm.is_stopping() {
                return Ok(false);
            }
            if let Some(vector) = self.apic.startup.take_sipi() {
                let signature = core::arch::x86_64::__cpuid(1).eax;
                self.load_start(caps, &start_state::after_sipi(vector, signature))?;
                self.counters.sipis += 1;
                return Ok(true);
            }
            if self.watchdog_expired() {
                let why = format!(
                    "vCPU {}: watchdog: still waiting for a SIPI after {} ms",
                    self.index, self.vm.spec.timeout_ms
                );
                self.vm.stop(VmResult::Timeout, why);
                return Ok(false);
            }
            crate::apic::sleep_until_interrupt();
        }
    }

    /// Sets the VMX-preemption timer to the time left before the deadline (it keeps counting
    /// across exits: "save VMX-preemption timer value").
    pub fn arm_watchdog(&self) {
        let left = self.deadline_tsc.saturating_sub(crate::time::rdtsc()) >> self.timer_shift;
        let _ = Vmcs32::VmxPreemptionTimerValue.write(left.min(u32::MAX as u64) as u32);
    }

    pub fn watchdog_expired(&self) -> bool {
        crate::time::rdtsc() >= self.deadline_tsc
    }

    /// Switches the vCPU's virtual APIC to x2APIC mode (the guest set IA32_APIC_BASE.EXTD):
    /// "virtualize x2APIC mode" instead of "virtualize APIC accesses", the x2APIC MSR bitmap,
    /// and the x2APIC ID and LDR in the virtual-APIC page.
    pub fn enter_x2apic(&mut self) -> Result<(), VmxInstrError> {
        let secondary = self.controls.secondary_for(true);
        Vmcs32::SecondaryProcBasedVmExecControl.write(secondary)?;
        Vmcs64::MsrBitmap.write(self.vm.apic.msr_bitmap_x2apic)?;
        self.controls.secondary = secondary;
        self.x2apic = true;
        self.apic.x2apic.store(true, Ordering::Release);
        self.apic.page().set_mode(self.index, true);
        Ok(())
    }

    fn run_loop(&mut self, caps: &VmxCaps) {
        // TSC at the last exit that sent an IPI, until the entry that follows it.
        let mut ipi_exit_at: Option<u64> = None;
        loop {
            if self.vm.is_stopping() {
                return;
            }
            if self.apic.startup.take_init() {
                match self.init(caps) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        self.vm.stop(VmResult::Fail, format!("vCPU {}: INIT: {e}", self.index));
                        return;
                    }
                }
            }
            if let Err(e) = self.gate_nmi() {
                self.vm.stop(VmResult::Fail, format!("vCPU {}: NMI injection: {e}", self.index));
                return;
            }
            if let Some(t) = ipi_exit_at.take() {
                self.counters.ipi_exit_ticks += crate::time::rdtsc() - t;
            }
            // SAFETY: this vCPU's VMCS is current with complete host state and HOST_RIP.
            let entered = unsafe { entry::enter(&mut self.regs, self.launched) };
            let exit_tsc = crate::time::rdtsc();
            match entered {
                Entry::Exited => {}
                failed => {
                    let error = match failed {
                        Entry::FailValid => {
                            let n = vmcs::read32(Vmcs32::VmInstructionError);
                            format!("VM-instruction error {n} ({})", hvcore::vmx::instruction_error::describe(n))
                        }
                        _ => String::from("VMfailInvalid"),
                    };
                    let what = if self.launched { "VMRESUME" } else { "VMLAUNCH" };
                    let detail = exits::describe_entry_state();
                    log::error!("vCPU {}: {what} failed: {error}; {detail}", self.index);
                    self.vm.stop(VmResult::Fail, format!("vCPU {}: {what} failed: {error}; {detail}", self.index));
                    return;
                }
            }
            self.launched = true;
            let reason = ExitReason(vmcs::read32(Vmcs32::ExitReason));
            self.counters.count(reason.basic());
            if reason.entry_failure() {
                let why = exits::entry_failure(reason);
                log::error!("vCPU {}: {why}", self.index);
                self.vm.stop(VmResult::Fail, format!("vCPU {}: {why}", self.index));
                return;
            }
            if events::may_interrupt_delivery(reason.basic())
                && let Err(e) = self.reinject_interrupted_event()
            {
                self.vm.stop(VmResult::Fail, format!("vCPU {}: event re-injection: {e}", self.index));
                return;
            }
            let sent = self.counters.ipi_sent_by_exit;
            // The preemption timer counts only guest time; a guest that keeps exiting would
            // never let it fire, so every exit checks the deadline too.
            let flow = if exit_tsc >= self.deadline_tsc {
                exits::timeout(self)
            } else if let Err(over) = self.exit_budget.exit(exit_tsc) {
                Flow::Stop(VmResult::Killed, format!("{over}"))
            } else {
                exits::handle(self, reason.basic())
            };
            if self.counters.ipi_sent_by_exit != sent {
                ipi_exit_at = Some(exit_tsc);
            }
            match flow {
                Flow::Continue => {}
                Flow::VcpuDone => return,
                Flow::Stop(result, why) => {
                    self.vm.stop(result, format!("vCPU {}: {why}", self.index));
                    return;
                }
            }
        }
    }

    /// Injects a pending virtual NMI when the guest can take it, else sets "NMI-window exiting"
    /// so the next window brings the vCPU back here (rules in `hvcore::vmx::events`). The
    /// flag is taken only when the NMI is injected: NMIs sent meanwhile fold into one pending,
    /// as a real local APIC latches one NMI while another is handled.
    fn gate_nmi(&mut self) -> Result<(), VmxInstrError> {
        let pending = self.apic.pending_nmi.load(Ordering::Acquire);
        let window_on = self.controls.primary & NMI_WINDOW_EXITING != 0;
        if !pending && !window_on {
            return Ok(());
        }
        let queued = Vmcs32::VmEntryInterruptionInfo.read()? & events::info::VALID != 0;
        let state = Vmcs32::GuestInterruptibilityState.read()?;
        let gate = events::nmi_gate(pending, state, queued);
        if gate == NmiGate::Inject && self.apic.pending_nmi.swap(false, Ordering::AcqRel) {
            Vmcs32::VmEntryInterruptionInfo.write(events::info::NMI)?;
            self.counters.nmi_injected += 1;
        }
        if (gate == NmiGate::Wait) != window_on {
            let primary = self.controls.primary ^ NMI_WINDOW_EXITING;
            Vmcs32::PrimaryProcBasedVmExecControl.write(primary)?;
            self.controls.primary = primary;
        }
        Ok(())
    }

    /// An exit that interrupted the delivery of an event through the guest IDT (a host
    /// interrupt or NMI arriving meanwhile, say) leaves the event undelivered: it is injected
    /// again at the next entry (SDM Vol. 3C §28.2.3), as KVM does, so nothing is lost.
    fn reinject_interrupted_event(&mut self) -> Result<(), VmxInstrError> {
        let idt = Vmcs32::IdtVectoringInfo.read()?;
        if idt & events::info::VALID == 0 {
            return Ok(());
        }
        let code = Vmcs32::IdtVectoringErrorCode.read()?;
        let len = Vmcs32::VmExitInstructionLength.read()?;
        if let Some(r) = events::reinjection(idt, code, len) {
            if let Some(code) = r.error_code {
                Vmcs32::VmEntryExceptionErrorCode.write(code)?;
            }
            if let Some(len) = r.instruction_length {
                Vmcs32::VmEntryInstructionLength.write(len)?;
            }
            Vmcs32::VmEntryInterruptionInfo.write(r.info)?;
            self.counters.events_reinjected += 1;
        }
        Ok(())
    }

    /// Skips the instruction that caused the exit. Completing an instruction ends blocking by
    /// STI and by MOV SS (SDM Vol. 3C §25.4.2, interruptibility-state bits 0 and 1), as KVM's
    /// skip does: otherwise "STI; HLT" would leave the next entry blocked for no reason, and an
    /// NMI or interrupt injected then would fail the VM entry.
    pub fn skip_instruction(&self) {
        self.skip_emulated(vmcs::read32(Vmcs32::VmExitInstructionLength) as u64);
    }

    /// Completes an instruction of `len` bytes the hypervisor emulated (as `skip_instruction`).
    pub fn skip_emulated(&self, len: u64) {
        let rip = vmcs::read_natural(VmcsNatural::GuestRip);
        let _ = VmcsNatural::GuestRip.write(rip + len);
        let state = vmcs::read32(Vmcs32::GuestInterruptibilityState);
        if state & BLOCKING_BY_STI_OR_MOV_SS != 0 {
            let _ = Vmcs32::GuestInterruptibilityState.write(state & !BLOCKING_BY_STI_OR_MOV_SS);
        }
    }

    /// General-purpose register `n` in hardware order (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP,
    /// 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15); RSP lives in the VMCS.
    pub fn gpr(&self, n: u8) -> u64 {
        let r = &self.regs;
        match n {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => vmcs::read_natural(VmcsNatural::GuestRsp),
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
        }
    }

    pub fn set_gpr(&mut self, n: u8, value: u64) {
        let r = &mut self.regs;
        let slot = match n {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => {
                let _ = VmcsNatural::GuestRsp.write(value);
                return;
            }
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
    }

    /// Injects a hardware exception with an error code (#GP etc.) at the next entry.
    pub fn inject_exception(&self, vector: u8, error_code: Option<u32>) {
        // SDM Vol. 3C §25.8.3: vector, type 3 (hardware exception), deliver-error-code, valid.
        let mut info = vector as u32 | (3 << 8) | (1 << 31);
        if let Some(code) = error_code {
            info |= 1 << 11;
            let _ = Vmcs32::VmEntryExceptionErrorCode.write(code);
        }
        let _ = Vmcs32::VmEntryInterruptionInfo.write(info);
    }
}
