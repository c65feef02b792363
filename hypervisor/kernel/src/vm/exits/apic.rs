//! Exits of the virtual local APIC: APIC-write exits (the exit path of an xAPIC IPI, the
//! timer's registers, SVR and the LVTs), APIC-access exits for xAPIC registers the processor
//! does not virtualize, an xAPIC moved away from the APIC-access page (emulated on EPT
//! violations), x2APIC MSR writes the bitmap intercepts, and EOI-induced exits for the I/O
//! APIC's level-triggered interrupts. Every register write, however it arrived, goes through
//! `write_register`.

use alloc::format;

use hvcore::apic::icr::Icr;
use hvcore::apic::injection;
use hvcore::apic::regs::{self, ICR_HI, ICR_LO, msr};
use hvcore::apic::vapic::{self, Write};
use hvcore::apic::x2apic_msr::{self, X2apicWrite};
use hvcore::devices::ioapic::Message;
use hvcore::exits::cr::{self, CrAccess, CrAccessKind};
use hvcore::exits::mmio::{self, Access as MemAccess};
use hvcore::manifest::VmResult;
use hvcore::vmx::fields::{Vmcs16, VmcsNatural};

use super::flow::{Flow, Handled};
use super::instruction;
use crate::vm::delivery;
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

/// SDM Vol. 3C Table 28-6: APIC-access exit qualification, access type in bits 15:12.
const ACCESS_LINEAR_READ: u64 = 0;
const ACCESS_LINEAR_WRITE: u64 = 1;
const ACCESS_FETCH: u64 = 2;
use hvcore::arch::vector::GP;

/// Sends an IPI the guest's ICR write asked for (the exit path), counting it.
// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn send_ipi(v: &mut Vcpu<'_>, icr: &Icr) -> Result<(), VmxInstrError> {
    v.counters.ipi_sent_by_exit += 1;
    let d = delivery::deliver(v.vm, v.index as usize, icr);
    v.counters.startup_ipis_sent += d.startup as u64;
    v.counters.ipi_dropped += d.dropped as u64;
    match d.to_self {
        Some(vector) => v.deliver_self(vector),
        None => Ok(()),
    }
}

/// Delivers an I/O APIC message this vCPU's device access caused.
pub fn send_message(v: &mut Vcpu<'_>, m: &Message) -> Result<(), VmxInstrError> {
    v.counters.device_interrupts += 1;
    match delivery::deliver_message(v.vm, v.index as usize, m).to_self {
        Some(vector) => v.deliver_self(vector),
        None => Ok(()),
    }
}

/// APIC-write exit (trap-like: the raw value already reached the virtual-APIC page; SDM Vol.
/// 3C §30.4.3.3): the write completed as the APIC keeps it.
// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn apic_write(v: &mut Vcpu<'_>) -> Handled {
    let offset = (VmcsNatural::ExitQualification.read()? & 0xff0) as usize;
    let value = v.apic.page().read(offset);
    if offset == ICR_LO && v.x2apic() {
        // x2APIC: the 64-bit virtual ICR is at 0x300 (SDM Vol. 3C §30.5).
        let high = v.apic.page().read(ICR_LO + 4) as u64;
        x2apic_icr(v, high << 32 | value as u64)?;
    } else {
        write_register(v, offset, value)?;
    }
    Ok(Flow::Continue)
}

/// A register write as the APIC takes it (`vapic::store`), however it reached the hypervisor
/// (an APIC-write exit, an emulated xAPIC access, an x2APIC WRMSR), then what it asks for:
/// an EOI as the VM's path retires it, an IPI, the timer, SVR's software enable, an LVT kept
/// masked while the APIC is software-disabled (SDM Vol. 3A §12.4.7.2).
// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn write_register(v: &mut Vcpu<'_>, offset: usize, value: u32) -> Result<(), VmxInstrError> {
    let page = v.apic.page();
    match vapic::store(&page, offset, value) {
        Write::Done => Ok(()),
        Write::Eoi => eoi(v),
        Write::Icr => {
            let icr = Icr::xapic(page.read(ICR_LO), page.read(ICR_HI));
            send_ipi(v, &icr)
        }
        Write::Timer(offset, value) => v.timer_write(offset, value),
        Write::SelfIpi(vector) => self_ipi(v, vector),
        Write::Svr => v.svr_written(),
        Write::Lvt(o) => {
            page.write(o, v.lvt_value(page.read(o)));
            Ok(())
        }
        // The xAPIC ID is read-write (SDM Vol. 3A §12.4.6, Table 12-1); the x2APIC ID is not
        // (its WRMSR faults before this). Physical destinations and IPI virtualization follow.
        Write::Id => {
            page.write(regs::ID, value & 0xff00_0000);
            v.sync_accepts_ipiv();
            Ok(())
        }
    }
}

