//! The hypervisor kernel: boots from `bootloader`, brings up every CPU and VMX on each.
//!
//! Boot flow (docs/architecture.md): serial console → boot config from the ramdisk → memory
//! (frames, heap) → BSP per-CPU tables → ACPI MADT → local APIC → TSC → VMX discovery → APs
//! via INIT–SIPI–SIPI → VMXON everywhere → VMXOFF everywhere → `HV-SUMMARY` → exit.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
// `#[rustc_align]` on the exit path's functions (vm::run, vm::exits, vm::delivery).
#![feature(fn_align)]

extern crate alloc;

mod acpi;
mod apic;
mod bench;
mod console;
mod cpu;
mod cpu_index;
mod host;
mod memory;
mod phase;
mod report;
mod smp;
mod time;
mod vectors;
mod vm;
mod vmx;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::config::Mapping;
use bootloader_api::{BootInfo, BootloaderConfig, entry_point};
use hvcore::bootcfg::{BootConfig, FaultInjection};
use hvcore::manifest::{Machine, Manifest};
use hvcore::ramdisk::Archive;
use hvcore::summary::{CpuReport, HvSummary, RunResult};
use hvcore::vmx::caps::{VmxCaps, VmxMsrs};
use log::{error, info, warn};
use phase::{BOOT, Phase};
use spin::{Mutex, Once};

pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut c = BootloaderConfig::new_default();
    c.mappings.physical_memory = Some(Mapping::Dynamic);
    // Keep the lower half (PML4 entry 0 in particular) free: the AP trampoline's temporary
    // page tables identity-map low memory there.
    c.mappings.kernel_base = Mapping::FixedAddress(0xffff_ffff_8000_0000);
    c.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    c.kernel_stack_size = 256 * 1024;
    c
};

entry_point!(kmain, config = &BOOTLOADER_CONFIG);

/// Per-CPU outcome, indexed by CPU index (0 = BSP).
static REPORTS: Mutex<Vec<CpuReport>> = Mutex::new(Vec::new());
/// The BSP's decoded capabilities; `None` when VMX is unusable on this platform.
static BSP_CAPS: Once<Option<VmxCaps>> = Once::new();
static CONFIG: Once<BootConfig> = Once::new();
/// APIC ID of each CPU index.
static APIC_IDS: Once<Vec<u32>> = Once::new();
/// What the VMs and vCPUs are handed about this machine, once the BSP knows it all.
static HOST: Once<host::Host> = Once::new();
/// The VMs, built by the BSP once every CPU is in VMX operation.
static VMS: Once<Vec<vm::Vm>> = Once::new();
/// The manifest, validated; which vCPU runs on which CPU.
static MANIFEST: Once<Manifest> = Once::new();
/// TSC ticks per second, measured against the PIT (watchdog deadlines).
static TSC_HZ_MEASURED: AtomicU64 = AtomicU64::new(0);

const AP_REPORT_TIMEOUT_US: u64 = 2_000_000;

