//! Virtual machines. A VM is a small PC: guest RAM behind an EPT, a multiboot kernel loaded as
//! QEMU's `-kernel` loads it (`boot`), ACPI tables, the PC's devices (`devices`), and one
//! virtual local APIC per vCPU (`vapic`, with interrupt delivery in `delivery`). Each vCPU
//! (`vcpu`, its run loop in `run`, its exits in `exits`) runs on the physical CPU it is
//! pinned to; this file holds what they share and how the VM ends.

pub mod boot;
pub mod delivery;
pub mod devices;
pub mod exits;
pub mod run;
pub mod vapic;
pub mod vcpu;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hvcore::budget::{ConsoleBudget, ReportBudget, ReportsExceeded};
use hvcore::devices::console_line::Line;
use hvcore::ept::{Ept, RWX, TableMemory};
use hvcore::exits::census;
use hvcore::exits::counters::ExitCounters;
use hvcore::exits::cr;
use hvcore::exits::report::Report;
use hvcore::guest_abi::APIC_MMIO_GPA;
use hvcore::manifest::{HltMode, TimerSource, VmResult, VmSpec};
use hvcore::summary::VmReport;
use hvcore::vmx::controls::VcpuControlOptions;
use hvcore::vmx::interrupt_path::{self, PathPlan};
use hvcore::vmx::path_kind::InterruptPath;
use spin::Mutex;

use crate::host::Host;
use crate::{apic, memory, vectors};

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
    /// The EPT with the APIC-access page at 0xFEE00000, and the same without it.
    pub eptp: u64,
    pub eptp_no_apic: u64,
    pub boot: boot::Boot,
    /// How interrupts reach the guest, negotiated once for this CPU with the vCPUs' controls
    /// (`hvcore::vmx::interrupt_path::PathPlan`), and why no better path was used.
    pub plan: PathPlan,
    /// What delivers the guest's APIC timer, as resolved for this CPU: the host APIC only
    /// where it has TSC-deadline mode.
    pub timer: TimerSource,
    pub apic: vapic::VmApic,
    /// The PC's devices, shared by the VM's vCPUs.
    pub devices: devices::VmDevices,
    stopping: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    vcpus_done: AtomicU32,
    /// TSC when the VM began to stop (0: running), for the straggler watch.
    stop_tsc: AtomicU64,
    /// TSC of the straggler watch's last kick (0: none yet; the first one names the vCPUs).
    straggler_kick_tsc: AtomicU64,
    /// Where each vCPU is (`VcpuWhere`), for the straggler watch's report.
    pub vcpu_where: Vec<AtomicU32>,
    pub exits: Vec<Mutex<ExitCounters>>,
    pub reports: Mutex<Reports>,
    /// The exit census (hvcore::exits::census): how many REPORTs the VM has made, and each
    /// vCPU's counters at each of them.
    pub census_epoch: AtomicU32,
    pub census: Vec<Mutex<Vec<ExitCounters>>>,
    /// Console output of all the VM's vCPUs (PRINT and COM1) against its rate budget.
    pub console: Mutex<ConsoleBudget>,
    /// COM1's output until a newline, whichever vCPU wrote it.
    pub console_line: Mutex<Line>,
    /// The host's highest basic CPUID leaf (its guests see at least leaf 0x15).
    host_max_leaf: u32,
    /// What IA32_APIC_BASE's rules depend on (`hvcore::apic::base`).
    pub apic_features: hvcore::apic::base::Features,
    /// The CR0 and CR4 bits the hypervisor owns (`hvcore::exits::cr`): what VMX fixes, and
    /// CR4 bits of features the VM's CPUID does not offer.
    pub cr0_mask: u64,
    pub cr4_mask: u64,
    /// The VM's clock: TSC at its creation and the TSC rate.
    clock0_tsc: u64,
    tsc_hz: u64,
}

/// The REPORT values a VM has handed in, within its budget.
#[derive(Default)]
pub struct Reports {
    pub values: Vec<Report>,
    /// TSC at each value (the census windows' ends).
    pub tsc: Vec<u64>,
    pub budget: ReportBudget,
}

