//! VM-exit handlers, one function per exit reason; anything unexpected stops the VM with a
//! report. Decisions come from `hvcore::exits`; this file applies them to the VMCS and guest.

use alloc::format;
use alloc::string::{String, ToString};

use hvcore::apic::icr::Icr;
use hvcore::apic::vapic::{self, raise_rvi};
use hvcore::apic::x2apic_msr::{self, ApicBaseWrite, X2apicWrite};
use hvcore::exits::cpuid::{self, VcpuIdentity};
use hvcore::exits::hypercall::{self, Call};
use hvcore::exits::io::{self, IoAction, IoExit};
use hvcore::exits::msr;
use hvcore::guest_abi::hypercall::{E_INVAL, E_NOSYS, MAX_LEN};
use hvcore::manifest::VmResult;
use hvcore::vmx::entry_checks::{GuestState, suspect};
use hvcore::vmx::exit_reason::{self as er, ExitReason};
use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};

use super::ipi;
use super::vcpu::Vcpu;
use crate::vmx::vmcs::{self, Access};

/// What the run loop does next.
pub enum Flow {
    Continue,
    /// This vCPU finished (EXIT hypercall with code 0).
    VcpuDone,
    /// The VM ends with this result and reason.
    Stop(VmResult, String),
}

pub fn handle(v: &mut Vcpu<'_>, reason: u16) -> Flow {
    match reason {
        er::CPUID => cpuid(v),
        er::HLT => hlt(v),
        er::VMCALL => vmcall(v),
        er::IO_INSTRUCTION => io(v),
        er::RDMSR => rdmsr(v),
        er::WRMSR => wrmsr(v),
        er::EXTERNAL_INTERRUPT => external_interrupt(v),
        // The exception bitmap is 0, so this is an NMI: another CPU's wake-up for a pending
        // virtual NMI, injected by the run loop before the next entry.
        er::EXCEPTION_NMI => Flow::Continue,
        er::PREEMPTION_TIMER => preemption_timer(v),
        er::EPT_VIOLATION => ept_violation(),
        er::APIC_WRITE => apic_write(v),
        er::APIC_ACCESS => apic_access(),
        er::EPT_MISCONFIG => {
            let gpa = vmcs::read64(Vmcs64::GuestPhysicalAddress);
            Flow::Stop(VmResult::Killed, format!("EPT misconfiguration at GPA {gpa:#x}"))
        }
        er::TRIPLE_FAULT => Flow::Stop(
            VmResult::Killed,
            format!("triple fault at RIP {:#x}", vmcs::read_natural(VmcsNatural::GuestRip)),
        ),
        other => Flow::Stop(
            VmResult::Killed,
            format!(
                "unexpected VM exit {} ({other}) at RIP {:#x}, qualification {:#x}",
                er::name(other),
                vmcs::read_natural(VmcsNatural::GuestRip),
                vmcs::read_natural(VmcsNatural::ExitQualification)
            ),
        ),
    }
}

fn cpuid(v: &mut Vcpu<'_>) -> Flow {
    let (leaf, sub) = (v.regs.rax as u32, v.regs.rcx as u32);
    let n = core::arch::x86_64::__cpuid_count(leaf, sub);
    let who = VcpuIdentity { apic_id: v.index, vcpu_count: v.vm.spec.vcpus };
    let [a, b, c, d] = cpuid::filter(leaf, sub, [n.eax, n.ebx, n.ecx, n.edx], who);
    (v.regs.rax, v.regs.rbx, v.regs.rcx, v.regs.rdx) = (a as u64, b as u64, c as u64, d as u64);
    v.skip_instruction();
    Flow::Continue
}

/// HLT with `hlt = exit`: wait in the hypervisor with interrupts on until something is posted
/// to this vCPU (the notification vector wakes the CPU), the VM stops, or the watchdog fires.
/// What was posted is folded into VIRR/RVI before the next entry, so nothing is lost.
fn hlt(v: &mut Vcpu<'_>) -> Flow {
    v.skip_instruction();
    // A virtual interrupt already pending (RVI) ends the halt at once.
    if Vmcs16::GuestInterruptStatus.read().unwrap_or(0) & 0xff != 0 {
        return Flow::Continue;
    }
    let pid = v.apic.pid();
    loop {
        if pid.outstanding() || pid.pir_pending() {
            let pir = pid.take();
            if let Some(top) = v.apic.page().merge_pir(pir) {
                let status = Vmcs16::GuestInterruptStatus.read().unwrap_or(0);
                let _ = Vmcs16::GuestInterruptStatus.write(raise_rvi(status, top));
            }
            return Flow::Continue;
        }
        if v.vm.is_stopping() || v.apic.pending_nmi.load(core::sync::atomic::Ordering::Acquire) {
            return Flow::Continue;
        }
        if v.watchdog_expired() {
            return timeout(v);
        }
        crate::apic::sleep_until_interrupt();
    }
}

