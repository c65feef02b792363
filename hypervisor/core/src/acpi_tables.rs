//! The ACPI tables of a VM (ACPI 6.5 §5.2): RSDP, XSDT, FADT, DSDT and MADT, built per VM and
//! placed in the BIOS area where an OS scans for the RSDP (§5.2.5.1: a 16-byte boundary in
//! 0xE0000-0xFFFFF). The platform is hardware-reduced ACPI (no PM1 or GPE blocks, no SCI, no
//! FACS), as Firecracker's and Cloud Hypervisor's x86 guests see it, and the FADT forces APIC
//! physical destination mode, so that the guest's IPIs are the kind IPI virtualization covers.

use alloc::vec::Vec;

/// Where the tables go: the RSDP first, the rest after it.
pub const RSDP_GPA: u64 = 0xe_0000;
/// The local APIC and I/O APIC addresses every PC has.
pub const LOCAL_APIC_GPA: u32 = 0xfee0_0000;
pub const IO_APIC_GPA: u32 = 0xfec0_0000;

const OEM_ID: &[u8; 6] = b"IPIVHV";
const OEM_TABLE_ID: &[u8; 8] = b"IPIVHV  ";
const CREATOR_ID: &[u8; 4] = b"IPHV";

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// vCPUs, with APIC IDs 0..vcpus.
    pub vcpus: u32,
    /// The vCPUs start in x2APIC mode: processor entries are Local x2APIC structures.
    pub x2apic: bool,
    /// An I/O APIC at 0xFEC00000 with this ID, GSIs from 0.
    pub io_apic_id: Option<u8>,
}

