//! Hardware task switching (SDM Vol. 3A §8.3 "Task Switching", §8.4 "Task Linking", §6.11
//! task gates in the IDT), which a processor in VMX non-root operation leaves to the
//! hypervisor (Vol. 3C §26.2). vCPU 1 is restarted by INIT-SIPI into real-mode code that
//! enters 32-bit protected mode with task A and then:
//! 1. CALLs task B through its TSS: B sees NT set, its back link = A, TR = B, CR0.TS set and
//!    both TSS descriptors busy, clobbers every register and returns with IRET; A finds its
//!    registers as it left them;
//! 2. runs INT 40H, a task gate to task C, which sees NT and its back link and returns;
//! 3. loads DS with a selector past the GDT's limit: the #GP goes through a task gate to task
//!    D, which finds the error code (the selector) on its stack and A's saved EIP at the
//!    faulting instruction, moves that EIP past it and returns;
//! 4. JMPs to task E: no back link written, NT clear, A's descriptor available again, B's
//!    available since its IRET.
//! vCPU 0 prepares the tables, restarts vCPU 1 and checks what the tasks recorded. Needs 2
//! vCPUs.
#![no_std]
#![no_main]

use guest_tests::apic;
use guest_tests::{Platform, entry, println, rdtsc, report};
use hvcore::apic::regs::{ICR_ASSERT, ICR_INIT, ICR_LEVEL, ICR_STARTUP};

entry!(main);

/// The code (SIPI vector 9), the results below it, the IDT and the TSSs above it.
const CODE: u64 = 0x9000;
const RESULTS: u64 = 0x8f00;
const IDT: u64 = 0xa000;
const TSS: [u64; 5] = [0xb000, 0xb080, 0xb100, 0xb180, 0xb200];
/// Each task's initial stack top (task A's is set by its code).
const STACKS: [u32; 5] = [0x9f00, 0xc800, 0xcc00, 0xd000, 0xd400];

const SEL_CODE: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_TSS: [u16; 5] = [0x18, 0x20, 0x28, 0x30, 0x38];
/// The selector task A loads into DS: past the GDT's limit (3FH), so #GP(1F8H).
const BAD_SELECTOR: u32 = 0x1f8;

// Results (doublewords after the stage byte).
const STAGE: u64 = RESULTS;
const B_EFLAGS: u64 = RESULTS + 0x04;
const B_LINK: u64 = RESULTS + 0x08;
const B_TR: u64 = RESULTS + 0x0c;
const B_CR0: u64 = RESULTS + 0x10;
const A_REGS_KEPT: u64 = RESULTS + 0x14;
const C_EFLAGS: u64 = RESULTS + 0x18;
const C_LINK: u64 = RESULTS + 0x1c;
const D_CODE: u64 = RESULTS + 0x20;
const D_A_EIP: u64 = RESULTS + 0x24;
const E_EFLAGS: u64 = RESULTS + 0x28;
const E_LINK: u64 = RESULTS + 0x2c;
const E_TR: u64 = RESULTS + 0x30;
const E_A_TYPE: u64 = RESULTS + 0x34;
const E_B_TYPE: u64 = RESULTS + 0x38;
const A_RESUMED: u64 = RESULTS + 0x3c;
const B_A_TYPE: u64 = RESULTS + 0x40;
const B_B_TYPE: u64 = RESULTS + 0x44;
const A_TR: u64 = RESULTS + 0x48;

