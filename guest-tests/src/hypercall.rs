//! Hypercalls (VMCALL; ABI in hvcore::guest_abi::hypercall).

use hvcore::guest_abi::hypercall::*;
use hvcore::vmx::exit_reason;

fn vmcall(nr: u64, a: u64, b: u64) -> i64 {
    let ret: u64;
    // SAFETY: VMCALL exits to the hypervisor, which reads RAX/RDI/RSI and writes RAX.
    unsafe { core::arch::asm!("vmcall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b, options(nostack)) };
    ret as i64
}

/// Prints bytes on the host console, prefixed with this VM and vCPU.
pub fn print(s: &[u8]) -> i64 {
    vmcall(PRINT, s.as_ptr() as u64, s.len() as u64)
}

/// Attaches a JSON value to this VM's `reports`; returns E_INVAL if it is not JSON.
pub fn report(json: &str) -> i64 {
    vmcall(REPORT, json.as_ptr() as u64, json.len() as u64)
}

/// This vCPU's VM-exit counters by basic exit reason, where this hypervisor is underneath
/// (CPUID 0x4000_0000); `None` elsewhere (QEMU), where there are no exits to count.
pub fn exit_counters_if_present() -> Option<[u64; exit_reason::COUNT]> {
    crate::platform().hypervisor.then(exit_counters)
}

/// This vCPU's VM-exit counters by basic exit reason; only under this hypervisor.
pub fn exit_counters() -> [u64; exit_reason::COUNT] {
    assert!(crate::platform().hypervisor, "exit counters need this hypervisor (CPUID 0x4000_0000)");
    let mut c = [0u64; exit_reason::COUNT];
    let n = vmcall(EXIT_COUNTERS, c.as_mut_ptr() as u64, c.len() as u64);
    assert_eq!(n, c.len() as i64, "EXIT_COUNTERS hypercall failed");
    c
}

/// This vCPU's external-interrupt exits that carried the posted-interrupt notification vector
/// where the processor should have processed it (a nested KVM's bug; 0 on hardware and on
/// Bochs); 0 where this hypervisor is not underneath.
pub fn posted_notification_exits() -> u64 {
    if !crate::platform().hypervisor {
        return 0;
    }
    let mut c = [0u64; EXIT_COUNTER_SLOTS];
    let n = vmcall(EXIT_COUNTERS, c.as_mut_ptr() as u64, c.len() as u64);
    assert_eq!(n, c.len() as i64, "EXIT_COUNTERS hypercall failed");
    c[EXIT_COUNTER_POSTED_NOTIFICATION]
}

/// A raw hypercall, for tests of bad arguments.
pub fn raw(nr: u64, a: u64, b: u64) -> i64 {
    vmcall(nr, a, b)
}

/// PID_OP: an operation on vCPU `vcpu`'s posted-interrupt descriptor (test support).
pub fn pid_op(vcpu: u32, op: u64) -> u64 {
    let r = vmcall(PID_OP, vcpu as u64, op);
    assert!(r >= 0 || op == PID_READ_CONTROL || op >= PID_READ_PIR0, "PID_OP {op} failed: {r}");
    r as u64
}

/// This vCPU's VM exits so far, not counting VMCALLs (the hypercalls a test makes to look); 0
/// where this hypervisor is not underneath.
pub fn exits_except_vmcall() -> u64 {
    exit_counters_if_present().map_or(0, |c| c.iter().sum::<u64>() - c[exit_reason::VMCALL as usize])
}
