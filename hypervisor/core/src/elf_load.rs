//! Guest ELF images: checked and planned here (through the `elf` crate), copied into guest RAM
//! by [`LoadPlan::load`]. Images must be static x86-64 executables linked at
//! [`IMAGE_BASE`](crate::guest_abi::IMAGE_BASE) or above.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use elf::ElfBytes;
use elf::abi::{EM_X86_64, ET_EXEC, PT_LOAD};
use elf::endian::LittleEndian;

use crate::guest_abi::{IMAGE_BASE, STACK_SIZE};

/// One PT_LOAD segment: `file` bytes of the image go to `gpa`, then zeros up to `mem_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub gpa: u64,
    pub file_offset: usize,
    pub file_size: usize,
    pub mem_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

impl LoadPlan {
    /// Checks `image` and plans loading it into a guest with `ram_size` bytes and `vcpus`
    /// stacks at the top of RAM.
    pub fn new(image: &[u8], ram_size: u64, vcpus: u32) -> Result<Self, String> {
        let f = ElfBytes::<LittleEndian>::minimal_parse(image)
            .map_err(|e| format!("not a 64-bit little-endian ELF: {e}"))?;
        if f.ehdr.class != elf::file::Class::ELF64 {
            return Err("not a 64-bit ELF".into());
        }
        if f.ehdr.e_machine != EM_X86_64 {
            return Err(format!("machine {} is not x86-64", f.ehdr.e_machine));
        }
        if f.ehdr.e_type != ET_EXEC {
            return Err("not a static executable (ET_EXEC); link guests with relocation-model=static".into());
        }
        let limit = ram_size.checked_sub(vcpus as u64 * STACK_SIZE).ok_or("RAM too small for the vCPU stacks")?;
        let mut segments = Vec::new();
        for ph in f.segments().ok_or("no program headers")?.iter().filter(|p| p.p_type == PT_LOAD) {
            let end = ph.p_vaddr.checked_add(ph.p_memsz).ok_or("segment address overflows")?;
            if ph.p_vaddr < IMAGE_BASE || end > limit {
                return Err(format!(
                    "segment {:#x}..{end:#x} is outside {IMAGE_BASE:#x}..{limit:#x} (guest RAM minus stacks)",
                    ph.p_vaddr
                ));
            }
            if ph.p_filesz > ph.p_memsz {
                return Err("segment file size exceeds its memory size".into());
            }
            let file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or("segment offset overflows")?;
            if file_end > image.len() as u64 {
                return Err("segment extends past the end of the file".into());
            }
            segments.push(Segment {
                gpa: ph.p_vaddr,
                file_offset: ph.p_offset as usize,
                file_size: ph.p_filesz as usize,
                mem_size: ph.p_memsz,
            });
        }
        let entry = f.ehdr.e_entry;
        if !segments.iter().any(|s| entry >= s.gpa && entry < s.gpa + s.mem_size) {
            return Err(format!("entry point {entry:#x} is not inside a loaded segment"));
        }
        Ok(Self { entry, segments })
    }

    /// Copies the segments into `ram` (guest-physical 0..len) and zeroes their BSS.
    pub fn load(&self, image: &[u8], ram: &mut [u8]) {
        for s in &self.segments {
            let at = s.gpa as usize;
            ram[at..at + s.file_size].copy_from_slice(&image[s.file_offset..s.file_offset + s.file_size]);
            ram[at + s.file_size..at + s.mem_size as usize].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    /// A minimal ELF64 executable: header, one program header, code.
    fn elf(e_type: u16, machine: u16, vaddr: u64, filesz: u64, memsz: u64, entry: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x78];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little endian
        b[6] = 1; // version
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut b[64..120];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        b.extend((0..filesz).map(|i| i as u8 | 0x80));
        b
    }

    #[test]
    fn loads_code_and_zeroes_bss() {
        let img = elf(ET_EXEC, EM_X86_64, IMAGE_BASE, 16, 64, IMAGE_BASE + 4);
        let plan = LoadPlan::new(&img, 4 << 20, 1).unwrap();
        assert_eq!(plan.entry, IMAGE_BASE + 4);
        let mut ram = vec![0xffu8; 4 << 20];
        plan.load(&img, &mut ram);
        let at = IMAGE_BASE as usize;
        assert_eq!(ram[at], 0x80);
        assert_eq!(ram[at + 15], 0x8f);
        assert!(ram[at + 16..at + 64].iter().all(|&b| b == 0));
        assert_eq!(ram[at + 64], 0xff, "nothing past memsz is touched");
    }

    #[test]
    fn bad_images_are_refused_with_reasons() {
        let e = |img: &[u8], ram| LoadPlan::new(img, ram, 2).unwrap_err();
        assert!(e(b"MZ not an elf", 4 << 20).contains("not a 64-bit little-endian ELF"));
        assert!(e(&elf(3, EM_X86_64, IMAGE_BASE, 16, 16, IMAGE_BASE), 4 << 20).contains("ET_EXEC"));
        assert!(e(&elf(ET_EXEC, 40, IMAGE_BASE, 16, 16, IMAGE_BASE), 4 << 20).contains("not x86-64"));
        assert!(e(&elf(ET_EXEC, EM_X86_64, 0x1000, 16, 16, 0x1000), 4 << 20).contains("outside"));
        // Fits 4 MiB but collides with the two stacks at the top.
        let big = elf(ET_EXEC, EM_X86_64, IMAGE_BASE, 16, (2 << 20) - 0x1000, IMAGE_BASE);
        assert!(e(&big, 4 << 20).contains("outside"));
        assert!(e(&elf(ET_EXEC, EM_X86_64, IMAGE_BASE, 16, 16, 0x9000_0000), 4 << 20).contains("entry point"));
        let mut trunc = elf(ET_EXEC, EM_X86_64, IMAGE_BASE, 16, 16, IMAGE_BASE);
        trunc.truncate(trunc.len() - 4);
        assert!(e(&trunc, 4 << 20).contains("past the end"));
    }
}
