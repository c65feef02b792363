//! The interrupt handler of the IPI round-trip benchmark, shared as assembly by the
//! hypervisor's native run and the `ipi-bench` guest, so that both sides of the comparison
//! execute exactly the same instructions: count the hit, EOI, return.

/// Emits two handlers, `$x2apic` and `$xapic`: `lock inc` the u32 at `$hits`, EOI (x2APIC:
/// WRMSR 0x80B; xAPIC: a 32-bit store through the pointer at `$eoi_ptr`), IRETQ.
#[macro_export]
macro_rules! ipi_bench_isr {
    ($x2apic:ident, $xapic:ident, $hits:path, $eoi_ptr:path) => {
        core::arch::global_asm!(
            concat!(".global ", stringify!($x2apic)),
            concat!(stringify!($x2apic), ":"),
            "    pushq %rax",
            "    pushq %rcx",
            "    pushq %rdx",
            "    lock incl {hits}(%rip)",
            "    movl $0x80b, %ecx",
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
            options(att_syntax)
        );
    };
}
