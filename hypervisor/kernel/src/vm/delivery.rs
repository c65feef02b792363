//! Interrupt delivery into a VM's virtual local APICs by the hypervisor: IPIs that took the exit
//! path (an ICR write IPI virtualization does not cover, or any ICR write with IPIv off) and the
//! I/O APIC's messages. Fixed interrupts to other vCPUs are posted to their descriptors, so a
//! running target takes them without a VM exit; NMIs, INIT and SIPI are flags the target's CPU
//! acts on, after a kick. An interrupt for the sender itself is handed back: only its own CPU
//! may write its VMCS (RVI), which the caller does.

use hvcore::apic::icr::{self, Action, DeliveryMode, Dropped, Icr, Shorthand, Target};
use hvcore::devices::ioapic::Message;

use super::{Vm, kick};

/// What a delivery did, for the sender's counters and its own APIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// A fixed interrupt for the sending vCPU itself (its VIRR and RVI are the caller's).
    pub to_self: Option<u8>,
    /// INIT and SIPI messages sent (one per target).
    pub startup: u32,
    /// Nothing was delivered (an illegal vector, no such destination, an unsupported mode).
    pub dropped: bool,
}

/// Delivers the IPI `icr` that vCPU `sender` of `vm` wrote: edge-triggered (an ICR's trigger
/// mode only means something for INIT level de-assert, SDM Vol. 3A §12.6.1).
pub fn deliver(vm: &Vm, sender: usize, icr: &Icr) -> Delivered {
    deliver_as(vm, sender, icr, false)
}

/// Delivers an I/O APIC message while vCPU `sender` handled the device access: a level-triggered
/// one sets the targets' TMR bit (SDM Vol. 3A §12.8.4).
pub fn deliver_message(vm: &Vm, sender: usize, m: &Message) -> Delivered {
    deliver_as(vm, sender, &m.icr(), m.level)
}

// Exit path: page-aligned, so the bench's exit-path figures (Bochs traces, which page
// boundaries cut) do not move with unrelated code (docs/results.md).
#[rustc_align(4096)]
fn deliver_as(vm: &Vm, sender: usize, icr: &Icr, level: bool) -> Delivered {
    let n = vm.spec.vcpus as usize;
    // The common case first, without building the target table: fixed, physical, no shorthand.
    let action = if icr.mode == DeliveryMode::Fixed
        && !icr.logical
        && icr.shorthand == Shorthand::None
        && icr.vector >= 16
        && icr.dest != icr.broadcast()
        && vm.apic.ids_are_indices()
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
        icr::decide(icr, sender, &targets[..n])
    };
    let mut out = Delivered::default();
    // A globally disabled APIC takes nothing, not even INIT or SIPI (SDM Vol. 3A §12.4.3); a
    // software-disabled one takes NMI, INIT and SIPI but no fixed interrupt (§12.4.7.2).
    let on_bus = |t: usize| vm.apic.vcpus[t].enabled();
    match action {
        Action::Fixed { vector, targets } => each(targets, |t| {
            if !vm.apic.vcpus[t].accepts_fixed() {
                out.dropped = true;
                return;
            }
            vm.apic.vcpus[t].page().set_tmr(vector, level);
            if t == sender {
                out.to_self = Some(vector);
            } else {
                vm.apic.vcpus[t].post(vector);
            }
        }),
        // A virtual NMI is injected at the target's next VM entry, when the guest can take it
        // (run.rs, gate_nmi). The kick brings that entry soon: an external-interrupt exit if
        // the target runs, and if it is between its check and VMRESUME (interrupts off) the
        // kick stays pending and exits right after the entry, so no wake-up is lost.
        Action::Nmi { targets } => each(targets, |t| {
            if !on_bus(t) {
                return;
            }
            let target = &vm.apic.vcpus[t];
            target.nmi.raise();
            if t != sender {
                kick(target.host_apic_id);
            }
        }),
        // INIT takes effect here (hvcore::apic::startup); the target's CPU applies the reset at
        // its next exit, which the kick brings, and then waits for a SIPI.
        Action::Init { targets } => each(targets, |t| {
            if !on_bus(t) {
                return;
            }
            out.startup += 1;
            let target = &vm.apic.vcpus[t];
            target.startup.init();
            if t != sender {
                kick(target.host_apic_id);
            }
        }),
        // A SIPI counts only for a vCPU in wait-for-SIPI; its CPU sleeps until kicked.
        Action::StartUp { vector, targets } => each(targets, |t| {
            if !on_bus(t) {
                return;
            }
            out.startup += 1;
            let target = &vm.apic.vcpus[t];
            if target.startup.sipi(vector) && t != sender {
                kick(target.host_apic_id);
            }
        }),
        Action::Drop(_) => out.dropped = true,
    }
    out
}

fn each(mut set: u64, mut f: impl FnMut(usize)) {
    while set != 0 {
        f(set.trailing_zeros() as usize);
        set &= set - 1;
    }
}