/// FADT flags (ACPI 6.5 Table 5.10).
mod fadt_flags {
    pub const WBINVD: u32 = 1 << 0;
    pub const PWR_BUTTON: u32 = 1 << 4;
    pub const SLP_BUTTON: u32 = 1 << 5;
    pub const RESET_REG_SUP: u32 = 1 << 10;
    pub const FORCE_APIC_PHYSICAL_DESTINATION_MODE: u32 = 1 << 19;
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// IA-PC boot architecture flags (ACPI 6.5 Table 5.11): legacy ISA devices (UART, PIT, RTC)
/// are there; no 8042, no VGA.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// The tables as one block of bytes to copy to guest-physical [`RSDP_GPA`].
pub fn build(p: &Platform) -> Vec<u8> {
    let base = RSDP_GPA;
    // RSDP (36 bytes, filled in last), then each table 16-byte aligned.
    let mut out = alloc::vec![0u8; 36];
    let place = |out: &mut Vec<u8>, table: Vec<u8>| -> u64 {
        out.resize(out.len().next_multiple_of(16), 0);
        let at = base + out.len() as u64;
        out.extend_from_slice(&table);
        at
    };
    let dsdt = place(&mut out, sdt(b"DSDT", 2, &dsdt_aml()));
    let fadt = place(&mut out, fadt(dsdt));
    let madt = place(&mut out, madt(p));
    let mut entries = Vec::new();
    for t in [fadt, madt] {
        entries.extend_from_slice(&t.to_le_bytes());
    }
    let xsdt = place(&mut out, sdt(b"XSDT", 1, &entries));
    out[..36].copy_from_slice(&rsdp(xsdt));
    out
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// RSDP, ACPI 2.0+ form (§5.2.5.3): the 32-bit RSDT address is 0, the XSDT is used.
fn rsdp(xsdt: u64) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2;
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// A system description table: the 36-byte header (§5.2.6) and `body`, checksummed.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The DSDT's AML (§20.2): `Scope (\_SB) { Device (COM1) { _HID PNP0501, _UID 1, _CRS } }`.
/// A hardware-reduced platform has no legacy PIC and so no ISA IRQ numbers of its own (Linux:
/// `legacy_pic = &null_legacy_pic`, no preallocated IRQs 0-15); an OS learns the UART's GSI
/// from this `_CRS` alone, as from any firmware's, and without it Linux's ttyS0 cannot open.
fn dsdt_aml() -> Vec<u8> {
    use crate::devices::uart16550::{COM1, COM1_IRQ, LEN};
    let [lo, hi] = COM1.to_le_bytes();
    let irq_mask = (1u16 << COM1_IRQ).to_le_bytes();
    let crs: [u8; 13] = [
        0x47,
        0x01,
        lo,
        hi,
        lo,
        hi,
        0x01,
        LEN as u8, // I/O port descriptor (§6.4.2.5), 16-bit decode
        0x22,
        irq_mask[0],
        irq_mask[1], // IRQ descriptor (§6.4.2.1): edge, active high
        0x79,
        0x00, // end tag (§6.4.2.9); checksum 0: "treated as correct"
    ];
    let mut dev = Vec::new();
    dev.extend_from_slice(b"COM1");
    dev.extend_from_slice(&aml::name(b"_HID", &aml::dword(eisa_id(*b"PNP", 0x0501))));
    dev.extend_from_slice(&aml::name(b"_UID", &[aml::ONE_OP]));
    dev.extend_from_slice(&aml::name(b"_CRS", &aml::buffer(&crs)));
    let mut sb = Vec::new();
    sb.extend_from_slice(b"\\_SB_");
    sb.extend_from_slice(&aml::device(&dev));
    aml::scope(&sb)
}

/// A compressed EISA ID (`EisaId ("PNP0501")`, §19.6.35): three letters of 5 bits, then the
/// product number, stored big-endian.
fn eisa_id(vendor: [u8; 3], product: u16) -> u32 {
    let v = vendor.map(|c| (c - 0x40) as u16);
    let mfg = (v[0] << 10) | (v[1] << 5) | v[2];
    let [m0, m1] = mfg.to_be_bytes();
    let [p0, p1] = product.to_be_bytes();
    u32::from_le_bytes([m0, m1, p0, p1])
}

/// The few AML encodings (§20.2) the DSDT needs.
mod aml {
    use alloc::vec::Vec;

    pub const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const BYTE_PREFIX: u8 = 0x0a;
    const DWORD_PREFIX: u8 = 0x0c;
    const EXT_OP: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;

    /// PkgLength (§20.2.4) of a body of `len` bytes: the count includes its own bytes.
    fn pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = op.to_vec();
        let n = body.len();
        if n + 1 < 0x40 {
            out.push((n + 1) as u8);
        } else {
            let total = n + 2;
            assert!(total < 0x1000, "AML package too long for a 2-byte PkgLength");
            out.push(0x40 | (total & 0xf) as u8);
            out.push((total >> 4) as u8);
        }
        out.extend_from_slice(body);
        out
    }

    pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
        let mut out = alloc::vec![NAME_OP];
        out.extend_from_slice(seg);
        out.extend_from_slice(value);
        out
    }

    pub fn dword(v: u32) -> Vec<u8> {
        let mut out = alloc::vec![DWORD_PREFIX];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 0x100);
        let mut body = alloc::vec![BYTE_PREFIX, bytes.len() as u8];
        body.extend_from_slice(bytes);
        pkg(&[BUFFER_OP], &body)
    }

    /// `body` starts with the scope's name.
    pub fn scope(body: &[u8]) -> Vec<u8> {
        pkg(&[SCOPE_OP], body)
    }

    /// `body` starts with the device's name.
    pub fn device(body: &[u8]) -> Vec<u8> {
        pkg(&[EXT_OP, DEVICE_OP], body)
    }
}

