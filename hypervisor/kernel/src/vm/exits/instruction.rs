//! The guest instruction behind an exit that names no instruction (an APIC-access exit, an MMIO
//! access on an EPT violation): read from guest memory through the guest's own page tables
//! (`hvcore::guest_paging`) and decoded by iced-x86 (`hvcore::exits::mmio`), which accepts
//! only plain moves.

use alloc::format;
use alloc::string::String;

use hvcore::exits::mmio::{self, MAX_INSTRUCTION_LEN, MemoryInstruction};
use hvcore::guest_paging::{self, Mode};
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

/// Why a linear address has no guest RAM behind it.
pub enum Unmapped {
    /// The guest's paging structures do not map it: #PF.
    NotPresent,
    /// It maps to this guest-physical address, which is not RAM.
    NotRam(u64),
}

/// The guest-physical RAM address of guest-linear `linear`, through the guest's paging.
pub fn linear_to_ram(v: &Vcpu<'_>, linear: u64) -> Result<Result<u64, Unmapped>, VmxInstrError> {
    linear_to_ram_with(v, VmcsNatural::GuestCr3.read()?, linear)
}

/// As [`linear_to_ram`], through the paging structures at `cr3` (a task switch reads the new
/// task's descriptor tables through the new task's CR3).
pub fn linear_to_ram_with(v: &Vcpu<'_>, cr3: u64, linear: u64) -> Result<Result<u64, Unmapped>, VmxInstrError> {
    let cr4 = VmcsNatural::GuestCr4.read()?;
    let mode = Mode::of(VmcsNatural::GuestCr0.read()?, cr4, Vmcs64::GuestIa32Efer.read()?);
    let linear = if mode == Mode::Level4 || mode == Mode::Level5 { linear } else { linear & 0xffff_ffff };
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
    Ok(match guest_paging::translate(linear, mode, cr3, cr4, read) {
        Ok(gpa) if gpa < ram => Ok(gpa),
        Ok(gpa) => Err(Unmapped::NotRam(gpa)),
        Err(_) => Err(Unmapped::NotPresent),
    })
}

/// A #PF for a not-present page at `linear` met while completing an instruction: CR2 (the live
/// register: VM transitions do not switch it) and the error code (P = 0, W, U from the CPL;
/// SDM Vol. 3A §6.15 "Interrupt 14").
pub fn page_fault(v: &Vcpu<'_>, linear: u64, write: bool) -> Result<(), VmxInstrError> {
    // SAFETY: CR2 only records the faulting address; the hypervisor takes no page faults of
    // its own while a vCPU runs on this core.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) linear, options(nomem, nostack)) };
    let code = (write as u32) << 1 | ((v.cpl()? == 3) as u32) << 2;
    v.inject_exception(14, Some(code))
}

/// Reads up to 15 bytes at RIP and decodes them; the inner error says why the instruction
/// cannot be completed (not mapped, not a plain move).
pub fn fetch_and_decode(v: &Vcpu<'_>, rip: u64) -> Result<Result<MemoryInstruction, String>, VmxInstrError> {
    let cs_ar = Vmcs32::GuestCsAccessRights.read()?;
    // CS.L = 64-bit code, else CS.D/B picks 32 or 16 (SDM Vol. 3A §3.4.5).
    let bitness = if cs_ar & (1 << 13) != 0 {
        64
    } else if cs_ar & (1 << 14) != 0 {
        32
    } else {
        16
    };
    let cs_base = VmcsNatural::GuestCsBase.read()?;
    let linear = if bitness == 64 { rip } else { cs_base.wrapping_add(rip) & 0xffff_ffff };
    let cr4 = VmcsNatural::GuestCr4.read()?;
    let mode = Mode::of(VmcsNatural::GuestCr0.read()?, cr4, Vmcs64::GuestIa32Efer.read()?);
    let cr3 = VmcsNatural::GuestCr3.read()?;
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
        return Ok(Err(format!("RIP {rip:#x} does not map to guest RAM")));
    }
    Ok(mmio::decode(&bytes[..got], bitness).map_err(|e| format!("{e}")))
}
