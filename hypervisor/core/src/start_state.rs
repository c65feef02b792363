//! The register state a vCPU starts in: the multiboot hand-off or Linux's 64-bit entry on the
//! bootstrap processor, and real mode at a SIPI's vector on the others (after INIT). The kernel writes it to the VMCS
//! guest-state area; the values here follow the rules VM entry checks for an unrestricted guest
//! (SDM Vol. 3C §27.3.1.2).

use crate::multiboot::abi::BOOTLOADER_MAGIC;

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
    /// Execute/read code, 64-bit (L), 4 KiB granularity.
    pub const CODE64: u32 = 0xa09b;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartState {
    pub cs: Segment,
    /// DS, ES, FS, GS and SS.
    pub data: Segment,
    /// CR0 as the guest asked for it; the kernel adds the bits VMX fixes (NE).
    pub cr0: u64,
    pub cr3: u64,
    /// CR4 as the guest asked for it; the kernel adds the bits VMX fixes (VMXE, hidden).
    pub cr4: u64,
    pub efer: u64,
    /// GDTR base and limit (IDTR is base 0, limit 0xFFFF in every start).
    pub gdt: (u64, u16),
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rsi: u64,
}

impl StartState {
    /// IA-32e mode (EFER.LMA): VM entry must then set "IA-32e mode guest".
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// What INIT leaves in the GDTR (SDM Vol. 3A Table 9-1).
const GDT_AFTER_INIT: (u64, u16) = (0, 0xffff);

/// The multiboot hand-off (spec §3.2): 32-bit protected mode without paging, flat 4 GiB CS
/// and data segments, EAX the boot-loader magic, EBX the information structure, interrupts off.
pub fn multiboot(entry: u32, info: u32) -> StartState {
    StartState {
        cs: Segment { selector: 0x08, base: 0, limit: 0xffff_ffff, access: access::CODE32 },
        data: Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, access: access::DATA32 },
        cr0: CR0_PE | CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        gdt: GDT_AFTER_INIT,
        rip: entry as u64,
        rax: BOOTLOADER_MAGIC as u64,
        rbx: info as u64,
        rdx: 0,
        rsi: 0,
    }
}

/// Linux's 64-bit entry (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode on
/// identity page tables at `cr3`, a GDT with `__BOOT_CS` (`code`) and `__BOOT_DS` (`data`),
/// interrupts off, RSI = the zero page.
pub fn linux64(entry: u64, zero_page: u64, cr3: u64, gdt: (u64, u16), code: u16, data: u16) -> StartState {
    StartState {
        cs: Segment { selector: code, base: 0, limit: 0xffff_ffff, access: access::CODE64 },
        data: Segment { selector: data, base: 0, limit: 0xffff_ffff, access: access::DATA32 },
        cr0: CR0_PE | CR0_ET | CR0_PG,
        cr3,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        gdt,
        rip: entry,
        rax: 0,
        rbx: 0,
        rdx: 0,
        rsi: zero_page,
    }
}

/// CR0's cache-disable and not-write-through flags.
pub const CR0_CD_NW: u64 = (1 << 30) | (1 << 29);
/// CR0 after power-up or RESET (SDM Vol. 3A Table 9-1): CD, NW and ET.
pub const CR0_AT_RESET: u64 = CR0_CD_NW | CR0_ET;

/// A processor leaving wait-for-SIPI (SDM Vol. 3A §9.4.4, Table 9-1 for the INIT values): real
/// mode, CS = vector << 8 with base vector << 12, IP 0, EDX the processor signature
/// (CPUID.1:EAX). CR0 is 60000010H after power-up; INIT leaves CD and NW as they were (Table
/// 9-1, note 2), so `cd_nw` carries them: `CR0_CD_NW` for a processor that never ran.
pub fn after_sipi(vector: u8, signature: u32, cd_nw: u64) -> StartState {
    StartState {
        cs: Segment {
            selector: (vector as u16) << 8,
            base: (vector as u64) << 12,
            limit: 0xffff,
            access: access::CODE16,
        },
        data: Segment { selector: 0, base: 0, limit: 0xffff, access: access::DATA16 },
        cr0: CR0_ET | (cd_nw & CR0_CD_NW),
        cr3: 0,
        cr4: 0,
        efer: 0,
        gdt: GDT_AFTER_INIT,
        rip: 0,
        rax: 0,
        rbx: 0,
        rdx: signature as u64,
        rsi: 0,
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
    fn linux_enters_in_long_mode_with_its_boot_selectors() {
        let s = linux64(0x100_0200, 0x9000, 0x1000, (0x7000, 31), 0x10, 0x18);
        assert!(s.long_mode());
        assert_eq!((s.rip, s.rsi, s.cr3, s.gdt), (0x100_0200, 0x9000, 0x1000, (0x7000, 31)));
        assert_eq!((s.cs.selector, s.data.selector), (0x10, 0x18));
        assert_ne!(s.cs.access & (1 << 13), 0, "64-bit code (L)");
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert!(!multiboot(0, 0).long_mode() && !after_sipi(8, 0, 0).long_mode());
    }

    #[test]
    fn sipi_starts_real_mode_at_vector_pages() {
        let s = after_sipi(0x08, 0x806f8, CR0_CD_NW);
        assert_eq!(s.cr0, 0x6000_0010, "Table 9-1: CD, NW and ET after power-up");
        assert_eq!(after_sipi(0x08, 0, 0).cr0, 0x10, "INIT kept CD and NW clear");
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x0800, 0x8000, 0));
        assert_eq!(s.cs.base, (s.cs.selector as u64) << 4, "real-mode base = selector * 16");
        assert_eq!(s.cr0 & 1, 0, "real mode");
        assert_eq!(s.rdx, 0x806f8);
        let top = after_sipi(0xff, 0, 0);
        assert_eq!((top.cs.selector, top.cs.base), (0xff00, 0xf_f000));
    }
}
