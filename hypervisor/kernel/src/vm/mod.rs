//! Virtual machines: guest RAM, EPT, MSR bitmap and boot area built from a manifest entry, and
//! the shared state the VM's vCPUs (each pinned to its own physical CPU) report into.

pub mod emulate;
pub mod exits;
pub mod ipi;
pub mod vapic;
pub mod vcpu;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use hvcore::acpi_tables;
use hvcore::budget::{ConsoleBudget, ReportBudget};
use hvcore::devices::{self, PcConfig, PortBus};
use hvcore::ept::{Ept, RWX, TableMemory};
use hvcore::exits::counters::ExitCounters;
use hvcore::guest_abi::APIC_MMIO_GPA;
use hvcore::manifest::{ApicMode, HltMode, VmResult, VmSpec};
use hvcore::multiboot;
use hvcore::summary::VmReport;
use hvcore::vmx::caps::VmxCaps;
use hvcore::vmx::controls::resolve_ipiv;
use spin::Mutex;

use crate::memory;

/// Frames for page tables, from the frame allocator.
pub struct Frames;

impl TableMemory for Frames {
    fn alloc_table(&mut self) -> Option<u64> {
        memory::alloc_zeroed(0x1000, 0x1000)
    }

    fn table(&mut self, pa: u64) -> &mut [u64; 512] {
        // SAFETY: `pa` is a table page this builder allocated; the physical window maps it.
        unsafe { &mut *(memory::phys_to_virt(pa) as *mut [u64; 512]) }
    }
}

/// How a VM ended, first reason wins.
struct Outcome {
    result: VmResult,
    reason: Option<String>,
}

pub struct Vm {
    pub spec: VmSpec,
    /// Host-physical base of guest RAM (guest-physical 0).
    pub ram_pa: u64,
    pub ram_size: u64,
    pub eptp: u64,
    pub boot: Boot,
    /// IPI virtualization, as resolved for this CPU.
    pub ipiv: bool,
    pub apic: vapic::VmApic,
    stopping: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    vcpus_done: AtomicU32,
    pub exits: Vec<Mutex<ExitCounters>>,
    pub reports: Mutex<Reports>,
    /// Console output of all the VM's vCPUs (PRINT and COM1) against its rate budget.
    pub console: Mutex<ConsoleBudget>,
    /// The PC's port-I/O devices, shared by the VM's vCPUs.
    pub ports: Mutex<PortBus>,
    /// The VM's clock: TSC at its creation and the TSC rate.
    clock0_tsc: u64,
    tsc_hz: u64,
}

/// Where a VM's multiboot kernel starts: the bootstrap vCPU at `entry` in 32-bit protected mode
/// with EBX = `info`; the others wait for a SIPI.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub entry: u32,
    pub info: u32,
}

/// The host's time sources a VM's clock starts from.
#[derive(Clone, Copy)]
pub struct Clock {
    pub tsc_hz: u64,
    /// Wall-clock seconds since 1970 (the host RTC), for the VM's RTC.
    pub unix_time: u64,
}

/// The REPORT values a VM has handed in, within its budget.
#[derive(Default)]
pub struct Reports {
    pub values: Vec<String>,
    pub budget: ReportBudget,
}

