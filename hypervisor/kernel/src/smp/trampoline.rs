//! The AP start-up trampoline: real mode → long mode in one step, then into the kernel.
//!
//! A SIPI starts an AP in real mode at CS:IP = (vector << 8):0, i.e. at the start of a page
//! below 1 MiB. The blob below is copied to such a page; its data block (at [`DATA_OFFSET`]) is
//! filled in per AP. The AP loads a temporary GDT, turns on PAE, long mode (EFER.LME, and NXE
//! because the kernel's page tables use NX) and paging with protection at once (SDM Vol. 3A
//! §10.8.5 "Initializing IA-32e Mode"), far-jumps to 64-bit code, and jumps to the kernel stub,
//! which switches to the kernel's CR3. The temporary CR3 is a copy of the kernel's PML4 with
//! entry 0 replaced by an identity map of the first 2 MiB, so the trampoline page stays
//! reachable while paging turns on.

use core::mem::offset_of;

use crate::memory::phys_to_virt;

/// Where the data block sits inside the trampoline page.
pub const DATA_OFFSET: usize = 0xf00;

/// The per-AP inputs, at `DATA_OFFSET` in the trampoline page. Field offsets are used by the
/// assembly below; packed because LGDT wants the base right after the 16-bit limit.
#[repr(C, packed)]
pub struct TrampolineData {
    gdt: [u64; 3],
    gdtr_limit: u16,
    gdtr_base: u32,
    _pad0: u16,
    /// m16:32 far pointer to the 64-bit code: offset, then selector.
    far_offset: u32,
    far_selector: u16,
    _pad1: u16,
    /// Temporary PML4 (must be below 4 GiB: CR3 is loaded with a 32-bit value).
    temp_cr3: u32,
    _pad2: u32,
    pub kernel_cr3: u64,
    pub stack_top: u64,
    pub arg: u64,
    stub: u64,
    pub entry: u64,
}

const _: () = assert!(DATA_OFFSET + core::mem::size_of::<TrampolineData>() <= 0x1000);
const _: () = assert!(offset_of!(TrampolineData, gdtr_limit) == 24);
const _: () = assert!(offset_of!(TrampolineData, far_offset) == 32);
const _: () = assert!(offset_of!(TrampolineData, kernel_cr3) % 8 == 0);

const CODE64: u16 = 0x08;
const DATA64: u16 = 0x10;

core::arch::global_asm!(
    r#"
    .pushsection .text.ap_trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_long
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl {gdtr}
    movl %cr4, %eax
    orl $(1 << 5), %eax             # CR4.PAE
    movl %eax, %cr4
    movl {cr3}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          # IA32_EFER
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax   # LME | NXE
    wrmsr
    movl %cr0, %eax
    andl $0x9fffffff, %eax          # caches on: CD and NW may still be set from power-up
    orl $0x80010001, %eax           # PG | WP | PE
    movl %eax, %cr0
    ljmpl *{far}
    .code64
ap_trampoline_long:
    movw ${data_sel}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    leaq ap_trampoline_start(%rip), %rbx
    movq {stack}(%rbx), %rsp
    movq {arg}(%rbx), %rdi
    movq {kcr3}(%rbx), %rcx
    movq {entry}(%rbx), %rdx
    jmpq *{stub}(%rbx)
ap_trampoline_end:
    .popsection

    .global ap_kernel_stub
ap_kernel_stub:
    # Now in kernel text, reachable under both CR3s.
    movq %rcx, %cr3
    xorl %ebp, %ebp
    pushq $0                        # fake return address: the ABI's entry alignment
    jmpq *%rdx
    "#,
    gdtr = const DATA_OFFSET + offset_of!(TrampolineData, gdtr_limit),
    cr3 = const DATA_OFFSET + offset_of!(TrampolineData, temp_cr3),
    far = const DATA_OFFSET + offset_of!(TrampolineData, far_offset),
    stack = const DATA_OFFSET + offset_of!(TrampolineData, stack_top),
    arg = const DATA_OFFSET + offset_of!(TrampolineData, arg),
    kcr3 = const DATA_OFFSET + offset_of!(TrampolineData, kernel_cr3),
    entry = const DATA_OFFSET + offset_of!(TrampolineData, entry),
    stub = const DATA_OFFSET + offset_of!(TrampolineData, stub),
    data_sel = const DATA64,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_long: u8;
    static ap_trampoline_end: u8;
    static ap_kernel_stub: u8;
}

/// Four pages below 1 MiB: the code page, then the temporary PML4, PDPT and PD.
pub const PAGES: u64 = 4;

/// An installed trampoline.
pub struct Trampoline {
    page: u64,
}

impl Trampoline {
    /// Copies the code to `page` (physical, below 1 MiB, `PAGES` pages) and builds the
    /// temporary page tables from the kernel's PML4 at `kernel_cr3`.
    pub fn install(page: u64, kernel_cr3: u64) -> Self {
        assert!(page + PAGES * 0x1000 <= crate::memory::LOW_MEMORY_END && page.is_multiple_of(0x1000));
        // Linker-provided symbols delimiting the blob in kernel text (addresses only).
        let (start, long, end) = (
            &raw const ap_trampoline_start as usize,
            &raw const ap_trampoline_long as usize,
            &raw const ap_trampoline_end as usize,
        );
        let len = end - start;
        assert!(len <= DATA_OFFSET, "trampoline code overlaps its data block");
        let pml4 = page + 0x1000;
        let pdpt = page + 0x2000;
        let pd = page + 0x3000;
        // SAFETY: the pages were reserved for this (memory::init) and are mapped by the
        // physical window; the kernel PML4 is a live page-table page we only read.
        unsafe {
            core::ptr::copy_nonoverlapping(start as *const u8, phys_to_virt(page), len);
            core::ptr::copy_nonoverlapping(
                phys_to_virt(kernel_cr3 & 0x000f_ffff_ffff_f000),
                phys_to_virt(pml4),
                0x1000,
            );
            let present_rw = 0b11;
            *(phys_to_virt(pml4) as *mut u64) = pdpt | present_rw;
            core::ptr::write_bytes(phys_to_virt(pdpt), 0, 0x2000);
            *(phys_to_virt(pdpt) as *mut u64) = pd | present_rw;
            *(phys_to_virt(pd) as *mut u64) = present_rw | (1 << 7); // 2 MiB page at 0
            let d = &mut *(phys_to_virt(page + DATA_OFFSET as u64) as *mut TrampolineData);
            d.gdt = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
            d.gdtr_limit = 23;
            d.gdtr_base = (page + DATA_OFFSET as u64) as u32;
            d.far_offset = (page + (long - start) as u64) as u32;
            d.far_selector = CODE64;
            d.temp_cr3 = pml4 as u32;
            d.kernel_cr3 = kernel_cr3;
            d.stub = &raw const ap_kernel_stub as u64;
        }
        Self { page }
    }

    /// The SIPI vector that starts an AP here.
    pub fn sipi_vector(&self) -> u8 {
        (self.page >> 12) as u8
    }

    /// Sets the next AP's stack, entry and argument.
    pub fn prepare(&mut self, stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) {
        // SAFETY: the data block lives in our page; no AP is reading it (APs start one at a
        // time and have copied everything into registers before they report in).
        let d = unsafe { &mut *(phys_to_virt(self.page + DATA_OFFSET as u64) as *mut TrampolineData) };
        d.stack_top = stack_top;
        d.entry = entry as usize as u64;
        d.arg = arg;
    }
}
