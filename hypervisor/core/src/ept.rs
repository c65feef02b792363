//! Extended page tables (SDM Vol. 3C §29.3): 4-level, write-back, 2 MiB pages where alignment
//! allows. The builder works on physical addresses through [`TableMemory`], so the kernel backs
//! it with real frames and the tests with a map.

/// EPT entry permission bits (SDM Vol. 3C Tables 29-1..29-6).
pub const READ: u64 = 1 << 0;
pub const WRITE: u64 = 1 << 1;
pub const EXECUTE: u64 = 1 << 2;
pub const RWX: u64 = READ | WRITE | EXECUTE;
/// EPT memory type write-back in bits 5:3 of a leaf entry.
const MEMTYPE_WB: u64 = 6 << 3;
/// Bit 7 of a PDE/PDPTE: maps a large page.
const LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const SIZE_4K: u64 = 0x1000;
const SIZE_2M: u64 = 0x20_0000;

/// Physical memory for page-table pages.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned table page; its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The 512 entries of the table page at physical address `pa`.
    fn table(&mut self, pa: u64) -> &mut [u64; 512];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    OutOfMemory,
    /// Addresses or size not 4 KiB-aligned.
    Unaligned,
    /// The range overlaps an existing mapping.
    AlreadyMapped(u64),
}

/// An EPT hierarchy.
pub struct Ept {
    root: u64,
}

/// The EPT pointer for a root table (SDM Vol. 3C §25.6.11): WB, 4-level walk, no A/D flags.
pub const fn eptp(root: u64) -> u64 {
    root | 6 | (3 << 3)
}

impl Ept {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, EptError> {
        Ok(Self { root: mem.alloc_table().ok_or(EptError::OutOfMemory)? })
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn eptp(&self) -> u64 {
        eptp(self.root)
    }

    /// Maps guest-physical `[gpa, gpa + size)` to host-physical `[hpa, ...)` with `perms`, using
    /// 2 MiB pages wherever both addresses and the remaining size allow.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        size: u64,
        perms: u64,
    ) -> Result<(), EptError> {
        if !(gpa | hpa | size).is_multiple_of(SIZE_4K) {
            return Err(EptError::Unaligned);
        }
        let mut off = 0;
        while off < size {
            let (g, h) = (gpa + off, hpa + off);
            let large = (g | h) % SIZE_2M == 0 && size - off >= SIZE_2M;
            self.map_one(mem, g, h, perms, large)?;
            off += if large { SIZE_2M } else { SIZE_4K };
        }
        Ok(())
    }

    fn map_one(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        perms: u64,
        large: bool,
    ) -> Result<(), EptError> {
        let leaf_level = if large { 1 } else { 0 };
        let mut table = self.root;
        for level in (leaf_level + 1..=3).rev() {
            let idx = index(gpa, level);
            let e = mem.table(table)[idx];
            table = if e & RWX == 0 {
                let t = mem.alloc_table().ok_or(EptError::OutOfMemory)?;
                mem.table(table)[idx] = t | RWX;
                t
            } else if e & LARGE != 0 {
                return Err(EptError::AlreadyMapped(gpa));
            } else {
                e & ADDR_MASK
            };
        }
        let idx = index(gpa, leaf_level);
        let slot = &mut mem.table(table)[idx];
        if *slot & RWX != 0 {
            return Err(EptError::AlreadyMapped(gpa));
        }
        *slot = hpa | perms | MEMTYPE_WB | if large { LARGE } else { 0 };
        Ok(())
    }

    /// Walks the tables: the host-physical address and permissions for `gpa`, if mapped.
    pub fn translate(&self, mem: &mut impl TableMemory, gpa: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for level in (0..=3).rev() {
            let e = mem.table(table)[index(gpa, level)];
            if e & RWX == 0 {
                return None;
            }
            if level == 0 || (level == 1 && e & LARGE != 0) {
                let page = if level == 0 { SIZE_4K } else { SIZE_2M };
                return Some(((e & ADDR_MASK & !(page - 1)) + (gpa & (page - 1)), e & RWX));
            }
            table = e & ADDR_MASK;
        }
        None
    }
}

/// Index of `gpa` in the table at `level` (0 = PT, 1 = PD, 2 = PDPT, 3 = PML4).
const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1ff) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::boxed::Box;
    use std::collections::BTreeMap;

    /// Table pages in a map, handed out from a fake physical address range.
    #[derive(Default)]
    pub struct MapMemory {
        pub pages: BTreeMap<u64, Box<[u64; 512]>>,
        next: u64,
    }

    impl TableMemory for MapMemory {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.pages.len() >= 64 {
                return None;
            }
            let pa = 0x100_0000 + self.next;
            self.next += 0x1000;
            self.pages.insert(pa, Box::new([0; 512]));
            Some(pa)
        }
        fn table(&mut self, pa: u64) -> &mut [u64; 512] {
            self.pages.get_mut(&pa).expect("walk reached a page that is not a table")
        }
    }

    #[test]
    fn guest_ram_uses_2m_pages_and_translates() {
        let mut mem = MapMemory::default();
        let mut ept = Ept::new(&mut mem).unwrap();
        ept.map(&mut mem, 0, 0x4000_0000, 16 << 20, RWX).unwrap();
        // Root, one PDPT, one PD: eight 2 MiB leaves need no page tables.
        assert_eq!(mem.pages.len(), 3);
        assert_eq!(ept.translate(&mut mem, 0x12_3456), Some((0x4012_3456, RWX)));
        assert_eq!(ept.translate(&mut mem, (16 << 20) - 1), Some((0x4000_0000 + (16 << 20) - 1, RWX)));
        assert_eq!(ept.translate(&mut mem, 16 << 20), None, "nothing past guest RAM");
        assert_eq!(ept.translate(&mut mem, 0xfee0_0000), None);
        let pd_entry = mem.pages.values().find(|t| t[0] & LARGE != 0).unwrap()[0];
        assert_eq!(pd_entry & 0x38, 6 << 3, "write-back memory type");
    }

    #[test]
    fn unaligned_host_memory_falls_back_to_4k_pages() {
        let mut mem = MapMemory::default();
        let mut ept = Ept::new(&mut mem).unwrap();
        ept.map(&mut mem, 0, 0x4000_1000, 0x20_0000, READ | WRITE).unwrap();
        assert_eq!(mem.pages.len(), 4, "root, PDPT, PD and one PT");
        assert_eq!(ept.translate(&mut mem, 0x1f_f000), Some((0x4020_0000, READ | WRITE)));
    }

    #[test]
    fn overlap_alignment_and_memory_errors() {
        let mut mem = MapMemory::default();
        let mut ept = Ept::new(&mut mem).unwrap();
        ept.map(&mut mem, 0x20_0000, 0x20_0000, 0x20_0000, RWX).unwrap();
        assert_eq!(ept.map(&mut mem, 0x20_0000, 0x0, 0x1000, RWX), Err(EptError::AlreadyMapped(0x20_0000)));
        assert_eq!(ept.map(&mut mem, 0x1234, 0, 0x1000, RWX), Err(EptError::Unaligned));
        // 4 KiB pages across a huge range exhaust the fake memory.
        assert_eq!(ept.map(&mut mem, 1 << 40, 0x1000, 64 << 21, RWX), Err(EptError::OutOfMemory));
    }

    #[test]
    fn eptp_encodes_wb_and_4_levels() {
        assert_eq!(eptp(0x5000), 0x5000 | 0x1e);
    }
}
