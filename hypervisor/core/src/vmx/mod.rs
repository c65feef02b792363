//! VMX: capability MSRs, control negotiation, VMCS field encodings, exit reasons and errors.

pub mod caps;
pub mod controls;
pub mod entry_checks;
pub mod events;
pub mod exit_reason;
pub mod fields;
#[cfg(test)]
pub mod fixtures;
pub mod instruction_error;
pub mod interrupt_path;
pub mod msr;
pub mod path_kind;
