//! The new exit paths of a conformant platform, as an attacker drives them, beside a neighbour
//! VM that must see nothing: thousands of pseudo-random IA32_APIC_BASE values (reserved bits,
//! illegal transitions, relocations onto RAM, the I/O APIC's window and unmapped space, each
//! followed by a register access at the new base), SVR values, xAPIC ID values (aliases,
//! broadcast), IPIs to those IDs, CR0 writes that change NE with arbitrary other bits, CR4
//! writes of every bit, and REP INS/OUTS with huge counts. Every access either completes or
//! faults as hardware would; the VM reports and passes, its APIC put back as it found it.
#![no_std]
#![no_main]

use guest_tests::idt::{raises_gp, try_wrmsr};
use guest_tests::{Platform, apic, entry, println, report, sti};
use hvcore::apic::base::{EN, EXTD};
use hvcore::apic::regs::{self, IA32_APIC_BASE};

entry!(main);

/// xorshift64: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

fn main(vcpu: u32, _info: &'static Platform) {
    if vcpu != 0 {
        return;
    }
    let start_base = apic::rdmsr(IA32_APIC_BASE);
    let x2apic = start_base & EXTD != 0;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut base_faults, mut base_ok) = (0u32, 0u32);
    for i in 0..3000u32 {
        let r = rng.next();
        // A base anywhere, in a few interesting places often.
        let addr = match i % 4 {
            0 => 0xfec0_0000,
            1 => 0x10_0000 + (r & 0xff_f000),
            2 => r & 0x00ff_ffff_f000,
            _ => hvcore::guest_abi::APIC_MMIO_GPA,
        };
        let value = addr | (r & (EN | EXTD | (1 << 8))) | if r >> 60 == 0 { r & 0x2ff } else { 0 };
        if try_wrmsr(IA32_APIC_BASE, value) {
            base_ok += 1;
            let now = apic::rdmsr(IA32_APIC_BASE);
            if now & (EN | EXTD) == EN && (0xf000_0000..0x1_0000_0000).contains(&addr) {
                // An xAPIC at its new base: a read of its version register there.
                // SAFETY: the new base is above RAM and inside the identity map: the hypervisor
                // completes the access.
                let _ = unsafe { ((addr + 0x30) as *const u32).read_volatile() };
            }
        } else {
            base_faults += 1;
        }
        // Back to a known state: disabled, then the mode the runtime uses.
        apic::wrmsr(IA32_APIC_BASE, start_base & !(EN | EXTD));
        apic::wrmsr(IA32_APIC_BASE, (start_base & !EXTD) | EN);
        if x2apic {
            apic::wrmsr(IA32_APIC_BASE, start_base);
        }
    }
    apic::set_x2apic_interface(x2apic);
    apic::write(regs::SVR, 0x1ff);

    sti();
    for _ in 0..2000 {
        let r = rng.next();
        apic::write(regs::SVR, r as u32 & 0x1ff | 0x100);
        if !x2apic {
            apic::write(regs::ID, (r as u32) & 0xff00_0000);
        }
        // Fixed IPIs to whatever IDs exist now (vectors with the runtime's counting handler).
        apic::send(0x4000 | 0x40 | (r as u32 >> 8 & 0x3f), (r >> 16) as u32 & 0xff);
    }
    apic::write(regs::SVR, 0x1ff);
    if !x2apic {
        apic::write(regs::ID, 0);
    }

    let c0 = cr0();
    let mut cr_faults = 0u32;
    for _ in 0..2000 {
        let r = rng.next();
        // NE changed, plus bits that do not change the paging mode (TS, MP, AM, WP, CD, NW,
        // reserved ones): each write is completed by the hypervisor, or faults.
        let low = r & ((1 << 3) | (1 << 1) | (1 << 18) | (1 << 30) | (1 << 29) | 0xffc0);
        let high = if r & 1 == 1 { r & 0xffff_0000_0000_0000 } else { 0 };
        let v = (c0 ^ (1 << 5)) ^ low ^ high;
        // SAFETY: paging and protection stay as they are, or the write faults.
        if raises_gp(3, || unsafe { core::arch::asm!("mov cr0, rax", in("rax") v, options(nostack)) }) {
            cr_faults += 1;
        }
        // SAFETY: as above.
        unsafe { core::arch::asm!("mov cr0, rax", in("rax") c0, options(nostack)) };
    }
    let c4: u64;
    // SAFETY: reading CR4.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) c4, options(nomem, nostack)) };
    for bit in 0..64 {
        // SAFETY: a write of one more bit: it takes effect (a feature the VM has), or faults.
        let _ = raises_gp(3, || unsafe {
            core::arch::asm!("mov cr4, rax", in("rax") c4 | (1u64 << bit), options(nostack))
        });
        // SAFETY: back as it was.
        unsafe { core::arch::asm!("mov cr4, rax", in("rax") c4, options(nostack)) };
    }

    let mut buf = [0u8; 64];
    // SAFETY: INS writes exactly the buffer; the long OUTS only reads guest RAM (1 MiB up,
    // below the image) and writes port 0x80, which no device claims.
    unsafe {
        core::arch::asm!("rep insb", inout("rdi") buf.as_mut_ptr() => _, inout("rcx") 64u64 => _, in("dx") 0x2f8u16, options(nostack));
        core::arch::asm!("rep outsb", inout("rsi") 0x10_0000u64 => _, inout("rcx") 100_000u64 => _, in("dx") 0x80u16, options(nostack));
    }
    assert_eq!(buf, [0xff; 64]);
    println!(
        "hostile-lapic: {base_ok} APIC base writes taken, {base_faults} faulted; 2000 SVR/ID/IPI rounds; {cr_faults} CR0 writes faulted; string I/O"
    );
    report!(
        r#"{{"test":"hostile-lapic","vcpu":0,"base_ok":{base_ok},"base_faults":{base_faults},"cr0_faults":{cr_faults}}}"#
    );
}