core::arch::global_asm!(
    r#"
    .section .rodata.conf_ts, "a"
    .global conf_ts_code, conf_ts_code_end, conf_ts_task_b, conf_ts_task_c, conf_ts_task_d
    .global conf_ts_task_e, conf_ts_fault_at
    .code16
conf_ts_code:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x9f00, %sp
    lgdtl (0x9000 + conf_ts_gdt_ptr - conf_ts_code)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    .byte 0x66, 0xea
    .long 0x9000 + conf_ts_pm - conf_ts_code
    .word 0x08
    .code32
conf_ts_pm:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $0x9f00, %esp
    lidt (0x9000 + conf_ts_idt_ptr - conf_ts_code)
    movw $0x18, %ax
    ltr %ax
    movb $1, 0x8f00

    # 1. CALL task B with known registers; B returns with IRET.
    movl $0x11111111, %eax
    movl $0x22222222, %ebx
    movl $0x33333333, %ecx
    movl $0x44444444, %edx
    movl $0x55555555, %esi
    movl $0x66666666, %edi
    movl $0x77777777, %ebp
    lcall $0x20, $0
    cmpl $0x11111111, %eax
    jne 1f
    cmpl $0x22222222, %ebx
    jne 1f
    cmpl $0x33333333, %ecx
    jne 1f
    cmpl $0x44444444, %edx
    jne 1f
    cmpl $0x55555555, %esi
    jne 1f
    cmpl $0x66666666, %edi
    jne 1f
    cmpl $0x77777777, %ebp
    jne 1f
    cmpl $0x9f00, %esp
    jne 1f
    movl $1, 0x8f14
1:
    movb $2, 0x8f00

    # 2. INT 40H: a task gate to task C.
    int $0x40
    movb $3, 0x8f00

    # 3. #GP(1F8H) through a task gate to task D, which moves A past the MOV.
    movw $0x1f8, %ax
conf_ts_fault_at:
    movw %ax, %ds
    movl $1, 0x8f3c
    str %ax
    movzwl %ax, %eax
    movl %eax, 0x8f48
    movb $4, 0x8f00

    # 4. JMP to task E, which does not come back.
    ljmp $0x38, $0
2:  hlt
    jmp 2b

conf_ts_task_b:
    pushfl
    popl %eax
    movl %eax, 0x8f04
    movzwl 0xb080, %eax
    movl %eax, 0x8f08
    str %ax
    movzwl %ax, %eax
    movl %eax, 0x8f0c
    movl %cr0, %eax
    movl %eax, 0x8f10
    movzbl (0x9000 + conf_ts_gdt - conf_ts_code + 0x18 + 5), %eax
    movl %eax, 0x8f40
    movzbl (0x9000 + conf_ts_gdt - conf_ts_code + 0x20 + 5), %eax
    movl %eax, 0x8f44
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    iretl

conf_ts_task_c:
    pushfl
    popl %eax
    movl %eax, 0x8f18
    movzwl 0xb100, %eax
    movl %eax, 0x8f1c
    iretl

conf_ts_task_d:
    popl %eax
    movl %eax, 0x8f20
    movl 0xb000 + 32, %eax
    movl %eax, 0x8f24
    addl $2, 0xb000 + 32
    iretl

conf_ts_task_e:
    pushfl
    popl %eax
    movl %eax, 0x8f28
    movzwl 0xb200, %eax
    movl %eax, 0x8f2c
    str %ax
    movzwl %ax, %eax
    movl %eax, 0x8f30
    movzbl (0x9000 + conf_ts_gdt - conf_ts_code + 0x18 + 5), %eax
    movl %eax, 0x8f34
    movzbl (0x9000 + conf_ts_gdt - conf_ts_code + 0x20 + 5), %eax
    movl %eax, 0x8f38
    movb $5, 0x8f00
3:  cli
    hlt
    jmp 3b

    .balign 8
conf_ts_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff      # 0x08: 32-bit code, flat
    .quad 0x00cf92000000ffff      # 0x10: 32-bit data, flat
    .quad 0x00008900b0000067      # 0x18: TSS A at 0xB000
    .quad 0x00008900b0800067      # 0x20: TSS B
    .quad 0x00008900b1000067      # 0x28: TSS C
    .quad 0x00008900b1800067      # 0x30: TSS D
    .quad 0x00008900b2000067      # 0x38: TSS E
conf_ts_gdt_ptr:
    .word 0x3f
    .long 0x9000 + conf_ts_gdt - conf_ts_code
conf_ts_idt_ptr:
    .word 0x207
    .long 0xa000
conf_ts_code_end:
    .code64
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static conf_ts_code: u8;
    static conf_ts_code_end: u8;
    static conf_ts_task_b: u8;
    static conf_ts_task_c: u8;
    static conf_ts_task_d: u8;
    static conf_ts_task_e: u8;
    static conf_ts_fault_at: u8;
}

fn poke(p: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: low conventional memory below the image, identity-mapped, unused by the
        // runtime once the processors started.
        unsafe { ((p + i as u64) as *mut u8).write_volatile(*b) };
    }
}

fn peek32(p: u64) -> u32 {
    // SAFETY: as above.
    unsafe { (p as *const u32).read_volatile() }
}

/// Where `label` of the code block runs once copied to [`CODE`].
fn at(label: *const u8) -> u32 {
    (CODE + (label as u64 - &raw const conf_ts_code as u64)) as u32
}

