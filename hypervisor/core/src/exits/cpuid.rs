//! CPUID as a guest sees it: the host's answers with everything the hypervisor does not
//! virtualize or emulate hidden (VMX, performance monitoring, machine checks, thermal and power
//! management, speculation-control MSRs, TSX, SGX, processor trace, CET, AMX, XSAVES, 5-level
//! paging, MONITOR/MWAIT, ...), so that an OS never reaches for an MSR or a state the VM does
//! not have; the hypervisor bit and vendor leaves set; the APIC-ID fields made virtual; and the
//! timer leaves describing the APIC timer. Each hidden bit is named below with its reason.

use crate::guest_abi::CPUID_SIGNATURE;
use crate::vmx::path_kind::InterruptPath;

/// Who is asking.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuIdentity {
    pub apic_id: u32,
    pub vcpu_count: u32,
    /// The TSC rate the hypervisor measured, in kHz (leaf 0x4000_0010).
    pub tsc_khz: u32,
    /// How interrupts reach this VM (`vmx::interrupt_path`); IPI virtualization is `Ipiv`.
    pub path: InterruptPath,
    /// HLT halts in the guest (no exit).
    pub hlt_passthrough: bool,
    /// The host's highest basic leaf (CPUID.0:EAX).
    pub host_max_leaf: u32,
    /// x2APIC mode is offered (CPUID.1:ECX[21]; the manifest's `x2apic = off` hides it).
    pub x2apic: bool,
    /// The vCPU's APIC is globally enabled: CPUID.1:EDX.APIC[bit 9] follows IA32_APIC_BASE.EN
    /// (SDM Vol. 3A §12.4.3).
    pub apic_enabled: bool,
    /// The guest's CR4, for the bits CPUID reflects: OSXSAVE (CPUID.1:ECX[27]) and OSPKE
    /// (CPUID.7:ECX[4]) (SDM Vol. 2A CPUID).
    pub cr4: u64,
}

const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_PKE: u64 = 1 << 22;

/// The lowest highest-basic-leaf every VM sees: leaf 0x15 (the TSC and crystal clock) exists
/// on every CPU model, so a guest learns the TSC and APIC-timer rate without calibrating
/// against the PIT (older models stop at leaf 0xB or 0xD).
pub const MIN_MAX_LEAF: u32 = 0x15;

/// CPUID.1 bits hidden, by register.
mod leaf1 {
    /// MONITOR/MWAIT (3: idle is HLT, which the hypervisor passes through or waits in), VMX (5),
    /// SMX (6), EIST (7), TM2 (8), SDBG (11), xTPR (14), PDCM (15: IA32_PERF_CAPABILITIES).
    pub const ECX_HIDDEN: u32 =
        (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 14) | (1 << 15);
    /// MCE (7), MCA (14): no machine-check MSRs; DS (21), ACPI thermal MSRs (22), TM (29), PBE (31).
    pub const EDX_HIDDEN: u32 = (1 << 7) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
}

/// CPUID.7 bits hidden.
mod leaf7 {
    /// TSC_ADJUST (1: its MSR), SGX (2), HLE (4), RTM (11), RDT-M (12), MPX (14), RDT-A (15),
    /// Intel PT (25).
    pub const EBX_HIDDEN: u32 =
        (1 << 1) | (1 << 2) | (1 << 4) | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15) | (1 << 25);
    /// WAITPKG (5: UMWAIT_CONTROL), CET shadow stacks (7), TME (13), 5-level paging (16: the
    /// guest page walk and Bochs' SMM do not cover it), ENQCMD (29), SGX_LC (30), PKS (31).
    pub const ECX_HIDDEN: u32 = (1 << 5) | (1 << 7) | (1 << 13) | (1 << 16) | (1 << 29) | (1 << 30) | (1 << 31);
    /// UINTR (5), hybrid (15), TSXLDTRK (16), PCONFIG (18), CET IBT (20), AMX (22, 24, 25),
    /// speculation control and its MSRs: IBRS/IBPB (26), STIBP (27), L1D_FLUSH (28),
    /// ARCH_CAPABILITIES (29), CORE_CAPABILITIES (30), SSBD (31).
    pub const EDX_HIDDEN: u32 = (1 << 5)
        | (1 << 15)
        | (1 << 16)
        | (1 << 18)
        | (1 << 20)
        | (1 << 22)
        | (1 << 24)
        | (1 << 25)
        | (1 << 26)
        | (1 << 27)
        | (1 << 28)
        | (1 << 29)
        | (1 << 30)
        | (1 << 31);
    /// Subleaf 1: HRESET (22: its MSR), LAM (26), FRED (17), LKGS (18), and the AMX extensions
    /// (21: AMX-FP16).
    pub const SUB1_EAX_HIDDEN: u32 = (1 << 17) | (1 << 18) | (1 << 21) | (1 << 22) | (1 << 26);
}

