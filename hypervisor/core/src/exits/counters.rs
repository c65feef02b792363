//! Per-vCPU VM-exit counters by basic exit reason, and their JSON form.

use core::fmt::{self, Write};

use crate::vmx::exit_reason;

/// The counters besides the exit reasons, each defined once: field, documentation and JSON
/// name (the field's) come from this list.
macro_rules! exit_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct ExitCounters {
            pub by_reason: [u64; exit_reason::COUNT],
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Default for ExitCounters {
            fn default() -> Self {
                Self { by_reason: [0; exit_reason::COUNT], $($name: 0,)* }
            }
        }

        impl ExitCounters {
            pub fn add(&mut self, other: &Self) {
                for (a, b) in self.by_reason.iter_mut().zip(other.by_reason.iter()) {
                    *a += b;
                }
                $(self.$name += other.$name;)*
            }

            /// What was counted since `earlier` (a snapshot of the same counters).
            pub fn since(&self, earlier: &Self) -> Self {
                let mut d = Self::default();
                for (i, c) in d.by_reason.iter_mut().enumerate() {
                    *c = self.by_reason[i].saturating_sub(earlier.by_reason[i]);
                }
                $(d.$name = self.$name.saturating_sub(earlier.$name);)*
                d
            }

            /// The extra counters by name, in definition order.
            pub fn extras(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name),)*].into_iter()
            }
        }
    };
}

exit_counters! {
    /// I/O accesses to ports nobody emulates (read all-ones / write dropped).
    ignored_io,
    /// WRMSR exits that were x2APIC ICR writes (the exit path of an x2APIC IPI); also counted
    /// under `wrmsr`.
    msr_write_icr,
    /// IPIs this vCPU sent that reached no vCPU (destination outside the VM, illegal vector,
    /// unsupported delivery mode).
    ipi_dropped,
    /// IPIs this vCPU sent through the hypervisor (the exit path), by delivery.
    ipi_sent_by_exit,
    /// TSC ticks the hypervisor spent on those exits, from just after the VM exit to just
    /// before the next VM entry (under Bochs: instructions), and how many exits that sums: all
    /// but those that sent INIT or SIPI, which are rare and cost what a reset costs.
    ipi_exit_ticks,
    ipi_exits_timed,
    /// Hypercalls refused because the guest made them from CPL > 0.
    hypercall_refused,
    /// Virtual NMIs injected.
    nmi_injected,
    /// Events injected again because an exit interrupted their delivery (IDT-vectoring).
    events_reinjected,
    /// Interrupts injected as events at VM entry (the injection path: no virtual-interrupt
    /// delivery), and the interrupt windows opened for them (the guest could not take one yet).
    interrupts_injected,
    interrupt_windows,
    /// Guest instructions the hypervisor decoded and completed itself (APIC-access reads of
    /// registers the hardware does not virtualize, device MMIO, XSETBV).
    emulated,
    /// INIT and SIPI IPIs this vCPU sent (the exit path always carries them); included in
    /// `ipi_sent_by_exit`.
    startup_ipis_sent,
    /// INITs this vCPU applied (each puts it in wait-for-SIPI).
    inits,
    /// SIPIs that started this vCPU (from wait-for-SIPI, in real mode).
    sipis,
    /// Writes of the local APIC timer's registers and IA32_TSC_DEADLINE.
    timer_writes,
    /// Local APIC timer interrupts delivered.
    timer_interrupts,
    /// VMX-preemption-timer exits that delivered a timer interrupt, and the TSC ticks the
    /// hypervisor spent on them from VM exit to VM entry (the cost of one timer interrupt).
    timer_exits,
    timer_exit_ticks,
    /// Interrupt messages from the I/O APIC delivered (device interrupts), and EOIs of
    /// level-triggered ones passed back to it (EOI-induced exits).
    device_interrupts,
    device_eois,
    /// External-interrupt exits that carried the posted-interrupt notification vector on a
    /// path where the processor processes posted interrupts: never on hardware (SDM Vol. 3C
    /// §30.6), but KVM's nested VMX before a 2024 fix hands an L2's notification to L1 this way
    /// (docs/hardware.md). Each is processed as the processor would have.
    posted_notification_exits,
}

impl ExitCounters {
    #[inline]
    pub fn count(&mut self, reason: u16) {
        if let Some(c) = self.by_reason.get_mut(reason as usize) {
            *c += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.iter().sum()
    }
}

/// `{"cpuid": 3, "hlt": 1, ...}`: the non-zero counters by exit-reason name, then the non-zero
/// extra counters by field name.
impl fmt::Display for ExitCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('{')?;
        let mut first = true;
        let mut item = |f: &mut fmt::Formatter<'_>, k: &str, v: u64| -> fmt::Result {
            if !first {
                f.write_char(',')?;
            }
            first = false;
            write!(f, "\"{k}\":{v}")
        };
        for (i, &n) in self.by_reason.iter().enumerate().filter(|(_, n)| **n != 0) {
            item(f, exit_reason::NAMES[i], n)?;
        }
        for (k, v) in self.extras().filter(|(_, v)| *v != 0) {
            item(f, k, v)?;
        }
        f.write_char('}')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn counts_sum_and_serialize() {
        let mut a = ExitCounters::default();
        a.count(exit_reason::CPUID);
        a.count(exit_reason::CPUID);
        a.count(exit_reason::HLT);
        a.count(500); // out of range: ignored, never a panic
        let mut b = ExitCounters::default();
        b.count(exit_reason::CPUID);
        b.ignored_io = 2;
        b.msr_write_icr = 1;
        a.add(&b);
        assert_eq!(a.total(), 4);
        let v: serde_json::Value = serde_json::from_str(&a.to_string()).unwrap();
        assert_eq!(v, serde_json::json!({"cpuid": 3, "hlt": 1, "ignored_io": 2, "msr_write_icr": 1}));
        assert_eq!(ExitCounters::default().to_string(), "{}");
        b.timer_exit_ticks = 7;
        let names: std::vec::Vec<_> = b.extras().map(|(k, _)| k).collect();
        assert_eq!((names[0], names.len()), ("ignored_io", 22));
        assert!(b.to_string().contains("\"timer_exit_ticks\":7"));
    }
}
