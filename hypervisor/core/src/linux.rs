//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst, protocol 2.12 and later) with
//! the 64-bit entry, as a boot loader that loads a bzImage itself does it: the setup header is
//! checked, the protected-mode kernel copied to its preferred address, the initrd placed high,
//! and the zero page (`struct boot_params`: the header, the e820 map, the command line and
//! initrd pointers, the ACPI RSDP address) built; the bootstrap vCPU then enters at
//! `startup_64` (load address + 0x200) in 64-bit mode on identity page tables, with a GDT
//! holding `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) and RSI = the zero page.
//!
//! Everything a Linux boot leaves in low memory lies below 64 KiB, which the kernel keeps
//! reserved (CONFIG_X86_RESERVE_LOW) until it has copied the zero page and the command line.
//! RAM is a byte slice here, so the whole thing is host-tested; the hypervisor copies and starts.

use alloc::format;
use alloc::string::String;

use crate::multiboot::abi::{HIGH_RAM_START, MEMORY_AVAILABLE, memory_map};

/// Setup-header offsets in the image and in the zero page (boot.rst, "The Real-Mode Kernel Header").
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The last field this loader reads.
    pub const END: usize = 0x264;
}

/// Zero-page offsets outside the setup header (Documentation/arch/x86/zero-page.rst).
mod zp {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_MAX: usize = 128;
}

const BOOT_FLAG: u16 = 0xaa55;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// 2.12: xloadflags (the 64-bit entry), ext_* fields; 2.10: pref_address and init_size.
pub const MIN_PROTOCOL: u16 = 0x020c;
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
const XLF_KERNEL_64: u16 = 1 << 0;
/// "Undefined" boot loader (boot.rst: type_of_loader 0xFF).
const LOADER_UNDEFINED: u8 = 0xff;

/// The fixed low-memory layout of a Linux boot (all below 64 KiB, reserved by the kernel).
pub const PML4_GPA: u64 = 0x1000;
const PDPT_GPA: u64 = 0x2000;
const PD_GPA: u64 = 0x3000;
/// GDT: null, null, `__BOOT_CS` (0x10, 64-bit code), `__BOOT_DS` (0x18, data).
pub const GDT_GPA: u64 = 0x7000;
pub const GDT_LIMIT: u16 = 4 * 8 - 1;
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// 64-bit code: P, DPL 0, S, execute/read, L (SDM Vol. 3A §3.4.5).
pub const GDT_CODE64: u64 = 0x00af_9a00_0000_ffff;
/// Data: P, DPL 0, S, read/write, G, B.
pub const GDT_DATA: u64 = 0x00cf_9200_0000_ffff;
pub const ZERO_PAGE_GPA: u64 = 0x9000;
pub const CMDLINE_GPA: u64 = 0xa000;
/// The command-line buffer reaches up to 64 KiB.
const CMDLINE_MAX: u64 = 0x1_0000 - CMDLINE_GPA;

/// e820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A checked bzImage and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// The protected-mode kernel: file offset and length.
    pub kernel_offset: usize,
    pub kernel_len: usize,
    /// Where it is loaded (guest-physical), and what the kernel may use from there on while it
    /// decompresses itself (`init_size`).
    pub load_addr: u64,
    pub init_size: u64,
    /// The setup header's bytes (image offsets 0x1F1 up to its end), copied into the zero page.
    pub header_end: usize,
    pub initrd_addr_max: u64,
    pub cmdline_size: u64,
    pub version: u16,
}

