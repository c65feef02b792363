//! The PC's port-I/O devices as an OS probes them: fw_cfg (signature, CPU count, RAM size), the
//! 16550A on COM1 (scratch register, loopback, transmitter empty), both 8259s masked, PCI
//! mechanism #1 with an empty bus, the CMOS clock (a valid BCD date), and the
//! PIT's channel 2 in mode 0 timed against the TSC, the way Linux calibrates it, and the ACPI
//! PM timer over the same interval. vCPU 0 then
//! ends the VM through isa-debug-exit with the value of `exit=` (default 0: pass).
#![no_std]
#![no_main]

use guest_tests::port::{inb, inl, outb, outl, outw};
use guest_tests::sync::Barrier;
use guest_tests::{Platform, entry, println, rdtsc, report};

entry!(main);

static BARRIER: Barrier = Barrier::new();

/// The ACPI PM timer's port (the FADT's PM_TMR_BLK here; QEMU's q35 has it there too).
const PM_TIMER: u16 = 0x608;

fn fw_cfg(key: u16, buf: &mut [u8]) {
    outw(0x510, key);
    for b in buf {
        *b = inb(0x511);
    }
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

fn bcd_ok(v: u8) -> bool {
    v >> 4 < 10 && v & 0xf < 10
}

fn main(me: u32, info: &'static Platform) {
    let n = info.vcpu_count;
    BARRIER.wait(n);
    if me != 0 {
        BARRIER.wait(n);
        return;
    }
    let mut sig = [0u8; 4];
    fw_cfg(0x00, &mut sig);
    assert_eq!(&sig, b"QEMU", "fw_cfg signature");
    let mut cpus = [0u8; 2];
    fw_cfg(0x05, &mut cpus);
    assert_eq!(u16::from_le_bytes(cpus) as u32, n, "fw_cfg CPU count");
    let mut ram = [0u8; 8];
    fw_cfg(0x03, &mut ram);
    // This hypervisor's fw_cfg says the RAM the memory map ends at; QEMU's all of RAM, of which
    // firmware keeps some at the top for itself.
    let fw_ram = u64::from_le_bytes(ram);
    if info.hypervisor {
        assert_eq!(fw_ram, info.ram_size, "fw_cfg RAM size");
    } else {
        assert!(fw_ram >= info.ram_size, "fw_cfg RAM size {fw_ram} below the memory map's {}", info.ram_size);
    }

    // COM1: scratch register, loopback (Linux's 8250 probe), then back to normal.
    outb(0x3ff, 0xa5);
    assert_eq!(inb(0x3ff), 0xa5, "UART scratch register");
    outb(0x3fc, 0x10);
    outb(0x3f8, 0x42);
    assert_eq!((inb(0x3fd) & 1, inb(0x3f8)), (1, 0x42), "UART loopback");
    outb(0x3fc, 0x03);
    assert_eq!(inb(0x3fd) & 0x60, 0x60, "UART transmitter empty");

    // Both 8259s: initialize as Linux does and mask everything.
    for (base, icw3) in [(0x20u16, 0x04u8), (0xa0, 0x02)] {
        outb(base, 0x11);
        outb(base + 1, if base == 0x20 { 0x30 } else { 0x38 });
        outb(base + 1, icw3);
        outb(base + 1, 0x01);
        outb(base + 1, 0xff);
        assert_eq!(inb(base + 1), 0xff, "8259 at {base:#x} masked");
    }

    // PCI mechanism #1: the address register reads back; under this hypervisor no device
    // answers on bus 0 (QEMU's machine has its host bridge and more there).
    outl(0xcf8, 0x8000_0000);
    assert_eq!(inl(0xcf8), 0x8000_0000, "PCI configuration address");
    let found = (0..32u32)
        .filter(|dev| {
            outl(0xcf8, 0x8000_0000 | dev << 11);
            inl(0xcfc) & 0xffff != 0xffff
        })
        .count();
    if info.hypervisor {
        assert_eq!(found, 0, "PCI bus 0 is empty");
    }

    // CMOS: a valid BCD date in 24-hour mode.
    let date = [0u8, 2, 4, 7, 8, 9, 0x32].map(cmos);
    assert!(date.iter().all(|&v| bcd_ok(v)), "CMOS date in BCD: {date:x?}");
    assert!(cmos(0x0b) & 0x02 != 0, "24-hour mode");
    assert!((1..=0x12).contains(&date[4]) && (1..=0x31).contains(&date[3]), "CMOS month and day: {date:x?}");

    // PIT channel 2, mode 0, gated through port B: 11932 ticks = 10 ms, timed by the TSC.
    let pit_ms = 10u64;
    let count = (1_193_182 * pit_ms / 1000) as u16;
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, count as u8);
    let pm0 = inl(PM_TIMER);
    let t0 = rdtsc();
    outb(0x42, (count >> 8) as u8);
    while inb(0x61) & 0x20 == 0 {}
    let ticks = rdtsc() - t0;
    let pm_ticks = inl(PM_TIMER).wrapping_sub(pm0) & 0xff_ffff;
    let expected = info.tsc_hz * pit_ms / 1000;
    let per_mille = ticks * 1000 / expected;
    println!("PIT: {count} ticks took {ticks} TSC ticks, {per_mille}/1000 of the expected {expected}");
    assert!((900..=1200).contains(&per_mille), "PIT channel 2 against the TSC: {per_mille}/1000");

    // The ACPI PM timer (3.579545 MHz, 24 bits) over the same 10 ms.
    let pm_expected = 3_579_545 * pit_ms / 1000;
    let pm_per_mille = pm_ticks as u64 * 1000 / pm_expected;
    println!("ACPI PM timer: {pm_ticks} ticks in the PIT's 10 ms, {pm_per_mille}/1000 of {pm_expected}");
    assert!((900..=1200).contains(&pm_per_mille), "ACPI PM timer against the PIT: {pm_per_mille}/1000");

    report!(
        r#"{{"test":"pc-devices","vcpu":{me},"pit_per_mille":{per_mille},"pm_timer_per_mille":{pm_per_mille},"pci_devices":{found}}}"#
    );
    BARRIER.wait(n);
    let code: u8 = info.arg("exit").and_then(|s| s.parse().ok()).unwrap_or(0);
    outb(0xf4, code);
    panic!("isa-debug-exit did not end the VM");
}
