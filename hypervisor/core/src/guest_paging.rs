//! Guest linear → guest-physical translation through the guest's own paging structures, for
//! reading the instruction at RIP when the hypervisor must complete it. Every paging mode an
//! OS can be in (SDM Vol. 3A ch. 5): none, 32-bit, PAE, 4-level and 5-level. Presence only;
//! permissions were checked by the processor when the instruction ran.

/// The guest's paging mode, from CR0.PG, CR4.PAE, CR4.LA57 and EFER.LMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Bits32,
    Pae,
    Level4,
    Level5,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

impl Mode {
    pub fn of(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            Self::None
        } else if cr4 & CR4_PAE == 0 {
            Self::Bits32
        } else if efer & EFER_LMA == 0 {
            Self::Pae
        } else if cr4 & CR4_LA57 != 0 {
            Self::Level5
        } else {
            Self::Level4
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry on the way was not present (or could not be read: outside guest RAM).
    NotPresent { level: u8 },
}

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Address bits 51:12 of a 64-bit entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Translates `linear`. `read` returns the 8-byte (32-bit mode: 4-byte, zero-extended) entry at
/// a guest-physical address, or `None` outside guest RAM.
pub fn translate(
    linear: u64,
    mode: Mode,
    cr3: u64,
    cr4: u64,
    mut read: impl FnMut(u64, usize) -> Option<u64>,
) -> Result<u64, WalkError> {
    let mut entry_of = |table: u64, index: u64, size: usize, level: u8| -> Result<u64, WalkError> {
        match read(table + index * size as u64, size) {
            Some(e) if e & PRESENT != 0 => Ok(e),
            _ => Err(WalkError::NotPresent { level }),
        }
    };
    match mode {
        Mode::None => Ok(linear & 0xffff_ffff),
        Mode::Bits32 => {
            let linear = linear & 0xffff_ffff;
            let pde = entry_of(cr3 & 0xffff_f000, linear >> 22, 4, 2)?;
            if cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
                // 4-MByte page: bits 31:22 from the PDE, 39:32 from PDE bits 20:13 (PSE-36).
                let high = ((pde >> 13) & 0xff) << 32;
                return Ok(high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff));
            }
            let pte = entry_of(pde & 0xffff_f000, (linear >> 12) & 0x3ff, 4, 1)?;
            Ok((pte & 0xffff_f000) | (linear & 0xfff))
        }
        Mode::Pae => {
            let linear = linear & 0xffff_ffff;
            let pdpte = entry_of(cr3 & 0xffff_ffe0, linear >> 30, 8, 3)?;
            walk_from(linear, pdpte, 2, &mut entry_of)
        }
        Mode::Level4 | Mode::Level5 => {
            let top = if mode == Mode::Level5 { 5 } else { 4 };
            let index = (linear >> (12 + 9 * (top as u64 - 1))) & 0x1ff;
            let entry = entry_of(cr3 & ADDR_MASK, index, 8, top)?;
            walk_from(linear, entry, top - 1, &mut entry_of)
        }
    }
}