/// A guest EOI the hypervisor completes: on the injection path the modelled APIC retires its
/// highest in-service vector; with virtual-interrupt delivery (an xAPIC moved off the
/// APIC-access page) EOI virtualization is done here (`vapic::virtual_eoi`). A level-triggered
/// I/O APIC interrupt re-arms its entry either way.
fn eoi(v: &mut Vcpu<'_>) -> Result<(), VmxInstrError> {
    let page = v.apic.page();
    let vector = if v.controls.virtual_interrupt_delivery() {
        let (status, vector) = vapic::virtual_eoi(&page, Vmcs16::GuestInterruptStatus.read()?);
        Vmcs16::GuestInterruptStatus.write(status)?;
        vector
    } else {
        match injection::eoi(&page) {
            Some(vector) => vector,
            None => return Ok(()),
        }
    };
    let (_, level) = v.vm.devices.eoi_exit_bitmap();
    if level[vector as usize / 64] & (1 << (vector % 64)) == 0 {
        return Ok(());
    }
    device_eoi(v, vector)
}

/// The I/O APIC hears of an EOI for a level-triggered `vector`.
fn device_eoi(v: &mut Vcpu<'_>, vector: u8) -> Result<(), VmxInstrError> {
    v.counters.device_eois += 1;
    for m in v.vm.devices.eoi(vector) {
        send_message(v, &m)?;
    }
    Ok(())
}

/// A self-IPI the hypervisor completes (x2APIC SELF IPI on the injection path): fixed and
/// edge-triggered; vectors below 16 are illegal and dropped (SDM Vol. 3A §12.12.11).
fn self_ipi(v: &mut Vcpu<'_>, vector: u8) -> Result<(), VmxInstrError> {
    if vector >= 16 && v.apic_accepts_fixed() {
        v.deliver_self(vector)
    } else {
        v.counters.ipi_dropped += 1;
        Ok(())
    }
}

/// An x2APIC ICR write that reached the hypervisor: the virtual ICR holds what the guest wrote,
/// as with virtualized writes, and the IPI goes out by the exit path. False for #GP (reserved
/// bits).
// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
fn x2apic_icr(v: &mut Vcpu<'_>, value: u64) -> Result<bool, VmxInstrError> {
    let Some(icr) = Icr::x2apic(value) else { return Ok(false) };
    let page = v.apic.page();
    page.write(ICR_LO, value as u32);
    page.write(ICR_LO + 4, (value >> 32) as u32);
    send_ipi(v, &icr)?;
    Ok(true)
}

/// An intercepted x2APIC-mode WRMSR (0x800-0x8FF); false for #GP. On the injection path TPR,
/// EOI and SELF IPI exit too, for the modelled APIC.
// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn x2apic_wrmsr(v: &mut Vcpu<'_>, m: u32, value: u64) -> Result<bool, VmxInstrError> {
    if v.vm.plan.models_apic() && matches!(m, msr::TPR | msr::EOI | msr::SELF_IPI) {
        return match injection::x2apic_write(&v.apic.page(), m, value) {
            Some(Write::Eoi) => eoi(v).map(|()| true),
            Some(Write::SelfIpi(vector)) => self_ipi(v, vector).map(|()| true),
            Some(_) => Ok(true),
            None => Ok(false),
        };
    }
    match x2apic_msr::write_action(m, value) {
        X2apicWrite::Icr(value) => {
            v.counters.msr_write_icr += 1;
            x2apic_icr(v, value)
        }
        X2apicWrite::Timer(offset) | X2apicWrite::Store(offset) => {
            write_register(v, offset, value as u32)?;
            Ok(true)
        }
        X2apicWrite::Gp => Ok(false),
    }
}

/// An EOI-induced exit (SDM Vol. 3C §30.1.4, qualification = the vector): a level-triggered
/// I/O APIC interrupt was handled; the I/O APIC re-arms its entry and may send again.
pub fn virtualized_eoi(v: &mut Vcpu<'_>) -> Handled {
    let vector = VmcsNatural::ExitQualification.read()? as u8;
    device_eoi(v, vector)?;
    Ok(Flow::Continue)
}