fn timeout(v: &Vcpu<'_>) -> Flow {
    Flow::Stop(VmResult::Timeout, format!("watchdog: still running after {} ms", v.vm.spec.timeout_ms))
}

fn preemption_timer(v: &mut Vcpu<'_>) -> Flow {
    if v.watchdog_expired() {
        return timeout(v);
    }
    v.arm_watchdog();
    Flow::Continue
}

fn external_interrupt(v: &mut Vcpu<'_>) -> Flow {
    // "Acknowledge interrupt on exit": the vector is in the exit interruption information and
    // the local APIC is waiting for our EOI (SDM Vol. 3C §28.2.2).
    let info = vmcs::read32(Vmcs32::VmExitInterruptionInfo);
    crate::apic::eoi();
    let vector = info as u8;
    if info & (1 << 31) != 0 && vector != crate::KICK_VECTOR {
        log::warn!("vCPU {}: unexpected host interrupt vector {vector:#x}", v.index);
    }
    Flow::Continue
}

fn ept_violation() -> Flow {
    // SDM Vol. 3C Table 29-7: bits 0/1/2 = the access was a read / write / instruction fetch.
    let q = vmcs::read_natural(VmcsNatural::ExitQualification);
    let gpa = vmcs::read64(Vmcs64::GuestPhysicalAddress);
    let access = if q & 4 != 0 {
        "instruction fetch"
    } else if q & 2 != 0 {
        "write"
    } else {
        "read"
    };
    let rip = vmcs::read_natural(VmcsNatural::GuestRip);
    Flow::Stop(VmResult::Killed, format!("EPT violation: {access} at GPA {gpa:#x}, guest RIP {rip:#x}"))
}

fn rdmsr(v: &mut Vcpu<'_>) -> Flow {
    let m = v.regs.rcx as u32;
    let value = match m {
        msr::IA32_APIC_BASE => Some(v.apic.apic_base.load(core::sync::atomic::Ordering::Relaxed)),
        _ => msr::read(m, v.index),
    };
    match value {
        Some(val) => {
            v.regs.rax = val & 0xffff_ffff;
            v.regs.rdx = val >> 32;
            v.skip_instruction();
        }
        None => v.inject_exception(13, Some(0)),
    }
    Flow::Continue
}

fn wrmsr(v: &mut Vcpu<'_>) -> Flow {
    let m = v.regs.rcx as u32;
    let val = (v.regs.rdx << 32) | (v.regs.rax & 0xffff_ffff);
    let ok = match m {
        // x2APIC registers the MSR bitmap intercepts (only reachable in x2APIC mode: in xAPIC
        // mode they do not exist, and the allow-list answers #GP).
        x2apic_msr::X2APIC_MSR_FIRST..=x2apic_msr::X2APIC_MSR_LAST if v.x2apic => {
            match x2apic_msr::write_action(m, val) {
                X2apicWrite::Icr(value) => {
                    v.counters.msr_write_icr += 1;
                    match Icr::x2apic(value) {
                        Some(icr) => {
                            // The virtual ICR holds what the guest wrote, as with virtualized writes.
                            let mut page = v.apic.page();
                            page.write(vapic::ICR_LO, value as u32);
                            page.write(vapic::ICR_LO + 4, (value >> 32) as u32);
                            ipi::send(v, icr);
                            true
                        }
                        None => false,
                    }
                }
                X2apicWrite::Store(offset) => {
                    v.apic.page().write(offset, val as u32);
                    true
                }
                X2apicWrite::Gp => false,
            }
        }
        msr::IA32_APIC_BASE => {
            let current = v.apic.apic_base.load(core::sync::atomic::Ordering::Relaxed);
            match x2apic_msr::apic_base_write(current, val) {
                ApicBaseWrite::Unchanged => true,
                ApicBaseWrite::EnterX2apic => match v.enter_x2apic() {
                    Ok(()) => {
                        v.apic.apic_base.store(val, core::sync::atomic::Ordering::Relaxed);
                        true
                    }
                    Err(e) => return Flow::Stop(VmResult::Fail, format!("switching to x2APIC mode: {e}")),
                },
                ApicBaseWrite::Gp => false,
            }
        }
        _ => msr::write_ok(m, v.index, val),
    };
    if ok {
        v.skip_instruction();
    } else {
        v.inject_exception(13, Some(0));
    }
    Flow::Continue
}

