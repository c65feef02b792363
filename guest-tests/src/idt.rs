//! The guest IDT (built at the first load, after the APIC mode is chosen): every exception
//! prints vector, RIP and error code and fails the VM, except
//! a #GP the test announced with [`expect_gp`] (then the faulting RDMSR/WRMSR is skipped).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use hvcore::guest_abi::MAX_VCPUS;
use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

/// Per vCPU (indexed by APIC ID = vCPU index): the next #GP is announced, and how many were.
static EXPECT_GP: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static GP_SEEN: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

fn me() -> usize {
    (crate::cpuid(1, 0)[1] >> 24) as usize % MAX_VCPUS
}

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(de);
    idt.invalid_opcode.set_handler_fn(ud);
    idt.double_fault.set_handler_fn(df);
    idt.general_protection_fault.set_handler_fn(gp);
    idt.page_fault.set_handler_fn(pf);
    idt.breakpoint.set_handler_fn(bp);
    idt.non_maskable_interrupt.set_handler_fn(nmi);
    for v in 32..=255u8 {
        let handler = if v == crate::irq::FAST_VECTOR { crate::irq::fast_isr() } else { crate::irq::stub(v) };
        // SAFETY: each stub is a complete interrupt handler ending in IRETQ (irq.rs).
        unsafe { idt[v].set_handler_addr(x86_64::VirtAddr::new(handler)) };
    }
    idt
});

pub fn load() {
    IDT.load();
}

/// The next #GP is expected: skip the 2-byte RDMSR/WRMSR that raises it.
pub fn expect_gp() {
    EXPECT_GP[me()].store(true, Ordering::SeqCst);
}

/// How many expected #GPs this vCPU took.
pub fn gp_seen() -> u32 {
    GP_SEEN[me()].load(Ordering::SeqCst)
}

fn fail(name: &str, f: &InterruptStackFrame, code: Option<u64>) -> ! {
    crate::println!(
        "guest exception {name} at RIP {:#x}, error code {:?}, CR2 {:#x}",
        f.instruction_pointer.as_u64(),
        code,
        Cr2::read_raw()
    );
    crate::hypercall::exit(2)
}

extern "x86-interrupt" fn nmi(_f: InterruptStackFrame) {
    crate::irq::nmi();
}

extern "x86-interrupt" fn de(f: InterruptStackFrame) {
    fail("#DE", &f, None)
}
extern "x86-interrupt" fn ud(f: InterruptStackFrame) {
    fail("#UD", &f, None)
}
extern "x86-interrupt" fn bp(f: InterruptStackFrame) {
    fail("#BP", &f, None)
}
extern "x86-interrupt" fn df(f: InterruptStackFrame, code: u64) -> ! {
    fail("#DF", &f, Some(code))
}
extern "x86-interrupt" fn pf(f: InterruptStackFrame, code: PageFaultErrorCode) {
    fail("#PF", &f, Some(code.bits()))
}
extern "x86-interrupt" fn gp(mut f: InterruptStackFrame, code: u64) {
    let me = me();
    if EXPECT_GP[me].swap(false, Ordering::SeqCst) {
        GP_SEEN[me].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the announced instruction is a 2-byte RDMSR/WRMSR; resume after it.
        unsafe { f.as_mut().update(|s| s.instruction_pointer += 2u64) };
        return;
    }
    fail("#GP", &f, Some(code))
}
