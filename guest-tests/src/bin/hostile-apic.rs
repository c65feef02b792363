//! The xAPIC page and XSETBV, as an OS uses them and then as an attacker does.
//! Legal (the VM must live): a 32-bit read of every register offset (0x000-0x3f0), among them
//! PPR, APR, RRD, LVT CMCI and the timer's current count, which the processor does not
//! virtualize; writes to those (LVT CMCI keeps its value, read-only ones ignore it); reads of
//! every byte and 16-bit half of the virtualized ones; XSETBV with valid XCR0 values, and with
//! invalid ones (#GP). It reports, then ends as `end=` asks:
//! - `fetch`: jumps into the APIC page (an instruction fetch: the VM is stopped);
//! - `wide`: an 8-byte read of PPR and an 8-byte write of SVR (forms the SDM leaves undefined
//!   for APIC registers: the read returns 0 and the write is dropped, as under KVM; the VM
//!   lives and passes);
//! - `none`: passes.
#![no_std]
#![no_main]

use guest_tests::idt::try_xsetbv;
use guest_tests::{Platform, cpuid, entry, println, report};
use hvcore::apic::regs::{
    APR, DFR, EOI, ESR, ICR_HI, ICR_LO, ID, ISR, LDR, LVT_CMCI, LVT_ERROR, LVT_TIMER, PPR, RRD, SVR, TIMER_CURRENT,
    TIMER_DIVIDE, TIMER_INITIAL, TPR, VERSION,
};
use hvcore::guest_abi::APIC_MMIO_GPA;

entry!(main);

fn reg(offset: usize) -> *mut u32 {
    (APIC_MMIO_GPA + offset as u64) as *mut u32
}

/// Offsets the processor virtualizes for reads (SDM Vol. 3C §30.4.2).
fn virtualized(offset: usize) -> bool {
    matches!(
        offset,
        ID | VERSION | TPR | EOI | LDR | DFR | SVR | ISR..ESR | ESR | ICR_LO | ICR_HI | LVT_TIMER..=LVT_ERROR | TIMER_INITIAL | TIMER_DIVIDE
    )
}

fn main(me: u32, info: &'static Platform) {
    assert_eq!(info.apic_mode, 0, "hostile-apic runs in xAPIC mode");
    // 1. Every register offset, 32 bits.
    let mut values = [0u32; 64];
    for (i, v) in values.iter_mut().enumerate() {
        // SAFETY: the APIC page is identity-mapped; reads have no side effects (EOI is a write).
        *v = unsafe { reg(i * 16).read_volatile() };
    }
    let (ppr, cmci, current) = (values[PPR / 16], values[LVT_CMCI / 16], values[TIMER_CURRENT / 16]);
    assert_eq!(ppr & 0xf, 0, "PPR's low nibble");
    assert_eq!(cmci, 1 << 16, "LVT CMCI is masked at reset");
    assert_eq!(current, 0, "the timer is not running");
    assert_eq!(values[VERSION / 16] & 0xff, 0x14, "version register");
    // 2. Writes the processor does not virtualize.
    // SAFETY: as above; these registers are read-only or LVT CMCI.
    unsafe {
        reg(LVT_CMCI).write_volatile(0x0001_00f3);
        for ro in [APR, PPR, RRD, TIMER_CURRENT] {
            reg(ro).write_volatile(0xffff_ffff);
        }
    }
    // SAFETY: as above.
    let (cmci2, ppr2) = unsafe { (reg(LVT_CMCI).read_volatile(), reg(PPR).read_volatile()) };
    assert_eq!(cmci2, 0x0001_00f3, "LVT CMCI keeps what was written");
    assert_eq!(ppr2, ppr, "PPR is read-only");
    // 3. Bytes and 16-bit halves of the virtualized registers (complete in the processor).
    let mut narrow = 0u32;
    for offset in (0..hvcore::apic::regs::END).step_by(16).filter(|&o| virtualized(o)) {
        for b in 0..4 {
            // SAFETY: as above.
            let byte = unsafe { ((APIC_MMIO_GPA + (offset + b) as u64) as *const u8).read_volatile() };
            // SAFETY: as above.
            let word = unsafe { reg(offset).read_volatile() };
            assert_eq!(byte, (word >> (8 * b)) as u8, "byte {b} of register {offset:#x}");
            narrow += 1;
        }
        // SAFETY: as above.
        let half = unsafe { ((APIC_MMIO_GPA + (offset + 2) as u64) as *const u16).read_volatile() };
        // SAFETY: as above.
        assert_eq!(half, (unsafe { reg(offset).read_volatile() } >> 16) as u16);
        narrow += 1;
    }
    // 4. XSETBV: valid values, then each kind of invalid one.
    // SAFETY: CR4.OSXSAVE (bit 18) lets XSETBV run; nothing else changes.
    unsafe { core::arch::asm!("mov rax, cr4", "bts rax, 18", "mov cr4, rax", out("rax") _, options(nostack)) };
    let xsave_mask = cpuid(0xd, 0)[0] as u64;
    let avx = xsave_mask & 0b111 == 0b111;
    let mut valid = 0;
    for value in [0b1u64, 0b11, 0b111] {
        if value & !xsave_mask == 0 {
            assert!(try_xsetbv(0, value), "XSETBV XCR0 = {value:#x} must succeed");
            valid += 1;
        }
    }
    for (index, value, what) in
        [(0, 0b10, "x87 cleared"), (0, 0b101, "AVX without SSE"), (1, 0b11, "XCR1"), (0, 1 << 62, "a reserved bit")]
    {
        assert!(!try_xsetbv(index, value), "XSETBV {what} must raise #GP");
    }
    assert!(try_xsetbv(0, 0b11), "back to x87 + SSE");
    println!("APIC page: 64 registers read, {narrow} narrow reads; XSETBV: {valid} valid, 4 refused (AVX {avx})");
    report!(
        r#"{{"test":"hostile-apic","vcpu":{me},"registers":64,"narrow_reads":{narrow},"ppr":{ppr},"cmci":{cmci2},"xsetbv_valid":{valid},"xsetbv_refused":4}}"#
    );
    match info.arg("end").unwrap_or("none") {
        "fetch" => {
            // SAFETY: not safe at all: the point is that the hypervisor stops the VM here.
            unsafe { core::arch::asm!("jmp {}", in(reg) APIC_MMIO_GPA + TPR as u64, options(noreturn)) }
        }
        "wide" => {
            // SAFETY: 8-byte accesses to APIC registers are undefined (SDM Vol. 3A §12.4.1):
            // the hypervisor completes them without touching a register.
            let (v, svr) = unsafe {
                let v = ((APIC_MMIO_GPA + PPR as u64) as *const u64).read_volatile();
                let before = reg(SVR).read_volatile();
                ((APIC_MMIO_GPA + SVR as u64) as *mut u64).write_volatile(0);
                (v, (before, reg(SVR).read_volatile()))
            };
            assert_eq!(v, 0, "an 8-byte read of PPR reads 0");
            assert_eq!(svr.0, svr.1, "an 8-byte write of SVR is dropped");
            println!("8-byte APIC accesses: read 0, write dropped");
        }
        _ => {}
    }
}
