//! VM-exit handlers, one function per exit reason; anything unexpected stops the VM with a
//! report. Decisions come from `hvcore::exits`; this file applies them to the VMCS and guest.

use alloc::format;
use alloc::string::{String, ToString};

use hvcore::apic::icr::Icr;
use hvcore::apic::vapic::{self, raise_rvi};
use hvcore::apic::x2apic_msr::{self, ApicBaseWrite, X2apicWrite};
use hvcore::devices::{Effects, ExitRequest};
use hvcore::exits::cpuid;
use hvcore::exits::hypercall::{self, Call};
use hvcore::exits::io::{self, IoExit};
use hvcore::exits::msr;
use hvcore::exits::report;
use hvcore::guest_abi::hypercall::{E_INVAL, E_NOSYS, E_PERM, MAX_LEN};
use hvcore::manifest::VmResult;
use hvcore::vmx::entry_checks::{GuestState, suspect};
use hvcore::vmx::exit_reason::{self as er, ExitReason};
use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};

use super::vcpu::Vcpu;
use super::{emulate, ipi};
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
        // The exception bitmap is 0, so this is a host NMI (none is sent by this hypervisor;
        // its NMI exit is all it needs); virtual NMIs are gated by the run loop.
        er::EXCEPTION_NMI => Flow::Continue,
        // The guest stopped blocking NMIs: the run loop injects the waiting one.
        er::NMI_WINDOW => Flow::Continue,
        er::PREEMPTION_TIMER => preemption_timer(v),
        er::EPT_VIOLATION => ept_violation(),
        er::APIC_WRITE => apic_write(v),
        er::APIC_ACCESS => emulate::apic_access(v),
        er::XSETBV => emulate::xsetbv(v),
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
    let who = v.vm.cpuid_identity(v.index);
    let [a, b, c, d] = cpuid::filter(leaf, sub, [n.eax, n.ebx, n.ecx, n.edx], who);
    (v.regs.rax, v.regs.rbx, v.regs.rcx, v.regs.rdx) = (a as u64, b as u64, c as u64, d as u64);
    v.skip_instruction();
    Flow::Continue
}

/// HLT with `hlt = exit`: wait in the hypervisor with interrupts on until the guest has an
/// interrupt it would take (a recognized virtual interrupt with RFLAGS.IF = 1, or an NMI), the
/// VM stops, or the watchdog fires. What is posted meanwhile is folded into VIRR/RVI at once,
/// so nothing is lost even while the halt goes on (IF = 0, or masked by the guest's PPR).
fn hlt(v: &mut Vcpu<'_>) -> Flow {
    v.skip_instruction();
    let interrupts_enabled = vmcs::read_natural(VmcsNatural::GuestRflags) & RFLAGS_IF != 0;
    let pid = v.apic.pid();
    loop {
        if pid.outstanding() || pid.pir_pending() {
            let pir = pid.take();
            if let Some(top) = v.apic.page().merge_pir(pir) {
                let status = Vmcs16::GuestInterruptStatus.read().unwrap_or(0);
                let _ = Vmcs16::GuestInterruptStatus.write(raise_rvi(status, top));
            }
        }
        let rvi = Vmcs16::GuestInterruptStatus.read().unwrap_or(0) as u8;
        // An NMI the guest blocks (still in its NMI handler) does not end the halt either.
        let nmi = v.apic.pending_nmi.load(core::sync::atomic::Ordering::Acquire)
            && vmcs::read32(Vmcs32::GuestInterruptibilityState) & BLOCKING_BY_NMI == 0;
        // An INIT ends the halt too: the run loop applies it.
        if vapic::hlt_wakes(rvi, v.apic.page().read(vapic::PPR), interrupts_enabled, nmi)
            || v.vm.is_stopping()
            || v.apic.startup.init_pending()
        {
            return Flow::Continue;
        }
        if v.watchdog_expired() {
            return timeout(v);
        }
        crate::apic::sleep_until_interrupt();
    }
}

const RFLAGS_IF: u64 = 1 << 9;
const BLOCKING_BY_NMI: u32 = hvcore::vmx::events::interruptibility::BLOCKING_BY_NMI;