impl Vm {
    /// Builds a VM: RAM (2 MiB-aligned, zeroed), the kernel with its modules, boot information
    /// and ACPI tables (`boot`), the devices, the APIC structures, and an EPT that maps RAM and
    /// the APIC-access page and nothing else (device MMIO is emulated on EPT violations).
    /// `files` are the ramdisk's.
    pub fn create<'f>(spec: &VmSpec, files: &dyn Fn(&str) -> Option<&'f [u8]>, host: &Host) -> Result<Self, String> {
        let ram_size = spec.ram_mib as u64 * 1024 * 1024;
        let base = VcpuControlOptions {
            hlt_exiting: spec.hlt == HltMode::Exit,
            unrestricted_guest: true,
            no_tpr_shadow: spec.no_tpr_shadow,
            ..Default::default()
        };
        let plan = interrupt_path::choose(&host.caps, spec.path_request(), base)
            .map_err(|e| format!("cannot run on this CPU ({}): {e}", host.cpu_model))?;
        let x2apic = spec.x2apic && core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0;
        if spec.apic == hvcore::manifest::ApicMode::X2Apic && !x2apic {
            return Err(format!("apic = x2apic, but this CPU ({}) has no x2APIC mode", host.cpu_model));
        }
        let ram_pa = memory::alloc_zeroed(ram_size, 0x20_0000)
            .ok_or_else(|| format!("no {} MiB of contiguous memory for guest RAM", spec.ram_mib))?;
        let boot = boot::load(spec, files, guest_ram_while_building(ram_pa, ram_size))?;
        let apic = vapic::VmApic::new(spec, &plan, &host.apic_ids)?;
        let mut frames = Frames;
        let ept_error = |e| format!("EPT: {e:?}");
        let mut ept = Ept::new(&mut frames).map_err(ept_error)?;
        ept.map(&mut frames, 0, ram_pa, ram_size, RWX).map_err(ept_error)?;
        // xAPIC accesses hit the APIC-access page, which APIC virtualization redirects to the
        // vCPU's virtual-APIC page (SDM Vol. 3C §30.4). vCPUs whose APIC does not claim the
        // page (x2APIC, disabled, relocated: vcpu::lapic) use a second EPT without it.
        let mut no_apic = Ept::new(&mut frames).map_err(ept_error)?;
        no_apic.map(&mut frames, 0, ram_pa, ram_size, RWX).map_err(ept_error)?;
        ept.map(&mut frames, APIC_MMIO_GPA, apic.apic_access_pa, 0x1000, RWX).map_err(ept_error)?;
        let now = crate::time::rdtsc();
        let (cr0_mask, cr4_mask) = cr_masks(host, plan.path, spec);
        Ok(Self {
            spec: spec.clone(),
            ram_pa,
            ram_size,
            eptp: ept.eptp(),
            eptp_no_apic: no_apic.eptp(),
            boot,
            plan,
            timer: match spec.timer {
                TimerSource::HostApic if apic::has_tsc_deadline() => TimerSource::HostApic,
                _ => TimerSource::Preemption,
            },
            apic,
            devices: devices::VmDevices::new(spec, ram_size, host.unix_time),
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            vcpus_done: AtomicU32::new(0),
            stop_tsc: AtomicU64::new(0),
            straggler_kick_tsc: AtomicU64::new(0),
            vcpu_where: (0..spec.vcpus).map(|_| AtomicU32::new(VcpuWhere::NotStarted.encode())).collect(),
            exits: (0..spec.vcpus).map(|_| Mutex::new(ExitCounters::default())).collect(),
            reports: Mutex::new(Reports::default()),
            census_epoch: AtomicU32::new(0),
            census: (0..spec.vcpus).map(|_| Mutex::new(Vec::new())).collect(),
            console: Mutex::new(ConsoleBudget::new(host.tsc_hz, now, spec.console_bytes_per_second)),
            console_line: Mutex::new(Line::new()),
            host_max_leaf: core::arch::x86_64::__cpuid(0).eax,
            apic_features: hvcore::apic::base::Features {
                // Leaf 0x80000008 exists on every CPU with long mode.
                max_phys_addr: core::arch::x86_64::__cpuid(0x8000_0008).eax as u8,
                x2apic,
            },
            cr0_mask,
            cr4_mask,
            clock0_tsc: now,
            tsc_hz: host.tsc_hz,
        })
    }

    /// What CPUID tells vCPU `index`, whose CR4 is `cr4`, about itself and the VM.
    pub fn cpuid_identity(&self, index: u32, cr4: u64) -> hvcore::exits::cpuid::VcpuIdentity {
        hvcore::exits::cpuid::VcpuIdentity {
            x2apic: self.apic_features.x2apic,
            apic_enabled: self.apic.vcpus[index as usize].enabled(),
            cr4,
            apic_id: index,
            vcpu_count: self.spec.vcpus,
            tsc_khz: (self.tsc_hz / 1000).min(u32::MAX as u64) as u32,
            path: self.plan.path,
            host_max_leaf: self.host_max_leaf,
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

    /// Ends the VM with `result` (the first call decides) and kicks its other vCPUs' CPUs out
    /// of the guest (or out of a wait) so they see it.
    pub fn stop(&self, result: VmResult, reason: String) {
        {
            let mut o = self.outcome.lock();
            if o.is_none() {
                log::info!("VM {}: {} ({reason})", self.spec.name, result.as_str());
                *o = Some(Outcome { result, reason: Some(reason) });
            }
        }
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.stop_tsc.store(crate::time::rdtsc().max(1), Ordering::Release);
            let me = crate::cpu_index::index();
            for (v, &cpu) in self.apic.vcpus.iter().zip(&self.spec.cpus) {
                if cpu != me {
                    kick(v.host_apic_id);
                }
            }
        }
    }

    /// Records a REPORT value (canonical JSON) within the VM's report budget, and opens the next
    /// census window.
    pub fn record_report(&self, value: Report) -> Result<(), ReportsExceeded> {
        let mut reports = self.reports.lock();
        reports.budget.take(value.text().len())?;
        reports.values.push(value);
        reports.tsc.push(crate::time::rdtsc());
        self.census_epoch.store(reports.values.len() as u32, Ordering::Release);
        Ok(())
    }

    /// Called by each vCPU when it is finished.
    pub fn vcpu_done(&self, index: u32) {
        self.vcpu_where[index as usize].store(VcpuWhere::Done.encode(), Ordering::Release);
        self.vcpus_done.fetch_add(1, Ordering::AcqRel);
    }

    /// The straggler watch, run by every CPU whose own vCPU is done while it waits for every
    /// VM to end (so a straggler on the CPU that would otherwise watch still gets watched):
    /// once the VM has been stopping for `grace_ticks`, kicks its unfinished vCPUs' CPUs again,
    /// at most once per `grace_ticks` whichever CPUs watch (a lost kick must not hang the
    /// run), and the first time names them and where they are.
    pub fn watch_stragglers(&self, now: u64, grace_ticks: u64) {
        let since = self.stop_tsc.load(Ordering::Acquire);
        if since == 0 || now.saturating_sub(since) < grace_ticks || self.all_done() {
            return;
        }
        let last = self.straggler_kick_tsc.load(Ordering::Acquire);
        if (last != 0 && now.saturating_sub(last) < grace_ticks)
            || self.straggler_kick_tsc.compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return;
        }
        for (i, w) in self.vcpu_where.iter().enumerate() {
            let at = VcpuWhere::decode(w.load(Ordering::Acquire));
            if at == VcpuWhere::Done {
                continue;
            }
            if last == 0 {
                log::error!(
                    "VM {}: vCPU {i} (CPU {}) has not finished since the VM stopped: {at:?}",
                    self.spec.name,
                    self.spec.cpus[i]
                );
            }
            kick(self.apic.vcpus[i].host_apic_id);
        }
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
        // One lock of the reports for both fields: a second lock inside the struct literal
        // would wait for the first, whose guard lives to the end of the literal.
        let reports = self.reports.lock();
        let snapshots: Vec<_> = self.census.iter().map(|c| c.lock().clone()).collect();
        VmReport {
            ipiv: self.plan.ipiv(),
            interrupt_path: Some(self.plan.path),
            interrupt_path_reason: self.plan.why_not_better.clone(),
            hlt: Some(self.spec.hlt),
            timer: Some(self.timer),
            vcpu_exits: self.exits.iter().map(|c| c.lock().clone()).collect(),
            console_dropped_bytes: self.console.lock().dropped,
            reports: reports.values.clone(),
            report_exits: census::windows(&snapshots, &reports.tsc, self.clock0_tsc, self.tsc_hz),
            ..VmReport::new(self.spec.name.clone(), self.spec.vcpus, result, reason, self.spec.expect, self.spec.apic)
        }
    }
}

