//! Real mode and the instruction pointer's width, on vCPU 1 restarted by INIT-SIPI into code of
//! this test (SDM Vol. 3A §9.4.4):
//! 1. an RDMSR of an MSR that does not exist raises #GP through the real-mode IVT, and real
//!    mode pushes no error code (SDM Vol. 3A §20.1.4; VM entry refuses one there on processors
//!    without IA32_VMX_BASIC[56], Vol. 3C §27.2.1.3): the handler finds IP, CS, FLAGS;
//! 2. CPUID (which the hypervisor completes) as the last instruction of a 64 KiB code segment:
//!    the next fetch at IP 10000H is beyond the limit, #GP as after any other instruction there
//!    (Vol. 3B §22.33.1; QEMU's TCG does not check the limit and wraps IP to 0);
//! 3. CPUID at EIP FFFFFFFEH of a 32-bit code segment: EIP wraps to 0 (Vol. 3A §3.3.7), and
//!    execution goes on at the segment's base.
//! vCPU 0 prepares the code, restarts vCPU 1 and checks what it recorded. Needs 2 vCPUs.
#![no_std]
#![no_main]

use guest_tests::apic;
use guest_tests::{Platform, entry, println, rdtsc, report};
use hvcore::apic::regs::{ICR_ASSERT, ICR_INIT, ICR_LEVEL, ICR_STARTUP};

entry!(main);

/// Where the real-mode code runs (SIPI vector 9), and the results it leaves (below it).
const CODE: u64 = 0x9000;
const RESULTS: u64 = 0x8f00;
/// The 32-bit code segment's base: CPUID sits 2 bytes below it (EIP FFFFFFFEH), and the code
/// at the base records that EIP wrapped.
const WRAP_BASE: u64 = 0x2_0000;

// Results: stage byte, then words.
const STAGE: u64 = RESULTS;
const GP1_IP: u64 = RESULTS + 2;
const GP1_CS: u64 = RESULTS + 4;
const GP1_SEEN: u64 = RESULTS + 6;
const GP2_IP: u64 = RESULTS + 8;
const GP2_SEEN: u64 = RESULTS + 10;

core::arch::global_asm!(
    r#"
    .section .rodata.conf_rm, "a"
    .global conf_rm_code, conf_rm_code_end, conf_rm_rdmsr_at
    .code16
conf_rm_code:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x9f00, %sp
    # QEMU's TCG wraps IP to 0 past 0900:FFFF instead of faulting: here again, go on.
    cmpb $2, 0x8f00
    je conf_rm_after_limit
    movw $(conf_rm_gp - conf_rm_code), (13 * 4)
    movw $0x0900, (13 * 4 + 2)
    movb $1, 0x8f00
    movl $0x1234, %ecx
conf_rm_rdmsr_at:
    rdmsr
    movb $2, 0x8f00
    ljmp $0x0900, $0xfffe
conf_rm_after_limit:
    movb $3, 0x8f00
    lgdtl (0x9000 + conf_rm_gdt_ptr - conf_rm_code)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    .byte 0x66, 0xea
    .long 0xfffffffe
    .word 0x08

    # #GP in real mode: IP, CS and FLAGS on the stack, nothing else.
conf_rm_gp:
    pushw %bp
    movw %sp, %bp
    cmpb $1, 0x8f00
    jne 1f
    movw 2(%bp), %ax
    movw %ax, 0x8f02
    movw 4(%bp), %ax
    movw %ax, 0x8f04
    movw $1, 0x8f06
    addw $2, 2(%bp)
    popw %bp
    iret
1:
    movw 2(%bp), %ax
    movw %ax, 0x8f08
    movw $1, 0x8f0a
    movw $(conf_rm_after_limit - conf_rm_code), 2(%bp)
    movw $0x0900, 4(%bp)
    popw %bp
    iret

    .balign 8
conf_rm_gdt:
    .quad 0
    .quad 0x00cf9a020000ffff      # 0x08: 32-bit code, base 0x20000, 4 GiB
conf_rm_gdt_ptr:
    .word 15
    .long 0x9000 + conf_rm_gdt - conf_rm_code
conf_rm_code_end:
    .code64
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static conf_rm_code: u8;
    static conf_rm_code_end: u8;
    static conf_rm_rdmsr_at: u8;
}

/// Bytes placed at fixed guest-physical addresses: CPUID at the 32-bit segment's last two
/// bytes, and at its base `mov byte [0x8f00], 4; cli; hlt; jmp $-1`.
fn place(p: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: low conventional memory below the image, identity-mapped, unused by the
        // runtime once the processors started.
        unsafe { ((p + i as u64) as *mut u8).write_volatile(*b) };
    }
}

fn peek16(p: u64) -> u16 {
    // SAFETY: as above.
    unsafe { (p as *const u16).read_volatile() }
}

fn main(vcpu: u32, info: &'static Platform) {
    assert!(info.vcpu_count >= 2, "conf-realmode needs 2 vCPUs");
    if vcpu != 0 {
        // Restarted by vCPU 0 before long.
        loop {
            core::hint::spin_loop();
        }
    }
    let start = &raw const conf_rm_code as u64;
    let len = &raw const conf_rm_code_end as u64 - start;
    let rdmsr_ip = (&raw const conf_rm_rdmsr_at as u64 - start) as u16;
    // SAFETY: the code block is `len` bytes of this image; CODE is a free low page.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, CODE as *mut u8, len as usize) };
    place(RESULTS, &[0; 16]);
    // At 0900:FFFE (linear 0x18FFE) CPUID.
    place(CODE + 0xfffe, &[0x0f, 0xa2]);
    place(WRAP_BASE - 2, &[0x0f, 0xa2]);
    place(WRAP_BASE, &[0xc6, 0x05, 0x00, 0x8f, 0x00, 0x00, 0x04, 0xfa, 0xf4, 0xeb, 0xfd]);

    apic::send(ICR_INIT | ICR_ASSERT | ICR_LEVEL, info.apic_ids[1]);
    let ms = info.tsc_hz / 1000;
    let end = rdtsc() + 10 * ms;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
    apic::send(ICR_STARTUP | ICR_ASSERT | (CODE >> 12) as u32, info.apic_ids[1]);
    let deadline = rdtsc() + 5 * info.tsc_hz;
    while peek16(STAGE) & 0xff != 4 {
        assert!(
            rdtsc() < deadline,
            "vCPU 1 stopped at stage {} (results {:#x?})",
            peek16(STAGE) & 0xff,
            [peek16(GP1_SEEN), peek16(GP2_SEEN)]
        );
        core::hint::spin_loop();
    }

    if info.hypervisor {
        assert_eq!(peek16(GP1_SEEN), 1, "RDMSR of a missing MSR raised #GP in real mode");
        assert_eq!(peek16(GP1_IP), rdmsr_ip, "the #GP pushed IP (and no error code before it)");
        assert_eq!(peek16(GP1_CS), 0x0900, "and CS");
        assert_eq!(peek16(GP2_SEEN), 1, "fetching past a 64 KiB segment raised #GP");
        assert_eq!(peek16(GP2_IP), 0, "at IP 10000H, pushed as its low 16 bits");
    }
    println!("conf-realmode: real-mode #GP without an error code, #GP past a 64 KiB segment, EIP wrapped at 4 GiB");
    report!(r#"{{"test":"conf-realmode","vcpu":0}}"#);
    // vCPU 1 stays halted in its 32-bit code: the VM ends here.
    guest_tests::exit(0);
}
