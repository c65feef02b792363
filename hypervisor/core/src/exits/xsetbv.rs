//! XSETBV (it always exits in VMX non-root operation, SDM Vol. 3C §26.1.2): the value a guest
//! may put in XCR0, by the rules of SDM Vol. 2C "XSETBV" and Vol. 1 §13.3. A value that breaks
//! one gets #GP(0) in the guest, as on hardware; a valid one is written on the guest's own core.

/// XCR0 bits (SDM Vol. 1 §13.1).
pub mod xcr0 {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const AVX: u64 = 1 << 2;
    pub const MPX: u64 = 0b11 << 3;
    pub const AVX512: u64 = 0b111 << 5;
    pub const AMX: u64 = 0b11 << 17;
}

/// Why XSETBV faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotCpl0,
    NotXcr0,
    X87Cleared,
    AvxWithoutSse,
    Avx512Partial,
    Avx512WithoutAvx,
    MpxPartial,
    AmxPartial,
    /// Bits the guest's CPUID leaf 0DH does not report.
    Unsupported(u64),
}

/// Checks `XSETBV` with ECX = `index` and EDX:EAX = `value` at `cpl`, where `supported` is
/// CPUID.(EAX=0DH,ECX=0):EDX:EAX as the guest sees it.
pub fn check(cpl: u8, index: u32, value: u64, supported: u64) -> Result<(), Refusal> {
    use xcr0::*;
    let all_or_none = |mask: u64| value & mask == 0 || value & mask == mask;
    if cpl != 0 {
        Err(Refusal::NotCpl0)
    } else if index != 0 {
        Err(Refusal::NotXcr0)
    } else if value & !supported != 0 {
        Err(Refusal::Unsupported(value & !supported))
    } else if value & X87 == 0 {
        Err(Refusal::X87Cleared)
    } else if value & AVX != 0 && value & SSE == 0 {
        Err(Refusal::AvxWithoutSse)
    } else if !all_or_none(AVX512) {
        Err(Refusal::Avx512Partial)
    } else if value & AVX512 != 0 && value & (SSE | AVX) != SSE | AVX {
        Err(Refusal::Avx512WithoutAvx)
    } else if !all_or_none(MPX) {
        Err(Refusal::MpxPartial)
    } else if !all_or_none(AMX) {
        Err(Refusal::AmxPartial)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::xcr0::*;
    use super::*;

    /// A Sapphire Rapids-like mask: x87, SSE, AVX, AVX-512, PKRU (bit 9), AMX.
    const SPR: u64 = X87 | SSE | AVX | AVX512 | (1 << 9) | AMX;

    #[test]
    fn what_operating_systems_write_is_accepted() {
        for v in [X87, X87 | SSE, X87 | SSE | AVX, X87 | SSE | AVX | AVX512, SPR] {
            assert_eq!(check(0, 0, v, SPR), Ok(()), "{v:#x}");
        }
    }

    #[test]
    fn every_sdm_rule_faults() {
        assert_eq!(check(3, 0, 7, SPR), Err(Refusal::NotCpl0));
        assert_eq!(check(0, 1, 7, SPR), Err(Refusal::NotXcr0));
        assert_eq!(check(0, 0, SSE | AVX, SPR), Err(Refusal::X87Cleared));
        assert_eq!(check(0, 0, X87 | AVX, SPR), Err(Refusal::AvxWithoutSse));
        assert_eq!(check(0, 0, X87 | SSE | AVX | (1 << 5), SPR), Err(Refusal::Avx512Partial));
        assert_eq!(check(0, 0, X87 | SSE | AVX512, SPR), Err(Refusal::Avx512WithoutAvx));
        assert_eq!(check(0, 0, X87 | (1 << 17), SPR), Err(Refusal::AmxPartial));
        assert_eq!(check(0, 0, X87 | (1 << 3), X87 | MPX), Err(Refusal::MpxPartial));
        // MPX is not in the mask: unsupported comes first.
        assert_eq!(check(0, 0, X87 | MPX, SPR), Err(Refusal::Unsupported(MPX)));
        assert_eq!(check(0, 0, X87 | (1 << 63), SPR), Err(Refusal::Unsupported(1 << 63)));
        // A guest that does not see AMX cannot enable it.
        assert_eq!(check(0, 0, X87 | AMX, SPR & !AMX), Err(Refusal::Unsupported(AMX)));
    }
}
