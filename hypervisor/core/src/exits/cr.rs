//! Control-register-access exits (SDM Vol. 3C §28.2.1, Table 28-3). This hypervisor intercepts
//! only CR8, and only on the injection path without a TPR shadow, where MOV to and from CR8
//! would otherwise reach the physical TPR: the hypervisor's APIC model answers instead.

/// What the exit qualification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// The control register (bits 3:0).
    pub cr: u8,
    pub kind: CrAccessKind,
    /// The general-purpose register of a MOV (bits 11:8, hardware order: 0 RAX ... 15 R15).
    pub gpr: u8,
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
    CrAccess { cr: (qualification & 0xf) as u8, kind, gpr: ((qualification >> 8) & 0xf) as u8 }
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
        assert_eq!(decode(0x108), CrAccess { cr: 8, kind: CrAccessKind::MovTo, gpr: 1 });
        // MOV R15, CR8: type 1, register 15.
        assert_eq!(decode(0xf18), CrAccess { cr: 8, kind: CrAccessKind::MovFrom, gpr: 15 });
        assert_eq!(decode(0x20).kind, CrAccessKind::Clts);
        assert_eq!(decode(0x30).kind, CrAccessKind::Lmsw);
    }

    #[test]
    fn cr8_is_the_tpr_class() {
        assert_eq!(tpr_from_cr8(0xb), Some(0xb0));
        assert_eq!(tpr_from_cr8(0x10), None, "reserved bits: #GP");
        assert_eq!(cr8_from_tpr(0xb7), 0xb);
    }
}
