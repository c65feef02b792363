//! The posted-interrupt descriptor (SDM Vol. 3C §30.6, Table 30-1) and the PID-pointer table
//! of IPI virtualization (§30.1.6, §25.6.8).
//!
//! Processors doing IPI virtualization and other CPUs' hypervisor code change a descriptor
//! concurrently, so every change is one locked read-modify-write (`lock or`, `lock cmpxchg`,
//! `xchg`) on the descriptor in place.

use core::sync::atomic::{AtomicU64, Ordering};

/// 64 bytes, 64-byte aligned: PIR (bits 255:0), then the control word (ON, SN, NV, NDST).
#[repr(C, align(64))]
pub struct PostedInterruptDesc {
    pir: [AtomicU64; 4],
    control: AtomicU64,
    _reserved: [u64; 3],
}

const _: () = assert!(core::mem::size_of::<PostedInterruptDesc>() == 64);
const _: () = assert!(core::mem::align_of::<PostedInterruptDesc>() == 64);

/// Outstanding notification: bit 256 of the descriptor = bit 0 of the control word.
pub const ON: u64 = 1 << 0;
/// Suppress notification: bit 257.
pub const SN: u64 = 1 << 1;
const NV_SHIFT: u32 = 16; // bits 279:272
const NDST_SHIFT: u32 = 32; // bits 319:288

/// How the host APIC addresses the notification destination (NDST format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostApicMode {
    /// NDST = the 32-bit x2APIC ID.
    X2Apic,
    /// NDST bits 15:8 = the 8-bit xAPIC ID.
    XApic,
}

impl Default for PostedInterruptDesc {
    fn default() -> Self {
        Self::new()
    }
}

impl PostedInterruptDesc {
    pub const fn new() -> Self {
        Self { pir: [const { AtomicU64::new(0) }; 4], control: AtomicU64::new(0), _reserved: [0; 3] }
    }

    /// Sets the notification vector and destination (the physical CPU running the vCPU).
    /// Keeps ON and SN.
    pub fn set_notification(&self, nv: u8, host_apic_id: u32, mode: HostApicMode) {
        let ndst = match mode {
            HostApicMode::X2Apic => host_apic_id,
            HostApicMode::XApic => (host_apic_id & 0xff) << 8,
        };
        let fields = ((nv as u64) << NV_SHIFT) | ((ndst as u64) << NDST_SHIFT);
        let mut c = self.control.load(Ordering::Acquire);
        while let Err(now) =
            self.control.compare_exchange_weak(c, (c & (ON | SN)) | fields, Ordering::AcqRel, Ordering::Acquire)
        {
            c = now;
        }
    }

    pub fn control(&self) -> u64 {
        self.control.load(Ordering::Acquire)
    }

    pub fn nv(&self) -> u8 {
        (self.control() >> NV_SHIFT) as u8
    }

    pub fn ndst(&self) -> u32 {
        (self.control() >> NDST_SHIFT) as u32
    }

    pub fn outstanding(&self) -> bool {
        self.control() & ON != 0
    }

