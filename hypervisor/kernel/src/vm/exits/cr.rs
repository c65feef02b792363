//! Control-register-access exits (the rules: `hvcore::exits::cr`): a MOV to CR0, CLTS or LMSW
//! that changes a bit VMX fixes (CR0.NE) or CD/NW (kept in the read shadow: VM entry does not
//! load them, `hvcore::exits::cr::cr0_mask`) is completed with every rule of MOV to CR0, paging-mode
//! changes included; a MOV to CR4 that exits sets a bit the VM does not have, which is #GP(0);
//! CR3 accesses, should the processor force CR3 exiting, are completed; CR8 is the modelled
//! APIC's (`apic::cr8_access`). No control-register access stops a VM.

use hvcore::exits::cr::{self, CrAccess, CrAccessKind, CrContext};
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use super::apic;
use super::flow::{Flow, Handled};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

use hvcore::arch::vector::{GP, UD};
const CS_L: u32 = 1 << 13;
use hvcore::vmx::controls::IA32E_MODE_GUEST;

pub fn cr_access(v: &mut Vcpu<'_>) -> Handled {
    let q = cr::decode(VmcsNatural::ExitQualification.read()?);
    match (q.cr, q.kind) {
        (8, CrAccessKind::MovTo | CrAccessKind::MovFrom) => apic::cr8_access(v, q),
        (0, CrAccessKind::MovTo) => {
            let value = operand(v, q)?;
            write_cr0(v, value)
        }
        (0, CrAccessKind::Clts) => {
            let now = guest_cr0(v)?;
            write_cr0(v, now & !cr::cr0::TS)
        }
        (0, CrAccessKind::Lmsw) => {
            let now = guest_cr0(v)?;
            write_cr0(v, cr::lmsw(now, q.lmsw_source))
        }
        // Only bits the guest may not set are owned (`cr::cr4_mask`), so a write that exits
        // sets one: the processor without the feature would fault.
        (4, CrAccessKind::MovTo) => fault(v, GP),
        (3, CrAccessKind::MovTo) => {
            let value = operand(v, q)?;
            // Bit 63 (with PCIDE) asks to keep the PCID's translations; it is never stored.
            VmcsNatural::GuestCr3.write(value & !(1 << 63))?;
            if value >> 63 == 0 {
                v.flush_guest_tlb()?;
            }
            done(v)
        }
        (3, CrAccessKind::MovFrom) => {
            let value = VmcsNatural::GuestCr3.read()?;
            v.set_gpr(q.gpr, value)?;
            done(v)
        }
        // MOV with CR1, CR5-7 is #UD before any exit; nothing else reaches here, but a VM is
        // never stopped for it.
        _ => fault(v, UD),
    }
}

/// The general-purpose operand of a MOV to CR: 64 bits in 64-bit mode, else the low 32
/// (SDM Vol. 2B "MOV—Move to/from Control Registers").
fn operand(v: &Vcpu<'_>, q: CrAccess) -> Result<u64, VmxInstrError> {
    let value = v.gpr(q.gpr)?;
    Ok(if v.in_64_bit_mode()? { value } else { value & 0xffff_ffff })
}

/// CR0 as the guest sees it.
pub fn guest_cr0(v: &Vcpu<'_>) -> Result<u64, VmxInstrError> {
    Ok(cr::guest_view(VmcsNatural::GuestCr0.read()?, v.vm.cr0_mask, VmcsNatural::Cr0ReadShadow.read()?))
}

/// CR4 as the guest sees it.
pub fn guest_cr4(v: &Vcpu<'_>) -> Result<u64, VmxInstrError> {
    Ok(cr::guest_view(VmcsNatural::GuestCr4.read()?, v.vm.cr4_mask, VmcsNatural::Cr4ReadShadow.read()?))
}

/// MOV to CR0 of `value`, completed as the processor would: #GP(0) where a rule forbids it;
/// else CR0 (with the bits VMX fixes kept in the register and the guest's in the shadow),
/// EFER.LMA and "IA-32e mode guest", the PAE PDPTEs, and the TLB.
fn write_cr0(v: &mut Vcpu<'_>, value: u64) -> Handled {
    let efer = Vmcs64::GuestIa32Efer.read()?;
    let ctx = CrContext {
        cr0: guest_cr0(v)?,
        cr4: guest_cr4(v)?,
        efer,
        cr3: VmcsNatural::GuestCr3.read()?,
        cs_long: Vmcs32::GuestCsAccessRights.read()? & CS_L != 0,
    };
    let Some(w) = cr::mov_to_cr0(value, &ctx) else { return fault(v, GP) };
    if w.load_pdptes {
        let Some(pdptes) = read_pdptes(v, ctx.cr3) else { return fault(v, GP) };
        for (field, e) in
            [Vmcs64::GuestPdpte0, Vmcs64::GuestPdpte1, Vmcs64::GuestPdpte2, Vmcs64::GuestPdpte3].into_iter().zip(pdptes)
        {
            field.write(e)?;
        }
    }
    VmcsNatural::GuestCr0.write(v.host.caps.fix_cr0_unrestricted(w.cr0))?;
    VmcsNatural::Cr0ReadShadow.write(w.cr0)?;
    if w.efer != efer {
        Vmcs64::GuestIa32Efer.write(w.efer)?;
        // VM entry takes EFER.LMA from this control (SDM Vol. 3C §27.3.2.1).
        let entry = Vmcs32::VmEntryControls.read()?;
        let entry = if w.efer & cr::efer::LMA != 0 { entry | IA32E_MODE_GUEST } else { entry & !IA32E_MODE_GUEST };
        Vmcs32::VmEntryControls.write(entry)?;
    }
    if w.flush_tlb {
        v.flush_guest_tlb()?;
    }
    done(v)
}

/// The PAE PDPTEs at `cr3` (bits 31:5), checked; `None` (#GP) for a reserved bit or a table
/// outside guest RAM (which would read as all ones).
pub(super) fn read_pdptes(v: &Vcpu<'_>, cr3: u64) -> Option<[u64; 4]> {
    let at = (cr3 & 0xffff_ffe0) as usize;
    if at as u64 + 32 > v.vm.ram_size {
        return None;
    }
    let mut bytes = [0u8; 32];
    v.vm.read_ram(at..at + 32, &mut bytes);
    let raw = core::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default()));
    cr::pdptes(raw, v.vm.apic_features.max_phys_addr)
}

fn done(v: &mut Vcpu<'_>) -> Handled {
    v.counters.emulated += 1;
    v.skip_instruction()?;
    Ok(Flow::Continue)
}

fn fault(v: &mut Vcpu<'_>, vector: u8) -> Handled {
    v.inject_exception(vector, (vector == GP).then_some(0))?;
    Ok(Flow::Continue)
}