/// Continues a 64-bit-entry walk: `entry` points at the table of `level` (3 = PDPT, 2 = PD,
/// 1 = PT); levels 3 and 2 may map 1-GByte and 2-MByte pages.
fn walk_from(
    linear: u64,
    mut entry: u64,
    mut level: u8,
    entry_of: &mut impl FnMut(u64, u64, usize, u8) -> Result<u64, WalkError>,
) -> Result<u64, WalkError> {
    loop {
        let shift = 12 + 9 * (level as u64 - 1);
        let next = entry_of(entry & ADDR_MASK, (linear >> shift) & 0x1ff, 8, level)?;
        if level == 1 || (level <= 3 && next & PAGE_SIZE_BIT != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((next & ADDR_MASK & !page_mask) | (linear & page_mask));
        }
        entry = next;
        level -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);
    impl Mem {
        fn read(&self, pa: u64, size: usize) -> Option<u64> {
            let v = *self.0.get(&pa)?;
            Some(if size == 4 { v & 0xffff_ffff } else { v })
        }
    }

    #[test]
    fn modes_from_control_registers() {
        assert_eq!(Mode::of(0x11, 0, 0), Mode::None);
        assert_eq!(Mode::of(CR0_PG | 1, 0, 0), Mode::Bits32);
        assert_eq!(Mode::of(CR0_PG | 1, CR4_PAE, 0), Mode::Pae);
        assert_eq!(Mode::of(CR0_PG | 1, CR4_PAE, EFER_LMA), Mode::Level4);
        assert_eq!(Mode::of(CR0_PG | 1, CR4_PAE | CR4_LA57, EFER_LMA), Mode::Level5);
    }

    #[test]
    fn four_level_with_4k_2m_and_1g_pages() {
        // 0xffff_8000_0040_1234: PML4 256, PDPT 0, PD 2, PT 1.
        let la = 0xffff_8000_0040_1234u64;
        let mut m = Mem(HashMap::new());
        m.0.insert(0x1000 + 256 * 8, 0x2000 | 3);
        m.0.insert(0x2000, 0x3000 | 3);
        m.0.insert(0x3000 + 2 * 8, 0x4000 | 3);
        m.0.insert(0x4000 + 8, 0x00ab_c000 | 3);
        assert_eq!(translate(la, Mode::Level4, 0x1000, 0, |a, s| m.read(a, s)), Ok(0x00ab_c234));
        // The PD entry becomes a 2-MByte page.
        m.0.insert(0x3000 + 2 * 8, 0x0060_0000 | PAGE_SIZE_BIT | 3);
        assert_eq!(translate(la, Mode::Level4, 0x1000, 0, |a, s| m.read(a, s)), Ok(0x0060_1234));
        // The PDPT entry a 1-GByte page.
        m.0.insert(0x2000, 0x4000_0000 | PAGE_SIZE_BIT | 3);
        assert_eq!(translate(la, Mode::Level4, 0x1000, 0, |a, s| m.read(a, s)), Ok(0x4040_1234));
        // Not present at the top.
        assert_eq!(
            translate(0x1234, Mode::Level4, 0x1000, 0, |a, s| m.read(a, s)),
            Err(WalkError::NotPresent { level: 4 })
        );
    }

    #[test]
    fn five_level_adds_one_table() {
        let la = 0x0100_0000_0000_0fe0u64; // PML5 index 256, every lower index 0
        let i5 = (la >> 48) & 0x1ff;
        let mut m = Mem(HashMap::new());
        m.0.insert(0x1000 + i5 * 8, 0x2000 | 1);
        m.0.insert(0x2000, 0x3000 | 1);
        m.0.insert(0x3000, 0x4000 | 1);
        m.0.insert(0x4000, 0x5000 | 1);
        m.0.insert(0x5000, 0x9000 | 1);
        assert_eq!(translate(la, Mode::Level5, 0x1000, 0, |a, s| m.read(a, s)), Ok(0x9fe0));
    }

    #[test]
    fn pae_and_32_bit() {
        let mut m = Mem(HashMap::new());
        // PAE: PDPTE 3 (0xc000_0000..), PD 1, PT 5.
        let la = 0xc020_5678u64;
        m.0.insert(0x1000 + 3 * 8, 0x2000 | 1);
        m.0.insert(0x2000 + 8, 0x3000 | 1);
        m.0.insert(0x3000 + 5 * 8, 0x7_0000 | 1);
        assert_eq!(translate(la, Mode::Pae, 0x1000, CR4_PAE, |a, s| m.read(a, s)), Ok(0x7_0678));
        // 32-bit: PDE 0x300, 4-KByte page; then a 4-MByte page with CR4.PSE.
        let mut m = Mem(HashMap::new());
        m.0.insert(0x5000 + 0x300 * 4, 0x6000 | 1);
        m.0.insert(0x6000 + 0x205 * 4, 0x8000 | 1);
        assert_eq!(translate(la, Mode::Bits32, 0x5000, 0, |a, s| m.read(a, s)), Ok(0x8678));
        m.0.insert(0x5000 + 0x300 * 4, 0x0400_0000 | PAGE_SIZE_BIT | 1);
        assert_eq!(translate(la, Mode::Bits32, 0x5000, CR4_PSE, |a, s| m.read(a, s)), Ok(0x0420_5678));
        assert_eq!(translate(0x1_2345_6789, Mode::None, 0, 0, |_, _| None), Ok(0x2345_6789));
    }
}
