//! A vCPU's VMCS set-up (controls, host state, the guest state every start shares) and its
//! start states: the multiboot hand-off on the bootstrap vCPU, wait-for-SIPI on the others,
//! INIT and the SIPI's real-mode start (SDM Vol. 3A §9.1.1, §9.4; Vol. 3C §27.3.1.2).

use core::sync::atomic::{AtomicU16, Ordering};

use hvcore::apic::base as apic_base;
use hvcore::bootcfg::FaultInjection;
use hvcore::manifest::{ApicMode, VmResult};
use hvcore::start_state::{self, StartState};
use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};
use x86_64::instructions::tables::{sgdt, sidt};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, GsBase, Msr};

use super::Vcpu;
use crate::vectors::POSTED_INTR;
use crate::vmx::entry::{self, GuestRegs};
use crate::vmx::vmcs::{Access, VmxInstrError};

/// VPIDs: one per vCPU, never reused within a run (so no INVVPID is needed).
static NEXT_VPID: AtomicU16 = AtomicU16::new(1);

use hvcore::exits::msr::IA32_PAT;
use hvcore::vmx::controls::{IA32E_MODE_GUEST, INTERRUPT_WINDOW_EXITING, NMI_WINDOW_EXITING};
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
const HOST_TR_SELECTOR: u16 = 0x18;
const AR_UNUSABLE: u32 = 1 << 16;

/// DS, ES, FS, GS and SS: each start loads them alike.
const DATA_SEGMENTS: [(Vmcs16, VmcsNatural, Vmcs32, Vmcs32); 5] = [
    (Vmcs16::GuestSsSelector, VmcsNatural::GuestSsBase, Vmcs32::GuestSsLimit, Vmcs32::GuestSsAccessRights),
    (Vmcs16::GuestDsSelector, VmcsNatural::GuestDsBase, Vmcs32::GuestDsLimit, Vmcs32::GuestDsAccessRights),
    (Vmcs16::GuestEsSelector, VmcsNatural::GuestEsBase, Vmcs32::GuestEsLimit, Vmcs32::GuestEsAccessRights),
    (Vmcs16::GuestFsSelector, VmcsNatural::GuestFsBase, Vmcs32::GuestFsLimit, Vmcs32::GuestFsAccessRights),
    (Vmcs16::GuestGsSelector, VmcsNatural::GuestGsBase, Vmcs32::GuestGsLimit, Vmcs32::GuestGsAccessRights),
];

