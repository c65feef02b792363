//! The vCPU's local APIC as a whole: its global mode (IA32_APIC_BASE: xAPIC, x2APIC,
//! disabled, relocated; the rules are `hvcore::apic::base`) and its software enable (SVR bit 8,
//! SDM Vol. 3A §12.4.7.2), and what each state sets in the VMCS:
//!
//! | state                 | secondary controls                  | MSR bitmap | EPT             |
//! |-----------------------|-------------------------------------|------------|-----------------|
//! | xAPIC at 0xFEE00000   | virtualize APIC accesses            | xAPIC      | with APIC page  |
//! | xAPIC elsewhere       | neither (the hypervisor emulates it) | xAPIC      | without         |
//! | x2APIC                | virtualize x2APIC mode (VID paths)  | x2APIC     | without         |
//! | disabled              | neither                             | xAPIC      | without         |
//!
//! "Without" the APIC page, guest-physical 0xFEE00000 is not claimed: reads return all ones
//! and writes are dropped (`exits::io`), as on a PC whose APIC does not decode it (§12.12.2:
//! in x2APIC mode "any access to the MMIO interface will behave similar to that of a legacy
//! xAPIC in globally disabled state"). A relocated xAPIC is emulated at its new base on EPT
//! violations (outside RAM; inside RAM the RAM wins, as under KVM).

use core::sync::atomic::Ordering;

use hvcore::apic::base::{self, ApicMode, Change};
use hvcore::apic::vapic;
use hvcore::vmx::caps::secondary_bits;
use hvcore::vmx::fields::{Vmcs16, Vmcs64};

use super::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << secondary_bits::VIRTUALIZE_APIC_ACCESSES;

impl Vcpu<'_> {
    /// The guest's APIC is in x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.apic_mode == ApicMode::X2Apic
    }

    /// The base address of an xAPIC the guest moved away from 0xFEE00000 (emulated on EPT
    /// violations), if it did.
    pub fn relocated_xapic_base(&self) -> Option<u64> {
        let b = base::base_address(self.apic.apic_base.load(Ordering::Relaxed));
        (self.apic_mode == ApicMode::XApic && b != base::DEFAULT_BASE).then_some(b)
    }

    /// Applies a legal WRMSR to IA32_APIC_BASE (`hvcore::apic::base::write`). Disabling resets
    /// the APIC (its registers, what was pending, its timer) but for the ID; leaving x2APIC
    /// mode drops back to the xAPIC ID format (§12.12.5.1).
    pub fn set_apic_base(&mut self, c: Change) -> Result<(), VmxInstrError> {
        let current = self.apic.apic_base.load(Ordering::Relaxed);
        self.apic.apic_base.store(c.value, Ordering::Release);
        if c.same_mode_and_base(current) {
            return Ok(());
        }
        if c.to == ApicMode::Disabled && c.from != ApicMode::Disabled {
            self.reset_local_apic(false)?;
        }
        self.apic_mode = c.to;
        self.apic.page().set_mode(self.index, c.to == ApicMode::X2Apic);
        self.apply_apic_state()?;
        self.sync_accepts_ipiv();
        Ok(())
    }

    /// The local APIC as after INIT or power-up (SDM Vol. 3A §12.4.7.3): its registers reset
    /// (ID and, in x2APIC mode, the LDR kept), nothing in IRR or ISR, nothing posted or
    /// pending, the timer stopped.
    pub(in crate::vm) fn reset_local_apic(&mut self, x2apic: bool) -> Result<(), VmxInstrError> {
        self.apic.page().reset(self.index, x2apic);
        self.apic.pid().take();
        self.apic.nmi.clear();
        self.timer = hvcore::apic::timer::ApicTimer::for_tsc(self.host.tsc_hz);
        if self.controls.virtual_interrupt_delivery() {
            Vmcs16::GuestInterruptStatus.write(0)?;
        }
        self.sync_accepts_ipiv();
        Ok(())
    }

    /// Writes the secondary controls, MSR bitmap and EPT pointer the APIC's state asks for
    /// (the table above), keeping the control shadow.
    pub(in crate::vm) fn apply_apic_state(&mut self) -> Result<(), VmxInstrError> {
        let mut secondary = self.vm.plan.controls(self.apic_mode == ApicMode::X2Apic).secondary;
        let page_mapped = self.apic_mode == ApicMode::XApic && self.relocated_xapic_base().is_none();
        if !page_mapped {
            secondary &= !VIRTUALIZE_APIC_ACCESSES;
        }
        self.set_secondary(secondary)?;
        let bitmap = if self.x2apic() { self.vm.apic.msr_bitmap_x2apic } else { self.vm.apic.msr_bitmap_xapic };
        Vmcs64::MsrBitmap.write(bitmap)?;
        // Both EPTs map the same RAM and never change, so translations cached under either
        // stay valid: no INVEPT (SDM Vol. 3C §29.4.1: mappings are tagged with the EPTP).
        Vmcs64::EptPointer.write(if page_mapped { self.vm.eptp } else { self.vm.eptp_no_apic })
    }

    /// Whether the APIC takes fixed and lowest-priority interrupts now: enabled globally and by
    /// software (SVR bit 8; SDM Vol. 3A §12.4.7.2: a software-disabled APIC still takes NMI,
    /// INIT and SIPI, and holds what IRR and ISR have).
    pub fn apic_accepts_fixed(&self) -> bool {
        self.apic.accepts_fixed()
    }

    /// An SVR write (stored already): while the APIC is software-disabled every LVT entry is
    /// masked and stays masked (§12.4.7.2), and IPI virtualization must not post to it.
    pub(in crate::vm) fn svr_written(&mut self) -> Result<(), VmxInstrError> {
        let page = self.apic.page();
        if !vapic::software_enabled(&page) {
            vapic::mask_every_lvt(&page);
            self.timer.write_lvt(page.read(hvcore::apic::regs::LVT_TIMER));
        }
        self.sync_accepts_ipiv();
        Ok(())
    }

    /// An LVT value as the APIC keeps it: masked while software-disabled.
    pub(in crate::vm) fn lvt_value(&self, value: u32) -> u32 {
        if vapic::software_enabled(&self.apic.page()) { value } else { value | hvcore::apic::regs::LVT_MASKED }
    }

    /// IPI virtualization posts to this vCPU only while it takes fixed interrupts and under
    /// the ID it has now: otherwise its PID-pointer-table entry is invalid, so senders take
    /// the exit path, which drops or delivers the interrupt as the APICs would (SDM Vol. 3C
    /// §30.1.6: an invalid entry is an APIC-write exit; `VmApic::refresh_pid_table`).
    pub(in crate::vm) fn sync_accepts_ipiv(&self) {
        self.vm.apic.refresh_pid_table();
    }
}
