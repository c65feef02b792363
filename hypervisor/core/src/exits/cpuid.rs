//! CPUID as a guest sees it: the host's answers with VMX hidden, the hypervisor bit and vendor
//! leaves set, and APIC-ID fields made virtual.

use crate::guest_abi::CPUID_SIGNATURE;

/// Who is asking.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuIdentity {
    pub apic_id: u32,
    pub vcpu_count: u32,
    /// The TSC rate the hypervisor measured, in kHz (leaf 0x4000_0010).
    pub tsc_khz: u32,
    /// IPI virtualization is on for this VM.
    pub ipiv: bool,
    /// HLT halts in the guest (no exit).
    pub hlt_passthrough: bool,
}

pub const HV_LEAF_BASE: u32 = 0x4000_0000;
pub const HV_LEAF_FEATURES: u32 = 0x4000_0001;
/// Timing information, at the index VMware and KVM use for it: EAX = TSC kHz, EBX = the local
/// APIC timer's input clock in kHz (the TSC's: `apic::timer`).
pub const HV_LEAF_TIMING: u32 = 0x4000_0010;
pub const HV_LEAF_MAX: u32 = HV_LEAF_TIMING;

/// Leaf 0x4000_0001 EAX bits: the hypercall ABI of guest_abi is available; the VM has IPI
/// virtualization; HLT passes through to the guest.
pub const HV_FEATURE_HYPERCALLS: u32 = 1 << 0;
pub const HV_FEATURE_IPIV: u32 = 1 << 1;
pub const HV_FEATURE_HLT_PASSTHROUGH: u32 = 1 << 2;

