//! Control-register-access exits (SDM Vol. 3C §28.2.1, Table 28-3) and the control-register
//! writes the guest/host masks route to the hypervisor.
//!
//! VMX fixes some CR0 and CR4 bits (IA32_VMX_CR0/CR4_FIXED0/1, SDM Vol. 3D §A.7-A.8): CR0.NE
//! must be 1 (PE and PG may be 0 with unrestricted guest), CR4.VMXE must be 1. A guest may
//! legally want them otherwise, so those bits are owned by the hypervisor (the guest/host
//! mask) and the guest sees its own values (the read shadow, §25.6.6). CR4 bits the VM's
//! CPUID does not offer (VMXE: VMX is hidden; SMXE, LA57, CET, PKS, ...) are owned too: a guest
//! write that sets one exits and takes #GP(0), as on a processor without the feature. A CR0
//! write that exits is completed here with every rule of MOV to CR0 (SDM Vol. 2B "MOV—Move
//! to/from Control Registers", Vol. 3A §2.5, §9.8.5), including the paging-mode changes the
//! processor would have made: EFER.LMA and the "IA-32e mode guest" entry control, the PAE
//! PDPTEs, and the TLB invalidation.
//!
//! CR8 exits only on the injection path without a TPR shadow, where MOV to and from CR8 would
//! otherwise reach the physical TPR: the hypervisor's APIC model answers instead.

/// What the exit qualification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// The control register (bits 3:0).
    pub cr: u8,
    pub kind: CrAccessKind,
    /// The general-purpose register of a MOV (bits 11:8, hardware order: 0 RAX ... 15 R15).
    pub gpr: u8,
    /// LMSW's source operand (bits 31:16).
    pub lmsw_source: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessKind {
    MovTo,
    MovFrom,
    Clts,
    Lmsw,
}

pub fn decode(qualification: u64) -> CrAccess {
    let kind = match (qualification >> 4) & 3 {
        0 => CrAccessKind::MovTo,
        1 => CrAccessKind::MovFrom,
        2 => CrAccessKind::Clts,
        _ => CrAccessKind::Lmsw,
    };
    CrAccess {
        cr: (qualification & 0xf) as u8,
        kind,
        gpr: ((qualification >> 8) & 0xf) as u8,
        lmsw_source: (qualification >> 16) as u16,
    }
}

/// CR0 bits (SDM Vol. 3A §2.5, Figure 2-7).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// Every defined bit; the others "remain clear after any load" (Vol. 2B MOV CR0).
    pub const DEFINED: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits (SDM Vol. 3A §2.5, Figure 2-8).
pub mod cr4 {
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const PGE: u64 = 1 << 7;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const PCIDE: u64 = 1 << 17;
    pub const SMEP: u64 = 1 << 20;
    pub const CET: u64 = 1 << 23;
}

/// IA32_EFER bits.
pub mod efer {
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
}

/// The bits the guest/host masks give the hypervisor (§25.6.6): CR0 bits VMX fixes (NE; PE
/// and PG only without unrestricted guest, which this hypervisor requires), CR0.CD and NW, and
/// CR4 bits that are fixed to 1 (VMXE) or that the VM may not set (`cr4_allowed`).
///
/// VM entry does not load CR0.CD and NW (Vol. 3C §27.3.2.1: "ET, CD, NW ... are not modified"),
/// so the processor's are the host's: the guest's live in the read shadow, as under KVM. Without
/// this a guest whose MOV to CR0 exits for NE could never clear CD/NW the host CPU started with,
/// and Linux's cache_disable/cache_enable pair then faults on NW without CD.
pub fn cr0_mask(fixed0: u64, fixed1: u64) -> u64 {
    ((fixed0 & !(cr0::PE | cr0::PG)) | !fixed1 | cr0::CD | cr0::NW) & 0xffff_ffff
}

pub fn cr4_mask(fixed0: u64, allowed: u64) -> u64 {
    fixed0 | !allowed
}

