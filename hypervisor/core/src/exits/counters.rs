//! Per-vCPU VM-exit counters by basic exit reason, and their JSON form.

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

            /// The counter called `name` in JSON: an exit reason's name (`exit_reason::NAMES`)
            /// or an extra counter's; `None` for a name that is neither.
            pub fn slot_mut(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $(stringify!($name) => Some(&mut self.$name),)*
                    _ => {
                        let i = exit_reason::NAMES.iter().position(|n| *n == name)?;
                        self.by_reason.get_mut(i)
                    }
                }
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

impl ExitCounters {
    /// The counter called `name` in JSON (see `slot_mut`).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.clone().slot_mut(name).map(|c| *c)
    }

    /// The non-zero counters by exit-reason name, then the non-zero extra counters by field
    /// name: the JSON object, in order.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let reasons = self.by_reason.iter().enumerate().map(|(i, &n)| (exit_reason::NAMES[i], n));
        reasons.chain(self.extras()).filter(|(_, n)| *n != 0)
    }
}

/// `{"cpuid": 3, "hlt": 1, ...}`: the non-zero counters (`nonzero`); a name neither an exit
/// reason nor an extra counter is refused when read.
#[cfg(feature = "alloc")]
impl serde::Serialize for ExitCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.nonzero())
    }
}

#[cfg(feature = "alloc")]
impl<'de> serde::Deserialize<'de> for ExitCounters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counts;
        impl<'de> serde::de::Visitor<'de> for Counts {
            type Value = ExitCounters;

            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("exit counts by name")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ExitCounters, A::Error> {
                let mut c = ExitCounters::default();
                while let Some((name, n)) = map.next_entry::<alloc::borrow::Cow<'de, str>, u64>()? {
                    let slot = c.slot_mut(&name).ok_or_else(|| {
                        <A::Error as serde::de::Error>::custom(alloc::format!("unknown exit counter `{name}`"))
                    })?;
                    *slot = n;
                }
                Ok(c)
            }
        }
        d.deserialize_map(Counts)
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
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(text, r#"{"cpuid":3,"hlt":1,"ignored_io":2,"msr_write_icr":1}"#);
        assert_eq!(serde_json::from_str::<ExitCounters>(&text).unwrap(), a);
        assert_eq!(
            (a.get("cpuid"), a.get("ignored_io"), a.get("vmcall"), a.get("cpuld")),
            (Some(3), Some(2), Some(0), None)
        );
        assert_eq!(serde_json::to_string(&ExitCounters::default()).unwrap(), "{}");
        b.timer_exit_ticks = 7;
        let names: std::vec::Vec<_> = b.extras().map(|(k, _)| k).collect();
        assert_eq!((names[0], names.len()), ("ignored_io", 22));
        assert!(serde_json::to_string(&b).unwrap().contains("\"timer_exit_ticks\":7"));
        let err = serde_json::from_str::<ExitCounters>(r#"{"cpuld":1}"#).unwrap_err().to_string();
        assert!(err.contains("unknown exit counter `cpuld`"), "{err}");
    }
}
