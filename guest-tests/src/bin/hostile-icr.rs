//! ICR fuzz in the VM's APIC mode: thousands of pseudo-random ICR values (every delivery mode,
//! NMI included, both destination modes, every shorthand, destinations inside and outside the VM,
//! illegal vectors 0-15), and in x2APIC mode writes with reserved bits, which must raise #GP.
//! The VM must stay alive and consistent; the neighbour VM must see none of it. INITs go out as
//! INIT level de-assert (which does nothing): a real INIT stops its target until a SIPI, so the
//! fuzz would end itself (INIT-SIPI is the smp-boot test's).
#![no_std]
#![no_main]

use guest_tests::sync::Barrier;
use guest_tests::{Platform, apic, entry, idt, report, sti};
use hvcore::apic::regs;

entry!(main);

static BARRIER: Barrier = Barrier::new();

const X2APIC_RESERVED: u64 = (1 << 13) | (3 << 16) | (0xfff << 20);

fn main(me: u32, info: &'static Platform) {
    let n = info.vcpu_count;
    let iterations: u32 = info.arg("iterations").and_then(|s| s.parse().ok()).unwrap_or(3000);
    sti();
    BARRIER.wait(n);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ ((me as u64 + 1) << 17);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut sent, mut gp_expected) = (0u32, 0u32);
    for i in 0..iterations {
        let r = next();
        let mut low = r as u32;
        // Vectors 16-31 are the guest's exception vectors: a real OS never sends them.
        let v = low as u8;
        if (16..32).contains(&v) {
            low |= 0x80;
        }
        if (low >> 8) & 7 == 5 {
            low = (low & !regs::ICR_ASSERT) | regs::ICR_LEVEL;
        }
        let dest_raw = next();
        if apic::is_x2apic() {
            let dest = if dest_raw & 1 == 0 { (dest_raw >> 8) as u32 % (n + 3) } else { (dest_raw >> 32) as u32 };
            let value = ((dest as u64) << 32) | low as u64;
            if i % 16 == 15 {
                idt::expect_gp();
                apic::wrmsr(regs::msr::ICR, value | X2APIC_RESERVED);
                gp_expected += 1;
            } else {
                apic::wrmsr(regs::msr::ICR, value & !X2APIC_RESERVED);
            }
        } else {
            apic::send(low, (dest_raw >> 8) as u32 & 0xff);
        }
        sent += 1;
    }
    assert_eq!(idt::gp_seen(), gp_expected, "#GP for each x2APIC ICR write with reserved bits");
    BARRIER.wait(n);
    report!(r#"{{"test":"hostile-icr","vcpu":{me},"sent":{sent},"gp":{gp_expected}}}"#);
}
