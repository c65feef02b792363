//! Checks what the guest is shown: CPUID (VMX hidden, hypervisor leaves), the MSR allow-list
//! (#GP outside it), COM1 output through port I/O, unknown ports reading all-ones, and
//! hypercall argument checking. Elsewhere (QEMU) only what any PC gives: IA32_APIC_BASE with
//! the BSP flag, EFER.LMA, the FS base, COM1; the rest is this hypervisor's policy.
#![no_std]
#![no_main]

use guest_tests::{Platform, console, cpuid, entry, hypercall, idt, println, report};
use hvcore::apic::regs;
use hvcore::guest_abi::{CPUID_SIGNATURE, hypercall as hc};

entry!(main);

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR exits or passes through; a #GP is handled by the runtime when expected.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    ((hi as u64) << 32) | lo as u64
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as in rdmsr.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

fn main(vcpu: u32, info: &'static Platform) {
    // Any PC.
    let apic_base = rdmsr(regs::IA32_APIC_BASE);
    assert_eq!(apic_base & !0xfff, 0xfee0_0000);
    assert_eq!(apic_base & (1 << 8) != 0, vcpu == 0, "BSP flag only on vCPU 0");
    let efer = rdmsr(0xc000_0080);
    assert_ne!(efer & (1 << 10), 0, "EFER.LMA");
    wrmsr(0xc000_0100, 0x1234_5000);
    assert_eq!(rdmsr(0xc000_0100), 0x1234_5000);
    console::com1_write(b"cpuid-msr: hello through COM1\n");
    if !info.hypervisor {
        println!("vCPU {vcpu}: generic CPUID and MSR checks passed (not this hypervisor: its policy is not checked)");
        report!(r#"{{"test":"cpuid-msr","vcpu":{vcpu},"hypervisor":false}}"#);
        return;
    }
    let l1 = cpuid(1, 0);
    assert_eq!(l1[2] & (1 << 5), 0, "CPUID.1:ECX.VMX must be hidden");
    assert_ne!(l1[2] & (1 << 31), 0, "CPUID.1:ECX hypervisor bit");
    let hv = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&hv[1].to_le_bytes());
    sig[4..8].copy_from_slice(&hv[2].to_le_bytes());
    sig[8..].copy_from_slice(&hv[3].to_le_bytes());
    assert_eq!(&sig, CPUID_SIGNATURE, "hypervisor vendor leaf");
    assert!(hv[0] >= 0x4000_0001);

    // Allowed MSRs (EFER and the FS base pass through, checked above).
    assert_eq!(rdmsr(0x3a) & 5, 1, "FEATURE_CONTROL: locked, VMX off");

    // Not allowed: #GP, for reads and writes.
    let before = idt::gp_seen();
    idt::expect_gp();
    let _ = rdmsr(0x48); // IA32_SPEC_CTRL
    idt::expect_gp();
    wrmsr(0x1234, 1);
    idt::expect_gp();
    wrmsr(regs::IA32_APIC_BASE, apic_base | 1); // bit 0 is reserved
    idt::expect_gp();
    if guest_tests::apic::is_x2apic() {
        wrmsr(regs::msr::ID, 5); // the x2APIC ID is read-only
    } else {
        let _ = rdmsr(regs::msr::ID); // x2APIC registers do not exist in xAPIC mode
    }
    assert_eq!(idt::gp_seen() - before, 4, "four #GPs from disallowed MSR accesses");

    // Port I/O.
    // SAFETY: port reads are intercepted; COM2 (0x2F8) is not part of the VM's PC.
    let unknown = unsafe { x86_64::instructions::port::Port::<u8>::new(0x2f8).read() };
    assert_eq!(unknown, 0xff, "unknown port reads all-ones");

    // Hypercall argument checks: errors, not crashes.
    assert_eq!(hypercall::raw(hc::PRINT, info.ram_size - 4, 64), hc::E_FAULT);
    assert_eq!(hypercall::raw(hc::PRINT, 0x1000, hc::MAX_LEN + 1), hc::E_INVAL);
    assert_eq!(hypercall::raw(hc::REPORT, b"{oops".as_ptr() as u64, 5), hc::E_INVAL);
    assert_eq!(hypercall::raw(77, 0, 0), hc::E_NOSYS);

    let exits = hypercall::exit_counters();
    let (cpuid_exits, rdmsr_exits) = (exits[10], exits[31]);
    assert!(cpuid_exits >= 3, "CPUID exits counted: {cpuid_exits}");
    println!("vCPU {vcpu}: CPUID and MSR checks passed ({cpuid_exits} CPUID exits, {rdmsr_exits} RDMSR exits)");
    report!(r#"{{"test":"cpuid-msr","vcpu":{vcpu},"cpuid_exits":{cpuid_exits},"rdmsr_exits":{rdmsr_exits},"gp":4}}"#);
}
