//! What an exit handler answers the run loop, and the watchdog's verdict, which several
//! handlers and the loop itself give.

use alloc::format;
use alloc::string::String;

use hvcore::manifest::VmResult;

use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::VmxInstrError;

/// What the run loop does next.
pub enum Flow {
    Continue,
    /// This vCPU finished (EXIT hypercall with code 0, or its VM is stopping).
    VcpuDone,
    /// The VM ends with this result and reason.
    Stop(VmResult, String),
}

pub type Handled = Result<Flow, VmxInstrError>;

/// The watchdog fired: the VM ends as `timeout`, with where the guest was (a hang or a loop).
pub fn timeout(v: &Vcpu<'_>) -> Handled {
    let rip = v.rip()?;
    Ok(Flow::Stop(
        VmResult::Timeout,
        format!("watchdog: still running after {} ms (RIP {rip:#x})", v.vm.spec.timeout_ms),
    ))
}
