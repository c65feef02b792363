//! VM-entry failures, decoded: a VM-entry failure exit (reasons 33, 34, 41) with what the SDM
//! says it means and its qualification, and the guest-state fields entry checks most often
//! reject, by SDM name, with the one most likely at fault (`hvcore::vmx::entry_checks`).

use alloc::format;
use alloc::string::String;

use hvcore::vmx::caps::VmxCaps;
use hvcore::vmx::entry_checks::{GuestState, suspect};
use hvcore::vmx::exit_reason::{BasicExit, ExitReason};
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use crate::vmx::vmcs::Access;

/// A VM-entry failure exit (SDM Vol. 3C §27.8).
pub fn describe(reason: ExitReason, caps: &VmxCaps) -> String {
    let q = VmcsNatural::ExitQualification.read().unwrap_or(u64::MAX);
    let what = match reason.kind() {
        BasicExit::EntryFailGuestState => match q {
            2 => "invalid guest state: PDPTE loading failed",
            3 => "invalid guest state: NMI injection blocked",
            4 => "invalid guest state: invalid VMCS link pointer",
            _ => "invalid guest state",
        },
        BasicExit::EntryFailMsrLoad => "MSR loading failed (qualification = failing entry index + 1)",
        _ => "machine-check event during VM entry",
    };
    format!("VM-entry failure (exit reason {}): {what}, qualification {q}; {}", reason.basic(), guest_state(caps))
}

/// The key guest-state fields and the first rule they break. A diagnostic: a field that cannot
/// be read shows as all ones rather than hiding the rest.
pub fn guest_state(caps: &VmxCaps) -> String {
    let read = |f: VmcsNatural| f.read().unwrap_or(u64::MAX);
    let s = GuestState {
        cr0: read(VmcsNatural::GuestCr0),
        cr4: read(VmcsNatural::GuestCr4),
        efer: Vmcs64::GuestIa32Efer.read().unwrap_or(u64::MAX),
        rflags: read(VmcsNatural::GuestRflags),
        cs_ar: Vmcs32::GuestCsAccessRights.read().unwrap_or(u32::MAX),
        tr_ar: Vmcs32::GuestTrAccessRights.read().unwrap_or(u32::MAX),
        entry_controls: Vmcs32::VmEntryControls.read().unwrap_or(0),
        secondary_controls: Vmcs32::SecondaryProcBasedVmExecControl.read().unwrap_or(0),
        cr0_fixed0: caps.cr0_fixed0,
        cr0_fixed1: caps.cr0_fixed1,
        cr4_fixed0: caps.cr4_fixed0,
        cr4_fixed1: caps.cr4_fixed1,
    };
    format!(
        "GuestCr0={:#x} GuestCr4={:#x} GuestIa32Efer={:#x} GuestRip={:#x} GuestRflags={:#x} GuestCsAccessRights={:#x} \
         GuestTrAccessRights={:#x} VmEntryControls={:#x}; suspect: {}",
        s.cr0,
        s.cr4,
        s.efer,
        read(VmcsNatural::GuestRip),
        s.rflags,
        s.cs_ar,
        s.tr_ar,
        s.entry_controls,
        suspect(&s).unwrap_or("no field identified by the quick checks (see SDM Vol. 3C §27.3)")
    )
}