/// The CR4 bits a guest may set: those whose feature the VM's CPUID offers (the caller passes
/// CPUID.1:ECX/EDX and CPUID.(7,0):EBX/ECX/EDX as the guest sees them) and the processor
/// allows in VMX operation (`fixed1`), never VMXE (VMX is hidden).
pub fn cr4_allowed(leaf1: (u32, u32), leaf7: (u32, u32, u32), fixed1: u64) -> u64 {
    let (c1, d1) = leaf1;
    let (b7, c7, d7) = leaf7;
    let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
    let bits: [(u32, bool); 21] = [
        (0, has(d1, 1)),                 // VME
        (1, has(d1, 1)),                 // PVI
        (2, has(d1, 4)),                 // TSD
        (3, has(d1, 2)),                 // DE
        (4, has(d1, 3)),                 // PSE
        (5, has(d1, 6)),                 // PAE
        (6, true),                       // MCE (a write is harmless without machine checks, as under KVM)
        (7, has(d1, 13)),                // PGE
        (8, true),                       // PCE
        (9, has(d1, 24)),                // OSFXSR
        (10, has(d1, 25)),               // OSXMMEXCPT
        (11, has(c7, 2)),                // UMIP
        (12, has(c7, 16)),               // LA57
        (14, has(c1, 6)),                // SMXE
        (16, has(b7, 0)),                // FSGSBASE
        (17, has(c1, 17)),               // PCIDE
        (18, has(c1, 26)),               // OSXSAVE
        (20, has(b7, 7)),                // SMEP
        (21, has(b7, 20)),               // SMAP
        (22, has(c7, 3)),                // PKE
        (23, has(c7, 7) || has(d7, 20)), // CET
    ];
    let allowed = bits.iter().filter(|(_, on)| *on).fold(0u64, |a, (bit, _)| a | 1 << bit);
    allowed & fixed1 & !cr4::VMXE
}

/// The guest-visible value of a control register: owned bits from the read shadow, the rest
/// from the register.
pub fn guest_view(register: u64, mask: u64, shadow: u64) -> u64 {
    (register & !mask) | (shadow & mask)
}

/// The state a MOV to CR0 is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrContext {
    /// CR0 and CR4 as the guest sees them.
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cr3: u64,
    /// CS.L: the guest runs 64-bit code.
    pub cs_long: bool,
}

/// A MOV to CR0 that is legal, and what the processor would do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr0Write {
    /// CR0 as the guest now sees it.
    pub cr0: u64,
    /// IA32_EFER with LMA updated (§9.8.5: setting PG with LME activates IA-32e mode, clearing
    /// PG deactivates it).
    pub efer: u64,
    /// PAE paging is (still) on and CD, NW or PG changed: the PDPTEs are loaded from CR3
    /// (§4.4.1), and a reserved bit in a present one is #GP(0).
    pub load_pdptes: bool,
    /// PG or WP changed: the guest's TLB entries go (§4.10.4.1).
    pub flush_tlb: bool,
}

/// MOV to CR0 of `value` (SDM Vol. 2B "MOV—Move to/from Control Registers", and KVM's
/// `kvm_set_cr0` for the same rules): `None` is #GP(0).
pub fn mov_to_cr0(value: u64, s: &CrContext) -> Option<Cr0Write> {
    if value >> 32 != 0 {
        return None;
    }
    // ET is hardwired to 1; undefined bits ignore the write.
    let v = (value | cr0::ET) & cr0::DEFINED;
    let old = s.cr0;
    let lme = s.efer & efer::LME != 0;
    let lma = s.efer & efer::LMA != 0;
    if v & cr0::PG != 0 && v & cr0::PE == 0 {
        return None;
    }
    if v & cr0::NW != 0 && v & cr0::CD == 0 {
        return None;
    }
    let mut efer = s.efer;
    if v & cr0::PG != 0 && old & cr0::PG == 0 && lme {
        // Activating IA-32e mode needs PAE and a code segment that is not 64-bit.
        if s.cr4 & cr4::PAE == 0 || s.cs_long {
            return None;
        }
        efer |= efer::LMA;
    }
    if v & cr0::PG == 0 && old & cr0::PG != 0 {
        if (lma && s.cs_long) || s.cr4 & cr4::PCIDE != 0 {
            return None;
        }
        efer &= !efer::LMA;
    }
    if v & cr0::WP == 0 && s.cr4 & cr4::CET != 0 {
        return None;
    }
    let pae_paging = v & cr0::PG != 0 && s.cr4 & cr4::PAE != 0 && !lme;
    Some(Cr0Write {
        cr0: v,
        efer,
        load_pdptes: pae_paging && (v ^ old) & (cr0::CD | cr0::NW | cr0::PG) != 0,
        flush_tlb: (v ^ old) & (cr0::PG | cr0::WP) != 0,
    })
}

