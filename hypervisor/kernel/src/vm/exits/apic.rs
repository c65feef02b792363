//! Exits of the virtual local APIC: APIC-write exits (the exit path of an xAPIC IPI, the
//! timer's registers), APIC-access exits for xAPIC registers the processor does not virtualize
//! (decoded and completed), x2APIC MSR writes the bitmap intercepts, and EOI-induced exits for
//! the I/O APIC's level-triggered interrupts.

use alloc::format;
use alloc::string::String;

use hvcore::apic::icr::Icr;
use hvcore::apic::injection::{self, Write as InjectedWrite};
use hvcore::apic::timer::{DIVIDE_CONFIG, INITIAL_COUNT, LVT_TIMER};
use hvcore::apic::vapic::{self, UnvirtualizedRefusal};
use hvcore::apic::x2apic_msr::{self, X2apicWrite};
use hvcore::devices::ioapic::Message;
use hvcore::exits::cr::{self, CrAccess, CrAccessKind};
use hvcore::exits::mmio::{self, Access as MemAccess};
use hvcore::manifest::VmResult;
use hvcore::vmx::fields::VmcsNatural;
use hvcore::vmx::interrupt_path::InterruptPath;

use super::{Flow, Handled, instruction};
use crate::vm::delivery;
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

/// SDM Vol. 3C Table 28-6: APIC-access exit qualification, access type in bits 15:12.
const ACCESS_LINEAR_READ: u64 = 0;
const ACCESS_LINEAR_WRITE: u64 = 1;
const ACCESS_FETCH: u64 = 2;
const GP: u8 = 13;

/// Sends an IPI the guest's ICR write asked for (the exit path), counting it.
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
    match delivery::deliver(v.vm, v.index as usize, &m.icr()).to_self {
        Some(vector) => v.deliver_self(vector),
        None => Ok(()),
    }
}

/// APIC-write exit (trap-like: the write already reached the virtual-APIC page; SDM Vol. 3C
/// §30.4.3.3). The ICR is the exit path of an IPI; the timer's registers go to the timer model;
/// the ID is read-only for guests here; other registers (LDR, DFR, SVR, LVTs) need nothing
/// more than the stored value.
pub fn apic_write(v: &mut Vcpu<'_>) -> Handled {
    let offset = (VmcsNatural::ExitQualification.read()? & 0xfff) as usize;
    let page = v.apic.page();
    match offset {
        vapic::ICR_LO => {
            let low = page.read(vapic::ICR_LO);
            let icr = if v.x2apic() {
                // x2APIC: the 64-bit virtual ICR is at 0x300 (SDM Vol. 3C §30.5).
                Icr::x2apic(((page.read(vapic::ICR_LO + 4) as u64) << 32) | low as u64)
            } else {
                Some(Icr::xapic(low, page.read(vapic::ICR_HI)))
            };
            match icr {
                Some(icr) => send_ipi(v, &icr)?,
                None => v.counters.ipi_dropped += 1,
            }
        }
        LVT_TIMER | INITIAL_COUNT | DIVIDE_CONFIG => v.timer_write(offset, page.read(offset))?,
        vapic::ID => page.set_mode(v.index, v.x2apic()),
        vapic::SVR => v.svr_written()?,
        // An LVT entry stays masked while the APIC is software-disabled (SDM Vol. 3A §12.4.7.2).
        o if vapic::LVTS.contains(&o) => page.write(o, v.lvt_value(page.read(o))),
        _ => {}
    }
    Ok(Flow::Continue)
}

