//! Single-step over instructions the hypervisor completes (SDM Vol. 3A §18.3.1.4 "Single-Step
//! Exception Condition": with RFLAGS.TF = 1 a #DB trap with DR6.BS follows each instruction):
//! CPUID, IN and OUT, an emulated RDMSR, an MMIO read of the I/O APIC, an APIC register the
//! processor does not virtualize (xAPIC mode), and NOP for comparison, each once: the trap
//! arrives once, after the instruction, with DR6.BS set.
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use guest_tests::idt::{DB_COUNT, DB_DR6, DB_RIP};
use guest_tests::{Platform, apic, entry, println, report};

entry!(main);

const DR6_BS: u64 = 1 << 14;

/// Runs `$insn` with TF set (POPF sets it: the trap follows the next instruction); the address
/// after it.
macro_rules! stepped {
    ($insn:literal $(, $($arg:tt)*)?) => {{
        let after: u64;
        // SAFETY: the #DB handler clears TF again; the instruction's own operands are given.
        unsafe {
            core::arch::asm!(
                "lea {after}, [rip + 2f]",
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                $insn,
                "2:",
                after = out(reg) after,
                $($($arg)*)?
            )
        };
        after
    }};
}

fn check(what: &str, after: u64) {
    let me = 0;
    assert_eq!(DB_COUNT[me].swap(0, Ordering::SeqCst), 1, "{what}: one single-step trap");
    assert_eq!(DB_RIP[me].load(Ordering::SeqCst), after, "{what}: the trap follows the instruction");
    assert_ne!(DB_DR6[me].load(Ordering::SeqCst) & DR6_BS, 0, "{what}: DR6.BS");
}

fn main(vcpu: u32, info: &'static Platform) {
    if vcpu != 0 {
        return;
    }
    check("NOP", stepped!("nop"));
    // CPUID writes RBX, which inline assembly may not name: saved around the step.
    let after: u64;
    // SAFETY: as in `stepped!`; RBX is restored.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "lea {after}, [rip + 2f]",
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "cpuid",
            "2:",
            "pop rbx",
            after = out(reg) after,
            inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
        )
    };
    check("CPUID", after);
    check("OUT", stepped!("out 0x80, al", in("al") 0u8));
    check("IN", stepped!("in al, 0x61", out("al") _));
    check("RDMSR", stepped!("rdmsr", in("ecx") 0x1a0u32, out("eax") _, out("edx") _));
    if let Some((_, base, _)) = info.io_apic {
        check("I/O APIC MMIO", stepped!("mov eax, [{p}]", p = in(reg) base + 0x10, out("eax") _));
    }
    if !apic::is_x2apic() {
        let ppr = hvcore::guest_abi::APIC_MMIO_GPA + 0xa0;
        check("xAPIC PPR", stepped!("mov eax, [{p}]", p = in(reg) ppr, out("eax") _));
    }
    println!("conf-step: one #DB with DR6.BS after each instruction completed by the hypervisor");
    report!(r#"{{"test":"conf-step","vcpu":0}}"#);
}
