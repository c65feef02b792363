//! The IPI round-trip benchmark's measured code, shared as assembly by the hypervisor's native
//! run and the `ipi-bench` guest, so that both sides of the comparison execute exactly the same
//! instructions: the sender's timed round trip, the receiver's wait loop and its interrupt
//! handler.
//!
//! Each block starts on a page boundary. Under Bochs the TSC advances by the instructions the
//! CPUs execute in their round-robin, which switches CPUs at trace (basic block) boundaries, and
//! a trace also ends where code crosses a page; code placed anywhere else in a binary would make
//! the measured path length depend on where unrelated code put it (seen: native xAPIC 36 vs 24
//! after an unrelated kernel change, with the sender written in Rust on each side).

/// Emits two handlers, `$x2apic` and `$xapic`: `lock inc` the u32 at `$hits`, EOI (x2APIC:
/// WRMSR 0x80B; xAPIC: a 32-bit store through the pointer at `$eoi_ptr`), IRETQ.
#[macro_export]
macro_rules! ipi_bench_isr {
    ($x2apic:ident, $xapic:ident, $hits:path, $eoi_ptr:path) => {
        core::arch::global_asm!(
            ".p2align 12",
            concat!(".global ", stringify!($x2apic)),
            concat!(stringify!($x2apic), ":"),
            "    pushq %rax",
            "    pushq %rcx",
            "    pushq %rdx",
            "    lock incl {hits}(%rip)",
            "    movl ${eoi_msr}, %ecx",
            "    xorl %eax, %eax",
            "    xorl %edx, %edx",
            "    wrmsr",
            "    popq %rdx",
            "    popq %rcx",
            "    popq %rax",
            "    iretq",
            concat!(".global ", stringify!($xapic)),
            concat!(stringify!($xapic), ":"),
            "    pushq %rax",
            "    lock incl {hits}(%rip)",
            "    movq {eoi}(%rip), %rax",
            "    movl $0, (%rax)",
            "    popq %rax",
            "    iretq",
            hits = sym $hits,
            eoi = sym $eoi_ptr,
            eoi_msr = const $crate::apic::regs::msr::EOI,
            options(att_syntax)
        );
    };
}

/// Emits the sender's round trip and the receiver's wait loop, and declares them:
///
/// - `$rt_x2apic(icr_low, dest, expected) -> u64` and `$rt_xapic(icr_low, dest, expected, icr)`:
///   RDTSC; write the ICR (x2APIC: WRMSR 0x830 with `dest` in bits 63:32; xAPIC: `dest << 24` to
///   ICR_HI at `icr + 0x10`, then `icr_low` to ICR_LO at `icr`, whose write sends); spin (PAUSE)
///   until the u32 at `$hits` equals `expected`; RDTSC; return the difference.
/// - `$wait(done, halt)`: until the byte at `done` is non-zero, STI;HLT (`halt` != 0) or PAUSE.
///   Interrupts must be enabled for the spinning form to make progress.
///
/// The caller guarantees, for each call, that the ICR write is allowed (the APIC mode matches,
/// `icr` maps the xAPIC ICR) and that some interrupt handler will make `$hits` reach `expected`
/// (or the call never returns).
#[macro_export]
macro_rules! ipi_bench_loops {
    ($rt_x2apic:ident, $rt_xapic:ident, $wait:ident, $hits:path) => {
        core::arch::global_asm!(
            ".p2align 12",
            concat!(".global ", stringify!($rt_x2apic)),
            concat!(stringify!($rt_x2apic), ":"),
            "    movl %edx, %r8d",
            "    rdtsc",
            "    shlq $32, %rdx",
            "    orq %rdx, %rax",
            "    movq %rax, %r9",
            "    movl %edi, %eax",
            "    movl %esi, %edx",
            "    movl ${icr_msr}, %ecx",
            "    wrmsr",
            "2:  pause",
            "    cmpl {hits}(%rip), %r8d",
            "    jne 2b",
            "    rdtsc",
            "    shlq $32, %rdx",
            "    orq %rdx, %rax",
            "    subq %r9, %rax",
            "    ret",
            concat!(".global ", stringify!($rt_xapic)),
            concat!(stringify!($rt_xapic), ":"),
            "    movl %edx, %r8d",
            "    shll ${dest_shift}, %esi",
            "    rdtsc",
            "    shlq $32, %rdx",
            "    orq %rdx, %rax",
            "    movq %rax, %r9",
            "    movl %esi, {icr_hi}(%rcx)",
            "    movl %edi, (%rcx)",
            "3:  pause",
            "    cmpl {hits}(%rip), %r8d",
            "    jne 3b",
            "    rdtsc",
            "    shlq $32, %rdx",
            "    orq %rdx, %rax",
            "    subq %r9, %rax",
            "    ret",
            concat!(".global ", stringify!($wait)),
            concat!(stringify!($wait), ":"),
            "4:  cmpb $0, (%rdi)",
            "    jne 6f",
            "    testl %esi, %esi",
            "    jz 5f",
            "    sti",
            "    hlt",
            "    jmp 4b",
            "5:  pause",
            "    jmp 4b",
            "6:  ret",
            hits = sym $hits,
            icr_msr = const $crate::apic::regs::msr::ICR,
            dest_shift = const $crate::apic::regs::XAPIC_DEST_SHIFT,
            icr_hi = const $crate::apic::regs::ICR_HI - $crate::apic::regs::ICR_LO,
            options(att_syntax)
        );
        unsafe extern "C" {
            fn $rt_x2apic(icr_low: u32, dest: u32, expected: u32) -> u64;
            fn $rt_xapic(icr_low: u32, dest: u32, expected: u32, icr: *mut u32) -> u64;
            fn $wait(done: *const u8, halt: u32);
        }
    };
}
