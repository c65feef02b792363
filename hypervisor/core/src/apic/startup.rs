//! INIT and SIPI as a vCPU's run state (SDM Vol. 3A §9.4 "Multiple-Processor (MP)
//! Initialization", §11.6.1 delivery modes): INIT puts a processor in wait-for-SIPI, a SIPI
//! starts a waiting processor at its vector, and a SIPI to a processor that is not waiting is
//! ignored (so the second SIPI of the usual INIT-SIPI-SIPI sequence does nothing).
//!
//! Other vCPUs send; only the target's own CPU takes a SIPI. The INIT takes effect at the
//! sender, so a SIPI sent right behind it finds the target waiting even before the target's
//! CPU has noticed the INIT (operating systems do not always wait between the two).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const RUNNING: u32 = 0;
const WAITING: u32 = 1;
/// A SIPI taken but not yet acted on: this bit plus the vector.
const STARTING: u32 = 0x100;

pub struct Startup {
    state: AtomicU32,
    /// An INIT the target's CPU has not yet applied (reset of its registers and APIC).
    init_pending: AtomicBool,
}

impl Startup {
    /// A processor that runs from the start (the bootstrap processor), or waits for a SIPI.
    pub const fn new(waiting: bool) -> Self {
        Self { state: AtomicU32::new(if waiting { WAITING } else { RUNNING }), init_pending: AtomicBool::new(false) }
    }

    /// An INIT arrives: wait-for-SIPI from now on, whatever the processor was doing; a SIPI
    /// taken but not acted on is forgotten.
    pub fn init(&self) {
        self.state.store(WAITING, Ordering::Release);
        self.init_pending.store(true, Ordering::Release);
    }

    /// A SIPI arrives; true if the processor was waiting and takes it.
    pub fn sipi(&self, vector: u8) -> bool {
        self.state.compare_exchange(WAITING, STARTING | vector as u32, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The target's CPU: an INIT to apply, once.
    pub fn take_init(&self) -> bool {
        self.init_pending.swap(false, Ordering::AcqRel)
    }

    /// Whether an INIT waits to be applied (a halted vCPU wakes for it).
    pub fn init_pending(&self) -> bool {
        self.init_pending.load(Ordering::Acquire)
    }

    /// The target's CPU, while waiting: the SIPI vector to start at, once. An INIT that comes
    /// in between wins.
    pub fn take_sipi(&self) -> Option<u8> {
        let s = self.state.load(Ordering::Acquire);
        if s & STARTING == 0 {
            return None;
        }
        self.state.compare_exchange(s, RUNNING, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| s as u8)
    }

    pub fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_sipi_sipi_starts_once_at_the_first_vector() {
        let s = Startup::new(false);
        assert!(!s.sipi(0x10), "a running processor ignores SIPI");
        s.init();
        assert!(s.is_waiting());
        assert!(s.sipi(0x08));
        assert!(!s.sipi(0x09), "the second SIPI finds it starting and is ignored");
        assert!(s.take_init());
        assert!(!s.take_init(), "an INIT is applied once");
        assert_eq!(s.take_sipi(), Some(0x08));
        assert_eq!(s.take_sipi(), None);
        assert!(!s.is_waiting());
        assert!(!s.sipi(0x08), "running again: later SIPIs do nothing");
    }

    #[test]
    fn application_processors_wait_from_the_start() {
        let s = Startup::new(true);
        assert_eq!(s.take_sipi(), None);
        assert!(s.sipi(0));
        assert_eq!(s.take_sipi(), Some(0), "vector 0 is a vector");
    }

    #[test]
    fn an_init_after_a_sipi_cancels_it() {
        let s = Startup::new(true);
        assert!(s.sipi(0x20));
        s.init();
        assert_eq!(s.take_sipi(), None);
        assert!(s.sipi(0x30));
        assert_eq!(s.take_sipi(), Some(0x30));
    }
}
