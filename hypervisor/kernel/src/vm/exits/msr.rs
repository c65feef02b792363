//! RDMSR and WRMSR the MSR bitmap intercepts: IA32_APIC_BASE (the APIC's global state), the
//! x2APIC registers the processor does not virtualize, IA32_TSC_DEADLINE (the APIC timer),
//! IA32_TSC (the TSC offset), IA32_DEBUGCTL (in the VMCS), the registers the vCPU keeps and the
//! rest of `hvcore::exits::msr`'s policy; everything else is #GP(0).

use core::sync::atomic::Ordering;

use hvcore::apic::base;
use hvcore::apic::injection;
use hvcore::apic::regs::{self, IA32_TSC_DEADLINE, X2APIC_MSR_FIRST, X2APIC_MSR_LAST};
use hvcore::exits::msr;
use hvcore::vmx::fields::Vmcs64;

use super::apic;
use super::flow::{Flow, Handled};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::Access;

use hvcore::arch::vector::GP;

pub fn rdmsr(v: &mut Vcpu<'_>) -> Handled {
    let m = v.regs.rcx as u32;
    let value = match m {
        regs::IA32_APIC_BASE => Some(v.apic.apic_base.load(Ordering::Relaxed)),
        IA32_TSC_DEADLINE => Some(v.timer_tsc_deadline()),
        msr::IA32_TSC => Some(crate::time::rdtsc().wrapping_add(v.tsc_offset)),
        msr::IA32_DEBUGCTL => Some(Vmcs64::GuestIa32Debugctl.read()?),
        // The one x2APIC read the bitmap intercepts (the VM's `PathPlan::x2apic_read_passes`), or on
        // the injection path every one: the modelled APIC answers.
        X2APIC_MSR_FIRST..=X2APIC_MSR_LAST if v.x2apic() && v.vm.plan.models_apic() => {
            injection::x2apic_read(&v.apic.page(), m, v.timer_current_count())
        }
        regs::msr::TIMER_CURRENT if v.x2apic() => Some(v.timer_current_count() as u64),
        _ => match msr::rule(m, v.index) {
            msr::Rule::Register(r) => Some(v.msrs.read(r)),
            _ => msr::read(m, v.index),
        },
    };
    match value {
        Some(val) => {
            v.regs.rax = val & 0xffff_ffff;
            v.regs.rdx = val >> 32;
            v.skip_instruction()?;
        }
        None => v.inject_exception(GP, Some(0))?,
    }
    Ok(Flow::Continue)
}

// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
pub fn wrmsr(v: &mut Vcpu<'_>) -> Handled {
    let m = v.regs.rcx as u32;
    let val = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    let ok = match m {
        // x2APIC registers the MSR bitmap intercepts (only reachable in x2APIC mode: in xAPIC
        // mode they do not exist, and the allow-list answers #GP).
        X2APIC_MSR_FIRST..=X2APIC_MSR_LAST if v.x2apic() => apic::x2apic_wrmsr(v, m, val)?,
        IA32_TSC_DEADLINE => {
            v.set_timer_tsc_deadline(val)?;
            true
        }
        // WRMSR IA32_TSC sets this logical processor's TSC (SDM Vol. 3B §18.17): kept as the
        // VMCS's TSC offset, so RDTSC, RDTSCP and RDMSR read it without an exit.
        msr::IA32_TSC if v.controls.tsc_offsetting() => {
            v.tsc_offset = val.wrapping_sub(crate::time::rdtsc());
            Vmcs64::TscOffset.write(v.tsc_offset)?;
            true
        }
        regs::IA32_APIC_BASE => {
            let current = v.apic.apic_base.load(Ordering::Relaxed);
            match base::write(current, val, v.vm.apic_features) {
                Some(change) => {
                    v.set_apic_base(change)?;
                    true
                }
                None => false,
            }
        }
        msr::IA32_DEBUGCTL if msr::debugctl_allowed(val) => {
            Vmcs64::GuestIa32Debugctl.write(val)?;
            true
        }
        _ => match msr::rule(m, v.index) {
            msr::Rule::Register(r) => v.msrs.write(r, val),
            _ => msr::write_ok(m, v.index, val),
        },
    };
    if ok {
        v.skip_instruction()?;
    } else {
        v.inject_exception(GP, Some(0))?;
    }
    Ok(Flow::Continue)
}
