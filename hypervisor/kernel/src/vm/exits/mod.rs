//! VM-exit handlers, one function per exit reason, dispatched on the typed reason; anything
//! unexpected stops the VM with a report. Decisions come from `hvcore::exits` and the device
//! models; these files apply them to the VMCS and the guest. Handlers return the next step or a
//! VMCS error, never drop one.

pub mod apic;
pub mod cr;
pub mod entry_failure;
pub mod flow;
pub mod hlt;
pub mod hypercall;
pub mod instruction;
pub mod io;
pub mod msr;
pub mod task_switch;
pub mod xsetbv;

use alloc::format;

use hvcore::exits::cpuid;
use hvcore::manifest::VmResult;
use hvcore::vmx::exit_reason::BasicExit;
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use super::vcpu::Vcpu;
use crate::vectors;
use crate::vmx::vmcs::Access;
use flow::{Flow, Handled, timeout};

// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn handle(v: &mut Vcpu<'_>, reason: BasicExit) -> Handled {
    match reason {
        BasicExit::Cpuid => cpuid(v),
        // No cache the hypervisor keeps holds guest data: INVD completes as WBINVD does (as
        // under KVM); WBINVD itself exits only with "WBINVD exiting", which is not set.
        BasicExit::Invd | BasicExit::Wbinvd => {
            v.counters.emulated += 1;
            v.skip_instruction()?;
            Ok(Flow::Continue)
        }
        // VMX and SMX are hidden (CPUID.1:ECX[5,6] = 0, CR4.VMXE and CR4.SMXE reserved): a
        // processor without them raises #UD for these instructions (SDM Vol. 3C §31.3
        // "VMXON", Vol. 2D "GETSEC").
        BasicExit::VmxInstruction(_) | BasicExit::Getsec => {
            v.inject_exception(6, None)?;
            Ok(Flow::Continue)
        }
        BasicExit::Hlt => hlt::hlt(v),
        BasicExit::Vmcall => hypercall::vmcall(v),
        BasicExit::CrAccess => cr::cr_access(v),
        BasicExit::Io => io::port_io(v),
        BasicExit::Rdmsr => msr::rdmsr(v),
        BasicExit::Wrmsr => msr::wrmsr(v),
        BasicExit::ExternalInterrupt => external_interrupt(v),
        // The exception bitmap is 0, so this is a host NMI (none is sent by this hypervisor;
        // its NMI exit is all it needs); virtual NMIs are gated by the run loop.
        BasicExit::ExceptionOrNmi => Ok(Flow::Continue),
        // The guest stopped blocking NMIs, or interrupts (the injection path), or lowered its
        // TPR below a held-back interrupt's class: the run loop injects what waits.
        BasicExit::NmiWindow | BasicExit::InterruptWindow | BasicExit::TprBelowThreshold => Ok(Flow::Continue),
        // The watchdog or the APIC timer: the run loop delivers a due timer and re-arms.
        BasicExit::PreemptionTimer if v.watchdog_expired() => timeout(v),
        BasicExit::PreemptionTimer => Ok(Flow::Continue),
        BasicExit::EptViolation => io::ept_violation(v),
        BasicExit::ApicWrite => apic::apic_write(v),
        BasicExit::ApicAccess => apic::apic_access(v),
        BasicExit::VirtualizedEoi => apic::virtualized_eoi(v),
        BasicExit::Xsetbv => xsetbv::xsetbv(v),
        BasicExit::TaskSwitch => task_switch::task_switch(v),
        BasicExit::EptMisconfig => {
            let gpa = Vmcs64::GuestPhysicalAddress.read()?;
            Ok(Flow::Stop(VmResult::Killed, format!("EPT misconfiguration at GPA {gpa:#x}")))
        }
        BasicExit::TripleFault => Ok(Flow::Stop(VmResult::Killed, format!("triple fault at RIP {:#x}", v.rip()?))),
        other => Ok(Flow::Stop(
            VmResult::Killed,
            format!(
                "unexpected VM exit {} ({}) at RIP {:#x}, qualification {:#x}",
                other.name(),
                other.raw(),
                v.rip()?,
                VmcsNatural::ExitQualification.read()?
            ),
        )),
    }
}

fn cpuid(v: &mut Vcpu<'_>) -> Handled {
    let (leaf, sub) = (v.regs.rax as u32, v.regs.rcx as u32);
    let n = core::arch::x86_64::__cpuid_count(leaf, sub);
    let who = v.vm.cpuid_identity(v.index, VmcsNatural::GuestCr4.read()?);
    let [a, b, c, d] = cpuid::filter(leaf, sub, [n.eax, n.ebx, n.ecx, n.edx], who);
    (v.regs.rax, v.regs.rbx, v.regs.rcx, v.regs.rdx) = (a as u64, b as u64, c as u64, d as u64);
    v.skip_instruction()?;
    Ok(Flow::Continue)
}

fn external_interrupt(v: &mut Vcpu<'_>) -> Handled {
    // "Acknowledge interrupt on exit": the vector is in the exit interruption information and
    // the local APIC is waiting for our EOI (SDM Vol. 3C §28.2.2).
    let info = Vmcs32::VmExitInterruptionInfo.read()?;
    crate::apic::eoi();
    let vector = info as u8;
    // KICK: look at the VM again; GUEST_TIMER: the run loop delivers the due APIC timer;
    // POSTED_INTR where the processor does not process posted interrupts: the run loop folds
    // what was posted.
    let expected = [vectors::KICK, vectors::GUEST_TIMER, vectors::POSTED_INTR];
    if info & (1 << 31) != 0 && !expected.contains(&vector) {
        log::warn!("vCPU {}: unexpected host interrupt vector {vector:#x}", v.index);
    }
    // The notification vector as an exit although the processor processes posted interrupts:
    // in VMX non-root operation hardware processes it instead (SDM Vol. 3C §30.6), but KVM's
    // nested VMX before the 2024 fix "KVM: nVMX: Detect nested posted interrupt NV at nested
    // VM-Exit injection" (Debian 12's 6.1 among them) hands it to the L1 as this exit. Doing
    // the processing here (PIR into VIRR, RVI raised) makes that bug cost an exit, not the
    // interrupt; without it the posted interrupts would wait for the next notification.
    if info & (1 << 31) != 0 && vector == vectors::POSTED_INTR && v.controls.process_posted_interrupts() {
        v.counters.posted_notification_exits += 1;
        v.fold_posted()?;
    }
    Ok(Flow::Continue)
}
