//! The register state a vCPU starts in: the multiboot hand-off on the bootstrap processor, and
//! real mode at a SIPI's vector on the others (after INIT). The kernel writes it to the VMCS
//! guest-state area; the values here follow the rules VM entry checks for an unrestricted guest
//! (SDM Vol. 3C §27.3.1.2).

use crate::multiboot::BOOTLOADER_MAGIC;

/// A segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// VMX access-rights format (SDM Vol. 3C §25.4.1, Table 25-2).
    pub access: u32,
}

/// Access rights: present, DPL 0, code or data, accessed.
pub mod access {
    /// Execute/read code, 32-bit (D), 4 KiB granularity.
    pub const CODE32: u32 = 0xc09b;
    /// Read/write data, 32-bit (B), 4 KiB granularity.
    pub const DATA32: u32 = 0xc093;
    /// Execute/read code, 16-bit, byte granularity (real mode).
    pub const CODE16: u32 = 0x009b;
    /// Read/write data, 16-bit, byte granularity (real mode).
    pub const DATA16: u32 = 0x0093;
    /// Busy 32-bit TSS: the type VM entry wants in TR outside IA-32e mode.
    pub const TSS32_BUSY: u32 = 0x008b;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartState {
    pub cs: Segment,
    /// DS, ES, FS, GS and SS.
    pub data: Segment,
    /// CR0 as the guest asked for it; the kernel adds the bits VMX fixes (NE).
    pub cr0: u64,
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rdx: u64,
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;

/// The multiboot hand-off (spec §3.2): 32-bit protected mode without paging, flat 4 GiB CS
/// and data segments, EAX the boot-loader magic, EBX the information structure, interrupts off.
pub fn multiboot(entry: u32, info: u32) -> StartState {
    StartState {
        cs: Segment { selector: 0x08, base: 0, limit: 0xffff_ffff, access: access::CODE32 },
        data: Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, access: access::DATA32 },
        cr0: CR0_PE | CR0_ET,
        rip: entry as u64,
        rax: BOOTLOADER_MAGIC as u64,
        rbx: info as u64,
        rdx: 0,
    }
}

/// A processor leaving wait-for-SIPI (SDM Vol. 3A §9.4.4, Table 9-1 for the INIT values): real
/// mode, CS = vector << 8 with base vector << 12, IP 0, EDX the processor signature
/// (CPUID.1:EAX).
pub fn after_sipi(vector: u8, signature: u32) -> StartState {
    StartState {
        cs: Segment {
            selector: (vector as u16) << 8,
            base: (vector as u64) << 12,
            limit: 0xffff,
            access: access::CODE16,
        },
        data: Segment { selector: 0, base: 0, limit: 0xffff, access: access::DATA16 },
        cr0: CR0_ET,
        rip: 0,
        rax: 0,
        rbx: 0,
        rdx: signature as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiboot_hand_off_is_flat_32_bit_protected_mode() {
        let s = multiboot(0x20_1000, 0x20_9000);
        assert_eq!((s.rip, s.rax, s.rbx), (0x20_1000, 0x2bad_b002, 0x20_9000));
        assert_eq!(s.cr0 & 1, 1, "PE");
        assert_eq!(s.cr0 & (1 << 31), 0, "no paging");
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!(s.cs.access & (1 << 14), 1 << 14, "32-bit code");
        assert_eq!(s.cs.access & (1 << 13), 0, "not 64-bit code");
    }

    #[test]
    fn sipi_starts_real_mode_at_vector_pages() {
        let s = after_sipi(0x08, 0x806f8);
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x0800, 0x8000, 0));
        assert_eq!(s.cs.base, (s.cs.selector as u64) << 4, "real-mode base = selector * 16");
        assert_eq!(s.cr0 & 1, 0, "real mode");
        assert_eq!(s.rdx, 0x806f8);
        let top = after_sipi(0xff, 0);
        assert_eq!((top.cs.selector, top.cs.base), (0xff00, 0xf_f000));
    }
}