/// An intercepted x2APIC-mode WRMSR (0x800-0x8FF); false for #GP. On the injection path TPR,
/// EOI and SELF IPI exit too, for the modelled APIC.
pub fn x2apic_wrmsr(v: &mut Vcpu<'_>, msr: u32, value: u64) -> Result<bool, VmxInstrError> {
    if v.vm.path == InterruptPath::Injection
        && matches!(msr, x2apic_msr::MSR_TPR | x2apic_msr::MSR_EOI | x2apic_msr::MSR_SELF_IPI)
    {
        return match injection::x2apic_write(&v.apic.page(), msr, value) {
            Some(w) => injected_write(v, w).map(|()| true),
            None => Ok(false),
        };
    }
    match x2apic_msr::write_action(msr, value) {
        X2apicWrite::Icr(value) => {
            v.counters.msr_write_icr += 1;
            let Some(icr) = Icr::x2apic(value) else { return Ok(false) };
            // The virtual ICR holds what the guest wrote, as with virtualized writes.
            let page = v.apic.page();
            page.write(vapic::ICR_LO, value as u32);
            page.write(vapic::ICR_LO + 4, (value >> 32) as u32);
            send_ipi(v, &icr)?;
        }
        X2apicWrite::Timer(offset) => v.timer_write(offset, value as u32)?,
        X2apicWrite::Store(vapic::SVR) => {
            v.apic.page().write(vapic::SVR, value as u32);
            v.svr_written()?
        }
        X2apicWrite::Store(o) if vapic::LVTS.contains(&o) => v.apic.page().write(o, v.lvt_value(value as u32)),
        X2apicWrite::Store(offset) => v.apic.page().write(offset, value as u32),
        X2apicWrite::Gp => return Ok(false),
    }
    Ok(true)
}

/// An EOI-induced exit (SDM Vol. 3C §30.1.4, qualification = the vector): a level-triggered
/// I/O APIC interrupt was handled; the I/O APIC re-arms its entry and may send again.
pub fn virtualized_eoi(v: &mut Vcpu<'_>) -> Handled {
    let vector = VmcsNatural::ExitQualification.read()? as u8;
    v.counters.device_eois += 1;
    if let Some(m) = v.vm.devices.eoi(vector) {
        send_message(v, &m)?;
    }
    Ok(Flow::Continue)
}

