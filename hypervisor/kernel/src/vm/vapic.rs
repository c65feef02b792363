//! The virtual local APIC of each vCPU: its virtual-APIC page and posted-interrupt descriptor,
//! the per-VM APIC-access page, PID-pointer table and MSR bitmaps, and interrupt delivery by the
//! hypervisor (the exit path): posting to another vCPU, self-IPIs, NMIs (SDM Vol. 3C ch. 30).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hvcore::apic::base::{self, ApicMode};
use hvcore::apic::icr::Target;
use hvcore::apic::pid::{HostApicMode, PostedInterruptDesc, build_pid_table, last_pid_pointer_index};
use hvcore::apic::regs::{self, X2APIC_MSR_FIRST, X2APIC_MSR_LAST};
use hvcore::apic::startup::Startup;
use hvcore::apic::vapic::{self, VirtualApicPage};
use hvcore::exits::msr;
use hvcore::manifest::VmSpec;
use hvcore::vmx::events::NmiLatch;
use hvcore::vmx::interrupt_path::PathPlan;

use crate::vectors::POSTED_INTR as POSTED_INTR_VECTOR;
use crate::{apic, memory};

/// One vCPU's virtual APIC, shared: other vCPUs post to it.
pub struct VcpuApic {
    pub page_pa: u64,
    pub pid_pa: u64,
    /// Host APIC ID of the physical CPU this vCPU is pinned to (the notification destination).
    pub host_apic_id: u32,
    /// IA32_APIC_BASE as the guest last set it (only this vCPU's CPU writes it; others read
    /// the mode to know whether the APIC takes interrupts).
    pub apic_base: AtomicU64,
    /// NMIs sent and not yet injected (`hvcore::vmx::events::NmiLatch`).
    pub nmi: NmiLatch,
    /// INIT and SIPI: running, or waiting for a SIPI.
    pub startup: Startup,
}

impl VcpuApic {
    pub fn pid(&self) -> &'static PostedInterruptDesc {
        // SAFETY: pid_pa is a page allocated for this descriptor (VmApic::new), mapped by the
        // physical window, and lives as long as the run; all access is atomic.
        unsafe { &*(memory::phys_to_virt(self.pid_pa) as *const PostedInterruptDesc) }
    }

    /// The virtual-APIC page. Only this vCPU's CPU writes it (other CPUs read LDR/DFR for
    /// logical destinations; a torn read there only misroutes an IPI the guest raced with).
    pub fn page(&self) -> VirtualApicPage<'static> {
        // SAFETY: page_pa is this vCPU's 4 KiB virtual-APIC page, 4 KiB-aligned, mapped by the
        // physical window for the whole run; it is only ever accessed as atomics.
        VirtualApicPage(unsafe { &*(memory::phys_to_virt(self.page_pa) as *const [AtomicU32; 1024]) })
    }

    /// The APIC's global mode (`hvcore::apic::base`).
    pub fn mode(&self) -> ApicMode {
        ApicMode::of(self.apic_base.load(Ordering::Acquire)).unwrap_or(ApicMode::Disabled)
    }

    /// Whether the APIC is on the APIC bus at all: a globally disabled APIC neither accepts
    /// nor sends interrupts, INIT and SIPI included (SDM Vol. 3A §12.4.3).
    pub fn enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled
    }

    /// Whether it takes fixed and lowest-priority interrupts: enabled and software-enabled
    /// (SDM Vol. 3A §12.4.7.2).
    pub fn accepts_fixed(&self) -> bool {
        self.enabled() && vapic::software_enabled(&self.page())
    }

    /// The APIC ID physical destinations match now: the xAPIC ID register in xAPIC mode
    /// (writable, so IDs may alias), the vCPU index in x2APIC mode.
    pub fn current_id(&self, index: u32) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => index,
            _ => self.page().read(regs::ID) >> 24,
        }
    }

    pub fn target(&self, index: u32) -> Target {
        let p = self.page();
        Target { apic_id: self.current_id(index), ldr: p.read(regs::LDR), dfr: p.read(regs::DFR) }
    }

    /// Posts `vector` and notifies the vCPU's CPU if the descriptor asks for it (SDM Vol. 3C
    /// §30.6): the target takes it without a VM exit if it is running.
    #[inline(always)]
    pub fn post(&self, vector: u8) {
        if self.pid().post(vector) {
            apic::send_ipi(self.host_apic_id, hvcore::apic::regs::ICR_FIXED | POSTED_INTR_VECTOR as u32);
        }
    }
}

/// The per-VM APIC structures.
pub struct VmApic {
    pub vcpus: Vec<VcpuApic>,
    pub apic_access_pa: u64,
    pub pid_table_pa: u64,
    pub last_pid_index: u16,
    /// The entry `debug_invalid_pid_entry` keeps invalid.
    invalid_pid_entry: Option<u32>,
    /// Every vCPU's APIC ID is its index (`refresh_pid_table` keeps it).
    ids_are_indices: AtomicBool,
    pid_table_lock: spin::Mutex<()>,
    /// MSR bitmaps for vCPUs in xAPIC and in x2APIC mode.
    pub msr_bitmap_xapic: u64,
    pub msr_bitmap_x2apic: u64,
}

fn page() -> Result<u64, &'static str> {
    memory::alloc_zeroed(0x1000, 0x1000).ok_or("out of memory for APIC virtualization pages")
}