/// An APIC-access VM exit in xAPIC mode: a read or write of a register the processor does not
/// virtualize (PPR, the timer's current count, LVT CMCI, ...; on the injection path every one)
/// is decoded and completed; an instruction fetch from the page or an access during event
/// delivery stops the VM with the reason.
pub fn apic_access(v: &mut Vcpu<'_>) -> Handled {
    let q = VmcsNatural::ExitQualification.read()?;
    let offset = (q & 0xfff) as usize;
    let kind = (q >> 12) & 0xf;
    let write = match kind {
        ACCESS_LINEAR_READ => false,
        ACCESS_LINEAR_WRITE => true,
        ACCESS_FETCH => return stop(v, offset, "instruction fetch from the APIC-access page: code cannot run there"),
        3 => return stop(v, offset, "the guest IDT or stack is on the APIC page (access during event delivery)"),
        _ => return stop(v, offset, &format!("guest-physical access to the APIC page (access type {kind})")),
    };
    xapic_access(v, offset, write)
}

/// An access to an xAPIC moved away from 0xFEE00000 (an EPT violation at its page: no APIC
/// virtualization there), completed as the APIC would.
pub fn relocated_access(v: &mut Vcpu<'_>, offset: usize, write: bool) -> Handled {
    xapic_access(v, offset, write)
}

/// Completes the guest instruction at RIP that reads or writes xAPIC register `offset`: a read
/// as `vapic::read_register` answers it (PPR the model's on the injection path, VPPR
/// otherwise), a write through `write_register` (forms other than an aligned 32-bit store are
/// dropped, SDM Vol. 3A §12.4.1).
fn xapic_access(v: &mut Vcpu<'_>, offset: usize, write: bool) -> Handled {
    let rip = v.rip()?;
    let insn = match instruction::fetch_and_decode(v, rip)? {
        Ok(i) => i,
        Err(why) => return stop(v, offset, &format!("APIC register access not completed: {why}")),
    };
    match insn.access {
        MemAccess::Read { dest, size } if !write => {
            let page = v.apic.page();
            let count = v.timer_current_count();
            let value = if v.vm.plan.models_apic() {
                injection::xapic_read(&page, offset, size, count)
            } else {
                vapic::read_register(&page, offset, size, count, page.read(regs::PPR))
            };
            let old = v.gpr(dest.number)?;
            v.set_gpr(dest.number, mmio::load_into(old, dest, value as u64))?;
        }
        MemAccess::WriteReg { src, size } if write => {
            let value = mmio::stored_value(v.gpr(src.number)?, src, size);
            if let Some(reg) = vapic::write_target(offset, size) {
                write_register(v, reg, value as u32)?;
            }
        }
        MemAccess::WriteImm { value, size } if write => {
            if let Some(reg) = vapic::write_target(offset, size) {
                write_register(v, reg, value as u32)?;
            }
        }
        other => {
            let why = format!("the decoded instruction ({other:?}) does not match the access");
            return stop(v, offset, &why);
        }
    }
    v.counters.emulated += 1;
    v.skip_emulated(insn.len as u64)?;
    Ok(Flow::Continue)
}

fn stop(v: &Vcpu<'_>, offset: usize, why: &str) -> Handled {
    let rip = v.rip()?;
    Ok(Flow::Stop(VmResult::Killed, format!("{why} (APIC page offset {offset:#x}, RIP {rip:#x})")))
}

/// MOV to or from CR8 on the injection path without a TPR shadow (the only path where CR8
/// accesses exit): CR8 is TPR[7:4] (SDM Vol. 3A §12.8.6.1), kept in the modelled APIC; reserved
/// bits in a MOV to CR8 raise #GP(0). Lowering the TPR lets the run loop inject what it held
/// back before the next entry.
pub fn cr8_access(v: &mut Vcpu<'_>, q: CrAccess) -> Handled {
    let page = v.apic.page();
    if q.kind == CrAccessKind::MovTo {
        match cr::tpr_from_cr8(v.gpr(q.gpr)?) {
            Some(tpr) => page.write(regs::TPR, tpr),
            None => {
                v.inject_exception(GP, Some(0))?;
                return Ok(Flow::Continue);
            }
        }
    } else {
        v.set_gpr(q.gpr, cr::cr8_from_tpr(page.read(regs::TPR)))?;
    }
    v.counters.emulated += 1;
    v.skip_instruction()?;
    Ok(Flow::Continue)
}