/// The guest/host masks of CR0 and CR4 (`hvcore::exits::cr`), from the fixed bits and the
/// feature bits of the VM's CPUID.
fn cr_masks(host: &Host, path: InterruptPath, spec: &VmSpec) -> (u64, u64) {
    use hvcore::exits::cpuid;
    let caps = &host.caps;
    let who = cpuid::VcpuIdentity {
        apic_id: 0,
        vcpu_count: spec.vcpus,
        tsc_khz: 0,
        path,
        hlt_passthrough: false,
        host_max_leaf: core::arch::x86_64::__cpuid(0).eax,
        x2apic: true,
        apic_enabled: true,
        cr4: 0,
    };
    let leaf = |l: u32| {
        let n = core::arch::x86_64::__cpuid_count(l, 0);
        cpuid::filter(l, 0, [n.eax, n.ebx, n.ecx, n.edx], who)
    };
    let [_, _, c1, d1] = leaf(1);
    let [_, b7, c7, d7] = leaf(7);
    let allowed = cr::cr4_allowed((c1, d1), (b7, c7, d7), caps.cr4_fixed1);
    (cr::cr0_mask(caps.cr0_fixed0, caps.cr0_fixed1), cr::cr4_mask(caps.cr4_fixed0, allowed))
}

/// Where a vCPU is, as the straggler watch sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuWhere {
    NotStarted,
    /// Entering or in guest mode.
    InGuest,
    /// In the hypervisor, handling an exit with this basic reason.
    Handling(u16),
    /// Waiting in the hypervisor (for INIT-SIPI or a halted vCPU's wake-up).
    Waiting,
    Done,
}

