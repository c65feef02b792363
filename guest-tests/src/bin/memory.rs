//! Writes and checks all free RAM above the kernel image (whose BSS holds the stacks), each
//! vCPU its own slice.
#![no_std]
#![no_main]

use guest_tests::{Platform, entry, image_end, println, report};

entry!(main);

fn main(vcpu: u32, info: &'static Platform) {
    let start = image_end().next_multiple_of(4096);
    let end = info.ram_size;
    let per = ((end - start) / info.vcpu_count as u64) & !7;
    let lo = start + per * vcpu as u64;
    let hi = if vcpu + 1 == info.vcpu_count { end } else { lo + per };
    let words = (hi - lo) / 8;
    let base = lo as *mut u64;
    let pattern = |i: u64| (lo + i * 8) ^ 0x5a5a_5a5a_5a5a_5a5a;
    for i in 0..words {
        // SAFETY: [lo, hi) is free guest RAM owned by this vCPU, identity-mapped.
        unsafe { base.add(i as usize).write_volatile(pattern(i)) };
    }
    for i in 0..words {
        // SAFETY: as above.
        let v = unsafe { base.add(i as usize).read_volatile() };
        assert_eq!(v, pattern(i), "RAM word at {:#x}", lo + i * 8);
    }
    println!("vCPU {vcpu}: checked {:#x}..{hi:#x} ({} KiB)", lo, (hi - lo) / 1024);
    report!(r#"{{"test":"memory","vcpu":{vcpu},"from":{lo},"to":{hi}}}"#);
}
