//! Loading a multiboot image and writing its information structure (needs a heap).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use elf::ElfBytes;
use elf::abi::{EM_386, EM_X86_64, ET_EXEC, PT_LOAD};
use elf::endian::LittleEndian;

use super::abi::*;

/// The multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
    /// The a.out-kludge fields, when [`flags::AOUT_KLUDGE`] is set.
    pub addresses: Option<AoutAddresses>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutAddresses {
    pub header_addr: u32,
    pub load_addr: u32,
    /// 0: load to the end of the file.
    pub load_end_addr: u32,
    /// 0: no BSS.
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds and checks the header (magic, checksum, required flags).
pub fn find_header(image: &[u8]) -> Result<Header, String> {
    let limit = image.len().min(HEADER_SEARCH);
    let offset = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&o| {
            let (m, f, c) = (u32_at(image, o), u32_at(image, o + 4), u32_at(image, o + 8));
            matches!((m, f, c), (Some(HEADER_MAGIC), Some(f), Some(c)) if HEADER_MAGIC.wrapping_add(f).wrapping_add(c) == 0)
        })
        .ok_or("no multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")?;
    let f = u32_at(image, offset + 4).unwrap_or(0);
    let unknown = f & 0xffff & !flags::KNOWN_REQUIREMENTS;
    if unknown != 0 {
        return Err(format!("multiboot header requires features this loader lacks (flags {unknown:#x})"));
    }
    let addresses = if f & flags::AOUT_KLUDGE != 0 {
        let field = |i: usize| u32_at(image, offset + 12 + 4 * i).ok_or("multiboot header truncated");
        Some(AoutAddresses {
            header_addr: field(0)?,
            load_addr: field(1)?,
            load_end_addr: field(2)?,
            bss_end_addr: field(3)?,
            entry_addr: field(4)?,
        })
    } else {
        None
    };
    Ok(Header { offset, flags: f, addresses })
}

/// One piece of the image: `file_size` bytes from `file_offset` go to `gpa`, zeros up to
/// `mem_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub gpa: u64,
    pub file_offset: usize,
    pub file_size: usize,
    pub mem_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub header: Header,
    /// Physical entry point (the BSP starts there in 32-bit protected mode).
    pub entry: u32,
    pub chunks: Vec<Chunk>,
    /// First byte past everything loaded: the boot information goes above it.
    pub end: u64,
}

/// Whether `gpa..end` lies in RAM a kernel may load into.
fn loadable(gpa: u64, end: u64, ram_size: u64) -> bool {
    gpa < end && end <= ram_size && (end <= LOW_RAM_END || gpa >= HIGH_RAM_START)
}

impl LoadPlan {
    /// Checks `image` and plans loading it into a guest of `ram_size` bytes.
    pub fn new(image: &[u8], ram_size: u64) -> Result<Self, String> {
        let header = find_header(image)?;
        let (entry, chunks) = match header.addresses {
            Some(a) => aout_chunks(image, &header, &a)?,
            None => elf_chunks(image)?,
        };
        for c in &chunks {
            let end = c.gpa + c.mem_size;
            if !loadable(c.gpa, end, ram_size) {
                return Err(format!(
                    "image piece {:#x}..{end:#x} is outside guest RAM (0..{LOW_RAM_END:#x} and {HIGH_RAM_START:#x}..{ram_size:#x})",
                    c.gpa
                ));
            }
        }
        if !chunks.iter().any(|c| (entry as u64) >= c.gpa && (entry as u64) < c.gpa + c.mem_size) {
            return Err(format!("entry point {entry:#x} is not inside the loaded image"));
        }
        let end = chunks.iter().map(|c| c.gpa + c.mem_size).max().unwrap_or(0);
        Ok(Self { header, entry, chunks, end })
    }

    /// Copies the image into `ram` (guest-physical 0..len) and zeroes its BSS.
    pub fn load(&self, image: &[u8], ram: &mut [u8]) {
        for c in &self.chunks {
            let at = c.gpa as usize;
            ram[at..at + c.file_size].copy_from_slice(&image[c.file_offset..c.file_offset + c.file_size]);
            ram[at + c.file_size..at + c.mem_size as usize].fill(0);
        }
    }
}

