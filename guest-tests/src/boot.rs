//! How a test kernel starts, as any multiboot kernel does: the multiboot header (with the a.out
//! kludge, so QEMU's `-kernel` loads this ELF64 file too), the 32-bit entry that turns on long
//! mode with an identity map of the first 4 GiB, and the real-mode trampoline that application
//! processors run after INIT-SIPI-SIPI.

use core::sync::atomic::{AtomicU32, Ordering};

/// The page the trampoline is copied to: the SIPI vector is its page number.
pub const TRAMPOLINE_GPA: u64 = 0x8000;
pub const SIPI_VECTOR: u8 = (TRAMPOLINE_GPA >> 12) as u8;

/// Most CPUs the runtime starts, and each one's stack.
pub const MAX_CPUS: usize = 16;
pub const STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(4096))]
pub struct Stacks(pub [[u8; STACK_SIZE]; MAX_CPUS]);

/// Stack `i` belongs to the CPU with APIC ID `i` (the BSP's is 0): an application processor
/// finds its own from CPUID, so any number may start at once (a SIPI by shorthand) and one
/// restarted by INIT-SIPI takes the same stack again.
#[unsafe(no_mangle)]
pub static mut STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);
/// What the 32-bit entry found in EAX and EBX.
#[unsafe(no_mangle)]
pub static MULTIBOOT_MAGIC: AtomicU32 = AtomicU32::new(0);
#[unsafe(no_mangle)]
pub static MULTIBOOT_INFO: AtomicU32 = AtomicU32::new(0);

core::arch::global_asm!(
    r#"
    .section .text.multiboot, "ax"
    .balign 4
multiboot_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long multiboot_header
    .long __image_start
    .long __load_end
    .long __image_end
    .long _start32

    # Long mode from 32-bit protected mode without paging; \target is 64-bit code.
    .macro long_mode target
    lgdt gdt_pointer
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax             # PAE, OSFXSR, OSXMMEXCPT
    movl %eax, %cr4
    movl $0xC0000080, %ecx       # IA32_EFER: LME, NXE
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    andl $~0x6, %eax              # EM and MP clear: x87/SSE usable
    orl $0x80010023, %eax        # PG, WP, NE, MP, PE
    movl %eax, %cr0
    ljmp $0x08, $\target
    .endm

    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, MULTIBOOT_MAGIC
    movl %ebx, MULTIBOOT_INFO
    long_mode bsp64

ap32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    long_mode ap64

    .code64
bsp64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq STACKS + {stack}(%rip), %rsp
    xorl %ebp, %ebp
    call bsp_main
    ud2

ap64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    # The stack of this CPU's initial APIC ID (CPUID.1:EBX[31:24]).
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    incl %ebx
    imulq ${stack}, %rbx
    leaq STACKS(%rip), %rsp
    addq %rbx, %rsp
    xorl %ebp, %ebp
    call ap_main
    ud2

    # Copied to TRAMPOLINE_GPA; runs in real mode with CS = its page.
    .code16
    .global ap_trampoline
ap_trampoline:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl {tramp} + (ap_trampoline_gdt - ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $ap32
ap_trampoline_gdt:
    .word gdt_end - gdt - 1
    .long gdt
    .global ap_trampoline_end
ap_trampoline_end:
    .code64

    .section .data.boot, "aw"
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff     # 0x08: 64-bit code
    .quad 0x00cf92000000ffff     # 0x10: data
    .quad 0x00cf9a000000ffff     # 0x18: 32-bit code
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    # Identity map of 0..4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories.
    .balign 4096
    .global pml4
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd + 3
    .quad pd + 0x1000 + 3
    .quad pd + 0x2000 + 3
    .quad pd + 0x3000 + 3
    .fill 508, 8, 0
pd:
    .set boot_pd_page, 0
    .rept 2048
    .quad (boot_pd_page << 21) | 0x83
    .set boot_pd_page, boot_pd_page + 1
    .endr
    "#,
    stack = const STACK_SIZE,
    tramp = const TRAMPOLINE_GPA,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
    static pml4: u8;
}

/// The trampoline's code, to copy to [`TRAMPOLINE_GPA`].
pub fn trampoline() -> &'static [u8] {
    let (start, end) = (&raw const ap_trampoline, &raw const ap_trampoline_end);
    // SAFETY: both symbols delimit the trampoline's bytes in the loaded image.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// The guest-physical address of the PML4 (the hostile tests hand it to the hypervisor).
pub fn page_table_root() -> u64 {
    &raw const pml4 as u64
}

/// The top of the stack of the CPU with APIC ID `i` (0 is the BSP's).
pub fn stack_top(i: usize) -> u64 {
    assert!(i < MAX_CPUS);
    (&raw const STACKS as u64) + ((i + 1) * STACK_SIZE) as u64
}

pub fn multiboot() -> (u32, u32) {
    (MULTIBOOT_MAGIC.load(Ordering::Relaxed), MULTIBOOT_INFO.load(Ordering::Relaxed))
}
