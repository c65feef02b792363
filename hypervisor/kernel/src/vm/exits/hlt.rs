//! HLT with `hlt = exit`: the vCPU waits in the hypervisor, its CPU halted with interrupts on,
//! until the guest has an interrupt it would take (a recognized virtual interrupt with
//! RFLAGS.IF = 1, or an NMI it does not block), an INIT, the VM stopping, or the watchdog.
//! What is posted meanwhile is folded into VIRR/RVI at once, and a due APIC timer delivered,
//! so nothing is lost even while the halt goes on (IF = 0, or masked by the guest's PPR).

use hvcore::apic::injection;
use hvcore::apic::regs;
use hvcore::apic::vapic;
use hvcore::vmx::events::interruptibility::BLOCKING_BY_NMI;
use hvcore::vmx::fields::{Vmcs16, Vmcs32, VmcsNatural};

use super::flow::{Flow, Handled, timeout};
use crate::vm::vcpu::Vcpu;
use crate::vmx::vmcs::Access;

use hvcore::arch::RFLAGS_IF;

pub fn hlt(v: &mut Vcpu<'_>) -> Handled {
    v.skip_instruction()?;
    let interrupts_enabled = VmcsNatural::GuestRflags.read()? & RFLAGS_IF != 0;
    loop {
        v.fold_posted()?;
        v.timer_expire()?;
        // An NMI the guest blocks (still in its NMI handler) does not end the halt either.
        let nmi = v.apic.nmi.pending() && Vmcs32::GuestInterruptibilityState.read()? & BLOCKING_BY_NMI == 0;
        // With virtual-interrupt delivery the processor's rule decides (RVI against VPPR); on
        // the injection path the modelled APIC's.
        let page = v.apic.page();
        let wakes = if v.controls.virtual_interrupt_delivery() {
            let rvi = Vmcs16::GuestInterruptStatus.read()? as u8;
            vapic::hlt_wakes(rvi, page.read(regs::PPR), interrupts_enabled, nmi)
        } else {
            nmi || (interrupts_enabled && injection::deliverable(&page).is_some())
        };
        // An INIT ends the halt too: the run loop applies it.
        if wakes || v.vm.is_stopping() || v.apic.startup.init_pending() {
            return Ok(Flow::Continue);
        }
        if v.watchdog_expired() {
            return timeout(v);
        }
        v.set_where(crate::vm::VcpuWhere::Waiting);
        crate::apic::sleep_until(v.wake_at());
    }
}
