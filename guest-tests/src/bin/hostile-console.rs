//! Console flood: 256 KiB of 4 KiB PRINTs and 16 KiB through COM1, as fast as the vCPU can.
//! The VM's console budget drops what is over its rate (counted in the summary), and the
//! neighbour keeps printing on time.
#![no_std]
#![no_main]

use guest_tests::console::com1_write;
use guest_tests::{Platform, entry, hypercall, report};

entry!(main);

static mut LINE: [u8; 4096] = [b'#'; 4096];

fn main(me: u32, _info: &'static Platform) {
    // SAFETY: each vCPU only reads the buffer after this one-time write by vCPU 0, which is
    // harmless if it races (bytes either way).
    let line = unsafe { &*(&raw const LINE) };
    for _ in 0..64 {
        assert_eq!(hypercall::print(line), 0);
    }
    for _ in 0..128 {
        com1_write(&line[..127]);
        com1_write(b"\n");
    }
    report!(r#"{{"test":"hostile-console","vcpu":{me},"printed_bytes":{}}}"#, 64 * 4096 + 128 * 128);
}
