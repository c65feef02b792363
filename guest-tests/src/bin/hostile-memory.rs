//! Memory beyond RAM: after checking the last byte of RAM, a read 4 KiB past its end. There is
//! nothing there (no device, no RAM): the hypervisor stops the VM, naming the address.
#![no_std]
#![no_main]

use guest_tests::{Platform, entry, report};

entry!(main);

fn main(me: u32, info: &'static Platform) {
    let last = (info.ram_size - 1) as *const u8;
    // SAFETY: the last byte of RAM (inside the top vCPU stack's area, identity-mapped).
    let _ = unsafe { last.read_volatile() };
    report!(r#"{{"test":"hostile-memory","vcpu":{me},"ram_size":{}}}"#, info.ram_size);
    let beyond = (info.ram_size + 0x1000) as *const u64;
    // SAFETY: not safe: the point is that the hypervisor stops the VM here.
    let v = unsafe { beyond.read_volatile() };
    panic!("a read beyond RAM returned {v:#x}");
}