impl Vcpu<'_> {
    /// Controls, host state and the guest state every start shares.
    pub(in crate::vm) fn setup(&mut self) -> Result<(), VmxInstrError> {
        let c = &self.controls;
        Vmcs32::PinBasedVmExecControl.write(c.pin)?;
        Vmcs32::PrimaryProcBasedVmExecControl.write(c.primary)?;
        Vmcs32::SecondaryProcBasedVmExecControl.write(c.secondary)?;
        if c.tertiary != 0 {
            Vmcs64::TertiaryVmExecControl.write(c.tertiary)?;
        }
        Vmcs32::VmExitControls.write(c.exit)?;
        Vmcs32::VmEntryControls.write(c.entry)?;
        Vmcs32::ExceptionBitmap.write(0)?;
        Vmcs32::Cr3TargetCount.write(0)?;
        Vmcs32::VmExitMsrStoreCount.write(0)?;
        Vmcs32::VmExitMsrLoadCount.write(0)?;
        Vmcs32::VmEntryMsrLoadCount.write(0)?;
        Vmcs32::VmEntryInterruptionInfo.write(0)?;
        Vmcs64::MsrBitmap.write(self.vm.apic.msr_bitmap_xapic)?;
        // APIC virtualization (SDM Vol. 3C §25.6.8, ch. 30) as far as the VM's interrupt path
        // goes: the virtual-APIC page (the TPR shadow's: every path but injection without one)
        // and the APIC-access page (xAPIC mode); with virtual-interrupt delivery, RVI/SVI and EOI exits only for
        // the I/O APIC's level entries (run.rs keeps them current); posted interrupts; and
        // IPIv's PID-pointer table.
        if c.tpr_shadow() {
            Vmcs64::VirtualApicPageAddr.write(self.apic.page_pa)?;
            Vmcs32::TprThreshold.write(0)?;
        }
        Vmcs64::ApicAccessAddr.write(self.vm.apic.apic_access_pa)?;
        if c.virtual_interrupt_delivery() {
            for f in [Vmcs64::EoiExitBitmap0, Vmcs64::EoiExitBitmap1, Vmcs64::EoiExitBitmap2, Vmcs64::EoiExitBitmap3] {
                f.write(0)?;
            }
            Vmcs16::GuestInterruptStatus.write(0)?;
        }
        if self.vm.plan.posts() {
            Vmcs16::PostedIntrNv.write(POSTED_INTR as u16)?;
            Vmcs64::PostedIntrDescAddr.write(self.apic.pid_pa)?;
        }
        if self.vm.plan.ipiv() {
            Vmcs64::PidPointerTable.write(self.vm.apic.pid_table_pa)?;
            Vmcs16::LastPidPointerIndex.write(self.vm.apic.last_pid_index)?;
        }
        Vmcs64::EptPointer.write(self.vm.eptp)?;
        if c.tsc_offsetting() {
            Vmcs64::TscOffset.write(0)?;
        }
        // Without VPID every entry and exit flushes the guest's linear mappings (SDM Vol. 3C
        // §29.4.3.1): nothing more to do, the EPT never changes while the VM runs.
        if c.vpid() {
            self.vpid = NEXT_VPID.fetch_add(1, Ordering::Relaxed);
            Vmcs16::Vpid.write(self.vpid)?;
        }
        Vmcs64::VmcsLinkPointer.write(u64::MAX)?;

        // Host state: this CPU as it runs now (SDM Vol. 3C §25.5).
        Vmcs16::HostCsSelector.write(0x08)?;
        for f in [Vmcs16::HostSsSelector, Vmcs16::HostDsSelector, Vmcs16::HostEsSelector] {
            f.write(0x10)?;
        }
        Vmcs16::HostFsSelector.write(0)?;
        Vmcs16::HostGsSelector.write(0)?;
        Vmcs16::HostTrSelector.write(HOST_TR_SELECTOR)?;
        VmcsNatural::HostCr0.write(Cr0::read_raw())?;
        VmcsNatural::HostCr3.write(Cr3::read_raw().0.start_address().as_u64() | Cr3::read_raw().1 as u64)?;
        VmcsNatural::HostCr4.write(Cr4::read_raw())?;
        VmcsNatural::HostFsBase.write(0)?;
        VmcsNatural::HostGsBase.write(GsBase::read().as_u64())?;
        VmcsNatural::HostTrBase.write(crate::cpu::tss_base())?;
        VmcsNatural::HostGdtrBase.write(sgdt().base.as_u64())?;
        VmcsNatural::HostIdtrBase.write(sidt().base.as_u64())?;
        VmcsNatural::HostIa32SysenterEsp.write(0)?;
        VmcsNatural::HostIa32SysenterEip.write(0)?;
        Vmcs32::HostIa32SysenterCs.write(0)?;
        // SAFETY: IA32_PAT exists on every CPU with VMX.
        Vmcs64::HostIa32Pat.write(unsafe { Msr::new(IA32_PAT).read() })?;
        Vmcs64::HostIa32Efer.write(Efer::read_raw())?;
        VmcsNatural::HostRip.write(entry::exit_landing())?;

        Vmcs64::GuestIa32Pat.write(DEFAULT_PAT)?;
        Vmcs64::GuestIa32Debugctl.write(0)?;
        Vmcs16::GuestLdtrSelector.write(0)?;
        VmcsNatural::GuestLdtrBase.write(0)?;
        Vmcs32::GuestLdtrLimit.write(0)?;
        Vmcs32::GuestLdtrAccessRights.write(AR_UNUSABLE)?;
        VmcsNatural::GuestIa32SysenterEsp.write(0)?;
        VmcsNatural::GuestIa32SysenterEip.write(0)?;
        Vmcs32::GuestIa32SysenterCs.write(0)?;
        // The CR0 and CR4 bits VMX fixes (NE, VMXE) and the CR4 bits of features the VM lacks
        // are the hypervisor's; the guest sees its own values in the read shadows
        // (`exits::cr`, SDM Vol. 3C §25.6.6).
        VmcsNatural::Cr0GuestHostMask.write(self.vm.cr0_mask)?;
        VmcsNatural::Cr4GuestHostMask.write(self.vm.cr4_mask)?;
        if self.vm.spec.apic == ApicMode::X2Apic {
            // As firmware does when asked: the kernel finds its APIC in x2APIC mode.
            // Vm::create refused a VM asking for x2APIC mode where it is not offered.
            let current = self.apic.apic_base.load(Ordering::Relaxed);
            if let Some(c) = apic_base::write(current, current | apic_base::EXTD, self.vm.apic_features) {
                self.set_apic_base(c)?;
            }
        } else {
            self.apply_apic_state()?;
        }
        self.arm_preemption_timer()
    }

    /// The state the vCPU first enters with: the multiboot hand-off on the first, wait-for-SIPI
    /// on the others; false if the VM stopped before it could start.
    pub(in crate::vm) fn first_start(&mut self) -> Result<bool, VmxInstrError> {
        if self.index == 0 && self.host.fault == FaultInjection::BadGuestState {
            self.load_start(&start_state::multiboot(0, 0))?;
            log::warn!("injecting an invalid guest state (boot config fault = bad-guest-state)");
            VmcsNatural::GuestRflags.write(0)?;
            return Ok(true);
        }
        if self.index == 0 {
            self.load_start(&self.vm.boot.start())?;
            return Ok(true);
        }
        self.wait_for_sipi()
    }

    /// A start state: the multiboot hand-off or a SIPI start (protected mode without paging, or
    /// real mode: an unrestricted guest, SDM Vol. 3C §27.3.1.2), or Linux's 64-bit entry;
    /// everything else as INIT leaves it (SDM Vol. 3A §9.1.1, Table 9-1): IDTR at 0 with limit
    /// 0xFFFF, no pending events.
    fn load_start(&mut self, s: &StartState) -> Result<(), VmxInstrError> {
        let caps = &self.host.caps;
        VmcsNatural::GuestCr0.write(caps.fix_cr0_unrestricted(s.cr0))?;
        VmcsNatural::Cr0ReadShadow.write(s.cr0)?;
        VmcsNatural::GuestCr4.write(caps.fix_cr4(s.cr4))?;
        VmcsNatural::Cr4ReadShadow.write(s.cr4)?;
        VmcsNatural::GuestCr3.write(s.cr3)?;
        Vmcs64::GuestIa32Efer.write(s.efer)?;
        // The processor keeps this bit equal to EFER.LMA across exits (SDM Vol. 3C §28.2).
        let entry = if s.long_mode() {
            self.controls.entry | IA32E_MODE_GUEST
        } else {
            self.controls.entry & !IA32E_MODE_GUEST
        };
        Vmcs32::VmEntryControls.write(entry)?;
        Vmcs16::GuestCsSelector.write(s.cs.selector)?;
        VmcsNatural::GuestCsBase.write(s.cs.base)?;
        Vmcs32::GuestCsLimit.write(s.cs.limit)?;
        Vmcs32::GuestCsAccessRights.write(s.cs.access)?;
        for (sel, base, limit, ar) in DATA_SEGMENTS {
            sel.write(s.data.selector)?;
            base.write(s.data.base)?;
            limit.write(s.data.limit)?;
            ar.write(s.data.access)?;
        }
        Vmcs16::GuestTrSelector.write(0)?;
        VmcsNatural::GuestTrBase.write(0)?;
        Vmcs32::GuestTrLimit.write(0xffff)?;
        Vmcs32::GuestTrAccessRights.write(start_state::access::TSS32_BUSY)?;
        VmcsNatural::GuestGdtrBase.write(s.gdt.0)?;
        Vmcs32::GuestGdtrLimit.write(s.gdt.1 as u32)?;
        VmcsNatural::GuestIdtrBase.write(0)?;
        Vmcs32::GuestIdtrLimit.write(0xffff)?;
        VmcsNatural::GuestDr7.write(0x400)?;
        // DR0-DR3 and DR6 are the live registers (VM transitions switch only DR7); this core
        // runs only this vCPU, so they are set here as INIT sets them (Table 9-1).
        // SAFETY: debug registers hold addresses and status only; no breakpoint is enabled
        // (DR7 = 400H).
        unsafe {
            core::arch::asm!(
                "mov dr0, {z}", "mov dr1, {z}", "mov dr2, {z}", "mov dr3, {z}", "mov dr6, {dr6}",
                z = in(reg) 0u64, dr6 = in(reg) 0xffff_0ff0u64, options(nomem, nostack)
            )
        };
        VmcsNatural::GuestRsp.write(0)?;
        VmcsNatural::GuestRip.write(s.rip)?;
        VmcsNatural::GuestRflags.write(0x2)?;
        VmcsNatural::GuestPendingDebugExceptions.write(0)?;
        Vmcs32::GuestInterruptibilityState.write(0)?;
        Vmcs32::GuestActivityState.write(0)?;
        Vmcs32::VmEntryInterruptionInfo.write(0)?;
        self.regs = GuestRegs { rax: s.rax, rbx: s.rbx, rdx: s.rdx, rsi: s.rsi, ..GuestRegs::default() };
        // Time spent waiting (for a SIPI) did not count down the preemption timer.
        self.arm_preemption_timer()
    }

    /// INIT (SDM Vol. 3A §12.4.7.3): the local APIC as after power-up but for its ID and mode
    /// (an x2APIC stays in x2APIC mode, §12.12.5.1), its timer stopped, nothing pending, then
    /// wait-for-SIPI. False if the VM stopped meanwhile.
    pub(in crate::vm) fn init(&mut self) -> Result<bool, VmxInstrError> {
        // CR0.CD and NW survive INIT (Table 9-1, note 2); XCR0, the TSC, PAT and the MTRRs
        // do too, being left alone.
        self.cd_nw_at_init = crate::vm::exits::cr::guest_cr0(self)? & start_state::CR0_CD_NW;
        // INIT keeps the APIC ID (SDM Vol. 3A §12.12.5.1), an xAPIC ID software wrote too.
        let id = self.apic.page().read(hvcore::apic::regs::ID);
        self.reset_local_apic(self.x2apic())?;
        self.apic.page().write(hvcore::apic::regs::ID, id);
        self.sync_accepts_ipiv();
        self.set_primary(self.controls.primary & !(INTERRUPT_WINDOW_EXITING | NMI_WINDOW_EXITING))?;
        self.counters.inits += 1;
        self.wait_for_sipi()
    }

    /// Wait-for-SIPI, kept in the hypervisor: the CPU sleeps until a kick, then looks. True
    /// with the SIPI's real-mode start loaded; false if the VM stopped meanwhile.
    fn wait_for_sipi(&mut self) -> Result<bool, VmxInstrError> {
        loop {
            // An INIT while waiting changes nothing: the vCPU is in its INIT state.
            self.apic.startup.take_init();
            if self.vm.is_stopping() {
                return Ok(false);
            }
            if let Some(vector) = self.apic.startup.take_sipi() {
                let signature = core::arch::x86_64::__cpuid(1).eax;
                self.load_start(&start_state::after_sipi(vector, signature, self.cd_nw_at_init))?;
                self.counters.sipis += 1;
                return Ok(true);
            }
            if self.watchdog_expired() {
                let why = alloc::format!(
                    "vCPU {}: watchdog: still waiting for a SIPI after {} ms",
                    self.index,
                    self.vm.spec.timeout_ms
                );
                self.vm.stop(VmResult::Timeout, why);
                return Ok(false);
            }
            self.set_where(crate::vm::VcpuWhere::Waiting);
            crate::apic::sleep_until(self.wake_at());
        }
    }
}