/// FADT revision 6 (276 bytes, §5.2.9): hardware-reduced, APIC physical destination mode, reset
/// through port 0xCF9 (value 6), the DSDT by its 64-bit address, the PM timer's port.
fn fadt(dsdt: u64) -> Vec<u8> {
    use fadt_flags::*;
    let mut b = [0u8; 276 - 36];
    let at = |off: usize| off - 36;
    b[at(109)..at(111)].copy_from_slice(&(IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT).to_le_bytes());
    let flags =
        WBINVD | PWR_BUTTON | SLP_BUTTON | RESET_REG_SUP | FORCE_APIC_PHYSICAL_DESTINATION_MODE | HW_REDUCED_ACPI;
    b[at(112)..at(116)].copy_from_slice(&flags.to_le_bytes());
    // RESET_REG: generic address structure, system I/O, 8 bits at 0xCF9.
    b[at(116)] = 1;
    b[at(117)] = 8;
    b[at(119)] = 1;
    b[at(120)..at(128)].copy_from_slice(&0xcf9u64.to_le_bytes());
    b[at(128)] = 6;
    b[at(131)] = 5; // FADT minor version: 6.5
    b[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes());
    // The PM timer (devices::pm_timer): PM_TMR_BLK, PM_TMR_LEN and X_PM_TMR_BLK (system I/O,
    // 32 bits, dword access). Hardware-reduced OSPM ignores them (§5.2.9); kernels that read
    // the FADT themselves use them.
    let pm = crate::devices::pm_timer::PORT;
    b[at(76)..at(80)].copy_from_slice(&(pm as u32).to_le_bytes());
    b[at(91)] = crate::devices::pm_timer::LEN as u8;
    b[at(208)] = 1;
    b[at(209)] = 32;
    b[at(211)] = 3;
    b[at(212)..at(220)].copy_from_slice(&(pm as u64).to_le_bytes());
    b[at(268)..at(276)].copy_from_slice(b"IPIVHV\0\0");
    sdt(b"FACP", 6, &b)
}