pub fn timeout(v: &Vcpu<'_>) -> Flow {
    // Where the guest was, to tell a hang from a loop.
    let rip = vmcs::read_natural(VmcsNatural::GuestRip);
    Flow::Stop(VmResult::Timeout, format!("watchdog: still running after {} ms (RIP {rip:#x})", v.vm.spec.timeout_ms))
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
                            let page = v.apic.page();
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
    let page = v.apic.page();
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
fn io(v: &mut Vcpu<'_>) -> Flow {
    let q = IoExit::decode(vmcs::read_natural(VmcsNatural::ExitQualification));
    if q.string {
        return Flow::Stop(VmResult::Killed, format!("string I/O on port {:#x} is not supported", q.port));
    }
    let now = v.vm.now_ns();
    let (effects, claimed) = if q.input {
        let (value, effects, claimed) = v.vm.ports.lock().read(q.port, q.size, now);
        v.regs.rax = io::merge_in(v.regs.rax, q.size, value);
        (effects, claimed)
    } else {
        v.vm.ports.lock().write(q.port, q.size, v.regs.rax as u32, now)
    };
    if !claimed {
        v.counters.ignored_io += 1;
    }
    v.skip_instruction();
    device_effects(v, effects)
}

/// Applies what a device access asks of the VM.
fn device_effects(v: &mut Vcpu<'_>, e: Effects) -> Flow {
    if let Some(b) = e.console {
        // Copied out of the line buffer (no allocation), which `v` owns.
        let mut buf = [0u8; crate::console::GUEST_PIECE];
        if let Some(line) = v.console_line.push(b) {
            let n = line.len().min(buf.len());
            buf[..n].copy_from_slice(&line.as_bytes()[..n]);
            let text = core::str::from_utf8(&buf[..n]).unwrap_or("<non-UTF-8 output>");
            if !text.trim().is_empty() {
                v.last_line = text.chars().take(crate::console::GUEST_PIECE).collect();
            }
            guest_output(v, text);
        }
    }
    // An asserted ISA line (e.irq) reaches a local APIC only through the I/O APIC, which the
    // VM does not have yet: drivers that poll (every guest here) do not need it.
    match e.exit {
        None => Flow::Continue,
        Some(ExitRequest::Pass) => Flow::Stop(VmResult::Pass, String::from("isa-debug-exit: 0")),
        Some(ExitRequest::Fail(code)) => {
            let after = if v.last_line.is_empty() { String::new() } else { format!(" after: {}", v.last_line) };
            Flow::Stop(VmResult::Fail, format!("isa-debug-exit: code {code}{after}"))
        }
    }
}

/// Prints what the guest wrote (PRINT or COM1), as much as the VM's console budget allows;
/// the rest is dropped and counted (hvcore::budget).
fn guest_output(v: &Vcpu<'_>, text: &str) {
    let allowed = v.vm.console.lock().take(crate::time::rdtsc(), text.len());
    let mut cut = allowed;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    crate::console::print_guest(&v.vm.spec.name, v.index, &text[..cut]);
}

/// A copy of the guest's buffer at `r` (checked: inside RAM, at most MAX_LEN bytes), so the
/// guest's other vCPUs cannot change it while it is checked and used.
fn snapshot<'b>(v: &Vcpu<'_>, r: core::ops::Range<usize>, buf: &'b mut [u8; MAX_LEN as usize]) -> &'b [u8] {
    let bytes = &mut buf[..r.len()];
    v.vm.read_ram(r, bytes);
    bytes
}

fn vmcall(v: &mut Vcpu<'_>) -> Flow {
    // Hypercalls belong to the guest's kernel: the CPL is SS.DPL (SDM Vol. 3C §25.4.1).
    let cpl = (vmcs::read32(Vmcs32::GuestSsAccessRights) >> 5) & 3;
    if cpl != 0 {
        v.counters.hypercall_refused += 1;
        v.regs.rax = E_PERM as u64;
        v.skip_instruction();
        return Flow::Continue;
    }
    let ram_size = v.vm.ram_size;
    let ret: i64 = match hypercall::decode(v.regs.rax, v.regs.rdi, v.regs.rsi) {
        Call::Print { gpa, len } => match hypercall::check_buffer(gpa, len, MAX_LEN, ram_size) {
            Ok(r) => {
                let mut buf = [0u8; MAX_LEN as usize];
                let text = core::str::from_utf8(snapshot(v, r, &mut buf)).unwrap_or("<non-UTF-8 output>");
                if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                    v.last_line = last.chars().take(crate::console::GUEST_PIECE).collect();
                }
                guest_output(v, text);
                0
            }
            Err(e) => e,
        },
        Call::Report { gpa, len } => match hypercall::check_buffer(gpa, len, MAX_LEN, ram_size) {
            Ok(r) => match report::canonical(snapshot(v, r, &mut [0u8; MAX_LEN as usize])) {
                Ok(value) => {
                    let mut reports = v.vm.reports.lock();
                    if let Err(e) = reports.budget.take(value.len()) {
                        return Flow::Stop(VmResult::Killed, e.to_string());
                    }
                    reports.values.push(value);
                    0
                }
                Err(_) => E_INVAL,
            },
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
                    for (i, c) in v.counters.by_reason[..n as usize].iter().enumerate() {
                        v.vm.write_ram(r.start + i * 8, &c.to_le_bytes());
                    }
                    n as i64
                }
                Err(e) => e,
            }
        }
        Call::PidOp { vcpu, op } if v.vm.spec.test_hooks => pid_op(v, vcpu, op),
        Call::PidOp { .. } => E_NOSYS,
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
        secondary_controls: Vmcs32::SecondaryProcBasedVmExecControl.read().unwrap_or(0),
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
