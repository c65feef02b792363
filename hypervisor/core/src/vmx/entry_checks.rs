//! Naming the guest-state field behind a VM-entry failure. The CPU only says "invalid guest
//! state" (exit reason 33); these are the checks of SDM Vol. 3C §27.3.1 that a guest set up by
//! this hypervisor (64-bit, or an unrestricted guest in protected or real mode) can plausibly
//! break, tried in order.

/// The guest-state fields the checks look at.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestState {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rflags: u64,
    pub cs_ar: u32,
    pub tr_ar: u32,
    pub entry_controls: u32,
    /// The secondary processor-based controls (unrestricted guest frees CR0.PE and CR0.PG).
    pub secondary_controls: u32,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

/// The first rule `s` breaks, as "FieldName: rule", or `None`.
pub fn suspect(s: &GuestState) -> Option<&'static str> {
    let ia32e = s.entry_controls & (1 << 9) != 0;
    // SDM Vol. 3C §27.3.1.1: with "unrestricted guest", PE and PG need not follow FIXED0.
    let unrestricted = s.secondary_controls & (1 << 7) != 0;
    let fixed0 = if unrestricted { s.cr0_fixed0 & !0x8000_0001 } else { s.cr0_fixed0 };
    if s.cr0 & fixed0 != fixed0 || s.cr0 & !s.cr0_fixed1 != 0 {
        return Some("GuestCr0: violates IA32_VMX_CR0_FIXED0/1");
    }
    if s.cr4 & s.cr4_fixed0 != s.cr4_fixed0 || s.cr4 & !s.cr4_fixed1 != 0 {
        return Some("GuestCr4: violates IA32_VMX_CR4_FIXED0/1");
    }
    if ia32e && (s.cr0 & (1 << 31) == 0 || s.cr4 & (1 << 5) == 0) {
        return Some("GuestCr4: a 64-bit guest needs CR0.PG and CR4.PAE");
    }
    if ia32e != (s.efer & (1 << 10) != 0) || (s.cr0 & (1 << 31) != 0 && ia32e != (s.efer & (1 << 8) != 0)) {
        return Some("GuestIa32Efer: LMA (and LME with paging) must equal the \"IA-32e mode guest\" entry control");
    }
    if s.cs_ar & (1 << 16) != 0 || s.cs_ar & (1 << 7) == 0 {
        return Some("GuestCsAccessRights: CS must be usable and present");
    }
    if ia32e && s.cs_ar & (1 << 13) != 0 && s.cs_ar & (1 << 14) != 0 {
        return Some("GuestCsAccessRights: L and D/B must not both be set");
    }
    if s.rflags & 2 == 0 || s.rflags & 0xffff_ffff_ffc0_8028 != 0 {
        return Some("GuestRflags: bit 1 must be set and reserved bits clear");
    }
    if ia32e && s.tr_ar & 0xf != 11 {
        return Some("GuestTrAccessRights: a 64-bit guest's TR must be a busy 64-bit TSS (type 11)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> GuestState {
        GuestState {
            cr0: 0x8001_0033,
            cr4: 0x2620,
            efer: 0xd00,
            rflags: 2,
            cs_ar: 0xa09b,
            tr_ar: 0x8b,
            entry_controls: 0xd3fb,
            secondary_controls: 0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x3f7_3fff,
        }
    }

    #[test]
    fn the_hypervisors_own_guest_state_passes() {
        assert_eq!(suspect(&good()), None);
    }

    /// A way to break the guest state, and the field that must be named.
    type Breakage = (fn(&mut GuestState), &'static str);

    #[test]
    fn each_broken_field_is_named() {
        let cases: [Breakage; 6] = [
            (|s| s.rflags = 0, "GuestRflags"),
            (|s| s.cr0 &= !(1 << 5), "GuestCr0"),
            (|s| s.cr4 &= !(1 << 13), "GuestCr4"),
            (|s| s.efer &= !(1 << 10), "GuestIa32Efer"),
            (|s| s.cs_ar |= 1 << 14, "GuestCsAccessRights"),
            (|s| s.tr_ar = 0x89, "GuestTrAccessRights"),
        ];
        // An unrestricted guest in real mode breaks no CR0 rule; the broken RFLAGS is found.
        let real = GuestState {
            cr0: 0x30,
            efer: 0,
            entry_controls: 0,
            secondary_controls: 1 << 7,
            tr_ar: 0x8b,
            cs_ar: 0x9b,
            ..good()
        };
        assert_eq!(suspect(&real), None);
        assert!(suspect(&GuestState { rflags: 0, ..real }).unwrap().starts_with("GuestRflags"));
        assert!(suspect(&GuestState { secondary_controls: 0, ..real }).unwrap().starts_with("GuestCr0"));
        for (breakit, field) in cases {
            let mut s = good();
            breakit(&mut s);
            assert!(suspect(&s).is_some_and(|m| m.starts_with(field)), "{field}: {:?}", suspect(&s));
        }
    }
}
