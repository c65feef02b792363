//! Interrupts in the guest: one stub per vector 32..255 into a common handler that counts the
//! vector for this vCPU and EOIs; NMIs are counted too. Per-vCPU data sits behind GS.

use crate::boot::MAX_CPUS;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The vector of the benchmark's lean handler (hvcore::bench_isr, the same instructions the
/// hypervisor's native run executes): it only counts into [`FAST_HITS`] and EOIs.
pub const FAST_VECTOR: u8 = 0xee;
/// Hits of [`FAST_VECTOR`], all vCPUs together.
pub static FAST_HITS: AtomicU32 = AtomicU32::new(0);
/// The xAPIC EOI register (identity-mapped).
pub static EOI_PTR: AtomicU64 = AtomicU64::new(hvcore::guest_abi::APIC_MMIO_GPA + hvcore::apic::regs::EOI as u64);

hvcore::ipi_bench_isr!(fast_isr_x2apic, fast_isr_xapic, FAST_HITS, EOI_PTR);

unsafe extern "C" {
    fn fast_isr_x2apic();
    fn fast_isr_xapic();
}

/// The lean handler for the current APIC mode.
pub fn fast_isr() -> u64 {
    if crate::apic::is_x2apic() { fast_isr_x2apic as *const () as u64 } else { fast_isr_xapic as *const () as u64 }
}

/// Per vCPU: how many times each vector arrived, and NMIs.
pub struct VcpuIrqs {
    pub count: [AtomicU32; 256],
    pub nmis: AtomicU32,
    /// NMI handlers running now, and the most ever running at once.
    pub nmi_depth: AtomicU32,
    pub nmi_max_depth: AtomicU32,
    /// TSC at the last interrupt.
    pub last_tsc: AtomicU64,
}

/// Indexed by vCPU.
pub static IRQS: [VcpuIrqs; MAX_CPUS] = [const {
    VcpuIrqs {
        count: [const { AtomicU32::new(0) }; 256],
        nmis: AtomicU32::new(0),
        nmi_depth: AtomicU32::new(0),
        nmi_max_depth: AtomicU32::new(0),
        last_tsc: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Per-vCPU block reached through GS (offset 0: the vCPU index).
#[repr(C)]
struct PerVcpu {
    index: u64,
}

static PER_VCPU: [PerVcpu; MAX_CPUS] = {
    let mut a = [const { PerVcpu { index: 0 } }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        a[i].index = i as u64;
        i += 1;
    }
    a
};

/// Points GS at this vCPU's block (IA32_GS_BASE passes through to the guest).
pub fn set_this_vcpu(vcpu: u32) {
    crate::apic::wrmsr(0xc000_0101, &PER_VCPU[vcpu as usize] as *const PerVcpu as u64);
}

/// This vCPU's index.
#[inline]
pub fn this_vcpu() -> usize {
    let i: u64;
    // SAFETY: GS base points at a PerVcpu whose first field is the index (set_this_vcpu).
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) i, options(nostack, readonly, preserves_flags)) };
    i as usize
}

pub fn count(vcpu: usize, vector: u8) -> u32 {
    IRQS[vcpu].count[vector as usize].load(Ordering::Acquire)
}

/// A test's own work for a vector (a device's interrupt handler), run before the count and EOI.
static HANDLERS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Runs `handler` (on whichever vCPU takes it) for every interrupt with `vector`.
pub fn set_handler(vector: u8, handler: fn()) {
    HANDLERS[vector as usize].store(handler as usize as u64, Ordering::Release);
}

#[unsafe(no_mangle)]
extern "C" fn irq_dispatch(vector: u64) {
    let v = vector as usize & 0xff;
    let h = HANDLERS[v].load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `set_handler` stores here, and it stores a `fn()`.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(h as usize) };
        f();
    }
    let me = &IRQS[this_vcpu()];
    me.count[v].fetch_add(1, Ordering::AcqRel);
    me.last_tsc.store(crate::rdtsc(), Ordering::Relaxed);
    crate::apic::eoi();
}

/// TSC ticks each NMI handler spends before returning (0: none), so that a test can send NMIs
/// while one is being handled.
pub static NMI_DWELL_TICKS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn nmi() {
    let me = &IRQS[this_vcpu()];
    // Nesting would mean an NMI delivered before the last one's IRET: never, on real hardware.
    let depth = me.nmi_depth.fetch_add(1, Ordering::AcqRel) + 1;
    me.nmi_max_depth.fetch_max(depth, Ordering::AcqRel);
    me.nmis.fetch_add(1, Ordering::AcqRel);
    let dwell = NMI_DWELL_TICKS.load(Ordering::Relaxed);
    let t0 = crate::rdtsc();
    while crate::rdtsc().wrapping_sub(t0) < dwell {
        core::hint::spin_loop();
    }
    me.nmi_depth.fetch_sub(1, Ordering::AcqRel);
}

core::arch::global_asm!(
    r#"
    .section .text.irq_stubs, "ax"
    .global irq_stubs
    .p2align 4
irq_stubs:
    .set vec, 32
    .rept 224
    .p2align 4
    pushq $vec
    jmp irq_common
    .set vec, vec + 1
    .endr

irq_common:
    # The CPU pushed 5 words after aligning RSP to 16, the stub one: RSP is 16-aligned here.
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 72(%rsp), %rdi
    cld
    subq $8, %rsp
    call irq_dispatch
    addq $8, %rsp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $8, %rsp
    iretq
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static irq_stubs: u8;
}

/// Address of the stub for `vector` (32..=255): stubs are 16 bytes apart.
pub fn stub(vector: u8) -> u64 {
    &raw const irq_stubs as u64 + (vector as u64 - 32) * 16
}
