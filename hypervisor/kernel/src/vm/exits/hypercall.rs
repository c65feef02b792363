//! VMCALL: the hypercalls of `hvcore::guest_abi` (PRINT, REPORT, EXIT, EXIT_COUNTERS, PID_OP),
//! for the guest's kernel only; every buffer is checked against RAM and copied before use.

use alloc::format;
use alloc::string::{String, ToString};

use hvcore::exits::hypercall::{self, Call};
use hvcore::exits::report;
use hvcore::guest_abi::hypercall::{E_INVAL, E_NOSYS, E_PERM, EXIT_COUNTER_SLOTS, MAX_LEN};
use hvcore::manifest::VmResult;

use super::flow::{Flow, Handled};
use super::io::guest_output;
use crate::vm::vcpu::Vcpu;

/// A copy of the guest's buffer at `r` (checked: inside RAM, at most MAX_LEN bytes), so the
/// guest's other vCPUs cannot change it while it is checked and used.
fn snapshot<'b>(v: &Vcpu<'_>, r: core::ops::Range<usize>, buf: &'b mut [u8; MAX_LEN as usize]) -> &'b [u8] {
    let bytes = &mut buf[..r.len()];
    v.vm.read_ram(r, bytes);
    bytes
}

pub fn vmcall(v: &mut Vcpu<'_>) -> Handled {
    // Hypercalls belong to the guest's kernel.
    if v.cpl()? != 0 {
        v.counters.hypercall_refused += 1;
        v.regs.rax = E_PERM as u64;
        v.skip_instruction()?;
        return Ok(Flow::Continue);
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
                    if let Err(e) = v.vm.record_report(value) {
                        return Ok(Flow::Stop(VmResult::Killed, e.to_string()));
                    }
                    0
                }
                Err(_) => E_INVAL,
            },
            Err(e) => e,
        },
        Call::Exit { code: 0 } => return Ok(Flow::VcpuDone),
        Call::Exit { code } => {
            let after = if v.last_line.is_empty() { String::new() } else { format!(" after: {}", v.last_line) };
            return Ok(Flow::Stop(VmResult::Fail, format!("exited with code {code}{after}")));
        }
        Call::ExitCounters { gpa, count } => {
            let n = count.min(EXIT_COUNTER_SLOTS as u64);
            match hypercall::check_buffer(gpa, n * 8, EXIT_COUNTER_SLOTS as u64 * 8, ram_size) {
                Ok(r) => {
                    let slots = v.counters.by_reason.iter().chain([&v.counters.posted_notification_exits]);
                    for (i, c) in slots.take(n as usize).enumerate() {
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
    v.skip_instruction()?;
    Ok(Flow::Continue)
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
