//! Never finishes: the watchdog must end the VM as "timeout".
#![no_std]
#![no_main]

use guest_tests::{Platform, entry, println};

entry!(main);

fn main(vcpu: u32, _info: &'static Platform) {
    println!("vCPU {vcpu}: spinning forever");
    loop {
        core::hint::spin_loop();
    }
}
