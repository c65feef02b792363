//! The guest IDT (built at the first load, after the APIC mode is chosen): every exception
//! prints vector, RIP and error code and fails the VM, except
//! a #GP the test announced with [`expect_gp`] (then the faulting RDMSR/WRMSR is skipped), or
//! one that [`try_rdmsr`], [`try_wrmsr`] or [`try_xsetbv`] may raise.

use crate::boot::MAX_CPUS;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

/// Per vCPU (indexed by APIC ID = vCPU index): the next #GP is announced (the length of the
/// instruction to skip; 0: not announced), and how many were taken.
static EXPECT_GP: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static GP_SEEN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// The same for #UD.
static EXPECT_UD: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static UD_SEEN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn me() -> usize {
    (crate::cpuid(1, 0)[1] >> 24) as usize % MAX_CPUS
}

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(de);
    idt.invalid_opcode.set_handler_fn(ud);
    idt.double_fault.set_handler_fn(df);
    idt.general_protection_fault.set_handler_fn(gp);
    idt.page_fault.set_handler_fn(pf);
    idt.breakpoint.set_handler_fn(bp);
    idt.debug.set_handler_fn(db);
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
    EXPECT_GP[me()].store(2, Ordering::SeqCst);
}

/// Runs `f`, whose only possibly faulting instruction is `len` bytes long; true if it took #GP.
fn gp_from(len: u8, f: impl FnOnce()) -> bool {
    let me = me();
    let before = GP_SEEN[me].load(Ordering::SeqCst);
    EXPECT_GP[me].store(len, Ordering::SeqCst);
    f();
    EXPECT_GP[me].store(0, Ordering::SeqCst);
    GP_SEEN[me].load(Ordering::SeqCst) != before
}

/// Runs `f`, whose one instruction that may raise #GP is `len` bytes long (the handler skips
/// it); true if it did.
pub fn raises_gp(len: u8, f: impl FnOnce()) -> bool {
    gp_from(len, f)
}

/// Runs `f`, whose one instruction that may raise #UD is `len` bytes long (the handler skips
/// it); true if it did.
pub fn raises_ud(len: u8, f: impl FnOnce()) -> bool {
    let me = me();
    let before = UD_SEEN[me].load(Ordering::SeqCst);
    EXPECT_UD[me].store(len, Ordering::SeqCst);
    f();
    EXPECT_UD[me].store(0, Ordering::SeqCst);
    UD_SEEN[me].load(Ordering::SeqCst) != before
}

/// RDMSR that may fault: `None` if it raised #GP.
pub fn try_rdmsr(msr: u32) -> Option<u64> {
    let mut v = 0;
    let gp = gp_from(2, || v = crate::apic::rdmsr(msr));
    (!gp).then_some(v)
}

/// WRMSR that may fault: false if it raised #GP.
pub fn try_wrmsr(msr: u32, value: u64) -> bool {
    !gp_from(2, || crate::apic::wrmsr(msr, value))
}

/// XSETBV (3 bytes) that may fault: false if it raised #GP.
pub fn try_xsetbv(index: u32, value: u64) -> bool {
    !gp_from(3, || {
        // SAFETY: a #GP is caught above; a valid value changes only which state XSAVE manages.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
        }
    })
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
    crate::exit(2)
}

extern "x86-interrupt" fn nmi(_f: InterruptStackFrame) {
    crate::irq::nmi();
}

/// Per vCPU: single-step #DBs taken, the RIP and DR6 of the last one (the handler clears TF in
/// the interrupted flags and DR6, so one instruction is stepped at a time).
pub static DB_COUNT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
pub static DB_RIP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
pub static DB_DR6: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

extern "x86-interrupt" fn db(mut f: InterruptStackFrame) {
    let me = me();
    let dr6: u64;
    // SAFETY: DR6 is read and cleared (its bits are sticky); nothing else uses it.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack));
        core::arch::asm!("mov dr6, {}", in(reg) 0xffff_0ff0u64, options(nomem, nostack));
    }
    DB_RIP[me].store(f.instruction_pointer.as_u64(), Ordering::SeqCst);
    DB_DR6[me].store(dr6, Ordering::SeqCst);
    DB_COUNT[me].fetch_add(1, Ordering::SeqCst);
    // SAFETY: clearing TF in the interrupted RFLAGS only ends single-stepping.
    unsafe {
        f.as_mut()
            .update(|s| s.cpu_flags = x86_64::registers::rflags::RFlags::from_bits_retain(s.cpu_flags.bits() & !0x100))
    };
}

extern "x86-interrupt" fn de(f: InterruptStackFrame) {
    fail("#DE", &f, None)
}
extern "x86-interrupt" fn ud(mut f: InterruptStackFrame) {
    let me = me();
    let len = EXPECT_UD[me].swap(0, Ordering::SeqCst);
    if len != 0 {
        UD_SEEN[me].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the announced instruction is `len` bytes long; resume after it.
        unsafe { f.as_mut().update(|s| s.instruction_pointer += len as u64) };
        return;
    }
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
    let len = EXPECT_GP[me].swap(0, Ordering::SeqCst);
    if len != 0 {
        GP_SEEN[me].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the announced instruction is `len` bytes long; resume after it.
        unsafe { f.as_mut().update(|s| s.instruction_pointer += len as u64) };
        return;
    }
    fail("#GP", &f, Some(code))
}