fn kmain(boot_info: &'static mut BootInfo) -> ! {
    console::init(log::LevelFilter::Info);
    let phys_offset = boot_info.physical_memory_offset.into_option().unwrap_or_else(|| {
        report::fatal(format_args!("bootloader did not map physical memory"));
    });
    let low = memory::init(phys_offset, &boot_info.memory_regions, smp::trampoline::PAGES)
        .unwrap_or_else(|e| report::fatal(format_args!("memory: {e}")));
    let ramdisk = ramdisk(boot_info);
    let (config, manifest) = boot_config(ramdisk.as_ref());
    report::set_exit_mode(config.exit);
    console::init(config.log_level);
    CONFIG.call_once(|| config);
    info!("ipiv-hv {} starting", env!("CARGO_PKG_VERSION"));
    info!("memory: {} MiB free, trampoline at {low:#x}", memory::free_bytes() >> 20);

    apic::mask_legacy_pic();
    apic::init_this_cpu(config.host_xapic);
    let bsp_apic = apic::id();
    cpu::activate(cpu::PerCpu::new(0, bsp_apic));
    info!("local APIC {} in {} mode", bsp_apic, if apic::is_x2apic() { "x2APIC" } else { "xAPIC" });

    let rsdp = boot_info.rsdp_addr.into_option().unwrap_or_else(|| report::fatal(format_args!("no ACPI RSDP")));
    let procs = acpi::processors(rsdp).unwrap_or_else(|e| report::fatal(format_args!("ACPI MADT: {e:?}")));
    let expected = 1 + procs.aps.len() as u32;
    report::CPUS_EXPECTED.store(expected, Ordering::Relaxed);
    info!(
        "ACPI: {expected} CPUs enabled (BSP APIC {}, APs {:?}), {} disabled",
        procs.bsp_apic_id, procs.aps, procs.disabled
    );
    if procs.bsp_apic_id != bsp_apic {
        warn!("MADT says the BSP has APIC ID {}, the APIC says {bsp_apic}", procs.bsp_apic_id);
    }
    APIC_IDS.call_once(|| core::iter::once(bsp_apic).chain(procs.aps.iter().copied()).collect());

    let (tsc_hz, source) = time::tsc_hz();
    let measured = time::measure_tsc_hz();
    TSC_HZ_MEASURED.store(measured, Ordering::Relaxed);
    info!("TSC {} kHz (from {source:?}); measured against the PIT: {} kHz", tsc_hz / 1000, measured / 1000);

    let msrs = vmx::read_msrs();
    log_msrs(&msrs);
    let caps = match VmxCaps::decode(&msrs) {
        Ok(c) => Some(c),
        Err(why) => {
            info!("VMX unsupported: {why}");
            None
        }
    };
    BSP_CAPS.call_once(|| caps);
    if let Some(c) = &caps {
        info!("VMX features: {:?}", c.features());
    }

    {
        let mut r = REPORTS.lock();
        r.push(CpuReport { apic_id: bsp_apic, bsp: true, online: true, ..Default::default() });
        r.extend(procs.aps.iter().map(|&apic_id| CpuReport { apic_id, ..Default::default() }));
    }
    if config.fault == FaultInjection::BspPageFault {
        inject_page_fault();
    }
    if config.fault == FaultInjection::BspPanic {
        panic!("deliberate panic (boot config fault = bsp-panic)");
    }

    let kernel_cr3 = x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64();
    let mut tramp = smp::trampoline::Trampoline::install(low, kernel_cr3);
    let mut started = 0u32;
    for (i, &apic_id) in procs.aps.iter().enumerate() {
        let index = i as u32 + 1;
        match smp::start_ap(&mut tramp, index, apic_id, ap_entry) {
            Ok(()) => started += 1,
            Err(e) => {
                error!("CPU {index} (APIC ID {apic_id}) did not start: {e:?}");
                REPORTS.lock()[index as usize].error = Some(alloc::format!("did not start: {e:?}"));
            }
        }
    }
    info!("SMP: {} of {expected} CPUs online", started + 1);

    let bsp_vmx = vmx_bring_up(0, &msrs);
    wait_for(|| BOOT.aps_vmxon_done() >= started, "APs to finish VMXON");

    // The native baseline, before any VM: CPU 0 → CPU 1 (its own phase, where asked).
    let native = bench::bsp_phase(config.native_bench, config.native_halt, (started > 0).then(|| procs.aps[0]));

    // Every CPU is in VMX operation (or reported why not): build the VMs, or refuse the
    // manifest before any of them starts.
    BOOT.advance(Phase::Building);
    let vm_error = prepare_vms(manifest, ramdisk.as_ref(), expected, caps.is_some() && bsp_vmx.is_some());
    // The instruction decoder's tables, built now rather than inside a guest's first exit.
    hvcore::exits::mmio::warm_up();
    BOOT.advance(Phase::Running);
    if bsp_vmx.is_some() {
        run_vcpu_here(0);
    }
    watch_until_vms_end();

    BOOT.advance(Phase::Release);
    if let Some(v) = bsp_vmx {
        v.off();
    }
    wait_for(|| BOOT.aps_vmxoff_done() >= started, "APs to finish VMXOFF");

    let reports = REPORTS.lock().clone();
    let unsupported = match caps {
        Some(_) => None,
        None => Some(VmxCaps::decode(&msrs).err().map(|u| u.to_string()).unwrap_or_default()),
    };
    let features = caps.map(|c| c.features()).unwrap_or_default();
    let vm_reports = VMS.get().map(|vms| vms.iter().map(|v| v.report()).collect()).unwrap_or_default();
    let mut summary = HvSummary::judge(expected, unsupported, features, tsc_hz, reports, vm_reports);
    summary.native = native;
    summary.cpu_model = cpu::brand();
    summary.vmx_msrs = Some(msrs);
    match vm_error {
        // Without VMX the platform stays "unsupported"; the reason says the VMs could not run.
        Some(e) if summary.result == RunResult::Unsupported => {
            summary.reason = Some(alloc::format!("{}; {e}", summary.reason.take().unwrap_or_default()));
        }
        Some(e) => {
            summary.result = RunResult::Fail;
            summary.reason = Some(e);
        }
        None => {}
    }
    info!("result: {}", summary.result.as_str());
    report::finish(&summary)
}

