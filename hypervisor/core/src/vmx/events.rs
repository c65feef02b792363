//! Event injection rules: when a virtual NMI may be injected, and how an event whose delivery a
//! VM exit interrupted is delivered again. Pure decisions on VMCS field values; the kernel's run
//! loop reads and writes the fields.

use core::sync::atomic::{AtomicU8, Ordering};

/// Guest interruptibility state (SDM Vol. 3C §25.4.2, Table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    pub const BLOCKING_BY_SMI: u32 = 1 << 2;
    /// With "virtual NMIs" = 1 this is virtual-NMI blocking: in effect after an entry that
    /// injects an NMI (SDM Vol. 3C §27.7.1), removed by the guest's IRET (§26.3). Without
    /// "virtual NMIs", NMI exiting keeps NMIs blocked for as long as the guest runs: hence
    /// virtual NMIs are required.
    pub const BLOCKING_BY_NMI: u32 = 1 << 3;
}

/// VM-entry interruption-information / IDT-vectoring information (SDM Vol. 3C §25.8.3,
/// Table 25-17; IDT-vectoring information, §25.9.3): vector 7:0, type 10:8, deliver error code 11, valid 31.
pub mod info {
    pub const VALID: u32 = 1 << 31;
    pub const DELIVER_ERROR_CODE: u32 = 1 << 11;
    /// Bit 12 of the IDT-vectoring information is undefined; in the entry field it is reserved.
    pub const UNDEFINED_BIT_12: u32 = 1 << 12;
    pub const TYPE_SHIFT: u32 = 8;
    pub const TYPE_MASK: u32 = 7 << TYPE_SHIFT;
    pub const TYPE_EXTERNAL_INTERRUPT: u32 = 0;
    pub const TYPE_NMI: u32 = 2;
    pub const TYPE_HARDWARE_EXCEPTION: u32 = 3;
    pub const TYPE_SOFTWARE_INTERRUPT: u32 = 4;
    pub const TYPE_PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5;
    pub const TYPE_SOFTWARE_EXCEPTION: u32 = 6;

    /// The entry interruption information that injects an NMI.
    pub const NMI: u32 = VALID | (TYPE_NMI << TYPE_SHIFT) | 2;
}

/// What the run loop does about a pending virtual NMI before the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NmiGate {
    /// Nothing pending: "NMI-window exiting" off.
    Idle,
    /// Inject it now (entry interruption information = [`info::NMI`]), window exiting off.
    Inject,
    /// Keep it pending and set "NMI-window exiting": the guest is blocking NMIs (in its NMI
    /// handler, or in a STI / MOV SS shadow), or another event is injected at this entry.
    Wait,
}

/// Decides a pending virtual NMI, as the SDM requires and KVM does:
/// - virtual-NMI blocking (the guest has not yet executed IRET after the last NMI) holds it
///   back, as the processor holds back a real NMI (SDM Vol. 3C §25.3 with "virtual NMIs");
/// - an entry injecting an NMI fails with blocking by MOV SS (SDM Vol. 3C §27.3.1.5,
///   interruptibility-state checks), and on some processors with blocking by STI, so both wait
///   for the NMI window;
/// - one event per entry: an exception already queued goes first, the window then follows.
pub fn nmi_gate(pending: bool, interruptibility_state: u32, entry_event_queued: bool) -> NmiGate {
    use interruptibility::*;
    if !pending {
        NmiGate::Idle
    } else if entry_event_queued
        || interruptibility_state & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS | BLOCKING_BY_NMI) != 0
    {
        NmiGate::Wait
    } else {
        NmiGate::Inject
    }
}

/// NMIs sent to a vCPU and not yet injected. A processor has one NMI in service (blocking
/// NMIs until IRET) and latches one more (SDM Vol. 3A §6.7.1); a hypervisor cannot take NMIs
/// as fast as hardware does, so two sent close together may both be waiting when it looks:
/// up to two are kept while the guest is not blocking NMIs (one injected now, one held for the
/// NMI window), one while it is; the rest are lost, as on hardware. KVM keeps the same limits.
pub struct NmiLatch(AtomicU8);

impl Default for NmiLatch {
    fn default() -> Self {
        Self::new()
    }
}

impl NmiLatch {
    pub const fn new() -> Self {
        Self(AtomicU8::new(0))
    }

    /// An NMI arrives (any CPU).
    pub fn raise(&self) {
        let _ = self.0.try_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < 2).then_some(n + 1));
    }

    pub fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }

    /// The guest blocks NMIs (in its NMI handler): at most one stays latched.
    pub fn blocked(&self) {
        let _ = self.0.fetch_min(1, Ordering::AcqRel);
    }

    /// Takes one NMI to inject; false if none was pending.
    pub fn take(&self) -> bool {
        self.0.try_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    /// INIT or a reset: nothing pending.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// An event re-delivered after a VM exit interrupted its delivery through the guest IDT
/// (SDM Vol. 3C §28.2.3, information for VM exits during event delivery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reinjection {
    /// For the VM-entry interruption-information field.
    pub info: u32,
    /// For the VM-entry exception error code, when `info` delivers one.
    pub error_code: Option<u32>,
    /// For the VM-entry instruction length: software interrupts and exceptions need it to push
    /// the right return address (SDM Vol. 3C §25.8.3).
    pub instruction_length: Option<u32>,
    /// The interrupted event was an NMI: delivery had not completed, so the guest is not yet
    /// blocking NMIs and the NMI must not be lost nor counted twice.
    pub nmi: bool,
}

