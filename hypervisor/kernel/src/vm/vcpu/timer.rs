//! The vCPU's local APIC timer (the model: `hvcore::apic::timer`): guest writes of its
//! registers, the current count, IA32_TSC_DEADLINE, and delivery.
//!
//! The hypervisor is back when the timer is due through the VMX-preemption timer, which also
//! carries the watchdog: before each entry it is armed for the earlier of the two. A due timer's
//! vector goes into VIRR and RVI, so the guest takes it by virtual-interrupt delivery at the
//! entry that follows (SDM Vol. 3C §30.2): one exit per timer interrupt (the preemption-timer
//! exit), and none at all to read the timer's registers but the current count. While the vCPU
//! waits in the hypervisor (HLT that exits, wait-for-SIPI) the host APIC timer wakes its CPU
//! at the same deadline.

use hvcore::apic::regs::{LVT_TIMER, TIMER_DIVIDE, TIMER_INITIAL};
use hvcore::manifest::TimerSource;
use hvcore::vmx::fields::Vmcs32;

use super::Vcpu;
use crate::vectors::GUEST_TIMER;
use crate::vmx::vmcs::{Access, VmxInstrError};

impl Vcpu<'_> {
    /// A guest write of the LVT timer, initial-count or divide-configuration register (an
    /// APIC-write exit in xAPIC mode, a WRMSR in x2APIC mode). The virtual-APIC page then holds
    /// what the register reads as, for the virtualized reads.
    pub fn timer_write(&mut self, offset: usize, value: u32) -> Result<(), VmxInstrError> {
        let now = crate::time::rdtsc();
        let page = self.apic.page();
        match offset {
            LVT_TIMER => page.write(LVT_TIMER, self.timer.write_lvt(self.lvt_value(value))),
            TIMER_INITIAL => {
                self.timer.write_initial_count(value, now);
                page.write(TIMER_INITIAL, self.timer.initial_count());
            }
            TIMER_DIVIDE => page.write(TIMER_DIVIDE, self.timer.write_divide(value, now)),
            _ => return Ok(()),
        }
        self.counters.timer_writes += 1;
        self.arm_preemption_timer()
    }

    /// The current-count register, now.
    pub fn timer_current_count(&self) -> u32 {
        self.timer.current_count(crate::time::rdtsc())
    }

    /// RDMSR IA32_TSC_DEADLINE, in the guest's TSC (the model keeps the host's).
    pub fn timer_tsc_deadline(&self) -> u64 {
        match self.timer.read_tsc_deadline() {
            0 => 0,
            host => host.wrapping_add(self.tsc_offset),
        }
    }

    /// WRMSR IA32_TSC_DEADLINE (a value of the guest's TSC; 0 disarms).
    pub fn set_timer_tsc_deadline(&mut self, value: u64) -> Result<(), VmxInstrError> {
        let host = if value == 0 { 0 } else { value.wrapping_sub(self.tsc_offset).max(1) };
        self.timer.write_tsc_deadline(host);
        self.counters.timer_writes += 1;
        self.arm_preemption_timer()
    }

    /// Delivers the timer's interrupt if it is due; true if it did. The check runs before every
    /// entry, inline; the delivery does not.
    #[inline(always)]
    pub(in crate::vm) fn timer_expire(&mut self) -> Result<bool, VmxInstrError> {
        if self.timer.next_expiry().is_none_or(|t| crate::time::rdtsc() < t) {
            return Ok(false);
        }
        self.deliver_due_timer()
    }

    #[inline(never)]
    fn deliver_due_timer(&mut self) -> Result<bool, VmxInstrError> {
        match self.timer.expire(crate::time::rdtsc()) {
            Some(vector) => {
                self.deliver_self(vector)?;
                self.counters.timer_interrupts += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The earlier of the watchdog's deadline and the APIC timer's, as a TSC value.
    fn next_event(&self) -> u64 {
        self.timer.deadline().map_or(self.deadline_tsc, |t| t.min(self.deadline_tsc))
    }

    /// Arms what brings the hypervisor back: the VMX-preemption timer for the next event (the
    /// watchdog only, when the host APIC timer carries the guest's), rounded up so it never
    /// fires early (it counts TSC >> shift; SDM Vol. 3C §26.5.1). Its value is saved across
    /// exits ("save VMX-preemption timer value"); `rearm_for_entry` makes up for the time the
    /// hypervisor itself ran.
    pub(in crate::vm) fn arm_preemption_timer(&self) -> Result<(), VmxInstrError> {
        if self.rearmed_at_entry() {
            return Ok(());
        }
        self.write_preemption_timer()
    }

    /// Whether `rearm_for_entry` will arm the timer anyway (so arming it earlier is wasted).
    #[inline(always)]
    fn rearmed_at_entry(&self) -> bool {
        self.vm.timer == TimerSource::Preemption && self.timer.deadline().is_some()
    }

    fn write_preemption_timer(&self) -> Result<(), VmxInstrError> {
        let next = match self.vm.timer {
            TimerSource::Preemption => self.next_event(),
            TimerSource::HostApic => {
                crate::apic::set_tsc_deadline(GUEST_TIMER, self.timer.deadline());
                self.deadline_tsc
            }
        };
        let ticks = next.saturating_sub(crate::time::rdtsc());
        let value = ticks.div_ceil(1 << self.timer_shift);
        Vmcs32::VmxPreemptionTimerValue.write(value.min(u32::MAX as u64) as u32)
    }

    /// The VMX-preemption timer counts down only while the guest runs (SDM Vol. 3C §26.5.1), so
    /// the hypervisor's own time since it was armed (a decoded APIC access, a console line)
    /// would make a pending guest timer late by that much, even with its value saved across
    /// exits. While a guest deadline is pending it is therefore re-armed from the TSC before
    /// every entry: a rdtsc and a VMWRITE.
    #[inline(always)]
    pub(in crate::vm) fn rearm_for_entry(&self) -> Result<(), VmxInstrError> {
        if self.rearmed_at_entry() {
            self.write_preemption_timer()?;
        }
        Ok(())
    }

    /// When a wait in the hypervisor must end at the latest: the next event, or a backstop of
    /// 100 ms (every other wake-up comes by an interrupt: kicks, posted-interrupt notifications).
    pub fn wake_at(&self) -> u64 {
        let backstop = crate::time::rdtsc() + self.host.tsc_hz / 10;
        self.next_event().min(backstop)
    }
}
