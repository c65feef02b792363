//! Virtual machines: guest RAM, EPT, MSR bitmap and boot area built from a manifest entry, and
//! the shared state the VM's vCPUs (each pinned to its own physical CPU) report into.

pub mod exits;
pub mod vcpu;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use hvcore::elf_load::LoadPlan;
use hvcore::ept::{Ept, RWX, TableMemory};
use hvcore::exits::counters::ExitCounters;
use hvcore::exits::msr;
use hvcore::guest_boot;
use hvcore::manifest::{VmResult, VmSpec};
use hvcore::summary::VmReport;
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
    /// Host-physical address of the MSR bitmap shared by the VM's vCPUs.
    pub msr_bitmap: u64,
    pub entry: u64,
    stopping: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    vcpus_done: AtomicU32,
    pub exits: Vec<Mutex<ExitCounters>>,
    pub reports: Mutex<Vec<String>>,
}

impl Vm {
    /// Builds a VM: RAM (2 MiB-aligned, zeroed), the ELF image, the boot area, EPT mapping RAM
    /// and nothing else, and the MSR bitmap.
    pub fn create(spec: &VmSpec, image: &[u8], tsc_hz: u64) -> Result<Self, String> {
        let ram_size = spec.ram_mib as u64 * 1024 * 1024;
        let plan = LoadPlan::new(image, ram_size, spec.vcpus)?;
        let ram_pa = memory::alloc_zeroed(ram_size, 0x20_0000)
            .ok_or_else(|| format!("no {} MiB of contiguous memory for guest RAM", spec.ram_mib))?;
        let ram = guest_ram(ram_pa, ram_size);
        plan.load(image, ram);
        guest_boot::build(ram, &guest_boot::boot_info(&spec.name, spec.vcpus, ram_size, tsc_hz));
        let mut frames = Frames;
        let mut ept = Ept::new(&mut frames).map_err(|e| format!("EPT: {e:?}"))?;
        ept.map(&mut frames, 0, ram_pa, ram_size, RWX).map_err(|e| format!("EPT: {e:?}"))?;
        let msr_bitmap = build_msr_bitmap().ok_or("no memory for the MSR bitmap")?;
        Ok(Self {
            spec: spec.clone(),
            ram_pa,
            ram_size,
            eptp: ept.eptp(),
            msr_bitmap,
            entry: plan.entry,
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            vcpus_done: AtomicU32::new(0),
            exits: (0..spec.vcpus).map(|_| Mutex::new(ExitCounters::default())).collect(),
            reports: Mutex::new(Vec::new()),
        })
    }

    /// Guest RAM as bytes (guest-physical 0..ram_size).
    pub fn ram(&self) -> &'static mut [u8] {
        guest_ram(self.ram_pa, self.ram_size)
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
            vcpu_exits: self.exits.iter().map(|c| c.lock().clone()).collect(),
            reports: self.reports.lock().clone(),
        }
    }
}

fn guest_ram(pa: u64, size: u64) -> &'static mut [u8] {
    // SAFETY: the range was allocated for this VM's RAM and is mapped by the physical window;
    // the guest may change it at any time, which byte access tolerates.
    unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), size as usize) }
}

/// A 4 KiB MSR bitmap: every MSR intercepted except the pass-through list.
fn build_msr_bitmap() -> Option<u64> {
    let pa = memory::alloc_zeroed(0x1000, 0x1000)?;
    // SAFETY: fresh frame, mapped by the physical window.
    let bm = unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), 0x1000) };
    bm.fill(0xff);
    for &m in msr::PASS_THROUGH {
        for write in [false, true] {
            if let Some((byte, bit)) = msr::bitmap_position(m, write) {
                bm[byte] &= !(1 << bit);
            }
        }
    }
    Some(pa)
}
