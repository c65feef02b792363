//! Building a guest's boot area inside its RAM: identity page tables for the first 4 GiB (2 MiB
//! pages), a GDT and the boot-info page; and the initial register state of each vCPU. RAM is a
//! byte slice here, so the whole thing is host-tested.

use crate::guest_abi::*;

/// Register and descriptor-table state a vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStart {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
}

/// 64-bit code: P, DPL 0, S, execute/read, L (SDM Vol. 3A §3.4.5).
pub const GDT_CODE64: u64 = 0x00af_9a00_0000_ffff;
/// Data: P, DPL 0, S, read/write, G, B.
pub const GDT_DATA: u64 = 0x00cf_9200_0000_ffff;

fn put_u64(ram: &mut [u8], gpa: u64, v: u64) {
    ram[gpa as usize..gpa as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the boot area into `ram` (the whole guest RAM, guest-physical 0..len).
pub fn build(ram: &mut [u8], info: &BootInfo) {
    assert!(ram.len() as u64 >= BOOT_AREA_END);
    ram[..BOOT_AREA_END as usize].fill(0);
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    put_u64(ram, PML4_GPA, PDPT_GPA | P_RW);
    for i in 0..4u64 {
        let pd = PD_GPA + i * 0x1000;
        put_u64(ram, PDPT_GPA + i * 8, pd | P_RW);
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            put_u64(ram, pd + j * 8, addr | P_RW | PS);
        }
    }
    put_u64(ram, GDT_GPA + CODE_SELECTOR as u64, GDT_CODE64);
    put_u64(ram, GDT_GPA + DATA_SELECTOR as u64, GDT_DATA);
    // SAFETY: BootInfo is plain old data (repr(C), integers only) and fits the boot area.
    let bytes =
        unsafe { core::slice::from_raw_parts(info as *const BootInfo as *const u8, core::mem::size_of::<BootInfo>()) };
    ram[BOOT_INFO_GPA as usize..BOOT_INFO_GPA as usize + bytes.len()].copy_from_slice(bytes);
}

/// Interrupt set-up a VM's boot info reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct InterruptInfo<'a> {
    pub x2apic: bool,
    pub ipiv: bool,
    pub hlt_passthrough: bool,
    pub pinned_cpus: &'a [u32],
    /// The manifest's `args` (at most 63 bytes kept).
    pub args: &'a str,
}

/// The boot info for a VM.
pub fn boot_info(name: &str, vcpus: u32, ram_size: u64, tsc_hz: u64, irq: InterruptInfo<'_>) -> BootInfo {
    let mut apic_ids = [0u32; MAX_VCPUS];
    for (i, id) in apic_ids.iter_mut().enumerate().take(vcpus as usize) {
        *id = i as u32;
    }
    let mut vm_name = [0u8; 32];
    let n = name.len().min(32);
    vm_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut pinned_cpus = [0u32; MAX_VCPUS];
    for (p, c) in pinned_cpus.iter_mut().zip(irq.pinned_cpus) {
        *p = *c;
    }
    BootInfo {
        magic: BOOT_INFO_MAGIC,
        version: BOOT_INFO_VERSION,
        vcpu_count: vcpus,
        ram_size,
        tsc_hz,
        apic_ids,
        vm_name,
        apic_mode: irq.x2apic as u32,
        ipiv: irq.ipiv as u32,
        hlt_passthrough: irq.hlt_passthrough as u32,
        pinned_cpus,
        args: {
            let mut a = [0u8; 64];
            let n = irq.args.len().min(63);
            a[..n].copy_from_slice(&irq.args.as_bytes()[..n]);
            a
        },
    }
}

/// Where vCPU `index` starts.
pub fn vcpu_start(entry: u64, ram_size: u64, index: u32) -> VcpuStart {
    VcpuStart {
        rip: entry,
        rsp: stack_top(ram_size, index),
        rdi: index as u64,
        rsi: BOOT_INFO_GPA,
        cr3: PML4_GPA,
        gdt_base: GDT_GPA,
        gdt_limit: 3 * 8 - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn u64_at(ram: &[u8], gpa: u64) -> u64 {
        u64::from_le_bytes(ram[gpa as usize..gpa as usize + 8].try_into().unwrap())
    }

    /// Walks the guest's 4-level tables like the CPU does.
    fn translate(ram: &[u8], va: u64) -> Option<u64> {
        let pml4e = u64_at(ram, PML4_GPA + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = u64_at(ram, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = u64_at(ram, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & 1 == 0 || pde & (1 << 7) == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn identity_map_covers_4_gib_and_nothing_more() {
        let mut ram = vec![0xaau8; 16 << 20];
        build(&mut ram, &boot_info("t", 2, 16 << 20, 1000, InterruptInfo::default()));
        for va in [0u64, IMAGE_BASE + 0x1234, (16 << 20) - 8, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&ram, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&ram, 1 << 32), None);
    }

    #[test]
    fn gdt_and_boot_info_are_in_place() {
        let mut ram = vec![0u8; 8 << 20];
        let irq = InterruptInfo {
            x2apic: true,
            ipiv: false,
            hlt_passthrough: true,
            pinned_cpus: &[1, 2, 3],
            args: "iterations=10 target=halt",
        };
        build(&mut ram, &boot_info("hello-a", 3, 8 << 20, 2_000_000, irq));
        assert_eq!(u64_at(&ram, GDT_GPA), 0);
        assert_eq!(u64_at(&ram, GDT_GPA + 8), GDT_CODE64);
        assert_eq!(u64_at(&ram, GDT_GPA + 16), GDT_DATA);
        // SAFETY (test): the page holds a BootInfo written by build.
        let bi = unsafe { &*(ram[BOOT_INFO_GPA as usize..].as_ptr() as *const BootInfo) };
        assert_eq!(bi.magic, BOOT_INFO_MAGIC);
        assert_eq!((bi.vcpu_count, bi.ram_size, bi.tsc_hz), (3, 8 << 20, 2_000_000));
        assert_eq!(&bi.apic_ids[..4], &[0, 1, 2, 0]);
        assert_eq!(&bi.vm_name[..8], b"hello-a\0");
        assert_eq!((bi.apic_mode, bi.ipiv, bi.hlt_passthrough), (1, 0, 1));
        assert_eq!(&bi.pinned_cpus[..4], &[1, 2, 3, 0]);
        assert_eq!(bi.args(), "iterations=10 target=halt");
        assert_eq!((bi.arg("iterations"), bi.arg("target"), bi.arg("iter")), (Some("10"), Some("halt"), None));
    }

    #[test]
    fn vcpus_get_their_own_stacks_and_index() {
        let a = vcpu_start(0x20_1000, 16 << 20, 0);
        let b = vcpu_start(0x20_1000, 16 << 20, 1);
        assert_eq!((a.rsp, b.rsp), (16 << 20, (16 << 20) - STACK_SIZE));
        assert_eq!((a.rdi, b.rdi, a.rsi), (0, 1, BOOT_INFO_GPA));
        assert_eq!(a.cr3, PML4_GPA);
    }
}
