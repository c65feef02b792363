//! Every host interrupt vector this kernel uses, in one table, so no two uses collide and no
//! module has to reach into another for a number. Guests never see these: their interrupts are
//! virtual (docs/ipiv.md).

/// The native IPI round trip's vector (`bench`).
pub const NATIVE_BENCH: u8 = 0xe0;
/// The host local APIC timer (TSC-deadline mode) when it carries a guest's APIC timer
/// (`timer = host-apic`): an external-interrupt exit at the guest timer's deadline.
pub const GUEST_TIMER: u8 = 0xf0;
/// Pulls a CPU out of its guest (an external-interrupt exit) or out of HLT in the hypervisor,
/// so it looks at its VM again: a stopping VM, an NMI, INIT or SIPI for its vCPU. Also the
/// vector of the host APIC timer that ends such waits.
pub const KICK: u8 = 0xf1;
/// Posted-interrupt notifications (the VMCS's POSTED_INTR_NV, SDM Vol. 3C §30.6).
pub const POSTED_INTR: u8 = 0xf2;
/// The local APIC's spurious-interrupt vector (SVR).
pub const SPURIOUS: u8 = 0xff;

const _: () = assert!(NATIVE_BENCH < GUEST_TIMER && GUEST_TIMER < KICK && KICK < POSTED_INTR && POSTED_INTR < SPURIOUS);
// Vectors 0-31 are exceptions; the APIC cannot deliver vectors below 16 (SDM Vol. 3A §12.5.2).
const _: () = assert!(NATIVE_BENCH >= 32);
