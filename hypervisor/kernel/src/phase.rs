//! The boot as a state machine: the phases the BSP leads every CPU through, and the handshake
//! that replaces flags between `kmain` and `ap_entry`. Only the BSP advances the phase, one
//! way; APs wait for the phase they need and report their own steps by counting.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// Where the boot is, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// APs come online and do VMXON.
    Starting,
    /// The native IPI round trip runs, CPU 0 to CPU 1 (only with `native_bench`).
    NativeBench,
    /// The BSP validates the manifest and builds the VMs.
    Building,
    /// vCPUs run on their CPUs.
    Running,
    /// Every CPU leaves VMX operation.
    Release,
}

impl Phase {
    const ALL: [Phase; 5] = [Phase::Starting, Phase::NativeBench, Phase::Building, Phase::Running, Phase::Release];
}

/// The phase, and the APs' reports of the two steps the BSP waits for.
pub struct Handshake {
    phase: AtomicU8,
    vmxon_done: AtomicU32,
    vmxoff_done: AtomicU32,
}

pub static BOOT: Handshake = Handshake {
    phase: AtomicU8::new(Phase::Starting as u8),
    vmxon_done: AtomicU32::new(0),
    vmxoff_done: AtomicU32::new(0),
};

impl Handshake {
    pub fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::Acquire) as usize]
    }

    /// The BSP moves on; everything it did before is visible to a CPU that sees the new phase.
    pub fn advance(&self, to: Phase) {
        debug_assert!(to > self.phase(), "the boot only moves forward");
        self.phase.store(to as u8, Ordering::Release);
    }

    /// Spins until the boot reaches `phase` (or passes it); returns the phase seen. The loop is
    /// one load, one compare and PAUSE: under Bochs the CPUs take turns at basic-block
    /// boundaries, so what a waiting CPU spins on is part of every figure the others measure
    /// (docs/results.md), and the tightest loop is the one those figures assume.
    pub fn wait_for(&self, phase: Phase) -> Phase {
        while self.phase.load(Ordering::Acquire) < phase as u8 {
            core::hint::spin_loop();
        }
        self.phase()
    }

    /// An AP finished its VMXON attempt.
    pub fn vmxon_done(&self) {
        self.vmxon_done.fetch_add(1, Ordering::Release);
    }

    /// An AP finished VMXOFF.
    pub fn vmxoff_done(&self) {
        self.vmxoff_done.fetch_add(1, Ordering::Release);
    }

    pub fn aps_vmxon_done(&self) -> u32 {
        self.vmxon_done.load(Ordering::Acquire)
    }

    pub fn aps_vmxoff_done(&self) -> u32 {
        self.vmxoff_done.load(Ordering::Acquire)
    }
}
