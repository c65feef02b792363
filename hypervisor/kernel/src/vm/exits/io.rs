//! Device accesses: port I/O exits to the VM's port bus, and EPT violations in a device's MMIO
//! window (the I/O APIC's) to its MMIO bus, the instruction decoded and completed. What the
//! devices answer is applied here: console bytes (per VM budget), interrupt messages into the
//! virtual local APICs, the VM's end by isa-debug-exit. Any other EPT violation stops the VM.

use alloc::format;
use alloc::string::String;

use hvcore::devices::bus::{Effects, ExitRequest};
use hvcore::devices::console_line::{self, LINE_MAX};
use hvcore::exits::io::{self, IoExit};
use hvcore::exits::mmio::{self, Access as MemAccess};
use hvcore::exits::report;
use hvcore::guest_abi::APIC_MMIO_GPA;
use hvcore::manifest::VmResult;
use hvcore::vmx::events;
use hvcore::vmx::fields::{Vmcs32, Vmcs64, VmcsNatural};

use super::flow::{Flow, Handled};
use super::{apic, instruction};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::Access;

pub fn port_io(v: &mut Vcpu<'_>) -> Handled {
    let q = IoExit::decode(VmcsNatural::ExitQualification.read()?);
    if q.string {
        return string_io(v, q);
    }
    let now = v.vm.now_ns();
    let (effects, claimed) = if q.input {
        let (value, effects, claimed) = v.vm.devices.port_read(q.port, q.size, now);
        v.regs.rax = io::merge_in(v.regs.rax, q.size, value);
        (effects, claimed)
    } else {
        v.vm.devices.port_write(q.port, q.size, v.regs.rax as u32, now)
    };
    if !claimed {
        v.counters.ignored_io += 1;
    }
    v.skip_instruction()?;
    device_effects(v, effects)
}

/// Most elements one exit of a REP INS or OUTS completes; the rest exit again (the instruction
/// restarts where it stopped, as after an interrupt).
const STRING_IO_BURST: u64 = 4096;

/// INS and OUTS, with or without REP (SDM Vol. 2B "INS", "OUTS", "REP"): each element between
/// guest memory (through the guest's paging, from the linear address the exit reports) and the
/// port; RSI or RDI and RCX advance by the address size and RFLAGS.DF. A page that is not
/// present is #PF with CR2, as the processor would raise; memory that is not guest RAM stops
/// the VM with the reason.
fn string_io(v: &mut Vcpu<'_>, q: IoExit) -> Handled {
    let size = q.size as u64;
    let addr_size = io::string_address_size(Vmcs32::VmxInstructionInfo.read()?);
    let backward = VmcsNatural::GuestRflags.read()? & (1 << 10) != 0;
    let step = if backward { -(size as i64) } else { size as i64 };
    let count = if q.rep { io::rep_count(v.regs.rcx, addr_size) } else { 1 };
    let linear = VmcsNatural::GuestLinearAddress.read()?;
    let pointer = if q.input { 7 } else { 6 }; // RDI for INS, RSI for OUTS
    let mut done = 0;
    let mut flow = Flow::Continue;
    for i in 0..io::elements_now(count, STRING_IO_BURST) {
        let at = linear.wrapping_add((step * i as i64) as u64);
        let mut gpas = [0u64; 4];
        for (b, gpa) in gpas.iter_mut().enumerate().take(q.size as usize) {
            match instruction::linear_to_ram(v, at.wrapping_add(b as u64))? {
                Ok(g) => *gpa = g,
                Err(instruction::Unmapped::NotPresent) if done == 0 => {
                    instruction::page_fault(v, at.wrapping_add(b as u64), q.input)?;
                    return Ok(Flow::Continue);
                }
                // Elements before it are done: the next exit restarts at this one.
                Err(instruction::Unmapped::NotPresent) => break,
                Err(instruction::Unmapped::NotRam(gpa)) => {
                    let rip = v.rip()?;
                    return Ok(Flow::Stop(
                        VmResult::Killed,
                        format!("string I/O on port {:#x} with memory at GPA {gpa:#x}, not RAM (RIP {rip:#x})", q.port),
                    ));
                }
            }
        }
        let now = v.vm.now_ns();
        let effects = if q.input {
            let (value, e, _) = v.vm.devices.port_read(q.port, q.size, now);
            for (b, gpa) in gpas.iter().enumerate().take(q.size as usize) {
                v.vm.write_ram(*gpa as usize, &[(value >> (8 * b)) as u8]);
            }
            e
        } else {
            let mut value = 0u32;
            for (b, gpa) in gpas.iter().enumerate().take(q.size as usize) {
                let mut byte = [0u8];
                v.vm.read_ram(*gpa as usize..*gpa as usize + 1, &mut byte);
                value |= (byte[0] as u32) << (8 * b);
            }
            v.vm.devices.port_write(q.port, q.size, value, now).0
        };
        done += 1;
        flow = device_effects(v, effects)?;
        if !matches!(flow, Flow::Continue) {
            break;
        }
    }
    let moved = v.gpr(pointer)?;
    v.set_gpr(pointer, io::advance(moved, step * done as i64, addr_size))?;
    if q.rep {
        v.regs.rcx = io::advance(v.regs.rcx, -(done as i64), addr_size);
        if io::rep_count(v.regs.rcx, addr_size) != 0 {
            // Not finished: the same instruction runs again from where it stopped.
            return Ok(flow);
        }
    }
    v.counters.emulated += 1;
    v.skip_instruction()?;
    Ok(flow)
}

