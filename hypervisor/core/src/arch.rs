//! Architectural numbers the hypervisor and its models share, each written once: exception
//! vectors (SDM Vol. 3A §7.3, Table 7-1) and RFLAGS bits (Vol. 1 §3.4.3).

/// Exception vectors.
pub mod vector {
    /// Debug exception (#DB).
    pub const DB: u8 = 1;
    /// Invalid opcode (#UD).
    pub const UD: u8 = 6;
    /// Invalid TSS (#TS).
    pub const TS: u8 = 10;
    /// Segment not present (#NP).
    pub const NP: u8 = 11;
    /// Stack-segment fault (#SS).
    pub const SS: u8 = 12;
    /// General protection (#GP).
    pub const GP: u8 = 13;
    /// Page fault (#PF).
    pub const PF: u8 = 14;
}

/// RFLAGS.IF: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