/// Whether an exit of basic reason `reason` can have interrupted the delivery of an event
/// (SDM Vol. 3C §28.2.3: exceptions, external interrupts and NMIs met during delivery, EPT
/// violations and misconfigurations, APIC accesses, task switches). Exits caused by an
/// instruction (CPUID, VMCALL, I/O, MSRs, APIC-write traps, ...) never do, so the run loop
/// reads the IDT-vectoring field only after these.
pub fn may_interrupt_delivery(reason: u16) -> bool {
    use crate::vmx::exit_reason::*;
    matches!(reason, EXCEPTION_NMI | EXTERNAL_INTERRUPT | TASK_SWITCH | APIC_ACCESS | EPT_VIOLATION | EPT_MISCONFIG)
}

/// The re-injection for an exit's IDT-vectoring information, if its valid bit is set.
pub fn reinjection(idt_vectoring_info: u32, error_code: u32, exit_instruction_length: u32) -> Option<Reinjection> {
    use info::*;
    if idt_vectoring_info & VALID == 0 {
        return None;
    }
    let kind = (idt_vectoring_info & TYPE_MASK) >> TYPE_SHIFT;
    let info = idt_vectoring_info & (VALID | DELIVER_ERROR_CODE | TYPE_MASK | 0xff);
    let software =
        matches!(kind, TYPE_SOFTWARE_INTERRUPT | TYPE_PRIVILEGED_SOFTWARE_EXCEPTION | TYPE_SOFTWARE_EXCEPTION);
    Some(Reinjection {
        info,
        error_code: (info & DELIVER_ERROR_CODE != 0).then_some(error_code),
        instruction_length: software.then_some(exit_instruction_length),
        nmi: kind == TYPE_NMI,
    })
}

#[cfg(test)]
mod tests {
    use super::interruptibility::*;
    use super::*;

    #[test]
    fn nmi_waits_for_every_kind_of_blocking() {
        assert_eq!(nmi_gate(false, 0, false), NmiGate::Idle);
        assert_eq!(nmi_gate(false, BLOCKING_BY_NMI, true), NmiGate::Idle);
        assert_eq!(nmi_gate(true, 0, false), NmiGate::Inject);
        // Blocking by SMI is not an NMI rule (and this hypervisor has no SMM guest).
        assert_eq!(nmi_gate(true, BLOCKING_BY_SMI, false), NmiGate::Inject);
        for blocking in [BLOCKING_BY_STI, BLOCKING_BY_MOV_SS, BLOCKING_BY_NMI, BLOCKING_BY_STI | BLOCKING_BY_NMI] {
            assert_eq!(nmi_gate(true, blocking, false), NmiGate::Wait, "{blocking:#x}");
        }
        assert_eq!(nmi_gate(true, 0, true), NmiGate::Wait, "an exception is injected at this entry");
    }

    #[test]
    fn two_nmis_close_together_are_both_delivered() {
        let l = NmiLatch::new();
        assert!(!l.pending() && !l.take());
        l.raise();
        l.raise();
        l.raise();
        assert!(l.take() && l.take(), "two kept while NMIs are not blocked");
        assert!(!l.take(), "the third was lost");
        l.raise();
        l.raise();
        l.blocked();
        assert!(l.take() && !l.take(), "one latched while the guest blocks NMIs");
        l.raise();
        l.clear();
        assert!(!l.pending());
    }

    #[test]
    fn only_event_exits_read_idt_vectoring() {
        use crate::vmx::exit_reason::*;
        for r in [EXCEPTION_NMI, EXTERNAL_INTERRUPT, EPT_VIOLATION, APIC_ACCESS] {
            assert!(may_interrupt_delivery(r), "{r}");
        }
        for r in [CPUID, VMCALL, IO_INSTRUCTION, WRMSR, APIC_WRITE, HLT, PREEMPTION_TIMER] {
            assert!(!may_interrupt_delivery(r), "{r}");
        }
    }

    #[test]
    fn nmi_info_is_vector_2_type_nmi_valid() {
        assert_eq!(info::NMI, 0x8000_0202);
    }

    #[test]
    fn reinjection_copies_what_the_entry_field_takes() {
        assert_eq!(reinjection(0x0000_0202, 0, 0), None, "valid bit clear");
        // An NMI whose delivery was interrupted (bit 12 undefined: dropped).
        let r = reinjection(0x8000_1202, 0xdead, 3).unwrap();
        assert_eq!(r, Reinjection { info: 0x8000_0202, error_code: None, instruction_length: None, nmi: true });
        // #PF with an error code.
        let r = reinjection(0x8000_0b0e, 0x2, 0).unwrap();
        assert_eq!(r.info, 0x8000_0b0e);
        assert_eq!(r.error_code, Some(2));
        assert!(!r.nmi);
        // INT 0x80 needs the instruction length to push the return address after INT n.
        let r = reinjection(0x8000_0480, 0, 2).unwrap();
        assert_eq!(r.instruction_length, Some(2));
        // An external interrupt (or a virtual interrupt's delivery) needs neither.
        let r = reinjection(0x8000_0041, 7, 9).unwrap();
        assert_eq!((r.error_code, r.instruction_length), (None, None));
    }
}