/// An EPT violation: an MMIO access to a device (completed), or an access outside the VM's
/// memory, which stops it (SDM Vol. 3C Table 29-7: qualification bits 0/1/2 = the access was a
/// read / write / instruction fetch).
pub fn ept_violation(v: &mut Vcpu<'_>) -> Handled {
    let q = VmcsNatural::ExitQualification.read()?;
    let gpa = Vmcs64::GuestPhysicalAddress.read()?;
    let rip = v.rip()?;
    let access = if q & 4 != 0 {
        "instruction fetch"
    } else if q & 2 != 0 {
        "write"
    } else {
        "read"
    };
    let write = q & 2 != 0;
    let page = gpa & !0xfff;
    if q & 4 == 0 && v.relocated_xapic_base() == Some(page) {
        return apic::relocated_access(v, (gpa & 0xfff) as usize, write);
    }
    if q & 4 == 0 && page == APIC_MMIO_GPA {
        return unclaimed(v, write);
    }
    if q & 4 != 0 || !v.vm.devices.mmio_claims(gpa, 1) {
        return Ok(Flow::Stop(
            VmResult::Killed,
            format!("EPT violation: {access} at GPA {gpa:#x}, guest RIP {rip:#x}"),
        ));
    }
    let stop =
        |why: String| Ok(Flow::Stop(VmResult::Killed, format!("MMIO {access} at GPA {gpa:#x}: {why} (RIP {rip:#x})")));
    if Vmcs32::IdtVectoringInfo.read()? & events::info::VALID != 0 {
        return stop("the guest's event delivery (IDT, stack) touched a device".into());
    }
    let insn = match instruction::fetch_and_decode(v, rip)? {
        Ok(i) => i,
        Err(why) => return stop(why),
    };
    let effects = match insn.access {
        MemAccess::Read { dest, size } if q & 2 == 0 => match v.vm.devices.mmio_read(gpa, size) {
            Some((value, e)) => {
                let old = v.gpr(dest.number)?;
                v.set_gpr(dest.number, mmio::load_into(old, dest, value))?;
                e
            }
            None => return stop(format!("a {size}-byte access crosses the device's window")),
        },
        MemAccess::WriteReg { src, size } if q & 2 != 0 => {
            let value = mmio::stored_value(v.gpr(src.number)?, src, size);
            match mmio_write(v, gpa, size, value) {
                Some(e) => e,
                None => return stop(format!("a {size}-byte access crosses the device's window")),
            }
        }
        MemAccess::WriteImm { value, size } if q & 2 != 0 => match mmio_write(v, gpa, size, value) {
            Some(e) => e,
            None => return stop(format!("a {size}-byte access crosses the device's window")),
        },
        other => return stop(format!("the decoded instruction ({other:?}) does not match the access")),
    };
    v.counters.emulated += 1;
    v.skip_emulated(insn.len as u64)?;
    device_effects(v, effects)
}

