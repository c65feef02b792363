//! Guest instructions the hypervisor completes itself: xAPIC register accesses the processor
//! does not virtualize (APIC-access VM exits), and XSETBV. The decisions are hvcore's
//! (`exits::mmio`, `apic::vapic`, `exits::xsetbv`, `guest_paging`); this file reads the
//! instruction from guest memory and applies the result to the vCPU.

use alloc::format;
use alloc::string::String;

use hvcore::apic::vapic::{self, UnvirtualizedRefusal};
use hvcore::exits::mmio::{self, Access, MAX_INSTRUCTION_LEN};
use hvcore::exits::{cpuid, xsetbv};
use hvcore::guest_paging::{self, Mode};
use hvcore::manifest::VmResult;
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use super::exits::Flow;
use super::vcpu::Vcpu;
use crate::vmx::vmcs;

const GP: u8 = 13;

/// SDM Vol. 3C Table 28-6: APIC-access exit qualification, access type in bits 15:12.
const ACCESS_LINEAR_READ: u64 = 0;
const ACCESS_LINEAR_WRITE: u64 = 1;
const ACCESS_FETCH: u64 = 2;

/// An APIC-access VM exit in xAPIC mode: a read or write of a register the processor does not
/// virtualize (PPR, the timer's current count, LVT CMCI, ...) is decoded and completed; an
/// instruction fetch from the page, an access during event delivery or one of a form the SDM
/// leaves undefined stops the VM with the reason.
pub fn apic_access(v: &mut Vcpu<'_>) -> Flow {
    let q = vmcs::read_natural(VmcsNatural::ExitQualification);
    let offset = (q & 0xfff) as usize;
    let rip = vmcs::read_natural(VmcsNatural::GuestRip);
    let kind = (q >> 12) & 0xf;
    let stop =
        |why: String| Flow::Stop(VmResult::Killed, format!("{why} (APIC page offset {offset:#x}, RIP {rip:#x})"));
    match kind {
        ACCESS_LINEAR_READ | ACCESS_LINEAR_WRITE => {}
        ACCESS_FETCH => return stop("instruction fetch from the APIC-access page: code cannot run there".into()),
        3 => return stop("the guest IDT or stack is on the APIC page (access during event delivery)".into()),
        _ => return stop(format!("guest-physical access to the APIC page (access type {kind})")),
    }
    let insn = match fetch_and_decode(v, rip) {
        Ok(i) => i,
        Err(why) => return stop(format!("APIC register access not completed: {why}")),
    };
    let page = v.apic.page();
    let done = match insn.access {
        Access::Read { dest, size } if kind == ACCESS_LINEAR_READ => vapic::unvirtualized_read(&page, offset, size)
            .map(|value| {
                let old = v.gpr(dest.number);
                v.set_gpr(dest.number, mmio::load_into(old, dest, value as u64));
            }),
        Access::WriteReg { src, size } if kind == ACCESS_LINEAR_WRITE => {
            let value = mmio::stored_value(v.gpr(src.number), src, size);
            vapic::unvirtualized_write(&page, offset, size, value as u32)
        }
        Access::WriteImm { value, size } if kind == ACCESS_LINEAR_WRITE => {
            vapic::unvirtualized_write(&page, offset, size, value as u32)
        }
        other => return stop(format!("the decoded instruction ({other:?}) does not match the access type {kind}")),
    };
    match done {
        Ok(()) => {
            v.counters.emulated += 1;
            v.skip_emulated(insn.len as u64);
            Flow::Continue
        }
        Err(UnvirtualizedRefusal::NotAligned32) => {
            stop("APIC register access that is not an aligned 32-bit access (SDM Vol. 3A §12.4.1)".into())
        }
        Err(UnvirtualizedRefusal::OutsideRegisters) => stop("access beyond the APIC registers".into()),
    }
}

/// Reads up to 15 bytes at RIP through the guest's page tables and decodes them.
fn fetch_and_decode(v: &Vcpu<'_>, rip: u64) -> Result<mmio::MemoryInstruction, String> {
    let cs_ar = vmcs::read32(Vmcs32::GuestCsAccessRights);
    // CS.L = 64-bit code, else CS.D/B picks 32 or 16 (SDM Vol. 3A §3.4.5).
    let bitness = if cs_ar & (1 << 13) != 0 {
        64
    } else if cs_ar & (1 << 14) != 0 {
        32
    } else {
        16
    };
    let cs_base = vmcs::read_natural(VmcsNatural::GuestCsBase);
    let linear = if bitness == 64 { rip } else { cs_base.wrapping_add(rip) & 0xffff_ffff };
    let mode = Mode::of(
        vmcs::read_natural(VmcsNatural::GuestCr0),
        vmcs::read_natural(VmcsNatural::GuestCr4),
        vmcs::read64(Vmcs64::GuestIa32Efer),
    );
    let cr3 = vmcs::read_natural(VmcsNatural::GuestCr3);
    let cr4 = vmcs::read_natural(VmcsNatural::GuestCr4);
    let ram = v.vm.ram_size;
    let read = |gpa: u64, size: usize| -> Option<u64> {
        let end = gpa.checked_add(size as u64)?;
        if end > ram {
            return None;
        }
        let mut b = [0u8; 8];
        v.vm.read_ram(gpa as usize..end as usize, &mut b[..size]);
        Some(u64::from_le_bytes(b))
    };
    let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
    let mut got = 0;
    // Page by page: the instruction may cross into the next page, which may not be mapped
    // (then the decoder sees fewer bytes and refuses if it needed them).
    while got < bytes.len() {
        let la = linear.wrapping_add(got as u64);
        let Ok(gpa) = guest_paging::translate(la, mode, cr3, cr4, read) else { break };
        let in_page = (0x1000 - (gpa & 0xfff)) as usize;
        let n = in_page.min(bytes.len() - got);
        if gpa + n as u64 > ram {
            break;
        }
        v.vm.read_ram(gpa as usize..gpa as usize + n, &mut bytes[got..got + n]);
        got += n;
    }
    if got == 0 {
        return Err(format!("RIP {rip:#x} does not map to guest RAM"));
    }
    mmio::decode(&bytes[..got], bitness).map_err(|e| format!("{e}"))
}

/// XSETBV: checked against the SDM's rules and the XCR0 bits the guest's CPUID reports; a
/// valid value is written on this core (dedicated to the vCPU, and the hypervisor itself
/// never uses XSAVE state), anything else is #GP(0) in the guest.
pub fn xsetbv(v: &mut Vcpu<'_>) -> Flow {
    let cpl = ((vmcs::read32(Vmcs32::GuestSsAccessRights) >> 5) & 3) as u8;
    let index = v.regs.rcx as u32;
    let value = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    let native = core::arch::x86_64::__cpuid_count(0xd, 0);
    let who = v.vm.cpuid_identity(v.index);
    let [a, _, _, d] = cpuid::filter(0xd, 0, [native.eax, native.ebx, native.ecx, native.edx], who);
    let supported = ((d as u64) << 32) | a as u64;
    match xsetbv::check(cpl, index, value, supported) {
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
            v.skip_instruction();
        }
        Err(why) => {
            log::debug!("vCPU {}: XSETBV {index} {value:#x} refused: {why:?}", v.index);
            v.inject_exception(GP, Some(0));
        }
    }
    Flow::Continue
}

const OSXSAVE: u64 = 1 << 18;
