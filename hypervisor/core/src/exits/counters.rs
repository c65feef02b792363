//! Per-vCPU VM-exit counters by basic exit reason, and their JSON form.

use core::fmt::{self, Write};

use crate::vmx::exit_reason;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitCounters {
    pub by_reason: [u64; exit_reason::COUNT],
    /// I/O accesses to ports nobody emulates (read all-ones / write dropped).
    pub ignored_io: u64,
    /// WRMSR exits that were x2APIC ICR writes (the exit path of an x2APIC IPI); also counted
    /// under `wrmsr`.
    pub msr_write_icr: u64,
    /// IPIs this vCPU sent that reached no vCPU (destination outside the VM, illegal vector,
    /// unsupported delivery mode).
    pub ipi_dropped: u64,
    /// IPIs this vCPU sent through the hypervisor (the exit path), by delivery.
    pub ipi_sent_by_exit: u64,
    /// TSC ticks the hypervisor spent on those exits, from just after the VM exit to just before
    /// the next VM entry (under Bochs: instructions).
    pub ipi_exit_ticks: u64,
    /// Hypercalls refused because the guest made them from CPL > 0.
    pub hypercall_refused: u64,
    /// Virtual NMIs injected.
    pub nmi_injected: u64,
    /// Events injected again because an exit interrupted their delivery (IDT-vectoring).
    pub events_reinjected: u64,
    /// Guest instructions the hypervisor decoded and completed itself (APIC-access reads of
    /// registers the hardware does not virtualize, XSETBV).
    pub emulated: u64,
    /// INIT and SIPI IPIs this vCPU sent (the exit path always carries them); included in
    /// `ipi_sent_by_exit`.
    pub startup_ipis_sent: u64,
    /// INITs this vCPU applied (each puts it in wait-for-SIPI).
    pub inits: u64,
    /// SIPIs that started this vCPU (from wait-for-SIPI, in real mode).
    pub sipis: u64,
}

impl Default for ExitCounters {
    fn default() -> Self {
        Self {
            by_reason: [0; exit_reason::COUNT],
            ignored_io: 0,
            msr_write_icr: 0,
            ipi_dropped: 0,
            ipi_sent_by_exit: 0,
            ipi_exit_ticks: 0,
            hypercall_refused: 0,
            nmi_injected: 0,
            events_reinjected: 0,
            emulated: 0,
            startup_ipis_sent: 0,
            inits: 0,
            sipis: 0,
        }
    }
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

    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.by_reason.iter_mut().zip(other.by_reason.iter()) {
            *a += b;
        }
        self.ignored_io += other.ignored_io;
        self.msr_write_icr += other.msr_write_icr;
        self.ipi_dropped += other.ipi_dropped;
        self.ipi_sent_by_exit += other.ipi_sent_by_exit;
        self.ipi_exit_ticks += other.ipi_exit_ticks;
        self.hypercall_refused += other.hypercall_refused;
        self.nmi_injected += other.nmi_injected;
        self.events_reinjected += other.events_reinjected;
        self.emulated += other.emulated;
        self.startup_ipis_sent += other.startup_ipis_sent;
        self.inits += other.inits;
        self.sipis += other.sipis;
    }
}

/// `{"cpuid": 3, "hlt": 1, ...}`: the non-zero counters by name, then the non-zero extra
/// counters (`ignored_io`, `msr_write_icr`, `ipi_dropped`, `ipi_sent_by_exit`, `ipi_exit_ticks`,
/// `hypercall_refused`, `nmi_injected`, `events_reinjected`, `emulated`, `startup_ipis_sent`, `inits`, `sipis`).
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
        for (k, v) in [
            ("ignored_io", self.ignored_io),
            ("msr_write_icr", self.msr_write_icr),
            ("ipi_dropped", self.ipi_dropped),
            ("ipi_sent_by_exit", self.ipi_sent_by_exit),
            ("ipi_exit_ticks", self.ipi_exit_ticks),
            ("hypercall_refused", self.hypercall_refused),
            ("nmi_injected", self.nmi_injected),
            ("events_reinjected", self.events_reinjected),
            ("emulated", self.emulated),
            ("startup_ipis_sent", self.startup_ipis_sent),
            ("inits", self.inits),
            ("sipis", self.sipis),
        ] {
            if v != 0 {
                item(f, k, v)?;
            }
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
    }
}