/// The CR0 a LMSW with `source` asks for (Vol. 2B "LMSW"): bits 3:0 loaded, PE can be set but
/// not cleared.
pub fn lmsw(cr0_now: u64, source: u16) -> u64 {
    let low = (source as u64) & 0xf;
    (cr0_now & !0xe) | (low & 0xe) | ((cr0_now | low) & cr0::PE)
}

/// The four PAE PDPTEs read at CR3 (bits 31:5), or `None` (#GP(0)) if a present one has a
/// reserved bit set: bits 2:1, 8:5 and bits MAXPHYADDR-63 (SDM Vol. 3A §4.4.1, Table 4-8).
pub fn pdptes(raw: [u64; 4], max_phys_addr: u8) -> Option<[u64; 4]> {
    let high = if max_phys_addr >= 64 { 0 } else { !0u64 << max_phys_addr };
    let reserved = 0b1_1110_0110 | high;
    raw.iter().all(|&e| e & 1 == 0 || e & reserved == 0).then_some(raw)
}

/// The TPR a MOV to CR8 sets: CR8[3:0] is TPR[7:4] (SDM Vol. 3A §12.8.6.1); `None` for #GP(0),
/// bits 63:4 being reserved.
pub fn tpr_from_cr8(value: u64) -> Option<u32> {
    (value >> 4 == 0).then_some((value as u32) << 4)
}

