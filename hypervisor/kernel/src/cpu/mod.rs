//! Per-CPU state: descriptor tables, the per-CPU block reached through GS, and the CPU index.

pub mod exceptions;
pub mod gdt;

use alloc::boxed::Box;
use core::sync::atomic::Ordering;
use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

/// Per-CPU data. GS base points at it on every CPU; `index` sits at a fixed offset so
/// [`crate::cpu_index::index`] is one load.
#[repr(C)]
pub struct PerCpu {
    /// Dense CPU index: 0 is the BSP, then the APs in MADT order.
    pub index: u32,
    pub apic_id: u32,
    pub gdt: gdt::CpuTables,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, index) == 0);

impl PerCpu {
    /// Allocates a CPU's block and descriptor tables. The BSP does this for every AP before
    /// starting it, so an AP needs no allocation before its GS base is set.
    pub fn new(index: u32, apic_id: u32) -> &'static PerCpu {
        Box::leak(Box::new(PerCpu { index, apic_id, gdt: gdt::CpuTables::new() }))
    }
}

/// The running CPU's TSS address (HOST_TR_BASE for VMCS host state).
pub fn tss_base() -> u64 {
    let pc: *const PerCpu = GsBase::read().as_ptr();
    // SAFETY: GS base points at this CPU's PerCpu once `activate` ran (before any VM exists).
    unsafe { (*pc).gdt.tss as *const _ as u64 }
}

/// Makes `pc` the running CPU's block: GS base, GDT, TSS and IDT. First thing on every CPU.
pub fn activate(pc: &'static PerCpu) {
    GsBase::write(VirtAddr::from_ptr(pc as *const PerCpu));
    crate::cpu_index::PERCPU_READY.store(true, Ordering::Release);
    pc.gdt.load();
    exceptions::load_idt();
}

/// The processor's brand string (CPUID 0x80000002-0x80000004; SDM Vol. 2A "CPUID"), trimmed:
/// the CPU model a run's interrupt paths and refusals are about. Empty where there is none.
pub fn brand() -> alloc::string::String {
    use core::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return alloc::string::String::new();
    }
    let mut bytes = alloc::vec::Vec::with_capacity(48);
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        let r = __cpuid(leaf);
        for reg in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&reg.to_le_bytes());
        }
    }
    // Brand strings pad with spaces inside too ("CPU     T9600  @"): one space between words.
    let text = alloc::string::String::from_utf8_lossy(&bytes);
    let words: alloc::vec::Vec<&str> =
        text.split(|c: char| c == '\0' || c.is_whitespace()).filter(|w| !w.is_empty()).collect();
    words.join(" ")
}
