//! VMX operation on this CPU: discovery (decoded by `hvcore::vmx::caps`), IA32_FEATURE_CONTROL,
//! VMXON and VMXOFF.

pub mod entry;
pub mod vmcs;

use core::arch::asm;
use core::fmt;

use hvcore::vmx::caps::{FeatureControlAction, Unsupported, VmxCaps, VmxMsrs, feature_control_action};
use hvcore::vmx::msr::IA32_FEATURE_CONTROL;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;

use crate::memory;

/// Reads this CPU's VMX capability MSRs (only those the SDM says exist).
pub fn read_msrs() -> VmxMsrs {
    let cpuid_vmx = core::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0;
    // SAFETY: VmxMsrs::read asks only for MSRs that CPUID and the earlier capability MSRs
    // guarantee (SDM Vol. 3D Appendix A), so no read faults.
    VmxMsrs::read(cpuid_vmx, |m| unsafe { Msr::new(m).read() })
}

#[derive(Debug)]
pub enum VmxError {
    Unsupported(Unsupported),
    NoMemory,
    /// VMXON failed; the flags say how (SDM Vol. 3C §32.2 conventions).
    VmxonFailed {
        cf: bool,
        zf: bool,
    },
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(u) => u.fmt(f),
            Self::NoMemory => f.write_str("no memory for the VMXON region"),
            Self::VmxonFailed { cf: true, .. } => {
                f.write_str("VMXON failed with VMfailInvalid (bad VMXON region address or revision)")
            }
            Self::VmxonFailed { zf: true, .. } => {
                f.write_str("VMXON failed with VMfailValid (already in VMX operation)")
            }
            Self::VmxonFailed { .. } => f.write_str("VMXON failed with neither CF nor ZF set"),
        }
    }
}

/// This CPU in VMX root operation. Dropped by [`VmxOn::off`].
pub struct VmxOn {
    region: u64,
}

/// Enables VMX on this CPU: IA32_FEATURE_CONTROL, CR0/CR4 fixed bits and CR4.VMXE, then VMXON
/// with a fresh VMXON region (SDM Vol. 3C §24.7, §24.11.5).
pub fn enable(caps: &VmxCaps, msrs: &VmxMsrs) -> Result<VmxOn, VmxError> {
    match feature_control_action(msrs.feature_control).map_err(VmxError::Unsupported)? {
        FeatureControlAction::AlreadyEnabled => {}
        // SAFETY: the MSR is unlocked (checked above), so writing it is allowed.
        FeatureControlAction::Write(v) => unsafe { Msr::new(IA32_FEATURE_CONTROL).write(v) },
    }
    let region = memory::alloc_zeroed(0x1000, 0x1000).ok_or(VmxError::NoMemory)?;
    // SAFETY: fresh zeroed frame; the first 31 bits of a VMXON region hold the revision id.
    unsafe { *(memory::phys_to_virt(region) as *mut u32) = caps.revision_id };
    // SAFETY: the fixed bits are what VMX operation requires; the kernel already runs with
    // PE/PG/NE-compatible settings, so applying them changes no mode it relies on.
    unsafe {
        // Caches on (CD, NW clear): VM entry keeps the processor's CD and NW (SDM Vol. 3C
        // §27.3.2.1), so the guests run with the host's; a firmware or BIOS that left them set
        // would run every guest uncached.
        let cr0 = Cr0::read_raw() & !(Cr0Flags::CACHE_DISABLE | Cr0Flags::NOT_WRITE_THROUGH).bits();
        Cr0::write(Cr0Flags::from_bits_retain(caps.fix_cr0(cr0)));
        Cr4::write(Cr4Flags::from_bits_retain(
            caps.fix_cr4((Cr4::read() | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS).bits()),
        ));
    }
    let rflags: u64;
    // SAFETY: VMXON takes the physical address of a 4 KiB-aligned region holding the revision
    // id; CR0/CR4 meet the fixed-bit requirements set just above.
    unsafe {
        asm!("vmxon [{pa}]", "pushfq", "pop {rf}", pa = in(reg) &region, rf = lateout(reg) rflags);
    }
    let (cf, zf) = (rflags & 1 != 0, rflags & (1 << 6) != 0);
    if cf || zf {
        // SAFETY: VMXON failed, so VMX is off and CR4.VMXE may be cleared again.
        unsafe { Cr4::update(|c| c.remove(Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS)) };
        memory::free(region, 0x1000);
        return Err(VmxError::VmxonFailed { cf, zf });
    }
    Ok(VmxOn { region })
}

impl VmxOn {
    /// Leaves VMX operation and clears CR4.VMXE.
    pub fn off(self) {
        // SAFETY: this CPU is in VMX root operation with no VMCS in use by guests.
        unsafe {
            asm!("vmxoff");
            Cr4::update(|c| c.remove(Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS));
        }
        memory::free(self.region, 0x1000);
    }
}