/// XCR0 bits of AMX (XTILECFG 17, XTILEDATA 18); XSAVES and XFD in CPUID.(0DH,1):EAX.
const XCR0_AMX: u32 = (1 << 17) | (1 << 18);
const XSAVES: u32 = 1 << 3;
const XFD: u32 = 1 << 4;

pub const HV_LEAF_BASE: u32 = 0x4000_0000;
pub const HV_LEAF_FEATURES: u32 = 0x4000_0001;
/// Timing information, at the index VMware and KVM use for it: EAX = TSC kHz, EBX = the local
/// APIC timer's input clock in kHz (the TSC's: `apic::timer`).
pub const HV_LEAF_TIMING: u32 = 0x4000_0010;
pub const HV_LEAF_MAX: u32 = HV_LEAF_TIMING;

/// A KVM-compatible paravirtual interface at the next base (hypervisors' leaves sit at
/// 0x100-multiples from 0x4000_0000; Linux's `hypervisor_cpuid_base` scans them, and Xen places
/// its own at 0x4000_0100 the same way). It offers no paravirtual feature at all (leaf
/// 0x4000_0101 EAX = 0: no kvmclock, no PV EOI, no PV IPIs, no hypercalls), only two facts a
/// Linux guest acts on: x2APIC works without interrupt remapping (Linux keeps the x2APIC a
/// firmware enabled only under a hypervisor it knows: `x86_init.hyper.x2apic_available`), and
/// each vCPU owns its core (`KVM_HINTS_REALTIME`, EDX bit 0).
pub const KVM_LEAF_BASE: u32 = 0x4000_0100;
pub const KVM_LEAF_FEATURES: u32 = 0x4000_0101;
pub const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
pub const KVM_HINTS_REALTIME: u32 = 1 << 0;

/// Leaf 0x4000_0001 EAX bits: the hypercall ABI of guest_abi is available; the VM has IPI
/// virtualization; HLT passes through to the guest.
pub const HV_FEATURE_HYPERCALLS: u32 = 1 << 0;
pub const HV_FEATURE_IPIV: u32 = 1 << 1;
pub const HV_FEATURE_HLT_PASSTHROUGH: u32 = 1 << 2;

/// Leaf 0x4000_0001 EBX: the VM's interrupt path (`path_code`), so a test can tell which
/// exits its interrupts should cost.
pub const fn path_code(path: InterruptPath) -> u32 {
    match path {
        InterruptPath::Injection => 1,
        InterruptPath::VirtualDelivery => 2,
        InterruptPath::Posted => 3,
        InterruptPath::Ipiv => 4,
    }
}

/// The path leaf 0x4000_0001 EBX names (`None` for 0, an older or another hypervisor).
pub fn path_from_code(code: u32) -> Option<InterruptPath> {
    InterruptPath::BEST_FIRST.into_iter().find(|p| path_code(*p) == code)
}

