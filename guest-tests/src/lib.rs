//! The guest runtime: entry, console, hypercalls, exception handling and TSC, for the test
//! guests in `src/bin/`. A test is `fn main(vcpu: u32, info: &'static BootInfo)`: returning means
//! this vCPU passed, a panic fails the VM.
#![no_std]
#![feature(abi_x86_interrupt)]

pub mod apic;
pub mod console;
pub mod hypercall;
pub mod idt;
pub mod irq;
pub mod sync;

pub use hvcore::guest_abi::BootInfo;

core::arch::global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    # RDI = vCPU index, RSI = boot-info address, RSP = this vCPU's stack (guest ABI).
    xor ebp, ebp
    and rsp, -16
    call guest_main
    ud2
    "#
);

/// Declares the test's `main`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn guest_main(vcpu: u64, info: &'static $crate::BootInfo) -> ! {
            $crate::start(vcpu as u32, info, $main)
        }
    };
}

/// Runs `main` on this vCPU with exceptions reported, then ends the vCPU as passed.
pub fn start(vcpu: u32, info: &'static BootInfo, main: fn(u32, &'static BootInfo)) -> ! {
    irq::set_this_vcpu(vcpu);
    // The APIC mode first: the IDT picks handlers by mode.
    apic::init(info.apic_mode == 1);
    idt::load();
    if info.magic != hvcore::guest_abi::BOOT_INFO_MAGIC || info.version != hvcore::guest_abi::BOOT_INFO_VERSION {
        panic!("boot info magic {:#x} version {} is not what this runtime knows", info.magic, info.version);
    }
    main(vcpu, info);
    hypercall::exit(0)
}

#[panic_handler]
fn panic(p: &core::panic::PanicInfo<'_>) -> ! {
    println!("PANIC: {p}");
    hypercall::exit(1)
}

/// The TSC (under Bochs: instructions executed).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf/subleaf as the guest sees it (this exits to the hypervisor).
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: the IDT handles every vector.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
}

/// `sti; hlt`: waits for an interrupt (the STI shadow keeps a wake-up from slipping in
/// between).
pub fn sti_hlt() {
    // SAFETY: as in sti.
    unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Spins until `cond` holds or `seconds` of TSC time pass; panics naming `what` on timeout.
pub fn wait_until(info: &BootInfo, seconds: u64, what: &str, cond: impl Fn() -> bool) {
    let deadline = rdtsc() + seconds * info.tsc_hz;
    while !cond() {
        if rdtsc() > deadline {
            panic!("timed out after {seconds} s waiting for {what}");
        }
        core::hint::spin_loop();
    }
}

/// The first byte past the loaded image (from the linker script).
pub fn image_end() -> u64 {
    unsafe extern "C" {
        static __image_end: u8;
    }
    &raw const __image_end as u64
}