/// What a MOV from CR8 reads: TPR[7:4].
pub fn cr8_from_tpr(tpr: u32) -> u64 {
    ((tpr >> 4) & 0xf) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifications_decode() {
        // MOV CR8, RCX: CR 8, type 0, register 1.
        assert_eq!(decode(0x108), CrAccess { cr: 8, kind: CrAccessKind::MovTo, gpr: 1, lmsw_source: 0 });
        // MOV R15, CR8: type 1, register 15.
        assert_eq!(decode(0xf18), CrAccess { cr: 8, kind: CrAccessKind::MovFrom, gpr: 15, lmsw_source: 0 });
        assert_eq!(decode(0x20).kind, CrAccessKind::Clts);
        let l = decode(0x000b_0030);
        assert_eq!((l.kind, l.lmsw_source), (CrAccessKind::Lmsw, 0xb));
    }

    #[test]
    fn cr8_is_the_tpr_class() {
        assert_eq!(tpr_from_cr8(0xb), Some(0xb0));
        assert_eq!(tpr_from_cr8(0x10), None, "reserved bits: #GP");
        assert_eq!(cr8_from_tpr(0xb7), 0xb);
    }

    #[test]
    fn masks_own_what_vmx_fixes() {
        // Bochs' and most CPUs' fixed bits: CR0 PE, NE, PG; CR4 VMXE.
        assert_eq!(cr0_mask(0x8000_0021, 0xffff_ffff), cr0::NE | cr0::CD | cr0::NW);
        let allowed = cr4_allowed((0, 1 << 6), (0, 0, 0), !0);
        assert_eq!(allowed & cr4::PAE, cr4::PAE);
        assert_eq!(allowed & (cr4::VMXE | cr4::LA57 | cr4::PCIDE), 0);
        let mask = cr4_mask(cr4::VMXE, allowed);
        assert_ne!(mask & cr4::VMXE, 0);
        assert_ne!(mask & cr4::LA57, 0, "a feature the VM lacks is owned: setting it is #GP");
        assert_eq!(mask & cr4::PAE, 0, "the guest owns what it has");
        assert_eq!(allowed & !0x1ff_ffff, 0, "undefined bits never allowed");
        assert_eq!(guest_view(0x8000_0031, cr0::NE, 0x11), 0x8000_0011);
        // CD and NW as the host CPU has them (VM entry keeps them) are not what the guest sees.
        let mask = cr0_mask(0x8000_0021, 0xffff_ffff);
        assert_eq!(guest_view(0xe000_0031, mask, 0x8000_0011), 0x8000_0011);
    }

    const LONG: CrContext = CrContext {
        cr0: cr0::PE | cr0::ET | cr0::NE | cr0::PG | cr0::WP,
        cr4: cr4::PAE,
        efer: efer::LME | efer::LMA,
        cr3: 0x1000,
        cs_long: true,
    };

    #[test]
    fn mov_to_cr0_rules() {
        // kvm-unit-tests' vmexit: CR0 = PG | WP | PE, NE clear, in 64-bit mode: legal.
        let w = mov_to_cr0(0x8001_0001, &LONG).unwrap();
        assert_eq!(w.cr0, 0x8001_0011, "ET reads 1");
        assert_eq!(w.efer, LONG.efer);
        assert!(!w.flush_tlb && !w.load_pdptes);
        assert!(mov_to_cr0(1 << 32, &LONG).is_none(), "bits 63:32");
        assert!(mov_to_cr0(cr0::PG, &LONG).is_none(), "PG without PE");
        assert!(mov_to_cr0(cr0::PE | cr0::NW, &LONG).is_none(), "NW without CD");
        assert!(mov_to_cr0(cr0::PE, &LONG).is_none(), "clearing PG in 64-bit mode");
        let compat = CrContext { cs_long: false, ..LONG };
        let off = mov_to_cr0(cr0::PE, &compat).unwrap();
        assert_eq!(off.efer, efer::LME, "LMA goes with PG");
        assert!(off.flush_tlb);
        assert_eq!(mov_to_cr0(cr0::PE | 1 << 7, &compat).unwrap().cr0, cr0::PE | cr0::ET, "undefined bits ignored");
        assert!(mov_to_cr0(cr0::PE, &CrContext { cr4: cr4::PAE | cr4::PCIDE, ..compat }).is_none());
        assert!(mov_to_cr0(cr0::PE | cr0::PG, &CrContext { cr4: cr4::CET, ..compat }).is_none(), "CET needs WP");
    }

    #[test]
    fn paging_mode_changes() {
        let prot = CrContext { cr0: cr0::PE | cr0::ET, cr4: cr4::PAE, efer: efer::LME, cr3: 0x2000, cs_long: false };
        let on = mov_to_cr0(cr0::PE | cr0::PG, &prot).unwrap();
        assert_eq!(on.efer, efer::LME | efer::LMA, "IA-32e mode activated");
        assert!(!on.load_pdptes, "4-level paging has no PDPTEs");
        assert!(mov_to_cr0(cr0::PE | cr0::PG, &CrContext { cr4: 0, ..prot }).is_none(), "LME without PAE");
        assert!(mov_to_cr0(cr0::PE | cr0::PG, &CrContext { cs_long: true, ..prot }).is_none());
        let pae = CrContext { efer: 0, ..prot };
        let w = mov_to_cr0(cr0::PE | cr0::PG, &pae).unwrap();
        assert!(w.load_pdptes && w.efer == 0);
        let real = CrContext { cr0: cr0::ET, cr4: 0, efer: 0, cr3: 0, cs_long: false };
        assert_eq!(mov_to_cr0(cr0::PE | cr0::NE, &real).unwrap().cr0, cr0::PE | cr0::ET | cr0::NE);
    }

    #[test]
    fn lmsw_cannot_leave_protected_mode() {
        assert_eq!(lmsw(cr0::PE | cr0::PG | cr0::TS, 0), cr0::PE | cr0::PG);
        assert_eq!(lmsw(cr0::ET, 0xf), cr0::ET | 0xf);
    }

    #[test]
    fn pdpte_reserved_bits() {
        assert!(pdptes([0x1001, 0, 0x3001, 0], 36).is_some());
        assert!(pdptes([0x1003, 0, 0, 0], 36).is_none(), "bit 1");
        assert!(pdptes([1 << 36 | 1, 0, 0, 0], 36).is_none(), "above MAXPHYADDR");
        assert!(pdptes([0xffff_fffe, 0, 0, 0], 36).is_some(), "not present: not checked");
    }
}
