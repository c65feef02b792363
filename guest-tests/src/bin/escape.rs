//! Touches guest-physical memory past the end of its RAM: the hypervisor must stop this VM
//! (EPT violation) and let every other VM go on.
#![no_std]
#![no_main]

use guest_tests::{Platform, entry, println};

entry!(main);

fn main(vcpu: u32, info: &'static Platform) {
    let target = info.ram_size + 0x10_0000;
    println!("vCPU {vcpu}: reading GPA {target:#x}, outside my {} MiB", info.ram_size >> 20);
    // SAFETY: deliberately not: this read must never complete.
    let v = unsafe { (target as *const u64).read_volatile() };
    panic!("read outside guest RAM returned {v:#x} instead of stopping the VM");
}
