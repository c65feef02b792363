//! Task-switch exits (SDM Vol. 3C §26.2: a task switch always exits in VMX non-root
//! operation): the old task's state read from the VMCS, the switch done by
//! `hvcore::exits::task_switch` through the guest's paging, and the new task's state written
//! back, with the fault the switch raised, if any.

use alloc::format;

use hvcore::exits::task_switch::{self, GateEvent, LinearMemory, MemError, Outcome, Segment, Source, TaskState};
use hvcore::manifest::VmResult;
use hvcore::vmx::events::{self, info};
use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};

use super::flow::{Flow, Handled};
use super::instruction::{Unmapped, linear_to_ram_with};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::{Access, VmxInstrError};

/// The VMCS fields of ES, CS, SS, DS, FS, GS, LDTR, TR: selector, base, limit, access rights.
const SEGMENTS: [(Vmcs16, VmcsNatural, Vmcs32, Vmcs32); 8] = [
    (Vmcs16::GuestEsSelector, VmcsNatural::GuestEsBase, Vmcs32::GuestEsLimit, Vmcs32::GuestEsAccessRights),
    (Vmcs16::GuestCsSelector, VmcsNatural::GuestCsBase, Vmcs32::GuestCsLimit, Vmcs32::GuestCsAccessRights),
    (Vmcs16::GuestSsSelector, VmcsNatural::GuestSsBase, Vmcs32::GuestSsLimit, Vmcs32::GuestSsAccessRights),
    (Vmcs16::GuestDsSelector, VmcsNatural::GuestDsBase, Vmcs32::GuestDsLimit, Vmcs32::GuestDsAccessRights),
    (Vmcs16::GuestFsSelector, VmcsNatural::GuestFsBase, Vmcs32::GuestFsLimit, Vmcs32::GuestFsAccessRights),
    (Vmcs16::GuestGsSelector, VmcsNatural::GuestGsBase, Vmcs32::GuestGsLimit, Vmcs32::GuestGsAccessRights),
    (Vmcs16::GuestLdtrSelector, VmcsNatural::GuestLdtrBase, Vmcs32::GuestLdtrLimit, Vmcs32::GuestLdtrAccessRights),
    (Vmcs16::GuestTrSelector, VmcsNatural::GuestTrBase, Vmcs32::GuestTrLimit, Vmcs32::GuestTrAccessRights),
];

fn read_segment(i: usize) -> Result<Segment, VmxInstrError> {
    let (sel, base, limit, ar) = SEGMENTS[i];
    Ok(Segment { selector: sel.read()?, base: base.read()?, limit: limit.read()?, ar: ar.read()? })
}

fn write_segment(i: usize, s: &Segment) -> Result<(), VmxInstrError> {
    let (sel, base, limit, ar) = SEGMENTS[i];
    sel.write(s.selector)?;
    base.write(s.base)?;
    limit.write(s.limit)?;
    ar.write(s.ar)
}

/// Guest-linear memory through the paging at a given CR3, page by page; a failed VMREAD
/// while translating ends the switch with that error.
struct GuestLinear<'a, 'v> {
    v: &'a Vcpu<'v>,
    vmcs_error: Option<VmxInstrError>,
}

impl GuestLinear<'_, '_> {
    /// Each piece of `[linear, linear + len)` that stays within one page, with its RAM address.
    fn pieces(
        &mut self,
        cr3: u64,
        linear: u64,
        len: usize,
        mut each: impl FnMut(usize, usize, usize),
    ) -> Result<(), MemError> {
        let mut done = 0;
        while done < len {
            // Outside IA-32e mode (the only place tasks switch) linear addresses are 32 bits.
            let la = (linear + done as u64) & 0xffff_ffff;
            let n = (len - done).min(4096 - (la & 0xfff) as usize);
            let gpa = match linear_to_ram_with(self.v, cr3, la) {
                Ok(Ok(gpa)) => gpa,
                Ok(Err(Unmapped::NotPresent)) => return Err(MemError::NotPresent),
                Ok(Err(Unmapped::NotRam(gpa))) => return Err(MemError::NotRam(gpa)),
                Err(e) => {
                    self.vmcs_error = Some(e);
                    return Err(MemError::NotPresent);
                }
            };
            if gpa + n as u64 > self.v.vm.ram_size {
                return Err(MemError::NotRam(gpa));
            }
            each(gpa as usize, done, n);
            done += n;
        }
        Ok(())
    }
}

impl LinearMemory for GuestLinear<'_, '_> {
    fn read(&mut self, cr3: u64, linear: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let v = self.v;
        self.pieces(cr3, linear, buf.len(), |gpa, at, n| v.vm.read_ram(gpa..gpa + n, &mut buf[at..at + n]))
    }

    fn write(&mut self, cr3: u64, linear: u64, data: &[u8]) -> Result<(), MemError> {
        let v = self.v;
        self.pieces(cr3, linear, data.len(), |gpa, at, n| v.vm.write_ram(gpa, &data[at..at + n]))
    }
}