impl Vm {
    /// Builds a VM: RAM (2 MiB-aligned, zeroed), the multiboot kernel with its modules and
    /// boot information, the ACPI tables, the APIC structures, and an EPT that maps RAM
    /// and the APIC-access page and nothing else. `files` are the ramdisk's.
    pub fn create<'f>(
        spec: &VmSpec,
        files: &dyn Fn(&str) -> Option<&'f [u8]>,
        clock: Clock,
        caps: &VmxCaps,
        host_apic_ids: &[u32],
    ) -> Result<Self, String> {
        let tsc_hz = clock.tsc_hz;
        let ram_size = spec.ram_mib as u64 * 1024 * 1024;
        // The manifest was checked (VmSpec::check_boot); a file missing now is still an error.
        let file = |name: &str| files(name).ok_or_else(|| format!("`{name}` is not in the ramdisk"));
        let ipiv = resolve_ipiv(spec.ipiv, caps).map_err(|e| format!("ipiv = {}: {e}", spec.ipiv.as_str()))?;
        if !caps.features().unrestricted_guest {
            return Err(
                "a multiboot kernel starts in protected mode without paging and its other vCPUs in real mode: \
                        that needs the \"unrestricted guest\" VMX control, which this CPU lacks"
                    .into(),
            );
        }
        let ram_pa = memory::alloc_zeroed(ram_size, 0x20_0000)
            .ok_or_else(|| format!("no {} MiB of contiguous memory for guest RAM", spec.ram_mib))?;
        let ram = guest_ram_while_building(ram_pa, ram_size);
        let kernel = file(&spec.kernel)?;
        let plan = multiboot::LoadPlan::new(kernel, ram_size).map_err(|e| format!("kernel `{}`: {e}", spec.kernel))?;
        plan.load(kernel, ram);
        let mut modules = Vec::new();
        for m in &spec.modules {
            modules.push(multiboot::Module { data: file(m)?, string: m });
        }
        let placed = multiboot::place(ram, &plan, &spec.cmdline, &modules)?;
        let boot = Boot { entry: plan.entry, info: placed.info };
        // The ACPI tables where a BIOS leaves them. No I/O APIC is listed until the VM has one.
        let tables = acpi_tables::build(&acpi_tables::Platform {
            vcpus: spec.vcpus,
            x2apic: spec.apic == ApicMode::X2Apic,
            io_apic_id: None,
        });
        let at = acpi_tables::RSDP_GPA as usize;
        ram.get_mut(at..at + tables.len())
            .ok_or_else(|| format!("{} MiB of RAM cannot hold the ACPI tables", spec.ram_mib))?
            .copy_from_slice(&tables);
        let apic = vapic::VmApic::new(spec, ipiv, host_apic_ids)?;
        let mut frames = Frames;
        let mut ept = Ept::new(&mut frames).map_err(|e| format!("EPT: {e:?}"))?;
        ept.map(&mut frames, 0, ram_pa, ram_size, RWX).map_err(|e| format!("EPT: {e:?}"))?;
        // xAPIC accesses hit the APIC-access page, which APIC virtualization redirects to the
        // vCPU's virtual-APIC page (SDM Vol. 3C §30.4).
        ept.map(&mut frames, APIC_MMIO_GPA, apic.apic_access_pa, 0x1000, RWX).map_err(|e| format!("EPT: {e:?}"))?;
        Ok(Self {
            spec: spec.clone(),
            ram_pa,
            ram_size,
            eptp: ept.eptp(),
            boot,
            ipiv,
            apic,
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            vcpus_done: AtomicU32::new(0),
            exits: (0..spec.vcpus).map(|_| Mutex::new(ExitCounters::default())).collect(),
            reports: Mutex::new(Reports::default()),
            console: Mutex::new(ConsoleBudget::new(tsc_hz, crate::time::rdtsc())),
            ports: Mutex::new(devices::pc(&PcConfig {
                ram_size,
                cpus: spec.vcpus as u16,
                cmdline: spec.cmdline.as_bytes(),
                unix_time: clock.unix_time,
            })),
            clock0_tsc: crate::time::rdtsc(),
            tsc_hz,
        })
    }

    /// What CPUID tells vCPU `index` about itself and the VM.
    pub fn cpuid_identity(&self, index: u32) -> hvcore::exits::cpuid::VcpuIdentity {
        hvcore::exits::cpuid::VcpuIdentity {
            apic_id: index,
            vcpu_count: self.spec.vcpus,
            tsc_khz: (self.tsc_hz / 1000).min(u32::MAX as u64) as u32,
            ipiv: self.ipiv,
            hlt_passthrough: self.spec.hlt == HltMode::PassThrough,
        }
    }

    /// Nanoseconds since the VM was created, by the TSC (the devices' clock).
    pub fn now_ns(&self) -> u64 {
        let ticks = crate::time::rdtsc().saturating_sub(self.clock0_tsc);
        (ticks as u128 * 1_000_000_000 / self.tsc_hz.max(1) as u128) as u64
    }

    /// Copies guest RAM at `range` (already checked to lie inside RAM) into `buf`, which must
    /// be as long: a snapshot the guest cannot change while the hypervisor reads it.
    pub fn read_ram(&self, range: core::ops::Range<usize>, buf: &mut [u8]) {
        assert!(range.end as u64 <= self.ram_size && buf.len() == range.len());
        let base = memory::phys_to_virt(self.ram_pa);
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the VM's RAM (asserted), mapped for the whole run. Volatile: the
            // guest's other vCPUs may write it at any time, so it is never a Rust reference.
            *b = unsafe { base.add(range.start + i).read_volatile() };
        }
    }

    /// Writes `data` to guest RAM at `start` (the range already checked to lie inside RAM).
    pub fn write_ram(&self, start: usize, data: &[u8]) {
        assert!((start + data.len()) as u64 <= self.ram_size);
        let base = memory::phys_to_virt(self.ram_pa);
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in read_ram.
            unsafe { base.add(start + i).write_volatile(b) };
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ends the VM with `result` (the first call decides) and kicks its other vCPUs out of the
    /// guest so they see it.
    pub fn stop(&self, result: VmResult, reason: String) {
        {
            let mut o = self.outcome.lock();
            if o.is_none() {
                log::info!("VM {}: {} ({reason})", self.spec.name, result.as_str());
                *o = Some(Outcome { result, reason: Some(reason) });
            }
        }
        if !self.stopping.swap(true, Ordering::AcqRel) {
            let me = crate::cpu::index();
            for &cpu in self.spec.cpus.iter().filter(|&&c| c != me) {
                crate::kick_cpu(cpu);
            }
        }
    }

    /// Called by each vCPU when it is finished.
    pub fn vcpu_done(&self) {
        self.vcpus_done.fetch_add(1, Ordering::AcqRel);
    }

    pub fn all_done(&self) -> bool {
        self.vcpus_done.load(Ordering::Acquire) >= self.spec.vcpus
    }

    /// The VM's report for HV-SUMMARY (after all its vCPUs are done).
    pub fn report(&self) -> VmReport {
        let (result, reason) = match &*self.outcome.lock() {
            Some(o) => (o.result, o.reason.clone()),
            None => (VmResult::Pass, None),
        };
        VmReport {
            name: self.spec.name.clone(),
            vcpus: self.spec.vcpus,
            result,
            reason,
            expect: self.spec.expect,
            apic_mode: self.spec.apic.as_str(),
            ipiv: self.ipiv,
            hlt: self.spec.hlt.as_str(),
            vcpu_exits: self.exits.iter().map(|c| c.lock().clone()).collect(),
            console_dropped_bytes: self.console.lock().dropped,
            reports: self.reports.lock().values.clone(),
        }
    }
}

/// Guest RAM as a slice, only while the VM is built: no vCPU runs yet, so nothing else writes it.
fn guest_ram_while_building(pa: u64, size: u64) -> &'static mut [u8] {
    // SAFETY: the range was just allocated for this VM's RAM and is mapped by the physical
    // window; the slice is used only in Vm::create, before any vCPU of the VM can run.
    unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), size as usize) }
}
