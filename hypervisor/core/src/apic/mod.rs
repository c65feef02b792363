//! Virtual local APIC logic: ICR decoding and IPI destinations, posted-interrupt descriptors,
//! the PID-pointer table, the virtual-APIC page layout, and the MSR-bitmap policy for x2APIC
//! virtualization (SDM Vol. 3C ch. 30 "APIC Virtualization and Virtual Interrupts").

pub mod base;
pub mod icr;
pub mod injection;
pub mod pid;
pub mod regs;
pub mod startup;
pub mod timer;
pub mod vapic;
pub mod x2apic_msr;
