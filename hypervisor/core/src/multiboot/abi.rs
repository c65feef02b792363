//! The specification's numbers: magic values, header and information flags, the memory map
//! the hypervisor gives a guest. Shared with the test kernels, which read the structure.

/// In the kernel image's header (spec §3.1.1).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// In EAX when the kernel starts (spec §3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie, 4-byte aligned, in the first 8 KiB of the file.
pub const HEADER_SEARCH: usize = 8192;

/// Header flags (spec §3.1.2). Bits 0-15 are requirements: a loader that does not know one must
/// refuse the image.
pub mod flags {
    pub const PAGE_ALIGN_MODULES: u32 = 1 << 0;
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// Video mode table wanted. Like QEMU, no framebuffer is offered and the kernel boots anyway.
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The address fields are valid: load by them, not by the ELF headers ("a.out kludge").
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    pub const KNOWN_REQUIREMENTS: u32 = PAGE_ALIGN_MODULES | MEMORY_INFO | VIDEO_MODE;
}

/// Information-structure flags (spec §3.3).
pub mod info_flags {
    pub const MEMORY: u32 = 1 << 0;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODULES: u32 = 1 << 3;
    pub const MEMORY_MAP: u32 = 1 << 6;
    pub const BOOT_LOADER_NAME: u32 = 1 << 9;
}

/// Guest-physical layout a kernel may load into: conventional memory up to the EBDA, and RAM
/// from 1 MiB up. 0xA0000-0xFFFFF is the legacy hole, where the ACPI tables lie.
pub const LOW_RAM_END: u64 = 0x9_fc00;
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// The boot information's fixed part is 116 bytes (spec §3.3, up to the framebuffer fields).
pub const INFO_SIZE: usize = 116;
pub const BOOT_LOADER_NAME: &str = "ipiv-hv";

/// Memory-map entry types (spec §3.3).
pub const MEMORY_AVAILABLE: u32 = 1;
pub const MEMORY_RESERVED: u32 = 2;

/// The guest's memory map: conventional memory, the legacy hole (reserved, holding the ACPI
/// tables), and RAM from 1 MiB.
pub fn memory_map(ram_size: u64) -> [(u64, u64, u32); 3] {
    [
        (0, LOW_RAM_END, MEMORY_AVAILABLE),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, MEMORY_RESERVED),
        (HIGH_RAM_START, ram_size - HIGH_RAM_START, MEMORY_AVAILABLE),
    ]
}