/// Validates the manifest against this machine and builds every VM; on any problem no VM is
/// built and the reason is returned.
fn prepare_vms(mut manifest: Manifest, ramdisk: Option<&Archive<'_>>, cpus: u32, vmx_ok: bool) -> Option<String> {
    if manifest.vms.is_empty() {
        return None;
    }
    if !vmx_ok {
        return Some("the manifest's VMs cannot run without VMX".into());
    }
    let files = |name: &str| ramdisk.and_then(|a| a.get(name));
    let check = |spec: &hvcore::manifest::VmSpec| spec.check_boot(&files);
    // Leave a margin for EPT tables, VMCSs and stacks.
    let budget = (memory::free_bytes() >> 20).saturating_sub(16);
    let machine = Machine { cpus, ram_budget_mib: budget, check_boot: &check };
    if let Err(e) = manifest.validate(&machine) {
        error!("manifest refused: {e}");
        return Some(alloc::format!("manifest: {e}"));
    }
    let host = HOST.call_once(|| host::Host {
        caps: BSP_CAPS.get().copied().flatten().expect("VMX checked above"),
        tsc_hz: TSC_HZ_MEASURED.load(Ordering::Relaxed),
        apic_ids: APIC_IDS.get().expect("set before the APs start").clone(),
        fault: CONFIG.get().map_or(FaultInjection::None, |c| c.fault),
        unix_time: time::host_unix_time(),
        cpu_model: cpu::brand(),
    });
    let mut vms = Vec::new();
    for spec in &manifest.vms {
        match vm::Vm::create(spec, &files, host) {
            Ok(v) => {
                info!(
                    "VM {}: {} vCPUs on CPUs {:?}, {} MiB at {:#x}, {} APIC, interrupt path {}{}, HLT {}",
                    spec.name,
                    spec.vcpus,
                    spec.cpus,
                    spec.ram_mib,
                    v.ram_pa,
                    spec.apic.as_str(),
                    v.plan.path,
                    v.plan.why_not_better.as_deref().map(|r| alloc::format!(" ({r})")).unwrap_or_default(),
                    spec.hlt.as_str()
                );
                vms.push(v);
            }
            Err(e) => return Some(alloc::format!("VM {}: {e}", spec.name)),
        }
    }
    MANIFEST.call_once(|| manifest);
    VMS.call_once(|| vms);
    None
}

/// Waits, on a CPU whose own vCPU (if any) is done, until every VM has ended, watching for
/// stragglers meanwhile: a VM's vCPUs leave within microseconds of its stop, and one that has
/// not after a second is named and its CPU kicked again rather than hanging the run in
/// silence. Every such CPU watches, so the watch does not depend on any one of them.
fn watch_until_vms_end() {
    let Some(vms) = VMS.get() else { return };
    let grace = TSC_HZ_MEASURED.load(Ordering::Relaxed).max(1);
    while !vms.iter().all(|v| v.all_done()) {
        let now = time::rdtsc();
        for vm in vms.iter() {
            vm.watch_stragglers(now, grace);
        }
        // Spinning, not halted: under Bochs a halted CPU changes how fast the TSC advances per
        // round of its CPUs (docs/results.md), and the benchmark's figures with it.
        core::hint::spin_loop();
    }
}

/// Runs the vCPU pinned to this CPU, if any, until it is done; whether there was one.
fn run_vcpu_here(cpu: u32) -> bool {
    let (Some(manifest), Some(vms), Some(host)) = (MANIFEST.get(), VMS.get(), HOST.get()) else { return false };
    let Some((vm_index, vcpu)) = manifest.vcpu_on(cpu) else { return false };
    vm::run::run_vcpu(&vms[vm_index], vcpu, host);
    true
}