/// Spec §3.1.3: the file from `header_offset - (header_addr - load_addr)` is loaded at
/// `load_addr`, up to `load_end_addr`, then zeros up to `bss_end_addr`.
fn aout_chunks(image: &[u8], h: &Header, a: &AoutAddresses) -> Result<(u32, Vec<Chunk>), String> {
    if a.load_addr > a.header_addr {
        return Err("multiboot header: load_addr is above header_addr".into());
    }
    let start = (h.offset as u64)
        .checked_sub((a.header_addr - a.load_addr) as u64)
        .ok_or("multiboot header: load_addr lies before the start of the file")?;
    let file_size = if a.load_end_addr == 0 {
        image.len() as u64 - start
    } else {
        (a.load_end_addr as u64)
            .checked_sub(a.load_addr as u64)
            .ok_or("multiboot header: load_end_addr is below load_addr")?
    };
    if start + file_size > image.len() as u64 {
        return Err("multiboot header: load_end_addr lies past the end of the file".into());
    }
    let mem_size = if a.bss_end_addr == 0 {
        file_size
    } else {
        (a.bss_end_addr as u64)
            .checked_sub(a.load_addr as u64)
            .filter(|&m| m >= file_size)
            .ok_or("multiboot header: bss_end_addr is below load_end_addr")?
    };
    let chunk = Chunk { gpa: a.load_addr as u64, file_offset: start as usize, file_size: file_size as usize, mem_size };
    Ok((a.entry_addr, alloc::vec![chunk]))
}

/// ELF32 (i386) or ELF64 (x86-64) executables: PT_LOAD segments at their physical addresses,
/// as GRUB loads them; a virtual entry point is translated through its segment.
fn elf_chunks(image: &[u8]) -> Result<(u32, Vec<Chunk>), String> {
    let f = ElfBytes::<LittleEndian>::minimal_parse(image)
        .map_err(|e| format!("multiboot image without the a.out kludge must be ELF: {e}"))?;
    if !matches!(f.ehdr.e_machine, EM_386 | EM_X86_64) {
        return Err(format!("ELF machine {} is neither i386 nor x86-64", f.ehdr.e_machine));
    }
    if f.ehdr.e_type != ET_EXEC {
        return Err("ELF image is not an executable (ET_EXEC)".into());
    }
    let mut chunks = Vec::new();
    let mut entry = None;
    for ph in f.segments().ok_or("ELF image has no program headers")?.iter().filter(|p| p.p_type == PT_LOAD) {
        if ph.p_filesz > ph.p_memsz {
            return Err("ELF segment's file size exceeds its memory size".into());
        }
        let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or("ELF segment offset overflows")?;
        if file_end > image.len() as u64 {
            return Err("ELF segment extends past the end of the file".into());
        }
        let e = f.ehdr.e_entry;
        if e >= ph.p_vaddr && e - ph.p_vaddr < ph.p_memsz {
            entry = Some(e - ph.p_vaddr + ph.p_paddr);
        }
        chunks.push(Chunk {
            gpa: ph.p_paddr,
            file_offset: ph.p_offset as usize,
            file_size: ph.p_filesz as usize,
            mem_size: ph.p_memsz,
        });
    }
    let entry = entry.ok_or_else(|| format!("ELF entry point {:#x} is in no loaded segment", f.ehdr.e_entry))?;
    let entry = u32::try_from(entry).map_err(|_| format!("entry point {entry:#x} is above 4 GiB"))?;
    Ok((entry, chunks))
}

/// The end of an ELF image's loadable segments. For a kernel with the a.out kludge, which the
/// loader loads by its header, this says whether the header covers everything the ELF has.
pub fn elf_load_end(image: &[u8]) -> Result<u64, String> {
    let (_, chunks) = elf_chunks(image)?;
    Ok(chunks.iter().map(|c| c.gpa + c.mem_size).max().unwrap_or(0))
}

/// A boot module: its bytes and its string (the module's command line).
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    pub data: &'a [u8],
    pub string: &'a str,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Where things went: the information structure's address (EBX) and the first free byte after