    /// Posts `vector` the way IPI virtualization does (SDM Vol. 3C §30.1.6 pseudo-code): set
    /// PIR[vector]; then, if ON and SN are both clear, set ON. Returns whether the caller must
    /// send the notification IPI (NV to NDST).
    pub fn post(&self, vector: u8) -> bool {
        self.pir[(vector / 64) as usize].fetch_or(1 << (vector % 64), Ordering::AcqRel);
        let mut c = self.control.load(Ordering::Acquire);
        loop {
            if c & (ON | SN) != 0 {
                return false;
            }
            match self.control.compare_exchange_weak(c, c | ON, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }

    /// Sets or clears SN (suppress notification).
    pub fn set_suppress(&self, on: bool) {
        if on {
            self.control.fetch_or(SN, Ordering::AcqRel);
        } else {
            self.control.fetch_and(!SN, Ordering::AcqRel);
        }
    }

    /// Sets or clears ON without touching PIR (test support: "ON already set").
    pub fn set_outstanding(&self, on: bool) {
        if on {
            self.control.fetch_or(ON, Ordering::AcqRel);
        } else {
            self.control.fetch_and(!ON, Ordering::AcqRel);
        }
    }

    /// PIR word `i` (vectors 64i..64i+63).
    pub fn pir_word(&self, i: usize) -> u64 {
        self.pir[i & 3].load(Ordering::Acquire)
    }

    /// Takes every posted vector: clears ON, then swaps each PIR word with 0 (the order the
    /// processor uses in posted-interrupt processing, SDM Vol. 3C §30.6, so a vector posted
    /// meanwhile either stays in PIR with ON set again, or is taken now).
    pub fn take(&self) -> [u64; 4] {
        self.control.fetch_and(!ON, Ordering::AcqRel);
        core::array::from_fn(|i| self.pir[i].swap(0, Ordering::AcqRel))
    }

    /// Whether PIR has any vector pending.
    pub fn pir_pending(&self) -> bool {
        self.pir.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }
}

/// A PID-pointer table entry (SDM Vol. 3C §30.1.6): the descriptor's physical address with
/// bit 0 (valid) set; bits 5:1 must be 0, so the address must be 64-byte aligned.
pub fn pid_table_entry(pid_pa: u64) -> Option<u64> {
    (pid_pa.is_multiple_of(64) && pid_pa != 0).then_some(pid_pa | 1)
}

/// Fills a PID-pointer table: entry i (virtual APIC ID i) points at `pids[i]`; the entry of
/// `invalid` (a debugging option) and every entry past the vCPUs stay 0, so IPIs to them take
/// the exit path. Fails if a descriptor address cannot be an entry.
pub fn build_pid_table(pids: &[u64], invalid: Option<usize>, table: &mut [u64]) -> Result<(), u64> {
    table.fill(0);
    for (i, &pa) in pids.iter().enumerate() {
        if invalid != Some(i) {
            table[i] = pid_table_entry(pa).ok_or(pa)?;
        }
    }
    Ok(())
}

/// LAST_PID_POINTER_INDEX for a VM of `vcpus` vCPUs (entries 0..vcpus−1, indexed by virtual
/// APIC ID).
pub fn last_pid_pointer_index(vcpus: u32) -> u16 {
    (vcpus.max(1) - 1) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(d: &PostedInterruptDesc) -> [u64; 8] {
        // SAFETY (test): the descriptor is 64 bytes of plain integers.
        unsafe { core::ptr::read(d as *const _ as *const [u64; 8]) }
    }

    #[test]
    fn layout_matches_the_sdm() {
        let d = PostedInterruptDesc::new();
        d.set_notification(0xf2, 0x1234_5678, HostApicMode::X2Apic);
        assert!(d.post(0x41));
        let w = words(&d);
        assert_eq!(w[1], 1 << 1, "PIR bit 65 = vector 0x41");
        assert_eq!(w[4] & ON, ON, "ON is bit 256");
        assert_eq!((w[4] >> 16) & 0xff, 0xf2, "NV is bits 279:272");
        assert_eq!(w[4] >> 32, 0x1234_5678, "NDST is bits 319:288");
        d.set_notification(0xf2, 3, HostApicMode::XApic);
        assert_eq!(d.ndst(), 0x300, "xAPIC NDST: ID in bits 15:8");
        assert!(d.outstanding(), "changing NV/NDST keeps ON");
    }

    #[test]
    fn only_the_first_post_notifies() {
        let d = PostedInterruptDesc::new();
        assert!(d.post(0x30));
        assert!(!d.post(0x31), "ON already set: no second notification");
        let pir = d.take();
        assert_eq!(pir[0], (1 << 0x30) | (1 << 0x31));
        assert!(!d.outstanding() && !d.pir_pending());
        assert!(d.post(0xff), "after take, the next post notifies again");
        assert_eq!(d.take()[3], 1 << 63);
    }

    #[test]
    fn suppress_notification_still_records_the_vector() {
        let d = PostedInterruptDesc::new();
        d.set_suppress(true);
        assert!(!d.post(0x50));
        assert!(d.pir_pending());
        assert!(!d.outstanding());
        d.set_suppress(false);
        assert!(d.post(0x51));
        assert_eq!(d.pir_word(1), (1 << (0x50 - 64)) | (1 << (0x51 - 64)));
        d.take();
        d.set_outstanding(true);
        assert!(!d.post(0x60), "ON already set: no notification");
        d.set_outstanding(false);
        assert!(d.post(0x61));
    }

    #[test]
    fn concurrent_posts_lose_nothing() {
        let d = std::sync::Arc::new(PostedInterruptDesc::new());
        let notified = std::sync::Arc::new(AtomicU64::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|t| {
                let (d, n) = (d.clone(), notified.clone());
                std::thread::spawn(move || {
                    for v in 0..64u32 {
                        if d.post((t * 64 + v) as u8) {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(d.take(), [u64::MAX; 4]);
        assert_eq!(notified.load(Ordering::Relaxed), 1, "one notification until ON is cleared");
    }

    #[test]
    fn table_builder() {
        let mut t = [0xdead_u64; 8];
        build_pid_table(&[0x1000, 0x2000, 0x3040], Some(1), &mut t).unwrap();
        assert_eq!(t, [0x1001, 0, 0x3041, 0, 0, 0, 0, 0]);
        assert_eq!(build_pid_table(&[0x1008], None, &mut t), Err(0x1008));
    }

    #[test]
    fn table_entries() {
        assert_eq!(pid_table_entry(0x12_3440), Some(0x12_3441));
        assert_eq!(pid_table_entry(0x12_3448), None, "bits 5:1 would be set");
        assert_eq!(pid_table_entry(0), None);
        assert_eq!(last_pid_pointer_index(4), 3);
        assert_eq!(last_pid_pointer_index(1), 0);
    }
}
