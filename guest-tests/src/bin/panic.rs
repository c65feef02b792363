//! Panics: the VM must end as "fail" with the panic message in its reason.
#![no_std]
#![no_main]

use guest_tests::{Platform, entry};

entry!(main);

fn main(vcpu: u32, _info: &'static Platform) {
    panic!("deliberate guest panic on vCPU {vcpu}");
}
