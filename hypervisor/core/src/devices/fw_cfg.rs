//! QEMU's fw_cfg, the traditional I/O interface (QEMU docs/specs/fw_cfg.rst): a 16-bit selector
//! at 0x510 and a byte-wide data port at 0x511 that walks the selected item. What QEMU-targeted
//! test kernels read: the signature, the interface ID, RAM size, CPU counts, the kernel command
//! line and an (empty) file directory. No DMA interface (the ID says so).

use alloc::vec::Vec;

use super::bus::{Effects, PortDevice};

pub const PORT: u16 = 0x510;
pub const LEN: u16 = 2;

pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const FILE_DIR: u16 = 0x19;
}

pub struct FwCfg {
    ram_size: u64,
    cpus: u16,
    cmdline: Vec<u8>,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    pub fn new(ram_size: u64, cpus: u16, cmdline: &[u8]) -> Self {
        // The command line item holds the NUL terminator; the size item counts it.
        let mut c = cmdline.to_vec();
        c.push(0);
        Self { ram_size, cpus, cmdline: c, selected: 0, offset: 0 }
    }

    /// Byte `i` of the selected item (0 past its end, and for keys nobody defines).
    fn byte(&self, i: usize) -> u8 {
        let le = |v: u64, n: usize| if i < n { (v >> (8 * i)) as u8 } else { 0 };
        match self.selected {
            key::SIGNATURE => b"QEMU".get(i).copied().unwrap_or(0),
            key::ID => le(1, 4), // traditional interface only, no DMA
            key::UUID => 0,
            key::RAM_SIZE => le(self.ram_size, 8),
            key::NOGRAPHIC => le(1, 2),
            key::NB_CPUS | key::MAX_CPUS => le(self.cpus as u64, 2),
            key::CMDLINE_SIZE => le(self.cmdline.len() as u64, 4),
            key::CMDLINE_DATA => self.cmdline.get(i).copied().unwrap_or(0),
            key::FILE_DIR => 0, // a big-endian count of 0, no entries
            _ => 0,
        }
    }
}

impl PortDevice for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    fn read(&mut self, offset: u16, size: u8, _now_ns: u64) -> (u32, Effects) {
        if offset != 1 {
            return (0, Effects::NONE);
        }
        // Wider reads of the data port return consecutive bytes, as QEMU's does.
        let mut v = 0u32;
        for k in 0..size.min(4) as usize {
            v |= (self.byte(self.offset) as u32) << (8 * k);
            self.offset += 1;
        }
        (v, Effects::NONE)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, _now_ns: u64) -> Effects {
        if offset == 0 && size == 2 {
            self.selected = value as u16 & 0x3fff; // bit 14 = write, bit 15 = arch-specific
            self.offset = 0;
        }
        Effects::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(f: &mut FwCfg, k: u16, n: usize) -> Vec<u8> {
        f.write(0, 2, k as u32, 0);
        (0..n).map(|_| f.read(1, 1, 0).0 as u8).collect()
    }

    #[test]
    fn what_a_test_kernel_reads() {
        let mut f = FwCfg::new(0x1_2000_0000, 4, b"console=ttyS0");
        assert_eq!(item(&mut f, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(item(&mut f, key::ID, 4), [1, 0, 0, 0]);
        assert_eq!(item(&mut f, key::RAM_SIZE, 8), 0x1_2000_0000u64.to_le_bytes());
        assert_eq!(item(&mut f, key::NB_CPUS, 2), [4, 0]);
        assert_eq!(item(&mut f, key::CMDLINE_SIZE, 4), [14, 0, 0, 0]);
        assert_eq!(item(&mut f, key::CMDLINE_DATA, 15), b"console=ttyS0\0\0");
        assert_eq!(item(&mut f, key::FILE_DIR, 4), [0, 0, 0, 0]);
        assert_eq!(item(&mut f, 0x1234, 3), [0, 0, 0], "unknown keys read as 0");
        // Selecting again starts over; a 4-byte read takes 4 bytes.
        f.write(0, 2, key::SIGNATURE as u32, 0);
        assert_eq!(f.read(1, 4, 0).0, u32::from_le_bytes(*b"QEMU"));
        // A byte write to the selector is not a selection.
        f.write(0, 1, key::NB_CPUS as u32, 0);
        assert_eq!(f.read(1, 1, 0).0, 0);
    }
}
