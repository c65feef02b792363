//! The devices of the PC inside each VM, as pure models behind two buses: the port-I/O bus,
//! where each device gets the accesses to its ports, and the MMIO bus (the I/O APIC at
//! 0xFEC00000). A device answers with a value, or with what the VM must do (print a byte,
//! change an interrupt line, end). [`Pc`] wires the interrupt lines to the I/O APIC, whose
//! messages the kernel delivers into the virtual local APICs; the models never reach into a
//! vCPU. One file per device, each tested against its datasheet or specification.

pub mod bus;
pub mod cmos;
pub mod console_line;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod pc;
pub mod pc_testdev;
pub mod pci_host;
pub mod pic8259;
pub mod pit8254;
pub mod pm_timer;
pub mod uart16550;
