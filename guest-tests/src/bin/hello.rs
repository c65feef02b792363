//! Every vCPU reports its index and the APIC ID CPUID shows it.
#![no_std]
#![no_main]

use guest_tests::{Platform, cpuid, entry, println, report};

entry!(main);

fn main(vcpu: u32, info: &'static Platform) {
    let apic_id = cpuid(1, 0)[1] >> 24;
    let x2apic_id = cpuid(0xb, 0)[3];
    println!("hello from vCPU {vcpu} of {}, APIC ID {apic_id}", info.vcpu_count);
    assert_eq!(apic_id, vcpu, "CPUID.1 APIC ID");
    assert_eq!(x2apic_id, vcpu, "CPUID.0xB x2APIC ID");
    assert_eq!(info.apic_ids[vcpu as usize], vcpu, "boot info APIC ID");
    report!(r#"{{"test":"hello","vcpu":{vcpu},"apic_id":{apic_id},"vcpus":{}}}"#, info.vcpu_count);
}