/// The guest's view of CPUID leaf `leaf`/`subleaf`, given the host's `native` [eax, ebx, ecx, edx].
pub fn filter(leaf: u32, subleaf: u32, native: [u32; 4], who: VcpuIdentity) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = native;
    match leaf {
        1 => {
            c &= !(1 << 5); // VMX: nested virtualization is not offered
            c |= 1 << 31; // hypervisor present
            // EBX[31:24] initial APIC ID; EBX[23:16] addressable logical processor IDs.
            b = (b & 0x0000_ffff) | (who.apic_id << 24) | (who.vcpu_count.next_power_of_two().min(255) << 16);
            c |= 1 << 24; // TSC-deadline timer: the vCPU's APIC timer has the mode (apic::timer)
        }
        // ARAT: the APIC timer runs in every C-state (the timer model does not stop).
        6 => a |= 1 << 2,
        // TSC and core crystal clock: the crystal runs at the TSC rate (ratio 1/1), which is the
        // local APIC timer's input clock here, so an OS that takes the timer's rate from the
        // crystal (Linux does) gets it right (SDM Vol. 2A CPUID leaf 15H).
        0x15 => {
            a = 1;
            b = 1;
            c = who.tsc_khz.saturating_mul(1000);
        }
        // x2APIC topology: EDX = x2APIC ID; the levels say one thread per core, vcpu_count cores.
        0xb | 0x1f => {
            d = who.apic_id;
            match subleaf & 0xff {
                0 => {
                    a = 0;
                    b = 1;
                    c = 0x100;
                }
                1 => {
                    a = 32 - (who.vcpu_count.max(1) - 1).leading_zeros();
                    b = who.vcpu_count;
                    c = 0x200 | 1;
                }
                level => {
                    a = 0;
                    b = 0;
                    c = level;
                }
            }
        }
        HV_LEAF_BASE => {
            a = HV_LEAF_MAX;
            b = u32::from_le_bytes(CPUID_SIGNATURE[0..4].try_into().unwrap());
            c = u32::from_le_bytes(CPUID_SIGNATURE[4..8].try_into().unwrap());
            d = u32::from_le_bytes(CPUID_SIGNATURE[8..12].try_into().unwrap());
        }
        HV_LEAF_FEATURES => {
            a = HV_FEATURE_HYPERCALLS
                | if who.ipiv { HV_FEATURE_IPIV } else { 0 }
                | if who.hlt_passthrough { HV_FEATURE_HLT_PASSTHROUGH } else { 0 };
            b = 0;
            c = 0;
            d = 0;
        }
        HV_LEAF_TIMING => {
            a = who.tsc_khz;
            b = who.tsc_khz;
            c = 0;
            d = 0;
        }
        0x4000_0002..=0x4fff_ffff => {
            a = 0;
            b = 0;
            c = 0;
            d = 0;
        }
        _ => {}
    }
    [a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHO: VcpuIdentity =
        VcpuIdentity { apic_id: 3, vcpu_count: 4, tsc_khz: 2_000_000, ipiv: true, hlt_passthrough: false };

    #[test]
    fn leaf1_hides_vmx_sets_hypervisor_bit_and_apic_id() {
        let [a, b, c, d] = filter(1, 0, [0x806f8, 0x0a40_0800, 0xfffa_3223, 0x178b_fbff], WHO);
        assert_eq!(a, 0x806f8);
        assert_eq!(c & (1 << 5), 0);
        assert_ne!(c & (1 << 31), 0);
        assert_eq!(b >> 24, 3);
        assert_eq!((b >> 16) & 0xff, 4);
        assert_eq!(b & 0xffff, 0x0800, "CLFLUSH size and brand index kept");
        assert_eq!(d, 0x178b_fbff);
        assert_ne!(c & (1 << 24), 0, "TSC-deadline timer");
    }

    #[test]
    fn timer_leaves_describe_the_apic_timer_clock() {
        assert_eq!(filter(0x15, 0, [2, 168, 25_000_000, 0], WHO), [1, 1, 2_000_000_000, 0]);
        assert_eq!(filter(6, 0, [0x77, 2, 9, 0], WHO)[0], 0x77 | 4, "ARAT");
    }

    #[test]
    fn vendor_leaves() {
        let [a, b, c, d] = filter(HV_LEAF_BASE, 0, [0; 4], WHO);
        assert_eq!(a, HV_LEAF_MAX);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..12].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, CPUID_SIGNATURE);
        assert_eq!(filter(HV_LEAF_FEATURES, 0, [9; 4], WHO), [HV_FEATURE_HYPERCALLS | HV_FEATURE_IPIV, 0, 0, 0]);
        let halting = VcpuIdentity { ipiv: false, hlt_passthrough: true, ..WHO };
        assert_eq!(filter(HV_LEAF_FEATURES, 0, [0; 4], halting)[0], HV_FEATURE_HYPERCALLS | HV_FEATURE_HLT_PASSTHROUGH);
        assert_eq!(filter(HV_LEAF_TIMING, 0, [9; 4], WHO), [2_000_000, 2_000_000, 0, 0]);
        assert_eq!(filter(0x4000_0002, 0, [9; 4], WHO), [0; 4]);
        assert_eq!(filter(0x4000_0011, 0, [9; 4], WHO), [0; 4]);
    }

    #[test]
    fn x2apic_topology_reports_the_virtual_id() {
        let [_, b0, c0, d0] = filter(0xb, 0, [1, 2, 0x100, 17], WHO);
        assert_eq!((b0, c0, d0), (1, 0x100, 3));
        let [a1, b1, c1, d1] = filter(0xb, 1, [4, 8, 0x201, 17], WHO);
        assert_eq!((a1, b1, c1, d1), (2, 4, 0x201, 3));
        let [_, b2, c2, _] = filter(0xb, 2, [0, 0, 0x2, 17], WHO);
        assert_eq!((b2, c2), (0, 2));
    }

    #[test]
    fn other_leaves_pass_through() {
        assert_eq!(filter(7, 0, [1, 2, 3, 4], WHO), [1, 2, 3, 4]);
        assert_eq!(filter(0, 0, [0x20, 5, 6, 7], WHO), [0x20, 5, 6, 7]);
    }
}
