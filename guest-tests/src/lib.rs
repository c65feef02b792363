//! The runtime of the project's test kernels (`src/bin/`): multiboot v1 kernels that boot as
//! any such kernel does, on this hypervisor or under QEMU's `-kernel`. The bootstrap processor
//! finds the machine (multiboot information, ACPI MADT), starts the other processors with
//! INIT-SIPI-SIPI, and every processor runs the test's `fn main(cpu: u32, p: &'static Platform)`.
//! When all have returned, the VM ends through isa-debug-exit with 0 (pass); a panic anywhere
//! ends it with 1 (fail). Output goes to the UART; hypercalls are used only where CPUID shows
//! this hypervisor.
#![no_std]
#![feature(abi_x86_interrupt)]

pub mod apic;
pub mod boot;
pub mod console;
pub mod hypercall;
pub mod idt;
pub mod ioapic;
pub mod irq;
pub mod pit;
pub mod platform;
pub mod port;
pub mod sync;
pub mod uart;

use core::sync::atomic::{AtomicU32, Ordering};
use hvcore::apic::regs;

pub use platform::Platform;

static PLATFORM: spin::Once<Platform> = spin::Once::new();
/// Application processors that reached their entry, and processors whose main returned.
static STARTED: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);

/// isa-debug-exit (port 0xF4): the VM ends with `code` (0 pass). Under QEMU the process exits
/// with `code << 1 | 1`.
pub fn exit(code: u32) -> ! {
    // SAFETY: a write to the exit device; it does not return on a platform that has one.
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xf4).write(code) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Declares the test's `main`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn test_main(cpu: u32, platform: &'static $crate::Platform) {
            $main(cpu, platform)
        }
    };
}

unsafe extern "Rust" {
    fn test_main(cpu: u32, platform: &'static Platform);
}

/// The machine as the BSP found it.
pub fn platform() -> &'static Platform {
    PLATFORM.get().expect("the platform is found before any test code runs")
}

/// The bootstrap processor, from boot.rs in long mode on its stack.
#[unsafe(no_mangle)]
extern "C" fn bsp_main() -> ! {
    uart::init();
    // Firmware leaves the 8259s programmed with the PIT on IRQ 0 at vector 8 (SeaBIOS under
    // QEMU): masked, as an OS that uses the APICs masks them.
    // SAFETY: OCW1 to both PICs only masks their lines.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
    let (magic, info) = boot::multiboot();
    let p = PLATFORM.call_once(|| Platform::discover(magic, info));
    apic::init(p.apic_mode == 1);
    let me = p.index_of(apic::id()).expect("the BSP's APIC ID is in the MADT");
    assert_eq!(me, 0, "the BSP is the MADT's first processor");
    assert_eq!(apic::id(), 0, "the BSP has APIC ID 0 (it runs on stack 0)");
    irq::set_this_vcpu(0);
    idt::load();
    start_application_processors(p);
    // SAFETY: test_main is the test's main, declared by `entry!`.
    unsafe { test_main(0, p) };
    DONE.fetch_add(1, Ordering::AcqRel);
    while DONE.load(Ordering::Acquire) < p.vcpu_count {
        core::hint::spin_loop();
    }
    exit(0)
}

/// INIT, then SIPI (twice if the first does not take, as the MP protocol allows), for each
/// processor after the first, one at a time (SDM Vol. 3A §9.4.4.1).
fn start_application_processors(p: &Platform) {
    let code = boot::trampoline();
    // SAFETY: the trampoline page is free conventional memory (below the EBDA), identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), boot::TRAMPOLINE_GPA as *mut u8, code.len()) };
    let ms = p.tsc_hz / 1000;
    let delay = |ticks: u64| {
        let end = rdtsc() + ticks;
        while rdtsc() < end {
            core::hint::spin_loop();
        }
    };
    for i in 1..p.vcpu_count {
        let id = p.apic_ids[i as usize];
        apic::send(regs::ICR_INIT | regs::ICR_ASSERT | regs::ICR_LEVEL, id);
        delay(10 * ms);
        let started = |within: u64| {
            let end = rdtsc() + within;
            while rdtsc() < end {
                if STARTED.load(Ordering::Acquire) >= i {
                    return true;
                }
                core::hint::spin_loop();
            }
            false
        };
        apic::send(regs::ICR_STARTUP | regs::ICR_ASSERT | boot::SIPI_VECTOR as u32, id);
        if !started(ms) {
            apic::send(regs::ICR_STARTUP | regs::ICR_ASSERT | boot::SIPI_VECTOR as u32, id);
            assert!(started(1000 * ms), "CPU {i} (APIC ID {id}) did not start after INIT-SIPI-SIPI");
        }
    }
}

/// An application processor, from the trampoline in long mode on its stack.
#[unsafe(no_mangle)]
extern "C" fn ap_main() -> ! {
    let p = platform();
    apic::init(p.apic_mode == 1);
    let me = p.index_of(apic::id()).expect("this CPU's APIC ID is in the MADT");
    irq::set_this_vcpu(me);
    idt::load();
    STARTED.fetch_add(1, Ordering::AcqRel);
    // SAFETY: as on the BSP.
    unsafe { test_main(me, p) };
    DONE.fetch_add(1, Ordering::AcqRel);
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(p: &core::panic::PanicInfo<'_>) -> ! {
    println!("PANIC: {p}");
    exit(1)
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
pub fn wait_until(info: &Platform, seconds: u64, what: &str, cond: impl Fn() -> bool) {
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
