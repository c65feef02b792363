//! The exit path of an IPI: the guest's ICR write reached the hypervisor (APIC-write exit at
//! offset 0x300, or an intercepted WRMSR 0x830), and the hypervisor delivers it. Fixed
//! interrupts to other vCPUs are posted to their descriptors, so a running target takes them
//! without a VM exit; self-IPIs go straight into this vCPU's VIRR and RVI.

use hvcore::apic::icr::{self, Action, DeliveryMode, Dropped, Icr, Shorthand, Target};
use hvcore::apic::vapic::raise_rvi;
use hvcore::vmx::fields::Vmcs16;

use super::vcpu::Vcpu;
use crate::vmx::vmcs::Access;

/// Delivers one ICR write made by vCPU `v`.
pub fn send(v: &mut Vcpu<'_>, icr: Icr) {
    let vm = v.vm;
    let n = vm.spec.vcpus as usize;
    let me = v.index as usize;
    v.counters.ipi_sent_by_exit += 1;
    // The common case first, without building the target table: fixed, physical, no shorthand.
    let action = if icr.mode == DeliveryMode::Fixed
        && !icr.logical
        && icr.shorthand == Shorthand::None
        && icr.vector >= 16
        && icr.dest != icr.broadcast()
    {
        // Virtual APIC IDs are the vCPU indices.
        if (icr.dest as usize) < n {
            Action::Fixed { vector: icr.vector, targets: 1 << icr.dest }
        } else {
            Action::Drop(Dropped::NoSuchDestination)
        }
    } else {
        let mut targets = [Target { apic_id: 0, ldr: 0, dfr: 0 }; 64];
        for (i, t) in targets.iter_mut().enumerate().take(n) {
            *t = vm.apic.vcpus[i].target(i as u32);
        }
        icr::decide(&icr, me, &targets[..n])
    };
    match action {
        Action::Fixed { vector, targets } => {
            each(targets, |t| if t == me { deliver_self(v, vector) } else { vm.apic.vcpus[t].post(vector) })
        }
        // A virtual NMI is injected at the target's next VM entry, when the guest can take it
        // (vcpu.rs, gate_nmi). The kick brings that entry soon: an external-interrupt exit if
        // the target runs, and if it is between its check and VMRESUME (interrupts off) the
        // kick stays pending and exits right after the entry, so no wake-up is lost.
        Action::Nmi { targets } => each(targets, |t| {
            let target = &vm.apic.vcpus[t];
            target.pending_nmi.store(true, core::sync::atomic::Ordering::Release);
            if t != me {
                crate::apic::send_ipi(target.host_apic_id, crate::apic::ICR_FIXED | crate::KICK_VECTOR as u32);
            }
        }),
        // INIT takes effect here (hvcore::apic::startup); the target's CPU applies the reset at
        // its next exit, which the kick brings, and then waits for a SIPI.
        Action::Init { targets } => each(targets, |t| {
            v.counters.startup_ipis_sent += 1;
            let target = &vm.apic.vcpus[t];
            target.startup.init();
            if t != me {
                crate::apic::send_ipi(target.host_apic_id, crate::apic::ICR_FIXED | crate::KICK_VECTOR as u32);
            }
        }),
        // A SIPI counts only for a vCPU in wait-for-SIPI; its CPU sleeps until kicked.
        Action::StartUp { vector, targets } => each(targets, |t| {
            v.counters.startup_ipis_sent += 1;
            let target = &vm.apic.vcpus[t];
            if target.startup.sipi(vector) && t != me {
                crate::apic::send_ipi(target.host_apic_id, crate::apic::ICR_FIXED | crate::KICK_VECTOR as u32);
            }
        }),
        Action::Drop(_) => v.counters.ipi_dropped += 1,
    }
}

fn each(mut set: u64, mut f: impl FnMut(usize)) {
    while set != 0 {
        f(set.trailing_zeros() as usize);
        set &= set - 1;
    }
}

/// A self-IPI from the exit path: VIRR bit and RVI, evaluated at the next VM entry
/// (SDM Vol. 3C §30.2.1).
pub fn deliver_self(v: &mut Vcpu<'_>, vector: u8) {
    v.apic.page().set_irr(vector);
    let status = Vmcs16::GuestInterruptStatus.read().unwrap_or(0);
    let _ = Vmcs16::GuestInterruptStatus.write(raise_rvi(status, vector));
}
