//! A barrier for the vCPUs of a VM (sense-reversing, on shared guest memory).

use core::sync::atomic::{AtomicU32, Ordering};

pub struct Barrier {
    arrived: AtomicU32,
    generation: AtomicU32,
}

impl Barrier {
    pub const fn new() -> Self {
        Self { arrived: AtomicU32::new(0), generation: AtomicU32::new(0) }
    }

    /// Waits until `n` vCPUs have called `wait` for this round.
    pub fn wait(&self, n: u32) {
        let round = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
            self.arrived.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            while self.generation.load(Ordering::Acquire) == round {
                core::hint::spin_loop();
            }
        }
    }
}

impl Default for Barrier {
    fn default() -> Self {
        Self::new()
    }
}
