//! XSETBV: checked against the SDM's rules and the XCR0 bits the guest's CPUID reports
//! (`hvcore::exits::xsetbv`); a valid value is written on this core (dedicated to the vCPU, and
//! the hypervisor itself never uses XSAVE state), anything else is #GP(0) in the guest.

use hvcore::exits::{cpuid, xsetbv as rules};
use hvcore::vmx::fields::VmcsNatural;

use super::flow::{Flow, Handled};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::Access;

use hvcore::arch::vector::GP;
const OSXSAVE: u64 = 1 << 18;

pub fn xsetbv(v: &mut Vcpu<'_>) -> Handled {
    let cpl = v.cpl()?;
    let index = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    let native = core::arch::x86_64::__cpuid_count(0xd, 0);
    let who = v.vm.cpuid_identity(v.index, VmcsNatural::GuestCr4.read()?);
    let [a, _, _, d] = cpuid::filter(0xd, 0, [native.eax, native.ebx, native.ecx, native.edx], who);
    let supported = ((d as u64) << 32) | a as u64;
    match rules::check(cpl, index, value, supported) {
        Ok(()) => {
            // SAFETY: the value passed every XSETBV rule against bits this CPU supports
            // (the guest's CPUID leaf 0DH is a subset of the native one), so XSETBV cannot
            // fault. CR4.OSXSAVE is needed in VMX root operation too: set for the
            // instruction, then restored (the next VM exit loads HOST_CR4 anyway).
            unsafe {
                let cr4: u64;
                core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
                core::arch::asm!("mov cr4, {}", in(reg) cr4 | OSXSAVE, options(nomem, nostack));
                core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack));
                core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));
            }
            v.counters.emulated += 1;
            v.skip_instruction()?;
        }
        Err(why) => {
            log::debug!("vCPU {}: XSETBV {index} {value:#x} refused: {why:?}", v.index);
            v.inject_exception(GP, Some(0))?;
        }
    }
    Ok(Flow::Continue)
}
