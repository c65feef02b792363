//! What the test kernel learns about its machine at boot, the way an OS does: memory and
//! command line from the multiboot information, CPUs from the ACPI MADT, the TSC rate from the
//! hypervisor's timing leaf or else the PIT, the APIC mode from IA32_APIC_BASE. The hypervisor's
//! CPUID leaves add what only it knows (IPI virtualization), when it is there.

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use hvcore::exits::cpuid::{HV_FEATURE_IPIV, HV_LEAF_BASE, HV_LEAF_FEATURES, HV_LEAF_TIMING, path_from_code};
use hvcore::guest_abi::CPUID_SIGNATURE;
use hvcore::multiboot::abi::{BOOTLOADER_MAGIC, MEMORY_AVAILABLE, info_flags};
use hvcore::vmx::path_kind::InterruptPath;

use crate::boot::MAX_CPUS;
use crate::{apic, cpuid, pit};

/// The machine, as found at boot (shared read-only by every CPU once the BSP built it).
pub struct Platform {
    /// CPUs the MADT lists as enabled (at most [`MAX_CPUS`] are used).
    pub vcpu_count: u32,
    /// APIC ID of each CPU, in MADT order: the CPU's index in the tests is its place here.
    pub apic_ids: [u32; MAX_CPUS],
    /// End of the RAM the kernel runs in (the available region from 1 MiB).
    pub ram_size: u64,
    pub tsc_hz: u64,
    /// 1 if the APIC is in x2APIC mode, else 0 (xAPIC).
    pub apic_mode: u32,
    /// This project's hypervisor is underneath (CPUID 0x4000_0000), so hypercalls work.
    pub hypervisor: bool,
    /// 1 if the hypervisor says the VM has IPI virtualization.
    pub ipiv: u32,
    /// The VM's interrupt path, as the hypervisor's leaf 0x4000_0001 EBX names it (`None`
    /// without this hypervisor).
    pub interrupt_path: Option<InterruptPath>,
    /// The MADT's I/O APIC: ID, MMIO address, first GSI.
    pub io_apic: Option<(u8, u64, u32)>,
    /// The GSI each ISA IRQ arrives on (identity, but for the MADT's source overrides).
    pub isa_gsi: [u32; 16],
    cmdline: [u8; 256],
}

/// Guest-physical memory is identity-mapped (boot.rs).
#[derive(Clone, Copy)]
pub struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let p = NonNull::new(pa as *mut T).expect("the acpi crate mapped address 0");
        // SAFETY: the identity map covers the first 4 GiB, where firmware puts the tables.
        unsafe { PhysicalMapping::new(pa, p, size, size, Identity) }
    }
    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
}

fn u32_at(gpa: u64) -> u32 {
    // SAFETY: the multiboot information lies in identity-mapped RAM (the loader put it there).
    unsafe { (gpa as *const u32).read_unaligned() }
}

fn u64_at(gpa: u64) -> u64 {
    // SAFETY: as in u32_at.
    unsafe { (gpa as *const u64).read_unaligned() }
}