impl VcpuWhere {
    pub fn encode(self) -> u32 {
        match self {
            Self::NotStarted => 0,
            Self::InGuest => 1,
            Self::Waiting => 2,
            Self::Done => 3,
            Self::Handling(r) => 0x1_0000 | r as u32,
        }
    }

    fn decode(v: u32) -> Self {
        match v {
            1 => Self::InGuest,
            2 => Self::Waiting,
            3 => Self::Done,
            v if v & 0x1_0000 != 0 => Self::Handling(v as u16),
            _ => Self::NotStarted,
        }
    }
}

/// Makes the CPU with host APIC ID `host_apic_id` leave guest mode (an external-interrupt
/// exit) or its wait in the hypervisor, so it looks at its vCPU again.
pub fn kick(host_apic_id: u32) {
    apic::send_ipi(host_apic_id, hvcore::apic::regs::ICR_FIXED | vectors::KICK as u32);
}

/// Guest RAM as a slice, only while the VM is built: no vCPU runs yet, so nothing else writes it.
fn guest_ram_while_building(pa: u64, size: u64) -> &'static mut [u8] {
    // SAFETY: the range was just allocated for this VM's RAM and is mapped by the physical
    // window; the slice is used only in Vm::create, before any vCPU of the VM can run.
    unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), size as usize) }
}
