//! MSR and port sweeps: RDMSR of every MSR in the architectural, VMX, x2APIC, hypervisor and
//! AMD-compatible ranges and of pseudo-random numbers, writing back what could be read; then
//! IN of every port at every width and OUT of 0 to every port but COM1's and isa-debug-exit's
//! (a write there ends the VM, by design). Each access completes or raises #GP; the VM lives and
//! the neighbour sees nothing.
#![no_std]
#![no_main]

use guest_tests::idt::{try_rdmsr, try_wrmsr};
use guest_tests::{Platform, entry, println, report};

entry!(main);

fn main(me: u32, _info: &'static Platform) {
    let (mut msrs, mut readable, mut written) = (0u32, 0u32, 0u32);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut random = core::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(x as u32)
    });
    let ranges = [0..0x2000u32, 0x4000_0000..0x4000_0200, 0xc000_0000..0xc000_2000, 0xc001_0000..0xc001_0200];
    let sweep = ranges.into_iter().flatten().chain((&mut random).take(4000));
    for msr in sweep {
        msrs += 1;
        if let Some(v) = try_rdmsr(msr) {
            readable += 1;
            // Writing back what was read must not hurt (the guest's own GS base among them).
            if try_wrmsr(msr, v) {
                written += 1;
            }
        }
    }
    println!("MSR sweep: {msrs} MSRs, {readable} readable, {written} written back");
    let mut ports = 0u32;
    for port in 0..=0xffffu16 {
        // SAFETY: port I/O always exits (unconditional I/O exiting); the hypervisor answers.
        unsafe {
            core::arch::asm!("in al, dx", in("dx") port, out("al") _, options(nomem, nostack));
            core::arch::asm!("in ax, dx", in("dx") port, out("ax") _, options(nomem, nostack));
            core::arch::asm!("in eax, dx", in("dx") port, out("eax") _, options(nomem, nostack));
            if !(0x3f8..0x400).contains(&port) && !(0xf4..0xf8).contains(&port) {
                core::arch::asm!("out dx, al", in("dx") port, in("al") 0u8, options(nomem, nostack));
            }
        }
        ports += 1;
    }
    println!("port sweep: {ports} ports read at 3 widths and written");
    report!(
        r#"{{"test":"hostile-sweep","vcpu":{me},"msrs":{msrs},"readable":{readable},"written_back":{written},"ports":{ports}}}"#
    );
}
