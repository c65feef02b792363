//! Interrupts into the guest as the VM's interrupt path has them (`hvcore::vmx::interrupt_path`):
//! an interrupt from this vCPU's own CPU; what other CPUs marked pending where the processor
//! does not process posted interrupts (the descriptor is then a plain software structure: same
//! PIR and ON, and its notification vector only kicks this CPU out of the guest); and on the
//! injection path, the event injection at each VM entry (SDM Vol. 3C §27.6: an external
//! interrupt, type 0, in the VM-entry interruption-information field).

use hvcore::apic::injection::{self, Entry};
use hvcore::apic::vapic::raise_rvi;
use hvcore::vmx::events::{self, interruptibility};
use hvcore::vmx::fields::{Vmcs16, Vmcs32, VmcsNatural};

use super::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

use hvcore::arch::RFLAGS_IF;
use hvcore::vmx::controls::INTERRUPT_WINDOW_EXITING;
const ACTIVITY_HLT: u32 = 1;

impl Vcpu<'_> {
    /// An interrupt for this vCPU from its own CPU (a self-IPI by the exit path, its APIC
    /// timer, an I/O APIC message it caused): the VIRR bit, and with virtual-interrupt delivery
    /// RVI too, evaluated at the next VM entry (SDM Vol. 3C §30.2.1); on the injection path the
    /// next entry injects it (`inject_for_entry`).
    pub fn deliver_self(&self, vector: u8) -> Result<(), VmxInstrError> {
        self.apic.page().set_irr(vector);
        if self.controls.virtual_interrupt_delivery() {
            let status = Vmcs16::GuestInterruptStatus.read()?;
            Vmcs16::GuestInterruptStatus.write(raise_rvi(status, vector))?;
        }
        Ok(())
    }

    /// Moves what other CPUs posted to this vCPU's descriptor into VIRR (and RVI): before every
    /// entry on the paths without posted-interrupt processing, and while a halted vCPU waits
    /// in the hypervisor on every path. One atomic load when nothing is pending.
    pub(in crate::vm) fn fold_posted(&self) -> Result<(), VmxInstrError> {
        let pid = self.apic.pid();
        if !pid.outstanding() && !pid.pir_pending() {
            return Ok(());
        }
        if let Some(top) = self.apic.page().merge_pir(pid.take())
            && self.controls.virtual_interrupt_delivery()
        {
            let status = Vmcs16::GuestInterruptStatus.read()?;
            Vmcs16::GuestInterruptStatus.write(raise_rvi(status, top))?;
        }
        Ok(())
    }

    /// The injection path, before each entry: the interrupt the modelled APIC would deliver
    /// now goes in as an external-interrupt event if the guest can take it (RFLAGS.IF = 1, no
    /// blocking by STI or MOV SS, no other event being injected: SDM Vol. 3C §27.3.1.5,
    /// §27.6.2), and moves from IRR to ISR; otherwise "interrupt-window exiting" brings the
    /// vCPU back when it can. The TPR threshold follows the highest request that only the
    /// guest's TPR holds back, so lowering the TPR shadow exits when that request can go in.
    pub(in crate::vm) fn inject_for_entry(&mut self) -> Result<(), VmxInstrError> {
        let page = self.apic.page();
        // Without a TPR shadow every TPR change exits anyway (CR8, the register).
        let threshold = if self.controls.tpr_shadow() { injection::tpr_threshold(&page) } else { 0 };
        if threshold != self.tpr_threshold {
            Vmcs32::TprThreshold.write(threshold)?;
            self.tpr_threshold = threshold;
        }
        let window_on = self.controls.primary & INTERRUPT_WINDOW_EXITING != 0;
        let decision = if injection::deliverable(&page).is_some() {
            let queued = Vmcs32::VmEntryInterruptionInfo.read()? & events::info::VALID != 0;
            let blocked = Vmcs32::GuestInterruptibilityState.read()?
                & (interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS)
                != 0;
            let enabled = VmcsNatural::GuestRflags.read()? & RFLAGS_IF != 0;
            injection::at_entry(&page, !queued && !blocked && enabled)
        } else {
            Entry::Nothing
        };
        if let Entry::Inject(vector) = decision {
            // Type 0 (external interrupt), valid (SDM Vol. 3C §25.8.3, Table 25-17).
            Vmcs32::VmEntryInterruptionInfo.write(vector as u32 | events::info::VALID)?;
            injection::acknowledge(&page, vector);
            // A vCPU halted in the guest (HLT passes through) wakes for the interrupt, as
            // a real one does.
            if Vmcs32::GuestActivityState.read()? == ACTIVITY_HLT {
                Vmcs32::GuestActivityState.write(0)?;
            }
            self.counters.interrupts_injected += 1;
        }
        let want_window = decision == Entry::OpenWindow;
        if want_window != window_on {
            self.toggle_primary(INTERRUPT_WINDOW_EXITING)?;
            self.counters.interrupt_windows += want_window as u64;
        }
        Ok(())
    }
}
