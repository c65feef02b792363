//! The interrupt command register: decoding (xAPIC and x2APIC layouts, SDM Vol. 3A §12.6.1 and
//! §12.12.9) and resolving destinations among a VM's vCPUs (physical, logical flat/cluster,
//! x2APIC cluster, shorthands; SDM Vol. 3A §12.6.2, §12.12.10).

/// Delivery mode, ICR bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    Reserved(u8),
}

/// Destination shorthand, ICR bits 19:18.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icr {
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Destination mode bit 11: logical.
    pub logical: bool,
    /// Level bit 14 (assert).
    pub assert: bool,
    /// Trigger mode bit 15: level.
    pub level_triggered: bool,
    pub shorthand: Shorthand,
    /// The destination field: 8 bits in xAPIC mode (ICR_HI[31:24]), 32 in x2APIC mode.
    pub dest: u32,
    pub x2apic: bool,
}

/// x2APIC ICR bits whose being set makes WRMSR raise #GP: 13, 16, 17, 20-31 (SDM Vol. 3A "ICR
/// Operation in x2APIC Mode"). Bit 12 (delivery status in xAPIC mode) is reserved too, but
/// "WRMSR to the ICR MSR ignores bit 12 of its source operand" (Intel x2APIC Architecture
/// Specification §2.4.3, note to Figure 2-5): it is ignored, never a #GP (KVM's
/// `X2APIC_ICR_RESERVED_BITS` leaves it out for the same reason).
pub const X2APIC_ICR_RESERVED: u64 = (1 << 13) | (3 << 16) | (0xfff << 20);

impl Icr {
    fn from_low(low: u32, dest: u32, x2apic: bool) -> Self {
        Self {
            vector: low as u8,
            mode: match (low >> 8) & 7 {
                0 => DeliveryMode::Fixed,
                1 => DeliveryMode::LowestPriority,
                2 => DeliveryMode::Smi,
                4 => DeliveryMode::Nmi,
                5 => DeliveryMode::Init,
                6 => DeliveryMode::StartUp,
                m => DeliveryMode::Reserved(m as u8),
            },
            logical: low & (1 << 11) != 0,
            assert: low & (1 << 14) != 0,
            level_triggered: low & (1 << 15) != 0,
            shorthand: match (low >> 18) & 3 {
                0 => Shorthand::None,
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            dest,
            x2apic,
        }
    }

    /// xAPIC: ICR_LO and ICR_HI as written to the virtual-APIC page (offsets 0x300, 0x310).
    pub fn xapic(low: u32, high: u32) -> Self {
        Self::from_low(low, high >> 24, false)
    }

    /// x2APIC: the 64-bit value of WRMSR 0x830; `None` if reserved bits are set (#GP).
    pub fn x2apic(value: u64) -> Option<Self> {
        if value & X2APIC_ICR_RESERVED != 0 {
            return None;
        }
        Some(Self::from_low(value as u32, (value >> 32) as u32, true))
    }

    /// The physical broadcast destination of this mode.
    pub fn broadcast(&self) -> u32 {
        if self.x2apic { u32::MAX } else { 0xff }
    }
}

/// A vCPU's addressing state, as a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The APIC ID as its APIC holds it now: the 8-bit xAPIC ID in xAPIC mode (software may
    /// write it there, SDM Vol. 3A §12.4.6, and IDs may then alias), the x2APIC ID (the vCPU
    /// index) in x2APIC mode.
    pub apic_id: u32,
    /// xAPIC logical destination register (LDR, bits 31:24 used) and destination format
    /// register (DFR bits 31:28: 0xF flat, 0x0 cluster). Ignored in x2APIC mode, where the
    /// logical ID is derived from the APIC ID.
    pub ldr: u32,
    pub dfr: u32,
}

/// x2APIC logical ID (SDM Vol. 3A §12.12.10.2): cluster = ID[19:4] in bits 31:16,
/// one bit (ID[3:0]) in bits 15:0.
pub const fn x2apic_logical_id(apic_id: u32) -> u32 {
    ((apic_id >> 4) << 16) | (1 << (apic_id & 0xf))
}

