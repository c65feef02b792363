//! HLT with interrupts off (SDM Vol. 2A "HLT": only an enabled interrupt, NMI, SMI, INIT or a
//! reset end the halt). vCPU 1 runs `cli; hlt`; vCPU 0 sends it a fixed IPI (with IPI
//! virtualization a posted interrupt, whose notification must leave the halt alone: SDM Vol.
//! 3C §30.6) and checks that vCPU 1 stays halted, then sends an NMI, which ends the halt; the
//! IPI, still pending, is taken as soon as vCPU 1 sets IF. Needs 2 vCPUs.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest_tests::apic;
use guest_tests::{Platform, entry, irq, println, rdtsc, report, sti, wait_until};
use hvcore::apic::regs::{ICR_ASSERT, ICR_NMI};

entry!(main);

const VECTOR: u8 = 0x61;
/// vCPU 1: 1 once its interrupts are off and it is about to halt, 2 once the halt ended.
static STAGE: AtomicU32 = AtomicU32::new(0);

fn delay_ms(p: &Platform, ms: u64) {
    let end = rdtsc() + ms * p.tsc_hz / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

fn main(vcpu: u32, info: &'static Platform) {
    assert!(info.vcpu_count >= 2, "conf-hlt needs 2 vCPUs");
    match vcpu {
        1 => {
            // SAFETY: the stage store and HLT touch nothing else; an interrupt meanwhile stays
            // pending (IF = 0), the NMI returns here.
            unsafe {
                core::arch::asm!(
                    "cli",
                    "mov dword ptr [{stage}], 1",
                    "hlt",
                    stage = in(reg) STAGE.as_ptr(),
                    options(nostack)
                )
            };
            STAGE.store(2, Ordering::Release);
            let nmis = irq::IRQS[1].nmis.load(Ordering::Acquire);
            assert_eq!(nmis, 1, "the halt ended by the NMI");
            assert_eq!(irq::count(1, VECTOR), 0, "not taken with IF = 0");
            sti();
            wait_until(info, 2, "the pending IPI after STI", || irq::count(1, VECTOR) == 1);
        }
        0 => {
            wait_until(info, 2, "vCPU 1 to disable interrupts", || STAGE.load(Ordering::Acquire) == 1);
            // Into HLT: a few instructions after the store.
            delay_ms(info, 1);
            apic::send_fixed(1, VECTOR);
            delay_ms(info, 20);
            assert_eq!(STAGE.load(Ordering::Acquire), 1, "an interrupt ended a HLT with IF = 0");
            apic::send(ICR_NMI | ICR_ASSERT, 1);
            wait_until(info, 2, "the NMI to end the halt", || STAGE.load(Ordering::Acquire) == 2);
            wait_until(info, 2, "vCPU 1 to take the IPI", || irq::count(1, VECTOR) == 1);
            println!("conf-hlt: cli; hlt held through a fixed IPI, ended by an NMI, the IPI taken after STI");
            report!(r#"{{"test":"conf-hlt","vcpu":0}}"#);
        }
        _ => {}
    }
}