fn ramdisk(boot_info: &BootInfo) -> Option<Archive<'static>> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    // SAFETY: the bootloader mapped the ramdisk at this address with this length, for good.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) };
    Some(Archive::parse(bytes).unwrap_or_else(|e| report::fatal(format_args!("{e}"))))
}

/// The boot config and manifest from the ramdisk; without one (real hardware), the defaults.
fn boot_config(ramdisk: Option<&Archive<'_>>) -> (BootConfig, Manifest) {
    let Some(bytes) = ramdisk.and_then(|a| a.get(hvcore::ramdisk::CONFIG_FILE)) else {
        return (BootConfig::default(), Manifest::default());
    };
    let text = core::str::from_utf8(bytes).unwrap_or_else(|_| report::fatal(format_args!("boot config is not UTF-8")));
    BootConfig::parse(text).unwrap_or_else(|e| report::fatal(format_args!("{e}")))
}

fn log_msrs(m: &VmxMsrs) {
    log::debug!("VMX MSRs: {m:x?}");
}

/// VMXON on this CPU (when the platform supports VMX); records the outcome in REPORTS.
fn vmx_bring_up(index: u32, msrs: &VmxMsrs) -> Option<vmx::VmxOn> {
    let bsp_caps = (*BSP_CAPS.get().expect("BSP decodes first"))?;
    let result = VmxCaps::decode(msrs).map_err(vmx::VmxError::Unsupported).and_then(|caps| {
        if caps.features() != bsp_caps.features() {
            warn!("VMX features differ from the BSP's: {:?}", caps.features());
        }
        vmx::enable(&caps, msrs)
    });
    let mut r = REPORTS.lock();
    match result {
        Ok(v) => {
            info!("VMXON ok");
            r[index as usize].vmxon = true;
            Some(v)
        }
        Err(e) => {
            error!("VMXON: {e}");
            r[index as usize].error = Some(e.to_string());
            None
        }
    }
}

fn wait_for(done: impl Fn() -> bool, what: &str) {
    let step = 1_000;
    for _ in 0..AP_REPORT_TIMEOUT_US / step {
        if done() {
            return;
        }
        time::pit_delay_us(step);
    }
    error!("timed out waiting for {what}");
}

extern "C" fn ap_entry(arg: u64) -> ! {
    // SAFETY: the BSP passed a leaked, 'static PerCpu made for this CPU (smp::start_ap).
    let pc: &'static cpu::PerCpu = unsafe { &*(arg as *const cpu::PerCpu) };
    cpu::activate(pc);
    smp::ap_started();
    apic::init_this_cpu(false);
    let index = pc.index;
    let id = apic::id();
    if id != pc.apic_id {
        warn!("started as APIC ID {} but the APIC says {id}", pc.apic_id);
    }
    report::CPUS_ONLINE.fetch_add(1, Ordering::Relaxed);
    REPORTS.lock()[index as usize].online = true;
    info!("online (APIC ID {id})");
    if index == 1 && CONFIG.get().is_some_and(|c| c.fault == FaultInjection::ApPageFault) {
        inject_page_fault();
    }

    let msrs = vmx::read_msrs();
    let vmx = vmx_bring_up(index, &msrs);
    BOOT.vmxon_done();
    if index == 1 {
        bench::ap_phase();
    }
    BOOT.wait_for(Phase::Running);
    // A CPU that ran a vCPU watches for stragglers until every VM has ended; one that has none
    // spins on the tightest loop, as the benchmark's figures assume (docs/results.md).
    if vmx.is_some() && run_vcpu_here(index) {
        watch_until_vms_end();
    }
    BOOT.wait_for(Phase::Release);
    if let Some(v) = vmx {
        v.off();
    }
    BOOT.vmxoff_done();
    report::halt_forever()
}

/// Reads an address that nothing maps (lower half, which the kernel leaves empty).
fn inject_page_fault() {
    warn!("injecting a page fault (boot config fault = ...-page-fault)");
    // SAFETY: deliberately unsound: this read faults, which is what the test wants to see.
    let v = unsafe { core::ptr::read_volatile(0x0000_7fff_dead_b000 as *const u64) };
    let _ = String::from("unreachable");
    info!("read {v}");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report::fatal(format_args!("panic on CPU {}: {info}", cpu_index::index()))
}