impl LoadPlan {
    /// Checks `image` (a bzImage) for a guest of `ram_size` bytes.
    pub fn new(image: &[u8], ram_size: u64) -> Result<Self, String> {
        if image.len() < hdr::END + 4 {
            return Err(format!("{} bytes: too short for a bzImage setup header", image.len()));
        }
        if u16_at(image, hdr::BOOT_FLAG) != BOOT_FLAG || &image[hdr::HEADER..hdr::HEADER + 4] != HEADER_MAGIC {
            return Err("not a bzImage (no 0xAA55 boot flag and \"HdrS\" header)".into());
        }
        let version = u16_at(image, hdr::VERSION);
        if version < MIN_PROTOCOL {
            return Err(format!(
                "boot protocol {}.{:02}: the 64-bit entry needs 2.12 or later",
                version >> 8,
                version & 0xff
            ));
        }
        if u16_at(image, hdr::XLOADFLAGS) & XLF_KERNEL_64 == 0 {
            return Err("the kernel has no 64-bit entry point (xloadflags bit 0)".into());
        }
        if image[hdr::LOADFLAGS] & LOADED_HIGH == 0 {
            return Err("a zImage (loaded low): only bzImages are supported".into());
        }
        let setup_sects = match image[hdr::SETUP_SECTS] {
            0 => 4,
            n => n as usize,
        };
        let kernel_offset = (setup_sects + 1) * 512;
        if kernel_offset >= image.len() {
            return Err(format!("{setup_sects} setup sectors: no protected-mode kernel after them"));
        }
        let header_end = hdr::HEADER + image[hdr::JUMP + 1] as usize;
        if !(hdr::END..=kernel_offset).contains(&header_end) {
            return Err(format!("setup header ends at {header_end:#x}, outside the setup code"));
        }
        let align = u32_at(image, hdr::KERNEL_ALIGNMENT) as u64;
        let pref = u64_at(image, hdr::PREF_ADDRESS);
        let init_size = u32_at(image, hdr::INIT_SIZE) as u64;
        let kernel_len = image.len() - kernel_offset;
        let relocatable = image[hdr::RELOCATABLE_KERNEL] != 0;
        // The preferred address; a relocatable kernel may go at any multiple of its alignment
        // from 1 MiB up, and must where the preferred one would not fit.
        // The kernel's area is the larger of the file's kernel and its decompression area: an
        // `init_size` smaller than the file must not let the initrd overwrite the kernel.
        let area = init_size.max(kernel_len as u64);
        let load_addr = if pref >= HIGH_RAM_START && pref.checked_add(area).is_some_and(|end| end <= ram_size) {
            pref
        } else if relocatable && align.is_power_of_two() {
            HIGH_RAM_START.next_multiple_of(align)
        } else {
            pref
        };
        // Checked, not saturating: an area that would wrap past 2^64 must not pass as "fits" in
        // a RAM size near 2^64 and leave `entry()` and the initrd placement to overflow.
        let need = load_addr.checked_add(area);
        if load_addr < HIGH_RAM_START || need.is_none_or(|end| end > ram_size) {
            return Err(format!(
                "the kernel needs guest RAM up to {:#x} (loaded at {load_addr:#x}, init_size {init_size:#x}); the VM has {ram_size:#x}",
                need.map_or(u128::from(u64::MAX) + 1, u128::from)
            ));
        }
        Ok(Self {
            kernel_offset,
            kernel_len,
            load_addr,
            init_size,
            header_end,
            initrd_addr_max: u32_at(image, hdr::INITRD_ADDR_MAX) as u64,
            cmdline_size: u32_at(image, hdr::CMDLINE_SIZE) as u64,
            version,
        })
    }

    /// Where the bootstrap vCPU enters: `startup_64` (boot.rst, "64-bit Boot Protocol").
    pub fn entry(&self) -> u64 {
        self.load_addr + 0x200
    }

    /// The end of the kernel's area: the file's kernel or its decompression area, whichever
    /// is larger (checked against RAM in `new`, so it does not overflow).
    pub fn area_end(&self) -> u64 {
        self.load_addr + self.init_size.max(self.kernel_len as u64)
    }

    /// Where an initrd of `len` bytes goes: as high as RAM and `initrd_addr_max` allow, page
    /// aligned, above the kernel's decompression area.
    pub fn initrd_addr(&self, len: u64, ram_size: u64) -> Result<u64, String> {
        let top = ram_size.min(self.initrd_addr_max.saturating_add(1));
        let at = top.checked_sub(len).map(|a| a & !0xfff).filter(|&a| a >= self.area_end());
        at.ok_or_else(|| {
            format!(
                "an initrd of {len} bytes does not fit between the kernel's end {:#x} and {top:#x}",
                self.area_end()
            )
        })
    }
}