/// A 32-bit TSS that starts at `eip` with `esp`, flat selectors, interrupts off, no LDT, the
/// I/O bitmap past the limit, and its back link preset to FFFFH (so a write shows).
fn tss(base: u64, eip: u32, esp: u32) {
    let mut t = [0u8; 0x68];
    let mut put = |at: usize, v: u32| t[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(0, 0xffff);
    put(32, eip);
    put(36, 0x2);
    put(56, esp);
    for (i, s) in [SEL_DATA, SEL_CODE, SEL_DATA, SEL_DATA, SEL_DATA, SEL_DATA].iter().enumerate() {
        put(72 + i * 4, *s as u32);
    }
    put(100, 0x68 << 16);
    poke(base, &t);
}

/// A task gate to `selector` (SDM Vol. 3A Figure 6-2: present, DPL 0, type 5).
fn task_gate(vector: u64, selector: u16) {
    let gate = (selector as u64) << 16 | 0x85 << 40;
    poke(IDT + vector * 8, &gate.to_le_bytes());
}

fn main(vcpu: u32, info: &'static Platform) {
    assert!(info.vcpu_count >= 2, "conf-task needs 2 vCPUs");
    if vcpu != 0 {
        // Restarted by vCPU 0 before long.
        loop {
            core::hint::spin_loop();
        }
    }
    let start = &raw const conf_ts_code as u64;
    let len = &raw const conf_ts_code_end as u64 - start;
    // SAFETY: the code block is `len` bytes of this image; CODE is a free low page.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, CODE as *mut u8, len as usize) };
    poke(RESULTS, &[0; 0x50]);
    poke(IDT, &[0; 0x208]);
    task_gate(0x40, SEL_TSS[2]);
    task_gate(13, SEL_TSS[3]);
    let entries = [
        0,
        at(&raw const conf_ts_task_b),
        at(&raw const conf_ts_task_c),
        at(&raw const conf_ts_task_d),
        at(&raw const conf_ts_task_e),
    ];
    for i in 0..5 {
        tss(TSS[i], entries[i], STACKS[i]);
    }

    apic::send(ICR_INIT | ICR_ASSERT | ICR_LEVEL, info.apic_ids[1]);
    let end = rdtsc() + info.tsc_hz / 100;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
    apic::send(ICR_STARTUP | ICR_ASSERT | (CODE >> 12) as u32, info.apic_ids[1]);
    let deadline = rdtsc() + 5 * info.tsc_hz;
    while peek32(STAGE) & 0xff != 5 {
        assert!(rdtsc() < deadline, "vCPU 1 stopped at stage {}", peek32(STAGE) & 0xff);
        core::hint::spin_loop();
    }

    const NT: u32 = 1 << 14;
    let b_eflags = peek32(B_EFLAGS);
    assert_ne!(b_eflags & NT, 0, "CALL: NT set in the new task ({b_eflags:#x})");
    assert_eq!(peek32(B_LINK), SEL_TSS[0] as u32, "CALL: back link to task A");
    assert_eq!(peek32(B_TR), SEL_TSS[1] as u32, "CALL: TR is task B");
    assert_ne!(peek32(B_CR0) & 8, 0, "a task switch sets CR0.TS");
    assert_eq!((peek32(B_A_TYPE), peek32(B_B_TYPE)), (0x8b, 0x8b), "CALL: both TSS descriptors busy");
    assert_eq!(peek32(A_REGS_KEPT), 1, "IRET back to task A restores its registers");
    assert_ne!(peek32(C_EFLAGS) & NT, 0, "INT 40H through a task gate nests the task");
    assert_eq!(peek32(C_LINK), SEL_TSS[0] as u32, "and links it to task A");
    assert_eq!(peek32(D_CODE), BAD_SELECTOR, "#GP through a task gate: the error code on the new stack");
    assert_eq!(peek32(D_A_EIP), at(&raw const conf_ts_fault_at), "task A saved at the faulting instruction");
    assert_eq!(peek32(A_RESUMED), 1, "task A resumed after the MOV");
    assert_eq!(peek32(A_TR), SEL_TSS[0] as u32, "with TR back at task A");
    assert_eq!(peek32(E_EFLAGS) & NT, 0, "JMP: NT clear");
    assert_eq!(peek32(E_LINK), 0xffff, "JMP: no back link written");
    assert_eq!(peek32(E_TR), SEL_TSS[4] as u32, "JMP: TR is task E");
    assert_eq!((peek32(E_A_TYPE), peek32(E_B_TYPE)), (0x89, 0x89), "JMP frees task A; IRET freed task B");
    println!(
        "conf-task: CALL, IRET, INT n and #GP through task gates, JMP: links, NT, busy bits, TR, CR0.TS and the error code as the SDM says"
    );
    report!(r#"{{"test":"conf-task","vcpu":0}}"#);
    // vCPU 1 stays halted in task E: the VM ends here.
    guest_tests::exit(0);
}