impl Platform {
    /// Reads everything; panics (the test fails) where the machine is not a PC this runtime
    /// knows.
    pub fn discover(magic: u32, info: u32) -> Self {
        assert_eq!(magic, BOOTLOADER_MAGIC, "not started by a multiboot loader (EAX)");
        let info = info as u64;
        let flags = u32_at(info);
        let mut cmdline = [0u8; 256];
        if flags & info_flags::CMDLINE != 0 {
            let from = u32_at(info + 16) as u64;
            for (p, b) in (from..).zip(cmdline.iter_mut().take(255)) {
                // SAFETY: a NUL-terminated string the loader placed in RAM.
                let c = unsafe { (p as *const u8).read() };
                if c == 0 {
                    break;
                }
                *b = c;
            }
        }
        assert!(flags & info_flags::MEMORY_MAP != 0, "the multiboot information has no memory map");
        let (len, addr) = (u32_at(info + 44) as u64, u32_at(info + 48) as u64);
        let mut ram_size = 0;
        let mut at = addr;
        while at < addr + len {
            let size = u32_at(at) as u64;
            let (base, length, kind) = (u64_at(at + 4), u64_at(at + 12), u32_at(at + 20));
            if kind == MEMORY_AVAILABLE && base <= 0x10_0000 && base + length > 0x10_0000 {
                ram_size = (base + length).min(1 << 32);
            }
            at += size + 4;
        }
        assert!(ram_size > 0, "no available RAM at 1 MiB in the memory map");

        let sig = cpuid(HV_LEAF_BASE, 0);
        let mut found = [0u8; 12];
        for (i, r) in sig[1..].iter().enumerate() {
            found[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        let hypervisor = &found == CPUID_SIGNATURE && sig[0] >= HV_LEAF_TIMING;
        let (tsc_hz, ipiv, interrupt_path) = if hypervisor {
            let khz = cpuid(HV_LEAF_TIMING, 0)[0] as u64;
            let [features, path, _, _] = cpuid(HV_LEAF_FEATURES, 0);
            (khz * 1000, (features & HV_FEATURE_IPIV != 0) as u32, path_from_code(path))
        } else {
            (pit::calibrate_tsc(), 0, None)
        };

        // SAFETY: the BIOS area and the tables are RAM, mapped by `Identity`.
        let tables = unsafe { AcpiTables::search_for_rsdp_bios(Identity) }.expect("ACPI RSDP in the BIOS area");
        let madt = tables.find_table::<Madt>().expect("ACPI MADT");
        let mut apic_ids = [0u32; MAX_CPUS];
        let mut n = 0usize;
        let mut io_apic = None;
        let mut isa_gsi: [u32; 16] = core::array::from_fn(|i| i as u32);
        for e in madt.get().entries() {
            let (id, enabled) = match e {
                MadtEntry::LocalApic(l) => (l.apic_id as u32, { l.flags } & 1 != 0),
                MadtEntry::LocalX2Apic(l) => ({ l.x2apic_id }, { l.flags } & 1 != 0),
                MadtEntry::IoApic(io) => {
                    io_apic = io_apic
                        .or(Some((io.io_apic_id, { io.io_apic_address } as u64, { io.global_system_interrupt_base })));
                    continue;
                }
                MadtEntry::InterruptSourceOverride(o) => {
                    if o.bus == 0 && (o.irq as usize) < isa_gsi.len() {
                        isa_gsi[o.irq as usize] = o.global_system_interrupt;
                    }
                    continue;
                }
                _ => continue,
            };
            if enabled && n < MAX_CPUS && !apic_ids[..n].contains(&id) {
                apic_ids[n] = id;
                n += 1;
            }
        }
        assert!(n > 0, "the MADT lists no enabled processor");
        let asked = cmdline.split(|&b| b == b' ' || b == 0).any(|w| w == b"apic=x2apic");
        let apic_mode = (apic::x2apic_enabled() || asked) as u32;
        // Each application processor takes the stack of its APIC ID (boot.rs), as QEMU and this
        // hypervisor number them: 0..n-1.
        assert!(
            apic_ids[..n].iter().all(|&id| (id as usize) < MAX_CPUS),
            "APIC IDs must be below {MAX_CPUS}: {:?}",
            &apic_ids[..n]
        );
        Self {
            vcpu_count: n as u32,
            apic_ids,
            ram_size,
            tsc_hz,
            apic_mode,
            hypervisor,
            ipiv,
            interrupt_path,
            io_apic,
            isa_gsi,
            cmdline,
        }
    }

    /// The kernel command line.
    pub fn args(&self) -> &str {
        let n = self.cmdline.iter().position(|&b| b == 0).unwrap_or(self.cmdline.len());
        core::str::from_utf8(&self.cmdline[..n]).unwrap_or("")
    }

    /// The value of `key=value` on the command line.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args().split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// The index of the CPU with APIC ID `id`.
    pub fn index_of(&self, id: u32) -> Option<u32> {
        self.apic_ids[..self.vcpu_count as usize].iter().position(|&a| a == id).map(|i| i as u32)
    }
}