pub fn task_switch(v: &mut Vcpu<'_>) -> Handled {
    let q = task_switch::decode(VmcsNatural::ExitQualification.read()?);
    let idt = Vmcs32::IdtVectoringInfo.read()?;
    let rip = v.rip()?;
    let len = Vmcs32::VmExitInstructionLength.read()? as u64;
    // The event a task gate delivers is in the IDT-vectoring information (SDM Vol. 3C
    // §28.2.4); the run loop does not re-inject it, the switch delivers it. CALL, JMP, IRET and
    // INT n resume after the instruction; an exception or interrupt where the guest was.
    let kind = (idt & info::TYPE_MASK) >> info::TYPE_SHIFT;
    let delivering = q.source == Source::Gate && idt & info::VALID != 0;
    let software = delivering && matches!(kind, info::TYPE_SOFTWARE_INTERRUPT | info::TYPE_SOFTWARE_EXCEPTION);
    let gate = if delivering {
        let code = if idt & info::DELIVER_ERROR_CODE != 0 { Some(Vmcs32::IdtVectoringErrorCode.read()?) } else { None };
        GateEvent { error_code: code, external: !software }
    } else {
        GateEvent::default()
    };
    let resume = if q.source != Source::Gate || software { rip.wrapping_add(len) } else { rip };
    let exception = (delivering && kind == info::TYPE_HARDWARE_EXCEPTION).then_some(idt as u8);

    let mut old = TaskState {
        eip: resume as u32,
        eflags: VmcsNatural::GuestRflags.read()? as u32,
        cr0: VmcsNatural::GuestCr0.read()?,
        cr3: VmcsNatural::GuestCr3.read()?,
        dr7: VmcsNatural::GuestDr7.read()?,
        ..TaskState::default()
    };
    for (i, r) in old.gpr.iter_mut().enumerate() {
        *r = v.gpr(i as u8)? as u32;
    }
    for (i, s) in old.seg.iter_mut().enumerate() {
        *s = read_segment(i)?;
    }
    old.ldtr = read_segment(6)?;
    old.tr = read_segment(7)?;
    let gdt = (VmcsNatural::GuestGdtrBase.read()?, Vmcs32::GuestGdtrLimit.read()?);

    let mut mem = GuestLinear { v, vmcs_error: None };
    let outcome = task_switch::switch(&mut mem, gdt, &old, q, gate);
    if let Some(e) = mem.vmcs_error {
        return Err(e);
    }
    v.counters.emulated += 1;
    match outcome {
        Outcome::NotRam(gpa) => Ok(Flow::Stop(
            VmResult::Killed,
            format!("task switch to TSS {:#x}: its tables or TSS are at GPA {gpa:#x}, not RAM", q.selector),
        )),
        Outcome::Refused(e) => raise(v, exception, e),
        Outcome::Switched { state, fault } => {
            load(v, &old, &state, kind == info::TYPE_NMI && delivering)?;
            match fault {
                Some(e) => raise(v, exception, e),
                None => Ok(Flow::Continue),
            }
        }
    }
}

/// The new task's state into the VMCS and the guest's registers.
fn load(v: &mut Vcpu<'_>, old: &TaskState, new: &TaskState, nmi: bool) -> Result<(), VmxInstrError> {
    for (i, r) in new.gpr.iter().enumerate() {
        v.set_gpr(i as u8, *r as u64)?;
    }
    VmcsNatural::GuestRip.write(new.eip as u64)?;
    VmcsNatural::GuestRflags.write(new.eflags as u64)?;
    for (i, s) in new.seg.iter().enumerate() {
        write_segment(i, s)?;
    }
    write_segment(6, &new.ldtr)?;
    write_segment(7, &new.tr)?;
    VmcsNatural::GuestCr0.write(new.cr0)?;
    VmcsNatural::GuestDr7.write(new.dr7)?;
    if new.cr3 != old.cr3 {
        VmcsNatural::GuestCr3.write(new.cr3)?;
        // With PAE paging a CR3 load reads the four PDPTEs (SDM Vol. 3A §4.4.1).
        let pae = new.cr0 & (1 << 31) != 0 && VmcsNatural::GuestCr4.read()? & (1 << 5) != 0;
        if pae {
            let pdptes = super::cr::read_pdptes(v, new.cr3).unwrap_or_default();
            for (field, e) in [Vmcs64::GuestPdpte0, Vmcs64::GuestPdpte1, Vmcs64::GuestPdpte2, Vmcs64::GuestPdpte3]
                .into_iter()
                .zip(pdptes)
            {
                field.write(e)?;
            }
        }
        v.flush_guest_tlb()?;
    }
    // The switch ends blocking by STI and MOV SS; delivering an NMI through a task gate
    // blocks NMIs until the next IRET (SDM Vol. 3A §6.7.1), as delivery through a gate does.
    let mut state = Vmcs32::GuestInterruptibilityState.read()?;
    state &= !(events::interruptibility::BLOCKING_BY_STI | events::interruptibility::BLOCKING_BY_MOV_SS);
    if nmi {
        state |= events::interruptibility::BLOCKING_BY_NMI;
    }
    Vmcs32::GuestInterruptibilityState.write(state)
}

/// Raises the switch's fault, a double fault if it met an exception being delivered
/// (SDM Vol. 3A Table 6-5), or ends the VM on a triple fault.
fn raise(v: &mut Vcpu<'_>, delivering: Option<u8>, e: task_switch::Exception) -> Handled {
    let Some(vector) = task_switch::combine(delivering, e.vector) else {
        return Ok(Flow::Stop(
            VmResult::Killed,
            format!("triple fault: #{} while delivering a double fault through a task gate", e.vector),
        ));
    };
    if let Some(cr2) = e.cr2.filter(|_| vector == hvcore::arch::vector::PF) {
        // SAFETY: CR2 only records the faulting address; the hypervisor takes no page faults
        // of its own while a vCPU runs on this core.
        unsafe { core::arch::asm!("mov cr2, {}", in(reg) cr2, options(nomem, nostack)) };
    }
    let code = if vector == 8 { Some(0) } else { e.error_code };
    v.inject_exception(vector, code)?;
    Ok(Flow::Continue)
}
