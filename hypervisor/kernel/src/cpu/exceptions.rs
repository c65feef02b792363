//! The IDT: every CPU exception is fatal and reported with vector, error code, RIP, CR2 and CPU.
//!
//! One IDT serves all CPUs: its contents are identical everywhere, and the per-CPU part (the
//! IST stacks it names) lives in each CPU's own TSS.

use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};

use crate::vectors;

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(de);
    idt.debug.set_handler_fn(db);
    idt.breakpoint.set_handler_fn(bp);
    idt.overflow.set_handler_fn(of);
    idt.bound_range_exceeded.set_handler_fn(br);
    idt.invalid_opcode.set_handler_fn(ud);
    idt.device_not_available.set_handler_fn(nm);
    idt.invalid_tss.set_handler_fn(ts);
    idt.segment_not_present.set_handler_fn(np);
    idt.stack_segment_fault.set_handler_fn(ss);
    idt.general_protection_fault.set_handler_fn(gp);
    idt.page_fault.set_handler_fn(pf);
    idt.x87_floating_point.set_handler_fn(mf);
    idt.alignment_check.set_handler_fn(ac);
    idt.simd_floating_point.set_handler_fn(xm);
    idt.virtualization.set_handler_fn(ve);
    idt.cp_protection_exception.set_handler_fn(cp);
    idt.hv_injection_exception.set_handler_fn(hv);
    idt.vmm_communication_exception.set_handler_fn(vc);
    idt.security_exception.set_handler_fn(sx);
    // SAFETY: the IST indices name stacks every CPU's TSS provides (gdt.rs).
    unsafe {
        idt.double_fault.set_handler_fn(df).set_stack_index(IST_DOUBLE_FAULT);
        idt.non_maskable_interrupt.set_handler_fn(nmi).set_stack_index(IST_NMI);
        idt.machine_check.set_handler_fn(mc).set_stack_index(IST_MACHINE_CHECK);
    }
    idt[vectors::SPURIOUS].set_handler_fn(spurious);
    // Kicks and posted-interrupt notifications reach the host only while a CPU waits for them
    // with interrupts on (HLT with `hlt = exit`); the waiter looks at its descriptor itself.
    idt[vectors::KICK].set_handler_fn(eoi_only);
    idt[vectors::GUEST_TIMER].set_handler_fn(eoi_only);
    idt[vectors::POSTED_INTR].set_handler_fn(eoi_only);
    // SAFETY: the benchmark handler is a complete interrupt handler ending in IRETQ.
    unsafe { idt[vectors::NATIVE_BENCH].set_handler_addr(x86_64::VirtAddr::new(crate::bench::isr_address())) };
    idt
});

pub fn load_idt() {
    IDT.load();
}

struct ErrorCode(Option<u64>);

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c:#x}"),
            None => f.write_str("none"),
        }
    }
}

fn fatal(vector: u8, name: &str, code: Option<u64>, f: &InterruptStackFrame) -> ! {
    crate::report::fatal(format_args!(
        "CPU exception {name} (vector {vector}) on CPU {cpu}: error code {code}, RIP {rip:#x}, CR2 {cr2:#x}, \
         RSP {rsp:#x}, CS {cs:#x}, RFLAGS {rflags:#x}",
        cpu = crate::cpu_index::index(),
        code = ErrorCode(code),
        cr2 = Cr2::read_raw(),
        rip = f.instruction_pointer.as_u64(),
        rsp = f.stack_pointer.as_u64(),
        cs = f.code_segment.0,
        rflags = f.cpu_flags.bits(),
    ))
}

macro_rules! no_code {
    ($($fn:ident, $vec:expr, $name:expr;)*) => {$(
        extern "x86-interrupt" fn $fn(f: InterruptStackFrame) {
            fatal($vec, $name, None, &f)
        }
    )*};
}

macro_rules! with_code {
    ($($fn:ident, $vec:expr, $name:expr;)*) => {$(
        extern "x86-interrupt" fn $fn(f: InterruptStackFrame, code: u64) {
            fatal($vec, $name, Some(code), &f)
        }
    )*};
}

no_code! {
    de, 0, "#DE divide error";
    db, 1, "#DB debug";
    bp, 3, "#BP breakpoint";
    of, 4, "#OF overflow";
    br, 5, "#BR bound range";
    ud, 6, "#UD invalid opcode";
    nm, 7, "#NM device not available";
    mf, 16, "#MF x87 floating point";
    xm, 19, "#XM SIMD floating point";
    ve, 20, "#VE virtualization";
    hv, 28, "#HV hypervisor injection";
}

with_code! {
    ts, 10, "#TS invalid TSS";
    np, 11, "#NP segment not present";
    ss, 12, "#SS stack-segment fault";
    gp, 13, "#GP general protection";
    ac, 17, "#AC alignment check";
    cp, 21, "#CP control protection";
    vc, 29, "#VC VMM communication";
    sx, 30, "#SX security";
}

extern "x86-interrupt" fn df(f: InterruptStackFrame, code: u64) -> ! {
    fatal(8, "#DF double fault", Some(code), &f)
}

extern "x86-interrupt" fn mc(f: InterruptStackFrame) -> ! {
    fatal(18, "#MC machine check", None, &f)
}

extern "x86-interrupt" fn pf(f: InterruptStackFrame, code: PageFaultErrorCode) {
    // Error code bit 0 (SDM Vol. 3A §4.7): 0 = page not present, 1 = protection violation.
    let bits = code.bits();
    fatal(
        14,
        if bits & 1 == 0 { "#PF page fault (not present)" } else { "#PF page fault (protection)" },
        Some(bits),
        &f,
    )
}

/// Host NMIs are wake-ups from other CPUs (a virtual NMI is pending for the vCPU here, see
/// vm/ipi.rs); the vCPU's run loop injects it before its next entry.
extern "x86-interrupt" fn nmi(_f: InterruptStackFrame) {}

extern "x86-interrupt" fn eoi_only(_f: InterruptStackFrame) {
    crate::apic::eoi();
}

extern "x86-interrupt" fn spurious(_f: InterruptStackFrame) {
    // Spurious APIC interrupts need no EOI (SDM Vol. 3A §12.9).
}
