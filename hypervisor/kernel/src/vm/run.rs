//! A vCPU's run loop: before each entry, what the hypervisor owes the guest (an INIT to apply,
//! interrupts other CPUs marked pending where the processor does not take posted interrupts, a
//! due APIC timer, the EOI-exit bitmap, a virtual NMI, an injected interrupt on the injection
//! path, the preemption timer); then VM entry,
//! the exit's bookkeeping (counters, entry failures, re-injection, the watchdog and the exit
//! budget) and its handler (`exits`). Any VMCS error stops the VM with the field at fault.

use alloc::format;
use alloc::string::String;

use hvcore::manifest::VmResult;
use hvcore::vmx::events::{self, NmiGate};
use hvcore::vmx::exit_reason::{BasicExit, ExitReason};
use hvcore::vmx::fields::{Vmcs32, Vmcs64};
use hvcore::vmx::interrupt_path::Delivery;

use super::exits;
use super::exits::flow::{self, Flow};
use super::vcpu::Vcpu;
use super::{VcpuWhere, Vm};
use crate::host::Host;
use crate::vmx::entry::{self, Entry};
use crate::vmx::vmcs::{Access, Vmcs, VmxInstrError};

use hvcore::vmx::controls::NMI_WINDOW_EXITING;

/// Runs vCPU `index` of `vm` on this CPU until the VM stops or this vCPU is done; its counters
/// go to the VM at the end.
pub fn run_vcpu(vm: &Vm, index: u32, host: &Host) {
    let Some(vmcs) = Vmcs::new(host.caps.revision_id) else {
        vm.stop(VmResult::Fail, format!("vCPU {index}: no memory for its VMCS"));
        vm.vcpu_done(index);
        return;
    };
    // Every vCPU starts in xAPIC mode, with the controls the VM's plan negotiated for it.
    let mut vcpu = Vcpu::new(vm, index, host, vm.plan.controls(false));
    match vmcs.load().and_then(|_| vcpu.setup()).and_then(|_| vcpu.first_start()) {
        // One loop per kind of delivery, so the posted paths' loop has no test of the others'
        // work (the exit path's length is a measured figure: docs/results.md).
        Ok(true) => match vm.plan.delivery() {
            Delivery::Posted => vcpu.run_loop::<{ Delivery::Posted as u8 }>(),
            Delivery::Folded => vcpu.run_loop::<{ Delivery::Folded as u8 }>(),
            Delivery::Injected => vcpu.run_loop::<{ Delivery::Injected as u8 }>(),
        },
        Ok(false) => {}
        Err(e) => vm.stop(VmResult::Fail, format!("vCPU {index}: VMCS set-up: {e}")),
    }
    vcpu.census_catch_up();
    *vm.exits[index as usize].lock() = vcpu.counters;
    vmcs.release();
    vm.vcpu_done(index);
}

/// What the exit being handled cost, measured to the next entry.
#[derive(Clone, Copy)]
enum Timed {
    Ipi(u64),
    Timer(u64),
}