/// Does a logical destination `dest` select `t`?
fn logical_match(icr: &Icr, t: &Target) -> bool {
    if icr.x2apic {
        if icr.dest == u32::MAX {
            return true;
        }
        let ldr = x2apic_logical_id(t.apic_id);
        return (icr.dest >> 16) == (ldr >> 16) && (icr.dest & ldr & 0xffff) != 0;
    }
    let dest = icr.dest & 0xff;
    let ldr = t.ldr >> 24;
    if dest == 0xff {
        return true;
    }
    if t.dfr >> 28 == 0xf {
        // Flat model: one bit per APIC.
        dest & ldr != 0
    } else {
        // Cluster model: bits 7:4 cluster (0xF = all clusters), bits 3:0 member bitmap.
        let same_cluster = dest >> 4 == 0xf || dest >> 4 == ldr >> 4;
        same_cluster && (dest & ldr & 0xf) != 0
    }
}

/// Why an IPI is not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Fixed or lowest-priority with a vector below 16: a real APIC flags "send illegal
    /// vector" and delivers nothing (SDM Vol. 3A §12.5.3).
    IllegalVector,
    /// The destination names no vCPU of this VM.
    NoSuchDestination,
    /// SMI or a reserved delivery mode: not supported for guests.
    UnsupportedMode,
}

/// What to do for one ICR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver `vector` to every vCPU in the bitmask `targets` (bit i = vCPU i).
    Fixed {
        vector: u8,
        targets: u64,
    },
    Nmi {
        targets: u64,
    },
    Init {
        targets: u64,
    },
    StartUp {
        vector: u8,
        targets: u64,
    },
    Drop(Dropped),
}

/// The vCPUs selected by `icr`, sent by vCPU `sender`, among `targets` (index = vCPU index;
/// at most 64).
pub fn destinations(icr: &Icr, sender: usize, targets: &[Target]) -> u64 {
    let all = if targets.len() >= 64 { u64::MAX } else { (1u64 << targets.len()) - 1 };
    match icr.shorthand {
        Shorthand::SelfOnly => 1 << sender,
        Shorthand::AllIncludingSelf => all,
        Shorthand::AllExcludingSelf => all & !(1 << sender),
        Shorthand::None if !icr.logical && icr.dest == icr.broadcast() => all,
        // Every APIC whose ID matches takes a physical IPI: xAPIC IDs may alias.
        Shorthand::None if !icr.logical => {
            targets.iter().enumerate().filter(|(_, t)| t.apic_id == icr.dest).fold(0, |m, (i, _)| m | 1 << i)
        }
        Shorthand::None => {
            targets.iter().enumerate().filter(|(_, t)| logical_match(icr, t)).fold(0, |m, (i, _)| m | 1 << i)
        }
    }
}

/// Decides the delivery of one ICR write by vCPU `sender`.
pub fn decide(icr: &Icr, sender: usize, targets: &[Target]) -> Action {
    let set = destinations(icr, sender, targets);
    match icr.mode {
        DeliveryMode::Fixed | DeliveryMode::LowestPriority if icr.vector < 16 => Action::Drop(Dropped::IllegalVector),
        _ if set == 0 => Action::Drop(Dropped::NoSuchDestination),
        DeliveryMode::Fixed => Action::Fixed { vector: icr.vector, targets: set },
        // Arbitration among the set is model-specific; the lowest vCPU index wins here.
        DeliveryMode::LowestPriority => Action::Fixed { vector: icr.vector, targets: set.isolate_lowest_one() },
        DeliveryMode::Nmi => Action::Nmi { targets: set },
        // INIT level de-assert (level-triggered, level 0) has no effect on modern CPUs.
        DeliveryMode::Init if icr.level_triggered && !icr.assert => Action::Drop(Dropped::UnsupportedMode),
        DeliveryMode::Init => Action::Init { targets: set },
        DeliveryMode::StartUp => Action::StartUp { vector: icr.vector, targets: set },
        DeliveryMode::Smi | DeliveryMode::Reserved(_) => Action::Drop(Dropped::UnsupportedMode),
    }
}

/// Whether IPI virtualization covers this ICR write (SDM Vol. 3C §30.1.6): fixed, physical,
/// no shorthand, edge, and (x2APIC) bit 12 clear; everything else is left to the exit path.
pub fn ipiv_covers(icr: &Icr) -> bool {
    icr.mode == DeliveryMode::Fixed && !icr.logical && icr.shorthand == Shorthand::None && !icr.level_triggered
}

#[cfg(test)]
mod tests;
