//! Linux bzImages (`linux::LoadPlan`, `linux::place`), checked by xtask and again by the
//! hypervisor before they are copied into guest RAM: any kernel a user boots with `linux =`.
//! An accepted plan keeps the protected-mode kernel inside the file and the kernel's whole
//! decompression area inside RAM from 1 MiB up; `place` keeps the initrd above that area and
//! inside RAM, and starts at `startup_64`.
#![no_main]

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use hvcore::linux::{self, LoadPlan};
use libfuzzer_sys::fuzz_target;

/// Guest RAM of up to 32 MiB, kept filled with this byte between runs.
const MAX_RAM: usize = 32 << 20;
const FILL: u8 = 0xa5;
const MIB: u64 = 1 << 20;

thread_local! {
    static RAM: RefCell<Vec<u8>> = RefCell::new(vec![FILL; MAX_RAM]);
}

fn small(u: &mut Unstructured<'_>, max: u32) -> arbitrary::Result<u32> {
    if u.ratio(1, 16)? { u32::arbitrary(u) } else { u.int_in_range(0..=max) }
}

/// A file with a setup header that passes the magic checks, its fields mostly plausible
/// (setup sectors, protocol version, flags, alignment, preferred address, init_size), so that
/// many files reach the placement checks.
fn assemble(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let setup_sects = small(u, 64)? as u8;
    let pm = small(u, 0x4000)? as usize;
    let mut k = vec![0u8; (setup_sects.max(4) as usize + 1) * 512 + pm];
    k[0x1f1] = setup_sects;
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x201] = if u.ratio(7, 8)? { 0x62u8.wrapping_add(small(u, 0x20)? as u8) } else { u8::arbitrary(u)? };
    k[0x202..0x206].copy_from_slice(b"HdrS");
    let version = if u.ratio(7, 8)? { 0x020cu16.wrapping_add(small(u, 4)? as u16) } else { u16::arbitrary(u)? };
    k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    k[0x211] = if u.ratio(7, 8)? { 1 } else { u8::arbitrary(u)? };
    k[0x22c..0x230].copy_from_slice(&u32::arbitrary(u)?.to_le_bytes());
    let align = if u.ratio(7, 8)? { 1u32 << small(u, 24)?.min(31) } else { u32::arbitrary(u)? };
    k[0x230..0x234].copy_from_slice(&align.to_le_bytes());
    k[0x234] = u8::arbitrary(u)? & 1;
    k[0x236..0x238].copy_from_slice(&(if u.ratio(7, 8)? { 1 } else { u16::arbitrary(u)? }).to_le_bytes());
    k[0x238..0x23c].copy_from_slice(&small(u, 4096)?.to_le_bytes());
    let pref = if u.ratio(7, 8)? { MIB + (small(u, 16)? as u64) * MIB } else { u64::arbitrary(u)? };
    k[0x258..0x260].copy_from_slice(&pref.to_le_bytes());
    k[0x260..0x264].copy_from_slice(&small(u, 0x40_0000)?.to_le_bytes());
    Ok(k)
}

fn check(image: &[u8], ram_size: u64, cmdline: &str, initrd: Option<&[u8]>) {
    let Ok(plan) = LoadPlan::new(image, ram_size) else { return };
    assert_eq!(plan.kernel_offset + plan.kernel_len, image.len(), "the kernel is the file's rest");
    assert!(plan.load_addr >= MIB, "loaded below 1 MiB: {:#x}", plan.load_addr);
    let end = plan.load_addr.checked_add(plan.init_size.max(plan.kernel_len as u64)).expect("end overflows");
    assert_eq!(plan.area_end(), end);
    assert!(end <= ram_size, "the kernel's area {:#x}..{end:#x} is outside RAM {ram_size:#x}", plan.load_addr);
    assert_eq!(plan.entry(), plan.load_addr + 0x200);
    if ram_size as usize > MAX_RAM {
        return;
    }
    RAM.with_borrow_mut(|ram| {
        let ram = &mut ram[..ram_size as usize];
        match linux::place(ram, &plan, image, cmdline, initrd, 0xe0000) {
            Ok(p) => {
                assert_eq!(p.entry, plan.entry());
                let loaded = &ram[plan.load_addr as usize..][..plan.kernel_len];
                let differs = loaded.iter().zip(&image[plan.kernel_offset..]).position(|(a, b)| a != b);
                assert_eq!(differs, None, "kernel byte differs; {plan:?}, RAM {ram_size:#x}, placed {p:?}");
                if let Some((at, len)) = p.initrd {
                    assert!(at >= end, "initrd {at:#x} inside the kernel's area");
                    assert!(at + len <= ram_size);
                    assert_eq!(Some(&ram[at as usize..(at + len) as usize]), initrd);
                }
                // Nothing between the boot structures (below 64 KiB) and the kernel is written.
                for a in (0x1_0000..plan.load_addr.min(ram_size)).step_by(4093) {
                    assert_eq!(ram[a as usize], FILL, "byte {a:#x} between the boot structures and the kernel");
                }
            }
            Err(e) => assert!(e.contains("command line") || e.contains("initrd"), "{e}"),
        }
        ram.fill(FILL);
    });
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let ram_size = match u.int_in_range(0..=7)? {
        0 => u64::arbitrary(u)?,
        1 => u.int_in_range(0..=MAX_RAM as u64)?,
        n => (n * 4) << 20,
    };
    let n = u.int_in_range(0..=80)?;
    let cmdline = String::from_utf8_lossy(u.bytes(n)?).into_owned();
    let initrd = if bool::arbitrary(u)? {
        let n = u.int_in_range(0..=0x4000)?;
        Some(u.bytes(n)?.to_vec())
    } else {
        None
    };
    let image = if u.ratio(3, 4)? { assemble(u)? } else { u.bytes(u.len())?.to_vec() };
    check(&image, ram_size, &cmdline, initrd.as_deref());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
