//! Watchdog evasion by exits: each vCPU loops forever on an exiting instruction, by index:
//! CPUID, PRINT, COM1 output (then again). The VMX-preemption timer counts only guest time, so
//! the watchdog must also be checked on exits: the VM must end as `timeout` on time.
#![no_std]
#![no_main]

use guest_tests::console::com1_write;
use guest_tests::{Platform, cpuid, entry, hypercall};

entry!(main);

fn main(me: u32, _info: &'static Platform) {
    let mode = ["cpuid", "print", "com1"][me as usize % 3];
    let mut n = 0u64;
    loop {
        match mode {
            "print" => {
                hypercall::print(b"hostile-exits: this PRINT loop never ends\n");
            }
            "com1" => com1_write(b"hostile-exits: COM1 loop\n"),
            _ => {
                core::hint::black_box(cpuid(0, 0));
            }
        }
        n += 1;
        core::hint::black_box(n);
    }
}