/// An APIC-access VM exit in xAPIC mode: a read or write of a register the processor does not
/// virtualize (PPR, the timer's current count, LVT CMCI, ...) is decoded and completed; an
/// instruction fetch from the page, an access during event delivery or one of a form the SDM
/// leaves undefined stops the VM with the reason.
pub fn apic_access(v: &mut Vcpu<'_>) -> Handled {
    let q = VmcsNatural::ExitQualification.read()?;
    let offset = (q & 0xfff) as usize;
    let rip = v.rip()?;
    let kind = (q >> 12) & 0xf;
    let stop =
        |why: String| Ok(Flow::Stop(VmResult::Killed, format!("{why} (APIC page offset {offset:#x}, RIP {rip:#x})")));
    match kind {
        ACCESS_LINEAR_READ | ACCESS_LINEAR_WRITE => {}
        ACCESS_FETCH => return stop("instruction fetch from the APIC-access page: code cannot run there".into()),
        3 => return stop("the guest IDT or stack is on the APIC page (access during event delivery)".into()),
        _ => return stop(format!("guest-physical access to the APIC page (access type {kind})")),
    }
    let insn = match instruction::fetch_and_decode(v, rip)? {
        Ok(i) => i,
        Err(why) => return stop(format!("APIC register access not completed: {why}")),
    };
    let page = v.apic.page();
    let modelled = v.vm.path == InterruptPath::Injection;
    let done = match insn.access {
        MemAccess::Read { dest, size } if kind == ACCESS_LINEAR_READ => {
            let count = v.timer_current_count();
            let read = if modelled {
                injection::xapic_read(&page, offset, size, count)
            } else {
                vapic::unvirtualized_read(&page, offset, size, count)
            };
            match read {
                Ok(value) => {
                    let old = v.gpr(dest.number)?;
                    v.set_gpr(dest.number, mmio::load_into(old, dest, value as u64))?;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        MemAccess::WriteReg { src, size } if kind == ACCESS_LINEAR_WRITE => {
            let value = mmio::stored_value(v.gpr(src.number)?, src, size);
            write_register(v, offset, size, value as u32)?
        }
        MemAccess::WriteImm { value, size } if kind == ACCESS_LINEAR_WRITE => {
            write_register(v, offset, size, value as u32)?
        }
        other => return stop(format!("the decoded instruction ({other:?}) does not match the access type {kind}")),
    };
    match done {
        Ok(()) => {
            v.counters.emulated += 1;
            v.skip_emulated(insn.len as u64)?;
            Ok(Flow::Continue)
        }
        Err(UnvirtualizedRefusal::NotAligned32) => {
            stop("APIC register access that is not an aligned 32-bit access (SDM Vol. 3A §12.4.1)".into())
        }
        Err(UnvirtualizedRefusal::OutsideRegisters) => stop("access beyond the APIC registers".into()),
    }
}

/// An xAPIC register write that exited: the registers the processor does not virtualize, or on
/// the injection path every register but TPR, completed by the modelled APIC.
fn write_register(
    v: &mut Vcpu<'_>,
    offset: usize,
    size: u8,
    value: u32,
) -> Result<Result<(), UnvirtualizedRefusal>, VmxInstrError> {
    let page = v.apic.page();
    if v.vm.path != InterruptPath::Injection {
        return Ok(vapic::unvirtualized_write(&page, offset, size, value));
    }
    match injection::xapic_write(&page, offset, size, value) {
        Ok(w) => injected_write(v, w).map(Ok),
        Err(e) => Ok(Err(e)),
    }
}

/// What a register write on the injection path asks beyond the stored value: an EOI (which
/// a level-triggered I/O APIC interrupt hears of), an IPI, a timer register, a self-IPI.
fn injected_write(v: &mut Vcpu<'_>, w: InjectedWrite) -> Result<(), VmxInstrError> {
    let page = v.apic.page();
    match w {
        InjectedWrite::Done => Ok(()),
        InjectedWrite::Eoi(vector) => injected_eoi(v, vector),
        InjectedWrite::Icr => {
            let icr = Icr::xapic(page.read(vapic::ICR_LO), page.read(vapic::ICR_HI));
            send_ipi(v, &icr)
        }
        InjectedWrite::Timer(offset, value) => v.timer_write(offset, value),
        InjectedWrite::SelfIpi(vector) => {
            // SDM Vol. 3A §12.12.11: a fixed, edge-triggered self-IPI; vectors below 16 are
            // illegal and dropped.
            if vector >= 16 {
                v.deliver_self(vector)
            } else {
                v.counters.ipi_dropped += 1;
                Ok(())
            }
        }
    }
}

/// A guest EOI on the injection path: the modelled APIC retired `vector`; a level-triggered
/// I/O APIC interrupt re-arms its entry, as an EOI-induced exit does with virtual-interrupt
/// delivery (`virtualized_eoi`).
fn injected_eoi(v: &mut Vcpu<'_>, vector: Option<u8>) -> Result<(), VmxInstrError> {
    let Some(vector) = vector else { return Ok(()) };
    let (_, level) = v.vm.devices.eoi_exit_bitmap();
    if level[vector as usize / 64] & (1 << (vector % 64)) == 0 {
        return Ok(());
    }
    v.counters.device_eois += 1;
    match v.vm.devices.eoi(vector) {
        Some(m) => send_message(v, &m),
        None => Ok(()),
    }
}

/// MOV to or from CR8 on the injection path without a TPR shadow (the only path where CR8
/// accesses exit): CR8 is TPR[7:4] (SDM Vol. 3A §12.8.6.1), kept in the modelled APIC; reserved
/// bits in a MOV to CR8 raise #GP(0). Lowering the TPR lets the run loop inject what it held
/// back before the next entry.
pub fn cr8_access(v: &mut Vcpu<'_>, q: CrAccess) -> Handled {
    let page = v.apic.page();
    if q.kind == CrAccessKind::MovTo {
        match cr::tpr_from_cr8(v.gpr(q.gpr)?) {
            Some(tpr) => page.write(vapic::TPR, tpr),
            None => {
                v.inject_exception(GP, Some(0))?;
                return Ok(Flow::Continue);
            }
        }
    } else {
        v.set_gpr(q.gpr, cr::cr8_from_tpr(page.read(vapic::TPR)))?;
    }
    v.counters.emulated += 1;
    v.skip_instruction()?;
    Ok(Flow::Continue)
}