impl VmApic {
    /// Every vCPU but the first starts in wait-for-SIPI.
    pub fn new(spec: &VmSpec, plan: &PathPlan, host_apic_ids: &[u32]) -> Result<Self, &'static str> {
        let host_mode = if apic::is_x2apic() { HostApicMode::X2Apic } else { HostApicMode::XApic };
        let mut vcpus = Vec::new();
        for i in 0..spec.vcpus {
            let page_pa = page()?;
            // Bochs 3.0 requires a page-aligned descriptor (the SDM asks 64 bytes): one page
            // each keeps both happy.
            let pid_pa = page()?;
            let host_apic_id = host_apic_ids[spec.cpus[i as usize] as usize];
            let v = VcpuApic {
                page_pa,
                pid_pa,
                host_apic_id,
                apic_base: AtomicU64::new(base::at_reset(i)),
                nmi: NmiLatch::new(),
                startup: Startup::new(i != 0),
            };
            v.page().reset(i, false);
            v.pid().set_notification(POSTED_INTR_VECTOR, host_apic_id, host_mode);
            vcpus.push(v);
        }
        let pid_table_pa = page()?;
        // SAFETY: a fresh page: 512 entries of 8 bytes, at most 64 of them used.
        let table = unsafe { &mut *(memory::phys_to_virt(pid_table_pa) as *mut [u64; 512]) };
        let pids: Vec<u64> = vcpus.iter().map(|v| v.pid_pa).collect();
        build_pid_table(&pids, spec.invalid_pid_entry.map(|i| i as usize), table)
            .map_err(|_| "posted-interrupt descriptor not 64-byte aligned")?;
        let apic = Self {
            vcpus,
            apic_access_pa: page()?,
            pid_table_pa,
            last_pid_index: last_pid_pointer_index(spec.vcpus),
            invalid_pid_entry: spec.invalid_pid_entry,
            ids_are_indices: AtomicBool::new(true),
            pid_table_lock: spin::Mutex::new(()),
            msr_bitmap_xapic: msr_bitmap(false, plan)?,
            msr_bitmap_x2apic: msr_bitmap(true, plan)?,
        };
        // Every APIC starts software-disabled (SVR = 0xFF): no entry is valid until its guest
        // enables it.
        apic.refresh_pid_table();
        Ok(apic)
    }
}

impl VmApic {
    /// Whether every vCPU's APIC ID is still its index (the exit path's fast case).
    pub fn ids_are_indices(&self) -> bool {
        self.ids_are_indices.load(Ordering::Acquire)
    }

    /// Rewrites the PID-pointer table after an APIC's ID, mode or software enable changed: IPI
    /// virtualization looks the destination ID up there (SDM Vol. 3C §30.1.6), so entry `id`
    /// points at the one vCPU that has that ID and takes fixed interrupts; an ID no vCPU, or
    /// several (aliased xAPIC IDs), has stays invalid, and an ICR write to it is an APIC-write
    /// exit, delivered by the hypervisor to every holder. The debugging option
    /// `debug_invalid_pid_entry` keeps its entry invalid. One writer at a time; senders'
    /// processors read each entry as one atomic 8-byte load.
    pub fn refresh_pid_table(&self) {
        let _one_writer = self.pid_table_lock.lock();
        let ids: Vec<u32> = (0..self.vcpus.len() as u32).map(|i| self.vcpus[i as usize].current_id(i)).collect();
        self.ids_are_indices.store(ids.iter().enumerate().all(|(i, &id)| id == i as u32), Ordering::Release);
        // SAFETY: the table is a page of this VM's, mapped by the physical window for the
        // whole run; each entry is accessed as an atomic.
        let table = unsafe { &*(memory::phys_to_virt(self.pid_table_pa) as *const [AtomicU64; 512]) };
        for (slot, entry) in table.iter().enumerate().take(self.last_pid_index as usize + 1) {
            let mut holders = ids.iter().enumerate().filter(|(_, id)| **id == slot as u32).map(|(i, _)| i);
            let value = match (holders.next(), holders.next()) {
                (Some(i), None) if self.invalid_pid_entry != Some(slot as u32) && self.vcpus[i].accepts_fixed() => {
                    hvcore::apic::pid::pid_table_entry(self.vcpus[i].pid_pa).unwrap_or(0)
                }
                _ => 0,
            };
            entry.store(value, Ordering::Release);
        }
    }
}

/// A 4 KiB MSR bitmap: everything intercepted except the pass-through list and, in x2APIC
/// mode, the x2APIC MSRs that APIC virtualization handles (hvcore::apic::x2apic_msr).
fn msr_bitmap(x2apic: bool, plan: &PathPlan) -> Result<u64, &'static str> {
    let pa = page()?;
    // SAFETY: fresh frame, mapped by the physical window.
    let bm = unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), 0x1000) };
    bm.fill(0xff);
    let mut clear = |m: u32, write: bool| {
        if let Some((byte, bit)) = msr::bitmap_position(m, write) {
            bm[byte] &= !(1 << bit);
        }
    };
    for &m in msr::PASS_THROUGH {
        clear(m, false);
        clear(m, true);
    }
    if x2apic {
        for m in X2APIC_MSR_FIRST..=X2APIC_MSR_LAST {
            if plan.x2apic_read_passes(m) {
                clear(m, false);
            }
            if plan.x2apic_write_passes(m) {
                clear(m, true);
            }
        }
    }
    Ok(pa)
}