/// APIC-write exit (trap-like: the write already reached the virtual-APIC page; SDM Vol. 3C
/// §30.4.3.3). The ICR is the exit path of an IPI; the ID is read-only for guests here; other
/// registers (LDR, DFR, SVR, LVTs, timer) need nothing more than the stored value.
fn apic_write(v: &mut Vcpu<'_>) -> Flow {
    let offset = (vmcs::read_natural(VmcsNatural::ExitQualification) & 0xfff) as usize;
    let mut page = v.apic.page();
    match offset {
        vapic::ICR_LO => {
            let low = page.read(vapic::ICR_LO);
            let icr = if v.x2apic {
                // x2APIC: the 64-bit virtual ICR is at 0x300 (SDM Vol. 3C §30.5).
                Icr::x2apic(((page.read(vapic::ICR_LO + 4) as u64) << 32) | low as u64)
            } else {
                Some(Icr::xapic(low, page.read(vapic::ICR_HI)))
            };
            match icr {
                Some(icr) => ipi::send(v, icr),
                None => v.counters.ipi_dropped += 1,
            }
        }
        vapic::ID => page.set_mode(v.index, v.x2apic),
        _ => {}
    }
    Flow::Continue
}

/// APIC-access exit: an access virtualization does not cover (a reserved offset, a partial or
/// wide access). Real guests do not make them; stop the VM and say where.
fn apic_access() -> Flow {
    let q = vmcs::read_natural(VmcsNatural::ExitQualification);
    let kind = match (q >> 12) & 0xf {
        0 => "linear read",
        1 => "linear write",
        2 => "instruction fetch",
        3 => "event delivery",
        _ => "guest-physical access",
    };
    Flow::Stop(
        VmResult::Killed,
        format!(
            "unsupported APIC access: {kind} at offset {:#x}, guest RIP {:#x}",
            q & 0xfff,
            vmcs::read_natural(VmcsNatural::GuestRip)
        ),
    )
}

fn io(v: &mut Vcpu<'_>) -> Flow {
    let q = IoExit::decode(vmcs::read_natural(VmcsNatural::ExitQualification));
    if q.string {
        return Flow::Stop(VmResult::Killed, format!("string I/O on port {:#x} is not supported", q.port));
    }
    match io::decide(q, v.regs.rax as u32) {
        IoAction::ConsoleByte(b) => {
            let (name, index) = (&v.vm.spec.name, v.index);
            if let Some(line) = v.console_line.push(b) {
                crate::console::print(format_args!("[{name}/{index}] {line}\n"));
            }
        }
        IoAction::Read(val) => {
            if q.input {
                v.regs.rax = io::merge_in(v.regs.rax, q.size, val);
            }
        }
        IoAction::Accepted => {}
        IoAction::Ignored => {
            if q.input {
                v.regs.rax = io::merge_in(v.regs.rax, q.size, u32::MAX);
            }
            v.counters.ignored_io += 1;
        }
    }
    v.skip_instruction();
    Flow::Continue
}

fn vmcall(v: &mut Vcpu<'_>) -> Flow {
    let ram_size = v.vm.ram_size;
    let ret: i64 = match hypercall::decode(v.regs.rax, v.regs.rdi, v.regs.rsi) {
        Call::Print { gpa, len } => match hypercall::check_buffer(gpa, len, MAX_LEN, ram_size) {
            Ok(r) => {
                let bytes = &v.vm.ram()[r];
                let text = core::str::from_utf8(bytes).unwrap_or("<non-UTF-8 output>");
                let (name, index) = (&v.vm.spec.name, v.index);
                for line in text.lines() {
                    crate::console::print(format_args!("[{name}/{index}] {line}\n"));
                }
                if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                    v.last_line = last.to_string();
                }
                0
            }
            Err(e) => e,
        },
        Call::Report { gpa, len } => match hypercall::check_buffer(gpa, len, MAX_LEN, ram_size) {
            Ok(r) => {
                let bytes = &v.vm.ram()[r];
                match core::str::from_utf8(bytes) {
                    Ok(s) if hypercall::is_json(bytes) => {
                        v.vm.reports.lock().push(s.to_string());
                        0
                    }
                    _ => E_INVAL,
                }
            }
            Err(e) => e,
        },
        Call::Exit { code: 0 } => return Flow::VcpuDone,
        Call::Exit { code } => {
            let after = if v.last_line.is_empty() { String::new() } else { format!(" after: {}", v.last_line) };
            return Flow::Stop(VmResult::Fail, format!("exited with code {code}{after}"));
        }
        Call::ExitCounters { gpa, count } => {
            let n = count.min(er::COUNT as u64);
            match hypercall::check_buffer(gpa, n * 8, er::COUNT as u64 * 8, ram_size) {
                Ok(r) => {
                    let counters = v.counters.by_reason;
                    for (i, chunk) in v.vm.ram()[r].as_chunks_mut::<8>().0.iter_mut().enumerate() {
                        *chunk = counters[i].to_le_bytes();
                    }
                    n as i64
                }
                Err(e) => e,
            }
        }
        Call::PidOp { vcpu, op } => pid_op(v, vcpu, op),
        Call::Unknown(_) => E_NOSYS,
    };
    v.regs.rax = ret as u64;
    v.skip_instruction();
    Flow::Continue
}