/// The guest's view of CPUID leaf `leaf`/`subleaf`, given the host's `native` [eax, ebx, ecx, edx].
pub fn filter(leaf: u32, subleaf: u32, native: [u32; 4], who: VcpuIdentity) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = native;
    // Leaves the host lacks read as its highest basic leaf there (SDM Vol. 2A CPUID): here they
    // are 0, but for those this hypervisor defines.
    if leaf > who.host_max_leaf && leaf <= MIN_MAX_LEAF {
        (a, b, c, d) = (0, 0, 0, 0);
    }
    match leaf {
        0 => a = a.max(MIN_MAX_LEAF),
        1 => {
            c &= !leaf1::ECX_HIDDEN;
            c |= 1 << 31; // hypervisor present
            // EBX[31:24] initial APIC ID; EBX[23:16] addressable logical processor IDs.
            b = (b & 0x0000_ffff) | (who.apic_id << 24) | (who.vcpu_count.next_power_of_two().min(255) << 16);
            c |= 1 << 24; // TSC-deadline timer: the vCPU's APIC timer has the mode (apic::timer)
            if !who.x2apic {
                c &= !(1 << 21);
            }
            // OSXSAVE is the guest's CR4.OSXSAVE, not the host's.
            c = (c & !(1 << 27)) | if who.cr4 & CR4_OSXSAVE != 0 && c & (1 << 26) != 0 { 1 << 27 } else { 0 };
            d &= !leaf1::EDX_HIDDEN;
            if !who.apic_enabled {
                d &= !(1 << 9);
            }
        }
        // Thermal and power management: only ARAT (the APIC timer runs in every C-state: the
        // timer model does not stop); no HWP, turbo or APERF/MPERF MSRs.
        6 => (a, b, c, d) = (1 << 2, 0, 0, 0),
        7 if subleaf == 0 => {
            b &= !leaf7::EBX_HIDDEN;
            c &= !leaf7::ECX_HIDDEN;
            // OSPKE is the guest's CR4.PKE.
            c = (c & !(1 << 4)) | if who.cr4 & CR4_PKE != 0 && c & (1 << 3) != 0 { 1 << 4 } else { 0 };
            d &= !leaf7::EDX_HIDDEN;
        }
        7 if subleaf == 1 => {
            a &= !leaf7::SUB1_EAX_HIDDEN;
            d = 0;
        }
        // Architectural performance monitoring: no PMU.
        0xa => (a, b, c, d) = (0, 0, 0, 0),
        // XSAVE: no AMX state (its XFD and tile permissions are not handled), no supervisor
        // states (XSAVES and IA32_XSS are not offered), no XFD.
        0xd if subleaf == 0 => a &= !XCR0_AMX,
        0xd if subleaf == 1 => {
            a &= !(XSAVES | XFD);
            c = 0;
            d = 0;
        }
        0xd if (17..=18).contains(&subleaf) => (a, b, c, d) = (0, 0, 0, 0),
        // SGX, processor trace, key locker, AMX tiles and TMUL, PCONFIG-like leaves: absent.
        0x12 | 0x14 | 0x19 | 0x1b | 0x1c | 0x1d | 0x1e | 0x20 | 0x23 => (a, b, c, d) = (0, 0, 0, 0),
        // Speculation-control and similar MSR-backed features (IBPB, SSBD, ...): hidden as in
        // leaf 7, WBNOINVD kept.
        0x8000_0008 => b &= 1 << 9,
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
                | if who.path == InterruptPath::Ipiv { HV_FEATURE_IPIV } else { 0 }
                | if who.hlt_passthrough { HV_FEATURE_HLT_PASSTHROUGH } else { 0 };
            b = path_code(who.path);
            c = 0;
            d = 0;
        }
        HV_LEAF_TIMING => {
            a = who.tsc_khz;
            b = who.tsc_khz;
            c = 0;
            d = 0;
        }
        KVM_LEAF_BASE => {
            a = KVM_LEAF_FEATURES;
            b = u32::from_le_bytes(KVM_SIGNATURE[0..4].try_into().unwrap());
            c = u32::from_le_bytes(KVM_SIGNATURE[4..8].try_into().unwrap());
            d = u32::from_le_bytes(KVM_SIGNATURE[8..12].try_into().unwrap());
        }
        KVM_LEAF_FEATURES => {
            a = 0;
            b = 0;
            c = 0;
            d = KVM_HINTS_REALTIME;
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

    const WHO: VcpuIdentity = VcpuIdentity {
        host_max_leaf: 0x20,
        apic_id: 3,
        vcpu_count: 4,
        tsc_khz: 2_000_000,
        path: InterruptPath::Ipiv,
        hlt_passthrough: false,
        x2apic: true,
        apic_enabled: true,
        cr4: CR4_OSXSAVE,
    };

    #[test]
    fn leaf1_hides_vmx_sets_hypervisor_bit_and_apic_id() {
        let [a, b, c, d] = filter(1, 0, [0x806f8, 0x0a40_0800, 0xfffa_3223, 0x178b_fbff], WHO);
        assert_eq!(a, 0x806f8);
        assert_eq!(c & (1 << 5), 0);
        assert_ne!(c & (1 << 31), 0);
        assert_eq!(b >> 24, 3);
        assert_eq!((b >> 16) & 0xff, 4);
        assert_eq!(b & 0xffff, 0x0800, "CLFLUSH size and brand index kept");
        assert_eq!(d, 0x178b_fbff & !leaf1::EDX_HIDDEN);
        assert_ne!(c & (1 << 24), 0, "TSC-deadline timer");
    }

    #[test]
    fn leaf1_follows_the_vcpus_apic_and_cr4() {
        let all = [u32::MAX; 4];
        let [_, _, c, d] = filter(1, 0, all, WHO);
        assert_ne!(c & (1 << 21), 0);
        assert_ne!(d & (1 << 9), 0);
        assert_ne!(c & (1 << 27), 0, "OSXSAVE with CR4.OSXSAVE");
        let off = VcpuIdentity { x2apic: false, apic_enabled: false, cr4: 0, ..WHO };
        let [_, _, c, d] = filter(1, 0, all, off);
        assert_eq!(c & (1 << 21), 0, "x2APIC hidden");
        assert_eq!(d & (1 << 9), 0, "a disabled APIC clears CPUID.1:EDX.APIC");
        assert_eq!(c & (1 << 27), 0, "OSXSAVE is the guest's CR4 bit");
        let [_, _, c7, _] = filter(7, 0, all, WHO);
        assert_eq!(c7 & (1 << 4), 0, "OSPKE without CR4.PKE");
        let [_, _, c7, _] = filter(7, 0, all, VcpuIdentity { cr4: CR4_PKE, ..WHO });
        assert_ne!(c7 & (1 << 4), 0);
    }

    #[test]
    fn an_older_cpu_still_shows_the_tsc_leaf() {
        let ivy = VcpuIdentity { host_max_leaf: 0xd, ..WHO };
        assert_eq!(filter(0, 0, [0xd, 1, 2, 3], ivy)[0], 0x15);
        assert_eq!(filter(0, 0, [0x20, 1, 2, 3], WHO)[0], 0x20, "a higher maximum is kept");
        // Above the host's maximum the host answers with its highest leaf's data: not shown.
        assert_eq!(filter(0x10, 0, [7, 7, 7, 7], ivy), [0; 4]);
        assert_eq!(filter(0x15, 0, [7, 7, 7, 7], ivy), [1, 1, 2_000_000_000, 0]);
        assert_eq!(filter(0x10, 0, [7, 7, 7, 7], WHO), [7; 4], "the host's own leaf");
    }

    #[test]
    fn timer_leaves_describe_the_apic_timer_clock() {
        assert_eq!(filter(0x15, 0, [2, 168, 25_000_000, 0], WHO), [1, 1, 2_000_000_000, 0]);
        assert_eq!(filter(6, 0, [0x77, 2, 9, 0], WHO), [4, 0, 0, 0], "ARAT only");
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
        assert_eq!(filter(HV_LEAF_FEATURES, 0, [9; 4], WHO), [HV_FEATURE_HYPERCALLS | HV_FEATURE_IPIV, 4, 0, 0]);
        let halting = VcpuIdentity { path: InterruptPath::Injection, hlt_passthrough: true, ..WHO };
        let [a, b, _, _] = filter(HV_LEAF_FEATURES, 0, [0; 4], halting);
        assert_eq!(a, HV_FEATURE_HYPERCALLS | HV_FEATURE_HLT_PASSTHROUGH);
        assert_eq!(path_from_code(b), Some(InterruptPath::Injection));
        assert_eq!(path_from_code(0), None);
        for p in InterruptPath::BEST_FIRST {
            assert_eq!(path_from_code(path_code(p)), Some(p));
        }
        assert_eq!(filter(HV_LEAF_TIMING, 0, [9; 4], WHO), [2_000_000, 2_000_000, 0, 0]);
        assert_eq!(filter(0x4000_0002, 0, [9; 4], WHO), [0; 4]);
        assert_eq!(filter(0x4000_0011, 0, [9; 4], WHO), [0; 4]);
        // The KVM-compatible block: signature at 0x4000_0100, no features, the REALTIME hint.
        let [a, b, c, d] = filter(KVM_LEAF_BASE, 0, [9; 4], WHO);
        assert_eq!(a, KVM_LEAF_FEATURES);
        let sig: alloc::vec::Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig[..], b"KVMKVMKVM\0\0\0");
        assert_eq!(filter(KVM_LEAF_FEATURES, 0, [9; 4], WHO), [0, 0, 0, KVM_HINTS_REALTIME]);
        assert_eq!(filter(0x4000_0102, 0, [9; 4], WHO), [0; 4]);
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
        assert_eq!(filter(7, 0, [1, 8, 3, 4], WHO), [1, 8, 3 & !(1 << 4), 4]);
        assert_eq!(filter(0, 0, [0x20, 5, 6, 7], WHO), [0x20, 5, 6, 7]);
        assert_eq!(filter(0x8000_0001, 0, [1, 2, 3, 4], WHO), [1, 2, 3, 4]);
    }

    #[test]
    fn what_the_vm_does_not_have_is_hidden() {
        let all = [u32::MAX; 4];
        let [_, _, c1, d1] = filter(1, 0, all, WHO);
        for (bit, what) in [(3, "MONITOR"), (5, "VMX"), (15, "PDCM")] {
            assert_eq!(c1 & (1 << bit), 0, "CPUID.1:ECX {what}");
        }
        assert_eq!(d1 & ((1 << 7) | (1 << 14)), 0, "MCE and MCA");
        assert_ne!(c1 & (1 << 21), 0, "x2APIC stays");
        let [_, b7, c7, d7] = filter(7, 0, all, WHO);
        assert_eq!(b7 & ((1 << 4) | (1 << 11)), 0, "TSX");
        assert_eq!(c7 & (1 << 16), 0, "LA57");
        assert_eq!(d7 & ((1 << 24) | (1 << 26) | (1 << 29)), 0, "AMX-TILE, IBRS, ARCH_CAPABILITIES");
        assert_ne!(b7 & (1 << 9), 0, "ERMS stays");
        assert_ne!(d7 & (1 << 4), 0, "FSRM stays (IA32_MISC_ENABLE says fast strings are on)");
        assert_eq!(filter(0xa, 0, all, WHO), [0; 4], "no PMU");
        assert_eq!(filter(6, 0, all, WHO), [4, 0, 0, 0], "only ARAT");
        let [a_d0, ..] = filter(0xd, 0, all, WHO);
        assert_eq!(a_d0 & (3 << 17), 0, "no AMX state in XCR0");
        let [a_d1, _, c_d1, _] = filter(0xd, 1, all, WHO);
        assert_eq!((a_d1 & (XSAVES | XFD), c_d1), (0, 0), "no XSAVES, no XSS states");
        assert_eq!(filter(0x14, 0, all, WHO), [0; 4], "no processor trace");
    }
}