/// The guest's e820 map: the multiboot one (conventional memory, the reserved legacy hole with
/// the ACPI tables, RAM from 1 MiB), as `(base, length, type)`.
pub fn e820(ram_size: u64) -> [(u64, u64, u32); 3] {
    memory_map(ram_size)
        .map(|(base, len, kind)| (base, len, if kind == MEMORY_AVAILABLE { E820_RAM } else { E820_RESERVED }))
}

/// What [`place`] wrote where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub entry: u64,
    pub zero_page: u64,
    pub initrd: Option<(u64, u64)>,
}

fn put(ram: &mut [u8], at: u64, bytes: &[u8]) {
    ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// Copies the kernel and `initrd` into `ram` (the VM's zeroed RAM) and writes the zero page,
/// the command line, identity page tables for the first 4 GiB (2 MiB pages) and the GDT.
pub fn place(
    ram: &mut [u8],
    plan: &LoadPlan,
    image: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
    rsdp: u64,
) -> Result<Placed, String> {
    let ram_size = ram.len() as u64;
    if cmdline.len() as u64 >= plan.cmdline_size.min(CMDLINE_MAX) {
        return Err(format!("the command line is {} bytes; this kernel takes {}", cmdline.len(), plan.cmdline_size));
    }
    let kernel = &image[plan.kernel_offset..];
    put(ram, plan.load_addr, kernel);
    let initrd = match initrd {
        Some(data) => {
            let at = plan.initrd_addr(data.len() as u64, ram_size)?;
            put(ram, at, data);
            Some((at, data.len() as u64))
        }
        None => None,
    };

    // Identity map of 0..4 GiB: PML4 → PDPT → four page directories of 2 MiB pages.
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    ram[PML4_GPA as usize..(PD_GPA + 0x4000) as usize].fill(0);
    put(ram, PML4_GPA, &(PDPT_GPA | P_RW).to_le_bytes());
    for i in 0..4u64 {
        let pd = PD_GPA + i * 0x1000;
        put(ram, PDPT_GPA + i * 8, &(pd | P_RW).to_le_bytes());
        for j in 0..512u64 {
            put(ram, pd + j * 8, &(((i << 30) | (j << 21)) | P_RW | PS).to_le_bytes());
        }
    }
    for (i, d) in [0, 0, GDT_CODE64, GDT_DATA].iter().enumerate() {
        put(ram, GDT_GPA + i as u64 * 8, &d.to_le_bytes());
    }

    let zp = ZERO_PAGE_GPA;
    ram[zp as usize..zp as usize + 0x1000].fill(0);
    ram[(zp as usize + hdr::SETUP_SECTS)..(zp as usize + plan.header_end)]
        .copy_from_slice(&image[hdr::SETUP_SECTS..plan.header_end]);
    let field = |ram: &mut [u8], off: usize, bytes: &[u8]| put(ram, zp + off as u64, bytes);
    field(ram, hdr::TYPE_OF_LOADER, &[LOADER_UNDEFINED]);
    field(ram, hdr::LOADFLAGS, &[image[hdr::LOADFLAGS] | CAN_USE_HEAP]);
    // The heap end is an offset from the real-mode code's start; unused by the 64-bit entry.
    field(ram, hdr::HEAP_END_PTR, &0xfe00u16.to_le_bytes());
    put(ram, CMDLINE_GPA, cmdline.as_bytes());
    ram[CMDLINE_GPA as usize + cmdline.len()] = 0;
    field(ram, hdr::CMD_LINE_PTR, &(CMDLINE_GPA as u32).to_le_bytes());
    field(ram, zp::EXT_CMD_LINE_PTR, &0u32.to_le_bytes());
    if let Some((at, len)) = initrd {
        field(ram, hdr::RAMDISK_IMAGE, &(at as u32).to_le_bytes());
        field(ram, hdr::RAMDISK_SIZE, &(len as u32).to_le_bytes());
        field(ram, zp::EXT_RAMDISK_IMAGE, &((at >> 32) as u32).to_le_bytes());
        field(ram, zp::EXT_RAMDISK_SIZE, &((len >> 32) as u32).to_le_bytes());
    }
    field(ram, zp::ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    let map = e820(ram_size);
    const _: () = assert!(3 <= zp::E820_MAX);
    field(ram, zp::E820_ENTRIES, &[map.len() as u8]);
    for (i, (base, len, kind)) in map.iter().enumerate() {
        let at = zp::E820_TABLE + i * 20;
        field(ram, at, &base.to_le_bytes());
        field(ram, at + 8, &len.to_le_bytes());
        field(ram, at + 16, &kind.to_le_bytes());
    }
    Ok(Placed { entry: plan.entry(), zero_page: zp, initrd })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A bzImage shaped like Debian's 6.1 kernel: 39 setup sectors, protocol 2.15, relocatable,
    /// 64-bit, preferred address 16 MiB, `init_size` 4 MiB here.
    fn bzimage(kernel_len: usize) -> Vec<u8> {
        let setup = 39;
        let mut b = vec![0u8; (setup + 1) * 512 + kernel_len];
        b[hdr::SETUP_SECTS] = setup as u8;
        b[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        b[hdr::JUMP] = 0xeb;
        b[hdr::JUMP + 1] = 0x6a; // header ends at 0x26c
        b[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(HEADER_MAGIC);
        b[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b[hdr::LOADFLAGS] = LOADED_HIGH;
        b[hdr::INITRD_ADDR_MAX..hdr::INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        b[hdr::KERNEL_ALIGNMENT..hdr::KERNEL_ALIGNMENT + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[hdr::RELOCATABLE_KERNEL] = 1;
        b[hdr::XLOADFLAGS..hdr::XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
        b[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&0x7ffu32.to_le_bytes());
        b[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        for (i, x) in b[(setup + 1) * 512..].iter_mut().enumerate() {
            *x = i as u8 | 1;
        }
        b
    }

    #[test]
    fn a_debian_like_bzimage_loads_at_its_preferred_address() {
        let img = bzimage(0x1000);
        let plan = LoadPlan::new(&img, 64 << 20).unwrap();
        assert_eq!((plan.kernel_offset, plan.load_addr, plan.entry()), (40 * 512, 0x100_0000, 0x100_0200));
        assert_eq!((plan.version, plan.header_end), (0x020f, 0x26c));
        // Too little RAM for 16 MiB + init_size: relocated to the first 2 MiB boundary above 1 MiB.
        let small = LoadPlan::new(&img, 16 << 20).unwrap();
        assert_eq!(small.load_addr, 0x20_0000);
        assert!(LoadPlan::new(&img, 4 << 20).unwrap_err().contains("needs guest RAM"));
    }

    #[test]
    fn an_area_wrapping_past_2_to_the_64_is_refused() {
        // Fuzz finding: with a RAM size near 2^64 a saturating sum let this plan through.
        let mut img = bzimage(16);
        img[hdr::RELOCATABLE_KERNEL] = 0;
        img[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&(u64::MAX - 0x1000).to_le_bytes());
        assert!(LoadPlan::new(&img, u64::MAX).unwrap_err().contains("needs guest RAM up to 0x10000000000000000"));
    }

    #[test]
    fn the_initrd_stays_clear_of_a_kernel_longer_than_its_init_size() {
        // Fuzz finding: init_size 0 put the initrd over the kernel's own bytes.
        let mut img = bzimage(0x3000);
        img[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&0u32.to_le_bytes());
        let plan = LoadPlan::new(&img, 64 << 20).unwrap();
        assert_eq!(plan.area_end(), plan.load_addr + 0x3000);
        let tight = plan.load_addr + 0x3000 + 0x1000;
        assert!(plan.initrd_addr(0x1000, tight).unwrap() >= plan.load_addr + 0x3000);
        assert!(plan.initrd_addr(0x2000, tight).is_err());
    }

    #[test]
    fn bad_images_are_refused_with_reasons() {
        let e = |b: &[u8]| LoadPlan::new(b, 64 << 20).unwrap_err();
        assert!(e(b"MZ").contains("too short"));
        let mut img = bzimage(16);
        img[hdr::BOOT_FLAG] = 0;
        assert!(e(&img).contains("not a bzImage"));
        let mut img = bzimage(16);
        img[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x0209u16.to_le_bytes());
        assert!(e(&img).contains("needs 2.12"));
        let mut img = bzimage(16);
        img[hdr::XLOADFLAGS] = 0;
        assert!(e(&img).contains("64-bit entry"));
        let mut img = bzimage(16);
        img[hdr::LOADFLAGS] = 0;
        assert!(e(&img).contains("zImage"));
        let mut img = bzimage(0);
        img.truncate(40 * 512);
        assert!(e(&img).contains("no protected-mode kernel"));
    }

    #[test]
    fn the_zero_page_holds_the_header_map_command_line_initrd_and_rsdp() {
        let img = bzimage(0x2000);
        let ram_size = 64u64 << 20;
        let plan = LoadPlan::new(&img, ram_size).unwrap();
        let mut ram = vec![0u8; ram_size as usize];
        let initrd = vec![0x5au8; 0x3000];
        let p = place(&mut ram, &plan, &img, "console=ttyS0 nokaslr", Some(&initrd), 0xe0000).unwrap();
        assert_eq!(p.entry, 0x100_0200);
        let z = ZERO_PAGE_GPA as usize;
        let zp = &ram[z..z + 0x1000];
        assert_eq!(&zp[hdr::HEADER..hdr::HEADER + 4], HEADER_MAGIC, "the setup header is copied");
        assert_eq!(zp[hdr::TYPE_OF_LOADER], 0xff);
        assert_ne!(zp[hdr::LOADFLAGS] & CAN_USE_HEAP, 0);
        let cmd = u32_at(zp, hdr::CMD_LINE_PTR) as usize;
        assert_eq!(&ram[cmd..cmd + 22], b"console=ttyS0 nokaslr\0");
        let (at, len) = p.initrd.unwrap();
        assert_eq!((u32_at(zp, hdr::RAMDISK_IMAGE) as u64, u32_at(zp, hdr::RAMDISK_SIZE) as u64), (at, len));
        assert_eq!(at, ram_size - 0x3000, "as high as RAM allows");
        assert_eq!(ram[at as usize], 0x5a);
        assert_eq!(u64_at(zp, zp::ACPI_RSDP_ADDR), 0xe0000);
        assert_eq!(zp[zp::E820_ENTRIES], 3);
        let entry = |i: usize| {
            let e = zp::E820_TABLE + i * 20;
            (u64_at(zp, e), u64_at(zp, e + 8), u32_at(zp, e + 16))
        };
        assert_eq!(entry(0), (0, 0x9fc00, E820_RAM));
        assert_eq!(entry(1).2, E820_RESERVED);
        assert_eq!(entry(2), (0x10_0000, ram_size - 0x10_0000, E820_RAM));
        assert_eq!(ram[0x100_0000], 1, "the protected-mode kernel at its load address");
        // The identity map and the boot GDT.
        let pde = |va: u64| {
            let pd = PD_GPA + (va >> 30) * 0x1000 + ((va >> 21) & 511) * 8;
            u64_at(&ram, pd as usize)
        };
        assert_eq!(pde(0x100_0000) & !0xfff, 0x100_0000);
        assert_eq!(pde(0xfee0_0000) & !0xfff, 0xfee0_0000);
        assert_eq!(u64_at(&ram, (GDT_GPA + BOOT_CS as u64) as usize), GDT_CODE64);
        assert_eq!(u64_at(&ram, (GDT_GPA + BOOT_DS as u64) as usize), GDT_DATA);
    }

    #[test]
    fn command_lines_and_initrds_that_do_not_fit() {
        let img = bzimage(0x100);
        let plan = LoadPlan::new(&img, 24 << 20).unwrap();
        let mut ram = vec![0u8; 24 << 20];
        let long = "x".repeat(0x800);
        assert!(place(&mut ram, &plan, &img, &long, None, 0).unwrap_err().contains("command line"));
        let big = vec![0u8; 8 << 20];
        assert!(place(&mut ram, &plan, &img, "", Some(&big), 0).unwrap_err().contains("does not fit"));
    }
}