/// PID_OP: lets a test set or clear SN/ON on a vCPU's posted-interrupt descriptor and read it
/// back, to check IPI virtualization's rules from inside the guest.
fn pid_op(v: &Vcpu<'_>, vcpu: u64, op: u64) -> i64 {
    use hvcore::guest_abi::hypercall::*;
    let Some(target) = v.vm.apic.vcpus.get(vcpu as usize) else { return E_INVAL };
    let pid = target.pid();
    match op {
        PID_READ_CONTROL => pid.control() as i64,
        PID_SET_SN => {
            pid.set_suppress(true);
            0
        }
        PID_CLEAR_SN => {
            pid.set_suppress(false);
            0
        }
        PID_SET_ON => {
            pid.set_outstanding(true);
            0
        }
        PID_CLEAR_ON => {
            pid.set_outstanding(false);
            0
        }
        5..=8 => pid.pir_word((op - PID_READ_PIR0) as usize) as i64,
        _ => E_INVAL,
    }
}

/// A VM-entry failure exit (reasons 33, 34, 41): what the SDM says it means, the
/// qualification, and the guest-state field most likely at fault (SDM Vol. 3C §27.8).
pub fn entry_failure(reason: ExitReason) -> String {
    let q = vmcs::read_natural(VmcsNatural::ExitQualification);
    let what = match reason.basic() {
        er::ENTRY_FAIL_GUEST_STATE => match q {
            2 => "invalid guest state: PDPTE loading failed",
            3 => "invalid guest state: NMI injection blocked",
            4 => "invalid guest state: invalid VMCS link pointer",
            _ => "invalid guest state",
        },
        er::ENTRY_FAIL_MSR_LOAD => "MSR loading failed (qualification = failing entry index + 1)",
        _ => "machine-check event during VM entry",
    };
    format!("VM-entry failure (exit reason {}): {what}, qualification {q}; {}", reason.basic(), describe_entry_state())
}

/// The guest-state fields VM-entry checks most often reject, by SDM field name, and the first
/// rule they break (hvcore::vmx::entry_checks).
pub fn describe_entry_state() -> String {
    let read = |f: VmcsNatural| f.read().unwrap_or(u64::MAX);
    let caps = crate::bsp_caps();
    let s = GuestState {
        cr0: read(VmcsNatural::GuestCr0),
        cr4: read(VmcsNatural::GuestCr4),
        efer: Vmcs64::GuestIa32Efer.read().unwrap_or(u64::MAX),
        rflags: read(VmcsNatural::GuestRflags),
        cs_ar: Vmcs32::GuestCsAccessRights.read().unwrap_or(u32::MAX),
        tr_ar: Vmcs32::GuestTrAccessRights.read().unwrap_or(u32::MAX),
        entry_controls: Vmcs32::VmEntryControls.read().unwrap_or(0),
        cr0_fixed0: caps.map_or(0, |c| c.cr0_fixed0),
        cr0_fixed1: caps.map_or(u64::MAX, |c| c.cr0_fixed1),
        cr4_fixed0: caps.map_or(0, |c| c.cr4_fixed0),
        cr4_fixed1: caps.map_or(u64::MAX, |c| c.cr4_fixed1),
    };
    format!(
        "GuestCr0={:#x} GuestCr4={:#x} GuestIa32Efer={:#x} GuestRip={:#x} GuestRflags={:#x} GuestCsAccessRights={:#x} \
         GuestTrAccessRights={:#x} VmEntryControls={:#x}; suspect: {}",
        s.cr0,
        s.cr4,
        s.efer,
        read(VmcsNatural::GuestRip),
        s.rflags,
        s.cs_ar,
        s.tr_ar,
        s.entry_controls,
        suspect(&s).unwrap_or("no field identified by the quick checks (see SDM Vol. 3C §27.3)")
    )
}
