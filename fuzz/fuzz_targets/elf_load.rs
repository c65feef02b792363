//! Guest ELF images (`elf_load::LoadPlan`), checked by xtask and again by the kernel before
//! they are copied into guest RAM. An accepted plan keeps every segment inside guest RAM below
//! the vCPU stacks and inside the file, and `load` writes only the segments.
#![no_main]

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use hvcore::elf_load::LoadPlan;
use hvcore::guest_abi::{IMAGE_BASE, STACK_SIZE};
use libfuzzer_sys::fuzz_target;

/// Guest RAM of up to 16 MiB, kept filled with this byte between runs.
const MAX_RAM: usize = 16 << 20;
const FILL: u8 = 0xa5;

thread_local! {
    static RAM: RefCell<Vec<u8>> = RefCell::new(vec![FILL; MAX_RAM]);
}

/// An ELF64 x86-64 executable with up to 4 program headers whose fields mostly come from the
/// fuzzer, so that many images reach the segment checks.
fn assemble(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let phnum = u.int_in_range(0..=4u16)?;
    let mut b = vec![0u8; 64 + 56 * phnum as usize];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = if u.ratio(1, 16)? { u8::arbitrary(u)? } else { 2 }; // class
    b[5] = if u.ratio(1, 16)? { u8::arbitrary(u)? } else { 1 }; // data: little endian
    b[6] = 1; // version
    let e_type: u16 = if u.ratio(1, 16)? { u16::arbitrary(u)? } else { 2 }; // ET_EXEC
    let machine: u16 = if u.ratio(1, 16)? { u16::arbitrary(u)? } else { 62 }; // EM_X86_64
    b[16..18].copy_from_slice(&e_type.to_le_bytes());
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    let entry = IMAGE_BASE + u.int_in_range(0..=0x10_0000u64)?;
    b[24..32].copy_from_slice(&entry.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    for i in 0..phnum as usize {
        let ph = &mut b[64 + 56 * i..64 + 56 * (i + 1)];
        let p_type: u32 = if u.ratio(1, 8)? { u32::arbitrary(u)? } else { 1 }; // PT_LOAD
        let small = |u: &mut Unstructured<'_>, max: u64| -> arbitrary::Result<u64> {
            if u.ratio(1, 16)? { u64::arbitrary(u) } else { u.int_in_range(0..=max) }
        };
        let vaddr = IMAGE_BASE.wrapping_add(small(u, 0x100_0000)?).wrapping_sub(small(u, 0x1000)?);
        let filesz = small(u, 0x2000)?;
        let memsz = filesz.wrapping_add(small(u, 0x10_0000)?).wrapping_sub(small(u, 4)?);
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&small(u, 0x4000)?.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    }
    b.extend_from_slice(u.bytes(u.len())?);
    Ok(b)
}

fn check(image: &[u8], ram_size: u64, vcpus: u32) {
    let Ok(plan) = LoadPlan::new(image, ram_size, vcpus) else { return };
    let limit = ram_size - vcpus as u64 * STACK_SIZE;
    assert!(!plan.segments.is_empty());
    for s in &plan.segments {
        assert!(s.gpa >= IMAGE_BASE, "{s:?} below the image base");
        assert!(s.gpa.checked_add(s.mem_size).is_some_and(|end| end <= limit), "{s:?} past {limit:#x}");
        assert!(s.file_size as u64 <= s.mem_size);
        assert!(s.file_offset.checked_add(s.file_size).is_some_and(|end| end <= image.len()));
    }
    assert!(plan.segments.iter().any(|s| s.gpa <= plan.entry && plan.entry - s.gpa < s.mem_size));
    if ram_size as usize > MAX_RAM {
        return;
    }
    RAM.with_borrow_mut(|ram| {
        let ram = &mut ram[..ram_size as usize];
        plan.load(image, ram);
        let inside = |a: u64| plan.segments.iter().any(|s| a >= s.gpa && a < s.gpa + s.mem_size);
        // The last segment is as the file says (earlier ones may be overwritten by it).
        let last = plan.segments.last().unwrap();
        let at = last.gpa as usize;
        assert_eq!(ram[at..at + last.file_size], image[last.file_offset..last.file_offset + last.file_size]);
        assert!(ram[at + last.file_size..at + last.mem_size as usize].iter().all(|&b| b == 0));
        for s in &plan.segments {
            for edge in [s.gpa.wrapping_sub(1), s.gpa + s.mem_size] {
                if edge < ram_size && !inside(edge) {
                    assert_eq!(ram[edge as usize], FILL, "byte {edge:#x} outside every segment was written");
                }
            }
        }
        if let Some(&b) = ram.get(limit as usize) {
            assert_eq!(b, FILL, "the vCPU stacks were written");
        }
        for s in &plan.segments {
            ram[s.gpa as usize..(s.gpa + s.mem_size) as usize].fill(FILL);
        }
    });
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // Guest RAM: at most 16 MiB (loaded and checked), or any size (planned only).
    let ram_size = match u.int_in_range(0..=7)? {
        0 => u64::arbitrary(u)?,
        1 => u.int_in_range(0..=MAX_RAM as u64)?,
        n => n << 20,
    };
    let vcpus = if u.ratio(1, 16)? { u32::arbitrary(u)? } else { u.int_in_range(0..=64)? };
    let image = if bool::arbitrary(u)? { assemble(u)? } else { u.bytes(u.len())?.to_vec() };
    check(&image, ram_size, vcpus);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