/// MADT (§5.2.12): the local APIC address, PCAT_COMPAT (an 8259 pair is there, masked), one
/// processor entry per vCPU (Local APIC, or Local x2APIC when the vCPUs start in x2APIC mode),
/// the I/O APIC, ISA IRQ 0 on GSI 2 as on every PC, and LINT1 as NMI on every processor.
fn madt(p: &Platform) -> Vec<u8> {
    const ENABLED: u32 = 1;
    let mut b = Vec::new();
    b.extend_from_slice(&LOCAL_APIC_GPA.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for id in 0..p.vcpus {
        if p.x2apic {
            b.extend_from_slice(&[9, 16, 0, 0]);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&ENABLED.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes()); // ACPI processor UID
        } else {
            b.extend_from_slice(&[0, 8, id as u8, id as u8]);
            b.extend_from_slice(&ENABLED.to_le_bytes());
        }
    }
    if let Some(id) = p.io_apic_id {
        b.extend_from_slice(&[1, 12, id, 0]);
        b.extend_from_slice(&IO_APIC_GPA.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        // Interrupt source override: bus 0 (ISA), IRQ 0 → GSI 2, conforming polarity/trigger.
        b.extend_from_slice(&[2, 10, 0, 0]);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
    }
    if p.x2apic {
        // Local x2APIC NMI: all processors (UID 0xFFFFFFFF), LINT1.
        b.extend_from_slice(&[0x0a, 12, 0, 0]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0]);
    } else {
        // Local APIC NMI: all processors (UID 0xFF), LINT1.
        b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    }
    sdt(b"APIC", 5, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi::platform::interrupt::{InterruptModel, Polarity, TriggerMode};
    use acpi::{AcpiHandler, AcpiTables, PhysicalMapping, PlatformInfo};
    use core::ptr::NonNull;
    use std::rc::Rc;
    use std::string::ToString;
    use std::vec::Vec;

    /// Guest-physical memory for the `acpi` crate: the built block at RSDP_GPA.
    #[derive(Clone)]
    struct Memory(Rc<Vec<u8>>);

    impl AcpiHandler for Memory {
        unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
            let off = pa - RSDP_GPA as usize;
            assert!(off + size <= self.0.len(), "the acpi crate read past the tables: {pa:#x}+{size}");
            let p = NonNull::new(self.0[off..].as_ptr() as *mut T).unwrap();
            // SAFETY: the range lies inside the block (asserted), which the Rc keeps alive.
            unsafe { PhysicalMapping::new(pa, p, size, size, self.clone()) }
        }
        fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
    }

    /// What the `acpi` crate (rust-osdev, as an OS kernel would use it) reads from the tables.
    #[derive(Debug)]
    struct Seen {
        boot: u32,
        aps: Vec<u32>,
        local_apic: u64,
        legacy_pics: bool,
        io_apics: Vec<(u8, u32, u32)>,
        overrides: Vec<(u8, u32, Polarity, TriggerMode)>,
        nmi_lines: usize,
    }

    fn parse(p: &Platform) -> Seen {
        let mem = Memory(Rc::new(build(p)));
        // SAFETY: RSDP_GPA is where the block starts.
        let tables = unsafe { AcpiTables::from_rsdp(mem, RSDP_GPA as usize) }.expect("RSDP and XSDT");
        let fadt = tables.find_table::<acpi::fadt::Fadt>().expect("FADT");
        let flags = fadt.flags;
        assert!(flags.local_xapics_must_use_physical_destination_mode());
        assert!(flags.system_is_hw_reduced_acpi());
        assert_eq!(fadt.dsdt_address().unwrap(), RSDP_GPA as usize + 48);
        let pm = fadt.pm_timer_block().unwrap().expect("PM timer");
        assert_eq!((pm.address, pm.bit_width), (crate::devices::pm_timer::PORT as u64, 32));
        assert_eq!(pm.address_space, acpi::address::AddressSpace::SystemIo);
        let info = PlatformInfo::new(&tables).expect("platform info from FADT and MADT");
        let cpus = info.processor_info.expect("processors");
        let InterruptModel::Apic(apic) = info.interrupt_model else { panic!("not the APIC model") };
        Seen {
            boot: cpus.boot_processor.local_apic_id,
            aps: cpus.application_processors.iter().map(|p| p.local_apic_id).collect(),
            local_apic: apic.local_apic_address,
            legacy_pics: apic.also_has_legacy_pics,
            io_apics: apic.io_apics.iter().map(|a| (a.id, a.address, a.global_system_interrupt_base)).collect(),
            overrides: apic
                .interrupt_source_overrides
                .iter()
                .map(|o| (o.isa_source, o.global_system_interrupt, o.polarity, o.trigger_mode))
                .collect(),
            nmi_lines: apic.local_apic_nmi_lines.len(),
        }
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let block = build(&Platform { vcpus: 4, x2apic: false, io_apic_id: Some(4) });
        assert_eq!(&block[..8], b"RSD PTR ");
        assert_eq!(block[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(block[..36].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let mut off = 48;
        let mut seen = Vec::new();
        while off + 36 <= block.len() {
            let len = u32::from_le_bytes(block[off + 4..off + 8].try_into().unwrap()) as usize;
            assert_eq!(block[off..off + len].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            seen.push(std::str::from_utf8(&block[off..off + 4]).unwrap().to_string());
            off = (off + len).next_multiple_of(16);
        }
        assert_eq!(seen, ["DSDT", "FACP", "APIC", "XSDT"]);
        assert!(RSDP_GPA as usize + block.len() <= 0x10_0000, "inside the BIOS area");
    }

    #[test]
    fn the_acpi_crate_finds_every_cpu_and_the_io_apic() {
        for x2apic in [false, true] {
            let s = parse(&Platform { vcpus: 4, x2apic, io_apic_id: Some(4) });
            assert_eq!((s.boot, s.aps.as_slice()), (0, &[1, 2, 3][..]), "x2apic {x2apic}");
            assert_eq!(s.local_apic, LOCAL_APIC_GPA as u64);
            assert!(s.legacy_pics);
            assert_eq!(s.io_apics, [(4, IO_APIC_GPA, 0)]);
            assert_eq!(s.overrides, [(0, 2, Polarity::SameAsBus, TriggerMode::SameAsBus)]);
            assert_eq!(s.nmi_lines, 1);
        }
    }

    #[test]
    fn sixty_four_vcpus_and_no_io_apic() {
        let s = parse(&Platform { vcpus: 64, x2apic: true, io_apic_id: None });
        assert_eq!(s.aps, (1..64).collect::<Vec<u32>>());
        assert!(s.io_apics.is_empty() && s.overrides.is_empty());
    }

    /// An AML host that no method of ours reaches (the DSDT has names only).
    struct NoHardware;
    impl ::aml::Handler for NoHardware {
        fn read_u8(&self, _: usize) -> u8 {
            unreachable!()
        }
        fn read_u16(&self, _: usize) -> u16 {
            unreachable!()
        }
        fn read_u32(&self, _: usize) -> u32 {
            unreachable!()
        }
        fn read_u64(&self, _: usize) -> u64 {
            unreachable!()
        }
        fn write_u8(&mut self, _: usize, _: u8) {
            unreachable!()
        }
        fn write_u16(&mut self, _: usize, _: u16) {
            unreachable!()
        }
        fn write_u32(&mut self, _: usize, _: u32) {
            unreachable!()
        }
        fn write_u64(&mut self, _: usize, _: u64) {
            unreachable!()
        }
        fn read_io_u8(&self, _: u16) -> u8 {
            unreachable!()
        }
        fn read_io_u16(&self, _: u16) -> u16 {
            unreachable!()
        }
        fn read_io_u32(&self, _: u16) -> u32 {
            unreachable!()
        }
        fn write_io_u8(&self, _: u16, _: u8) {
            unreachable!()
        }
        fn write_io_u16(&self, _: u16, _: u16) {
            unreachable!()
        }
        fn write_io_u32(&self, _: u16, _: u32) {
            unreachable!()
        }
        fn read_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u8 {
            unreachable!()
        }
        fn read_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u16 {
            unreachable!()
        }
        fn read_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16) -> u32 {
            unreachable!()
        }
        fn write_pci_u8(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u8) {
            unreachable!()
        }
        fn write_pci_u16(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u16) {
            unreachable!()
        }
        fn write_pci_u32(&self, _: u16, _: u8, _: u8, _: u8, _: u16, _: u32) {
            unreachable!()
        }
    }

    #[test]
    fn the_dsdt_describes_com1_with_its_ports_and_irq() {
        use ::aml::resource::{Resource, resource_descriptor_list};
        use ::aml::{AmlContext, AmlName, AmlValue, DebugVerbosity};
        let block = build(&Platform { vcpus: 2, x2apic: true, io_apic_id: Some(2) });
        let dsdt = &block[48..];
        assert_eq!(&dsdt[..4], b"DSDT");
        let len = u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize;
        let mut ctx = AmlContext::new(std::boxed::Box::new(NoHardware), DebugVerbosity::None);
        ctx.parse_table(&dsdt[36..len]).expect("the DSDT's AML parses");
        let get = |path: &str| ctx.namespace.get_by_path(&AmlName::from_str(path).unwrap()).unwrap().clone();
        // EisaId ("PNP0501") as every PC firmware (and QEMU's DSDT) encodes it.
        assert!(matches!(get("\\_SB.COM1._HID"), AmlValue::Integer(0x0105_d041)));
        assert!(matches!(get("\\_SB.COM1._UID"), AmlValue::Integer(1)));
        let crs = resource_descriptor_list(&get("\\_SB.COM1._CRS")).expect("_CRS decodes");
        assert_eq!(crs.len(), 2, "{crs:?}");
        let io = std::format!("{:?}", crs[0]);
        assert!(io.contains("memory_range: (1016, 1016)") && io.contains("range_length: 8"), "{io}");
        let Resource::Irq(irq) = &crs[1] else { panic!("{crs:?}") };
        assert_eq!(irq.irq, 1 << 4, "COM1 on IRQ 4");
    }
}