/// everything the boot placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub info: u32,
    pub end: u64,
}

/// Where the boot puts things above the kernel, page by page as QEMU does: the modules
/// (page-aligned), then the information structure, the memory map, the module list and the
/// strings.
struct Layout {
    modules: Vec<(u64, u64)>,
    info: u64,
    mmap: u64,
    mods_addr: u64,
    strings: u64,
    end: u64,
}

fn layout(plan: &LoadPlan, ram_size: u64, cmdline: &str, modules: &[Module<'_>]) -> Result<Layout, String> {
    let mut at = align_up(plan.end.max(HIGH_RAM_START), 0x1000);
    let mut mods = Vec::new();
    for m in modules {
        let end = at + m.data.len() as u64;
        if end > ram_size {
            return Err(format!("{} MiB of RAM cannot hold the kernel and its modules", ram_size >> 20));
        }
        mods.push((at, end));
        at = align_up(end, 0x1000);
    }
    let info = at;
    let mmap = info + INFO_SIZE as u64;
    let mods_addr = mmap + memory_map(ram_size).len() as u64 * 24;
    let strings = mods_addr + modules.len() as u64 * 16;
    let end = strings
        + cmdline.len() as u64
        + 1
        + BOOT_LOADER_NAME.len() as u64
        + 1
        + modules.iter().map(|m| m.string.len() as u64 + 1).sum::<u64>();
    if end > ram_size || end > u32::MAX as u64 {
        return Err(format!("{} MiB of RAM cannot hold the multiboot information", ram_size >> 20));
    }
    Ok(Layout { modules: mods, info, mmap, mods_addr, strings, end })
}

/// Checks that the kernel, its modules and the boot information fit a guest of `ram_size`
/// bytes (what [`place`] will do, without the RAM).
pub fn check_fits(plan: &LoadPlan, ram_size: u64, cmdline: &str, modules: &[Module<'_>]) -> Result<(), String> {
    layout(plan, ram_size, cmdline, modules).map(|_| ())
}

/// Writes the modules and the information structure into `ram` above the kernel.
pub fn place(ram: &mut [u8], plan: &LoadPlan, cmdline: &str, modules: &[Module<'_>]) -> Result<Placed, String> {
    let ram_size = ram.len() as u64;
    let Layout { modules: mods, info, mmap, mods_addr, mut strings, end: total } =
        layout(plan, ram_size, cmdline, modules)?;
    for (m, (start, end)) in modules.iter().zip(&mods) {
        ram[*start as usize..*end as usize].copy_from_slice(m.data);
    }
    let map = memory_map(ram_size);
    ram[info as usize..total as usize].fill(0);
    let put = |ram: &mut [u8], gpa: u64, v: u32| ram[gpa as usize..gpa as usize + 4].copy_from_slice(&v.to_le_bytes());
    let mut string = |ram: &mut [u8], s: &str| {
        let gpa = strings;
        ram[gpa as usize..gpa as usize + s.len()].copy_from_slice(s.as_bytes());
        strings += s.len() as u64 + 1;
        gpa as u32
    };
    let cmdline_gpa = string(ram, cmdline);
    let name_gpa = string(ram, BOOT_LOADER_NAME);
    for (i, (m, (start, end))) in modules.iter().zip(&mods).enumerate() {
        let entry = mods_addr + i as u64 * 16;
        let s = string(ram, m.string);
        put(ram, entry, *start as u32);
        put(ram, entry + 4, *end as u32);
        put(ram, entry + 8, s);
    }
    for (i, (base, len, kind)) in map.iter().enumerate() {
        // Each entry: size (of the rest, 20), base_addr, length, type.
        let e = (mmap + i as u64 * 24) as usize;
        ram[e..e + 4].copy_from_slice(&20u32.to_le_bytes());
        ram[e + 4..e + 12].copy_from_slice(&base.to_le_bytes());
        ram[e + 12..e + 20].copy_from_slice(&len.to_le_bytes());
        ram[e + 20..e + 24].copy_from_slice(&kind.to_le_bytes());
    }
    let mut f = info_flags::MEMORY | info_flags::CMDLINE | info_flags::MEMORY_MAP | info_flags::BOOT_LOADER_NAME;
    if !modules.is_empty() {
        f |= info_flags::MODULES;
    }
    put(ram, info, f);
    put(ram, info + 4, (LOW_RAM_END / 1024) as u32);
    // mem_upper: KiB from 1 MiB to the first hole (the end of RAM here).
    put(ram, info + 8, ((ram_size - HIGH_RAM_START) / 1024).min(u32::MAX as u64) as u32);
    put(ram, info + 16, cmdline_gpa);
    put(ram, info + 20, modules.len() as u32);
    put(ram, info + 24, mods_addr as u32);
    put(ram, info + 44, (map.len() * 24) as u32);
    put(ram, info + 48, mmap as u32);
    put(ram, info + 64, name_gpa);
    Ok(Placed { info: info as u32, end: total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn u32_in(ram: &[u8], gpa: u32) -> u32 {
        u32_at(ram, gpa as usize).unwrap()
    }

    fn cstr(ram: &[u8], gpa: u32) -> &str {
        let s = &ram[gpa as usize..];
        core::str::from_utf8(&s[..s.iter().position(|&b| b == 0).unwrap()]).unwrap()
    }

    /// A header with the a.out kludge at file offset `at` describing a load at `load`.
    fn kludge_image(at: usize, load: u32, file: u32, bss: u32, entry: u32) -> Vec<u8> {
        let mut img = vec![0u8; at + file as usize];
        for (i, b) in img.iter_mut().enumerate() {
            *b = 0x40 | (i as u8 & 0x3f);
        }
        let f = flags::AOUT_KLUDGE | flags::MEMORY_INFO | flags::PAGE_ALIGN_MODULES;
        let header_addr = load + at as u32;
        let fields = [
            HEADER_MAGIC,
            f,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(f),
            header_addr,
            load,
            load + at as u32 + file,
            if bss == 0 { 0 } else { load + at as u32 + file + bss },
            entry,
        ];
        for (i, v) in fields.iter().enumerate() {
            img[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        img
    }

    #[test]
    fn header_needs_magic_checksum_and_known_requirements() {
        assert!(find_header(&[0u8; 64]).unwrap_err().contains("no multiboot header"));
        let img = kludge_image(0x40, 0x10_0000, 0x100, 0, 0x10_0040);
        let h = find_header(&img).unwrap();
        assert_eq!(h.offset, 0x40);
        assert_eq!(h.addresses.unwrap().load_addr, 0x10_0000);
        let mut bad = img.clone();
        bad[0x48] ^= 1; // checksum
        assert!(find_header(&bad).is_err());
        // A header past 8 KiB is not looked for.
        let mut late = vec![0u8; 0x2000];
        late.extend_from_slice(&img[0x40..0x60]);
        assert!(find_header(&late).is_err());
        // Requirement bit 3 is unknown.
        let f = 1u32 << 3;
        let mut req = vec![0u8; 16];
        req[..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        req[4..8].copy_from_slice(&f.to_le_bytes());
        req[8..12].copy_from_slice(&0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(f).to_le_bytes());
        assert!(find_header(&req).unwrap_err().contains("flags 0x8"));
    }

    #[test]
    fn aout_kludge_loads_from_the_header_offset_and_zeroes_bss() {
        // The header is 0x1000 into the file and load_addr is header_addr - 0x1000: the whole
        // file goes to 0x200000.
        let img = kludge_image(0x1000, 0x20_0000, 0x200, 0x300, 0x20_1000);
        let plan = LoadPlan::new(&img, 4 << 20).unwrap();
        assert_eq!(plan.entry, 0x20_1000);
        assert_eq!(plan.chunks, vec![Chunk { gpa: 0x20_0000, file_offset: 0, file_size: 0x1200, mem_size: 0x1500 }]);
        assert_eq!(plan.end, 0x20_1500);
        let mut ram = vec![0xffu8; 4 << 20];
        plan.load(&img, &mut ram);
        assert_eq!(&ram[0x20_0000..0x20_1200], &img[..]);
        assert!(ram[0x20_1200..0x20_1500].iter().all(|&b| b == 0));
        assert_eq!(ram[0x20_1500], 0xff);
    }

    #[test]
    fn aout_kludge_errors_are_explained() {
        let mut img = kludge_image(0x100, 0x20_0000, 0x100, 0, 0x20_0100);
        // load_addr 0x1000 below the header's place in the file.
        img[0x110..0x114].copy_from_slice(&(0x20_0000u32 - 0x1000).to_le_bytes());
        assert!(LoadPlan::new(&img, 4 << 20).unwrap_err().contains("before the start of the file"));
        let img = kludge_image(0x100, 0x20_0000, 0x100, 0, 0x90_0000);
        assert!(LoadPlan::new(&img, 16 << 20).unwrap_err().contains("entry point"));
        let img = kludge_image(0x100, 0xf_0000, 0x100, 0, 0xf_0100);
        assert!(LoadPlan::new(&img, 16 << 20).unwrap_err().contains("outside guest RAM"), "the legacy hole");
        let img = kludge_image(0x100, 0x20_0000, 0x100, 0, 0x20_0100);
        assert!(LoadPlan::new(&img, 2 << 20).unwrap_err().contains("outside guest RAM"));
        // Found by the fuzzer: conventional memory is loadable only where the guest has RAM.
        let low = kludge_image(0x100, 0x3_0000, 0x100, 0, 0x3_0100);
        assert!(LoadPlan::new(&low, 16 << 20).is_ok());
        assert!(LoadPlan::new(&low, 0x3_0000).unwrap_err().contains("outside guest RAM"));
    }

    /// An ELF executable of `class` (1: 32-bit, 2: 64-bit) with one segment, multiboot header
    /// inside it at file offset 0x100.
    fn elf(class: u8, machine: u16, paddr: u64, vaddr: u64, entry: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = class;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        if class == 1 {
            b[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            b[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
            b[40..42].copy_from_slice(&52u16.to_le_bytes());
            b[42..44].copy_from_slice(&32u16.to_le_bytes());
            b[44..46].copy_from_slice(&1u16.to_le_bytes());
            let ph = &mut b[52..84];
            ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            ph[4..8].copy_from_slice(&0u32.to_le_bytes()); // offset
            ph[8..12].copy_from_slice(&(vaddr as u32).to_le_bytes());
            ph[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
            ph[16..20].copy_from_slice(&0x200u32.to_le_bytes());
            ph[20..24].copy_from_slice(&0x1000u32.to_le_bytes());
        } else {
            b[24..32].copy_from_slice(&entry.to_le_bytes());
            b[32..40].copy_from_slice(&64u64.to_le_bytes());
            b[52..54].copy_from_slice(&64u16.to_le_bytes());
            b[54..56].copy_from_slice(&56u16.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
            let ph = &mut b[64..120];
            ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&0x200u64.to_le_bytes());
            ph[40..48].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        let f = flags::MEMORY_INFO;
        b[0x100..0x104].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        b[0x104..0x108].copy_from_slice(&f.to_le_bytes());
        b[0x108..0x10c].copy_from_slice(&0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(f).to_le_bytes());
        b
    }

    #[test]
    fn elf32_and_elf64_load_at_physical_addresses() {
        for class in [1u8, 2] {
            let machine = if class == 1 { EM_386 } else { EM_X86_64 };
            // Linked high (virtual 0xC0100000), loaded at 1 MiB: the entry is translated.
            let img = elf(class, machine, 0x10_0000, 0xc010_0000, 0xc010_0100);
            let plan = LoadPlan::new(&img, 4 << 20).unwrap();
            assert_eq!(plan.entry, 0x10_0100, "class {class}");
            assert_eq!(plan.chunks[0].gpa, 0x10_0000);
            assert_eq!((plan.chunks[0].file_size, plan.chunks[0].mem_size), (0x200, 0x1000));
            let mut ram = vec![0xffu8; 4 << 20];
            plan.load(&img, &mut ram);
            assert_eq!(&ram[0x10_0100..0x10_0104], &HEADER_MAGIC.to_le_bytes());
            assert!(ram[0x10_0200..0x10_1000].iter().all(|&b| b == 0));
        }
        let arm = elf(2, 183, 0x10_0000, 0x10_0000, 0x10_0000);
        assert!(LoadPlan::new(&arm, 4 << 20).unwrap_err().contains("neither i386 nor x86-64"));
        assert_eq!(elf_load_end(&elf(2, EM_X86_64, 0x10_0000, 0x10_0000, 0x10_0000)), Ok(0x10_1000));
        let nowhere = elf(1, EM_386, 0x10_0000, 0x10_0000, 0x50_0000);
        assert!(LoadPlan::new(&nowhere, 8 << 20).unwrap_err().contains("in no loaded segment"));
    }

    #[test]
    fn information_structure_as_the_spec_lays_it_out() {
        let img = kludge_image(0x1000, 0x20_0000, 0x200, 0x300, 0x20_1000);
        let plan = LoadPlan::new(&img, 8 << 20).unwrap();
        let mut ram = vec![0u8; 8 << 20];
        plan.load(&img, &mut ram);
        let mods = [Module { data: b"first module", string: "one arg" }, Module { data: &[7u8; 5000], string: "two" }];
        let p = place(&mut ram, &plan, "console=ttyS0 iterations=5", &mods).unwrap();
        // Modules page-aligned above the kernel, then the information.
        assert_eq!(p.info, 0x20_5000);
        let i = p.info;
        let f = u32_in(&ram, i);
        assert_eq!(f, 0b10_0100_1101, "memory, cmdline, modules, memory map, loader name");
        assert_eq!((u32_in(&ram, i + 4), u32_in(&ram, i + 8)), (639, 7 * 1024));
        assert_eq!(cstr(&ram, u32_in(&ram, i + 16)), "console=ttyS0 iterations=5");
        assert_eq!(cstr(&ram, u32_in(&ram, i + 64)), BOOT_LOADER_NAME);
        assert_eq!(u32_in(&ram, i + 20), 2);
        let m = u32_in(&ram, i + 24);
        let (s0, e0, s1, e1) = (u32_in(&ram, m), u32_in(&ram, m + 4), u32_in(&ram, m + 16), u32_in(&ram, m + 20));
        assert_eq!((s0, e0, s1, e1), (0x20_2000, 0x20_200c, 0x20_3000, 0x20_3000 + 5000));
        assert_eq!(&ram[s0 as usize..e0 as usize], b"first module");
        assert_eq!((cstr(&ram, u32_in(&ram, m + 8)), cstr(&ram, u32_in(&ram, m + 24))), ("one arg", "two"));
        // The memory map: size field, then base, length, type.
        let (len, addr) = (u32_in(&ram, i + 44), u32_in(&ram, i + 48));
        assert_eq!(len, 72);
        let entry = |k: u32| {
            let e = (addr + k * 24) as usize;
            let q = |o: usize| u64::from_le_bytes(ram[e + o..e + o + 8].try_into().unwrap());
            (u32_at(&ram, e).unwrap(), q(4), q(12), u32_at(&ram, e + 20).unwrap())
        };
        assert_eq!(entry(0), (20, 0, 0x9_fc00, MEMORY_AVAILABLE));
        assert_eq!(entry(1), (20, 0x9_fc00, 0x6_0400, MEMORY_RESERVED));
        assert_eq!(entry(2), (20, 0x10_0000, (8 << 20) - 0x10_0000, MEMORY_AVAILABLE));
        assert!(p.end > addr as u64 && p.end < (8 << 20));
    }

    #[test]
    fn information_that_does_not_fit_is_refused() {
        let img = kludge_image(0x1000, 0x20_0000, 0x200, 0, 0x20_1000);
        let plan = LoadPlan::new(&img, 4 << 20).unwrap();
        let mut ram = vec![0u8; 4 << 20];
        let big = vec![0u8; 3 << 20];
        assert!(place(&mut ram, &plan, "", &[Module { data: &big, string: "" }]).unwrap_err().contains("modules"));
        assert!(check_fits(&plan, 4 << 20, "", &[Module { data: &big, string: "" }]).is_err());
        assert!(check_fits(&plan, 4 << 20, "x", &[]).is_ok());
    }
}