/// An access to 0xFEE00000 while the vCPU's APIC does not claim it (x2APIC mode, disabled, or
/// moved elsewhere: `vcpu::lapic`): nothing answers, so a read returns all ones and a write is
/// dropped, as on a PC (SDM Vol. 3A §12.12.2: in x2APIC mode "any access to the MMIO interface
/// will behave similar to that of a legacy xAPIC in globally disabled state").
fn unclaimed(v: &mut Vcpu<'_>, write: bool) -> Handled {
    let rip = v.rip()?;
    let insn = match instruction::fetch_and_decode(v, rip)? {
        Ok(i) => i,
        Err(why) => {
            return Ok(Flow::Stop(
                VmResult::Killed,
                format!("access to the unclaimed APIC page at RIP {rip:#x}: {why}"),
            ));
        }
    };
    match insn.access {
        MemAccess::Read { dest, .. } if !write => {
            let old = v.gpr(dest.number)?;
            v.set_gpr(dest.number, mmio::load_into(old, dest, u64::MAX))?;
        }
        MemAccess::WriteReg { .. } | MemAccess::WriteImm { .. } if write => {}
        other => {
            return Ok(Flow::Stop(
                VmResult::Killed,
                format!(
                    "access to the unclaimed APIC page at RIP {rip:#x}: the decoded instruction ({other:?}) does not match"
                ),
            ));
        }
    }
    v.counters.emulated += 1;
    v.skip_emulated(insn.len as u64)?;
    Ok(Flow::Continue)
}

/// A device MMIO write. When it changed which vectors are level-triggered, the VM's other
/// vCPUs are kicked, so each reloads its EOI-exit bitmap (run.rs) before the device can
/// interrupt it: a guest that does not exit would otherwise EOI past the I/O APIC.
fn mmio_write(v: &Vcpu<'_>, gpa: u64, size: u8, value: u64) -> Option<Effects> {
    let (e, eoi_set_changed) = v.vm.devices.mmio_write(gpa, size, value)?;
    if eoi_set_changed {
        for (i, other) in v.vm.apic.vcpus.iter().enumerate() {
            if i != v.index as usize {
                crate::vm::kick(other.host_apic_id);
            }
        }
    }
    Some(e)
}

/// Applies what a device access asks of the VM.
fn device_effects(v: &mut Vcpu<'_>, e: Effects) -> Handled {
    if let Some(b) = e.console {
        // Copied out of the VM's line buffer (no allocation), so the lock is not held while
        // the line is printed.
        let mut buf = [0u8; LINE_MAX];
        let n = match v.vm.console_line.lock().push(b) {
            Some(line) => {
                buf[..line.len()].copy_from_slice(line);
                line.len()
            }
            None => 0,
        };
        if n > 0 || b == b'\n' {
            console_line(v, &buf[..n]);
        }
    }
    if let Some(m) = e.message {
        apic::send_message(v, &m)?;
    }
    Ok(match e.exit {
        None => Flow::Continue,
        Some(ExitRequest::Pass) => Flow::Stop(VmResult::Pass, String::from("isa-debug-exit: 0")),
        Some(ExitRequest::Fail(code)) => {
            let after = if v.last_line.is_empty() { String::new() } else { format!(" after: {}", v.last_line) };
            Flow::Stop(VmResult::Fail, format!("isa-debug-exit: code {code}{after}"))
        }
    })
}

/// A whole line from COM1: printed, remembered for failure reasons, and, when it is a
/// `REPORT {json}` line, recorded as the REPORT hypercall records a value (but never held
/// against the VM: a line on a serial console is a legal act of any OS, so one that is not
/// JSON or over the report budget is only printed).
fn console_line(v: &mut Vcpu<'_>, line: &[u8]) {
    let text = core::str::from_utf8(line).unwrap_or("<non-UTF-8 output>");
    if !text.trim().is_empty() {
        v.last_line = text.chars().take(crate::console::GUEST_PIECE).collect();
    }
    if let Some(value) = console_line::report_value(line).and_then(|j| report::canonical(j).ok()) {
        let _ = v.vm.record_report(value);
    }
    guest_output(v, text);
}

/// Prints what the guest wrote (PRINT or COM1), as much as the VM's console budget allows;
/// the rest is dropped and counted (hvcore::budget).
pub fn guest_output(v: &Vcpu<'_>, text: &str) {
    let allowed = v.vm.console.lock().take(crate::time::rdtsc(), text.len());
    let mut cut = allowed;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    crate::console::print_guest(&v.vm.spec.name, v.index, &text[..cut]);
}
