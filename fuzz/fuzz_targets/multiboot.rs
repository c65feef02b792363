//! Multiboot kernels (`multiboot::load::LoadPlan`, `place`), checked by xtask and again by
//! the hypervisor before they are copied into guest RAM: any file a user boots. An accepted plan
//! keeps every piece inside loadable guest RAM and inside the file, the entry inside the image;
//! `load` writes only the pieces, and `place` writes only above the image and inside RAM.
#![no_main]

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use hvcore::multiboot::abi::{HEADER_MAGIC, HIGH_RAM_START, LOW_RAM_END, flags};
use hvcore::multiboot::load::{LoadPlan, Module, place};
use libfuzzer_sys::fuzz_target;

/// Guest RAM of up to 16 MiB, kept filled with this byte between runs.
const MAX_RAM: usize = 16 << 20;
const FILL: u8 = 0xa5;

thread_local! {
    static RAM: RefCell<Vec<u8>> = RefCell::new(vec![FILL; MAX_RAM]);
}

fn small(u: &mut Unstructured<'_>, max: u32) -> arbitrary::Result<u32> {
    if u.ratio(1, 16)? { u32::arbitrary(u) } else { u.int_in_range(0..=max) }
}

/// A file with a valid multiboot header somewhere in its first 8 KiB: the a.out kludge with
/// addresses mostly near 1-2 MiB, or an ELF32/ELF64 header in front, so that many files reach
/// the load checks.
fn assemble(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let at = u.int_in_range(0..=2047u32)? as usize * 4;
    let len = at + 48 + small(u, 0x3000)?.min(0x10_0000) as usize;
    let mut b = vec![0u8; len];
    if bool::arbitrary(u)? {
        // An ELF header with one program header, fields from the fuzzer.
        b[..4].copy_from_slice(b"\x7fELF");
        let class = if u.ratio(1, 2)? { 1u8 } else { 2 };
        b[4] = class;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&(if class == 1 { 3u16 } else { 62 }).to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        let paddr = (HIGH_RAM_START as u32).wrapping_add(small(u, 0x20_0000)?);
        let entry = paddr.wrapping_add(small(u, 0x2000)?);
        let (filesz, memsz) = (small(u, 0x3000)?, small(u, 0x10_0000)?);
        if class == 1 && b.len() >= 84 {
            b[24..28].copy_from_slice(&entry.to_le_bytes());
            b[28..32].copy_from_slice(&52u32.to_le_bytes());
            b[40..42].copy_from_slice(&52u16.to_le_bytes());
            b[42..44].copy_from_slice(&32u16.to_le_bytes());
            b[44..46].copy_from_slice(&1u16.to_le_bytes());
            let ph = &mut b[52..84];
            ph[0..4].copy_from_slice(&1u32.to_le_bytes());
            ph[8..12].copy_from_slice(&paddr.to_le_bytes());
            ph[12..16].copy_from_slice(&paddr.to_le_bytes());
            ph[16..20].copy_from_slice(&filesz.to_le_bytes());
            ph[20..24].copy_from_slice(&memsz.to_le_bytes());
        } else if b.len() >= 120 {
            b[24..32].copy_from_slice(&(entry as u64).to_le_bytes());
            b[32..40].copy_from_slice(&64u64.to_le_bytes());
            b[52..54].copy_from_slice(&64u16.to_le_bytes());
            b[54..56].copy_from_slice(&56u16.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
            let ph = &mut b[64..120];
            ph[0..4].copy_from_slice(&1u32.to_le_bytes());
            ph[16..24].copy_from_slice(&(paddr as u64).to_le_bytes());
            ph[24..32].copy_from_slice(&(paddr as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&(filesz as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&(memsz as u64).to_le_bytes());
        }
    }
    let kludge = bool::arbitrary(u)?;
    let f = if kludge { flags::AOUT_KLUDGE | flags::MEMORY_INFO } else { small(u, 7)? };
    let load = (HIGH_RAM_START as u32).wrapping_add(small(u, 0x20_0000)?);
    let header_addr = load.wrapping_add(at as u32).wrapping_sub(small(u, 8)?);
    let load_end = if u.ratio(1, 4)? { 0 } else { header_addr.wrapping_add(small(u, 0x3000)?) };
    let bss_end = if u.ratio(1, 4)? { 0 } else { load_end.wrapping_add(small(u, 0x10_0000)?) };
    let entry = load.wrapping_add(small(u, 0x3000)?);
    let fields =
        [HEADER_MAGIC, f, 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(f), header_addr, load, load_end, bss_end, entry];
    for (i, v) in fields.iter().enumerate() {
        if let Some(dst) = b.get_mut(at + 4 * i..at + 4 * i + 4) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(u.bytes(u.len())?);
    Ok(b)
}

fn check(image: &[u8], ram_size: u64, cmdline: &str, module: &[u8]) {
    let Ok(plan) = LoadPlan::new(image, ram_size) else { return };
    assert!(!plan.chunks.is_empty());
    for c in &plan.chunks {
        let end = c.gpa.checked_add(c.mem_size).expect("piece end overflows");
        assert!(end <= LOW_RAM_END || (c.gpa >= HIGH_RAM_START && end <= ram_size), "{c:?} outside loadable RAM");
        assert!(c.file_size as u64 <= c.mem_size);
        assert!(c.file_offset.checked_add(c.file_size).is_some_and(|e| e <= image.len()));
        assert!(end <= plan.end);
    }
    let entry = plan.entry as u64;
    assert!(plan.chunks.iter().any(|c| entry >= c.gpa && entry < c.gpa + c.mem_size));
    if ram_size as usize > MAX_RAM {
        return;
    }
    RAM.with_borrow_mut(|ram| {
        let ram = &mut ram[..ram_size as usize];
        plan.load(image, ram);
        let modules = [Module { data: module, string: "module" }];
        let placed = place(ram, &plan, cmdline, &modules);
        let inside = |a: u64| plan.chunks.iter().any(|c| a >= c.gpa && a < c.gpa + c.mem_size);
        match placed {
            Ok(p) => {
                assert!(p.info as u64 >= plan.end && p.end <= ram_size);
                for a in (0..plan.end.min(ram_size)).step_by(509) {
                    if !inside(a) {
                        assert_eq!(ram[a as usize], FILL, "byte {a:#x} below the boot information was written");
                    }
                }
                if let Some(&b) = ram.get(p.end as usize) {
                    assert_eq!(b, FILL, "past the boot information");
                }
            }
            Err(e) => assert!(e.contains("cannot hold"), "{e}"),
        }
        ram.fill(FILL);
    });
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // Guest RAM: at most 16 MiB (loaded and checked), or any size (planned only).
    let ram_size = match u.int_in_range(0..=7)? {
        0 => u64::arbitrary(u)?,
        1 => u.int_in_range(0..=MAX_RAM as u64)?,
        n => n << 21,
    };
    let n = u.int_in_range(0..=64)?;
    let cmdline = String::from_utf8_lossy(u.bytes(n)?).into_owned();
    let n = u.int_in_range(0..=0x2000)?;
    let module = u.bytes(n)?.to_vec();
    let image = if bool::arbitrary(u)? { assemble(u)? } else { u.bytes(u.len())?.to_vec() };
    check(&image, ram_size, &cmdline, &module);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