impl Vcpu<'_> {
    // Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
    // boundaries cut) do not move with unrelated code (docs/results.md).
    #[rustc_align(4096)]
    fn run_loop<const D: u8>(&mut self) {
        let mut timed = None;
        loop {
            match self.round_trip::<D>(&mut timed) {
                Ok(Flow::Continue) => {}
                Ok(Flow::VcpuDone) => return,
                Ok(Flow::Stop(result, why)) => {
                    self.vm.stop(result, format!("vCPU {}: {why}", self.index));
                    return;
                }
                Err(e) => {
                    self.vm.stop(VmResult::Fail, format!("vCPU {}: VMCS access: {e}", self.index));
                    return;
                }
            }
        }
    }

    /// One entry and the handling of the exit that ends it.
    fn round_trip<const D: u8>(&mut self, timed: &mut Option<Timed>) -> Result<Flow, VmxInstrError> {
        if self.vm.is_stopping() {
            return Ok(Flow::VcpuDone);
        }
        if self.apic.startup.take_init() && !self.init()? {
            return Ok(Flow::VcpuDone);
        }
        if D != Delivery::Posted as u8 {
            self.fold_posted()?;
        }
        if self.timer_expire()? {
            self.arm_preemption_timer()?;
        }
        if D != Delivery::Injected as u8 {
            self.sync_eoi_exit_bitmap()?;
        }
        self.gate_nmi()?;
        if D == Delivery::Injected as u8 {
            self.inject_for_entry()?;
        }
        self.rearm_for_entry()?;
        match timed.take() {
            Some(Timed::Ipi(t)) => {
                self.counters.ipi_exit_ticks += crate::time::rdtsc() - t;
                self.counters.ipi_exits_timed += 1;
            }
            Some(Timed::Timer(t)) => self.counters.timer_exit_ticks += crate::time::rdtsc() - t,
            None => {}
        }
        self.set_where(VcpuWhere::InGuest);
        // SAFETY: this vCPU's VMCS is current with complete host state and HOST_RIP.
        let entered = unsafe { entry::enter(&mut self.regs, self.launched) };
        let exit_tsc = crate::time::rdtsc();
        if let Some(flow) = self.entry_failed(entered) {
            return Ok(flow);
        }
        self.launched = true;
        let reason = ExitReason(Vmcs32::ExitReason.read()?);
        self.set_where(VcpuWhere::Handling(reason.basic()));
        self.census_catch_up();
        self.counters.count(reason.basic());
        if reason.entry_failure() {
            let why = exits::entry_failure::describe(reason, &self.host.caps);
            log::error!("vCPU {}: {why}", self.index);
            return Ok(Flow::Stop(VmResult::Fail, why));
        }
        let kind = reason.kind();
        // A task switch through a task gate delivers the event itself (exits/task_switch.rs).
        if events::may_interrupt_delivery(reason.basic()) && kind != BasicExit::TaskSwitch {
            self.reinject_interrupted_event()?;
        }
        let (sent, startup) = (self.counters.ipi_sent_by_exit, self.counters.startup_ipis_sent);
        // The preemption timer counts only guest time; a guest that keeps exiting would
        // never let it fire, so every exit checks the deadline too.
        let flow = if exit_tsc >= self.deadline_tsc {
            flow::timeout(self)?
        } else if let Err(over) = self.exit_budget.exit(exit_tsc) {
            Flow::Stop(VmResult::Killed, format!("{over}"))
        } else {
            exits::handle(self, kind)?
        };
        if self.counters.ipi_sent_by_exit != sent && self.counters.startup_ipis_sent == startup {
            *timed = Some(Timed::Ipi(exit_tsc));
        } else if matches!(kind, BasicExit::PreemptionTimer | BasicExit::ExternalInterrupt) && self.timer_expire()? {
            self.counters.timer_exits += 1;
            *timed = Some(Timed::Timer(exit_tsc));
        }
        // The preemption timer does not count while the hypervisor waits (HLT that exits), and
        // that wait used the host APIC timer.
        if matches!(kind, BasicExit::PreemptionTimer | BasicExit::Hlt)
            || timed.is_some_and(|t| matches!(t, Timed::Timer(_)))
        {
            self.arm_preemption_timer()?;
        }
        Ok(flow)
    }

    /// A failed VMLAUNCH/VMRESUME, decoded; `None` if the guest ran.
    #[inline(always)]
    fn entry_failed(&self, entered: Entry) -> Option<Flow> {
        match entered {
            Entry::Exited => None,
            failed => Some(self.entry_failure(failed)),
        }
    }

    #[cold]
    #[inline(never)]
    fn entry_failure(&self, entered: Entry) -> Flow {
        let error = match entered {
            Entry::Exited => unreachable!("the guest ran"),
            Entry::FailValid => match Vmcs32::VmInstructionError.read() {
                Ok(n) => format!("VM-instruction error {n} ({})", hvcore::vmx::instruction_error::describe(n)),
                Err(e) => format!("VMfailValid, and the error number is unreadable: {e}"),
            },
            _ => String::from("VMfailInvalid"),
        };
        let what = if self.launched { "VMRESUME" } else { "VMLAUNCH" };
        let detail = exits::entry_failure::guest_state(&self.host.caps);
        log::error!("vCPU {}: {what} failed: {error}; {detail}", self.index);
        Flow::Stop(VmResult::Fail, format!("{what} failed: {error}; {detail}"))
    }

    /// Keeps the VMCS's EOI-exit bitmap equal to the I/O APIC's level-triggered vectors
    /// (another vCPU may have reprogrammed them): one atomic load when nothing changed. The
    /// checks on every entry are forced inline, their rare work is not: the exit path's length
    /// is a measured figure (docs/results.md).
    #[inline(always)]
    fn sync_eoi_exit_bitmap(&mut self) -> Result<(), VmxInstrError> {
        if self.vm.devices.eoi_exit_generation() == self.eoi_exit_generation {
            return Ok(());
        }
        self.write_eoi_exit_bitmap()
    }

    #[inline(never)]
    fn write_eoi_exit_bitmap(&mut self) -> Result<(), VmxInstrError> {
        let (generation, bits) = self.vm.devices.eoi_exit_bitmap();
        for (f, b) in [Vmcs64::EoiExitBitmap0, Vmcs64::EoiExitBitmap1, Vmcs64::EoiExitBitmap2, Vmcs64::EoiExitBitmap3]
            .into_iter()
            .zip(bits)
        {
            f.write(b)?;
        }
        self.eoi_exit_generation = generation;
        Ok(())
    }

    /// Injects a pending virtual NMI when the guest can take it, else sets "NMI-window exiting"
    /// so the next window brings the vCPU back here (rules in `hvcore::vmx::events`). NMIs
    /// sent meanwhile are latched as a real local APIC latches them (`NmiLatch`).
    #[inline(always)]
    fn gate_nmi(&mut self) -> Result<(), VmxInstrError> {
        let pending = self.apic.nmi.pending();
        let window_on = self.controls.primary & NMI_WINDOW_EXITING != 0;
        if !pending && !window_on {
            return Ok(());
        }
        self.gate_pending_nmi(pending, window_on)
    }

    #[inline(never)]
    fn gate_pending_nmi(&mut self, pending: bool, window_on: bool) -> Result<(), VmxInstrError> {
        let queued = Vmcs32::VmEntryInterruptionInfo.read()? & events::info::VALID != 0;
        let state = Vmcs32::GuestInterruptibilityState.read()?;
        if state & events::interruptibility::BLOCKING_BY_NMI != 0 {
            self.apic.nmi.blocked();
        }
        let mut gate = events::nmi_gate(pending, state, queued);
        if gate == NmiGate::Inject && self.apic.nmi.take() {
            Vmcs32::VmEntryInterruptionInfo.write(events::info::NMI)?;
            self.counters.nmi_injected += 1;
            // A second one waits for the guest's IRET.
            if self.apic.nmi.pending() {
                gate = NmiGate::Wait;
            }
        }
        if (gate == NmiGate::Wait) != window_on {
            self.toggle_primary(NMI_WINDOW_EXITING)?;
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
            // An NMI whose delivery was cut short left blocking by NMI set; an entry injecting
            // an NMI must not have it (SDM Vol. 3C §27.3.1.5), and the guest is not in its
            // handler yet.
            if r.nmi {
                let state = Vmcs32::GuestInterruptibilityState.read()?;
                Vmcs32::GuestInterruptibilityState.write(state & !events::interruptibility::BLOCKING_BY_NMI)?;
            }
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
}
