//! The guest ABI: how a guest starts, what it finds in memory, and its hypercalls. Shared by the
//! hypervisor and the guest runtime (`guest-tests`), so both sides use one definition.
//! Documented for people in docs/guest-abi.md.

/// Guests are linked to run at this guest-physical (= virtual, identity-mapped) address.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Guest page tables: PML4, PDPT and four page directories (identity map of 0..4 GiB).
pub const PML4_GPA: u64 = 0x1000;
pub const PDPT_GPA: u64 = 0x2000;
pub const PD_GPA: u64 = 0x3000;
/// Guest GDT: null, 64-bit code (selector 0x08), data (0x10).
pub const GDT_GPA: u64 = 0x7000;
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
/// The boot-info page (RSI at entry).
pub const BOOT_INFO_GPA: u64 = 0x8000;
/// Each vCPU's stack: vCPU i's stack ends at `ram_size - i * STACK_SIZE`.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Everything below this is the hypervisor-built boot area.
pub const BOOT_AREA_END: u64 = 0x10000;

pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"IPIVHVBI");
pub const BOOT_INFO_VERSION: u32 = 3;
pub const MAX_VCPUS: usize = 64;

/// The boot-info page (at [`BOOT_INFO_GPA`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    pub vcpu_count: u32,
    pub ram_size: u64,
    /// The TSC frequency the hypervisor measured (Hz); under Bochs the TSC counts instructions.
    pub tsc_hz: u64,
    /// Virtual APIC ID of each vCPU (= its index).
    pub apic_ids: [u32; MAX_VCPUS],
    /// The VM's name, NUL-padded.
    pub vm_name: [u8; 32],
    /// The APIC mode the runtime switches to at start: 0 xAPIC, 1 x2APIC.
    pub apic_mode: u32,
    /// 1 if IPI virtualization is on for this VM.
    pub ipiv: u32,
    /// 1 if HLT passes through (halts in the guest), 0 if it exits.
    pub hlt_passthrough: u32,
    /// Physical CPU each vCPU is pinned to (for reports).
    pub pinned_cpus: [u32; MAX_VCPUS],
    /// The manifest's `args` for the guest program, NUL-padded (e.g. `iterations=1000`).
    pub args: [u8; 64],
}

impl BootInfo {
    /// The `args` string.
    pub fn args(&self) -> &str {
        let n = self.args.iter().position(|&b| b == 0).unwrap_or(self.args.len());
        core::str::from_utf8(&self.args[..n]).unwrap_or("")
    }

    /// The value of `key=value` in `args`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args().split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);
// The layout docs/guest-abi.md documents.
const _: () = assert!(core::mem::offset_of!(BootInfo, apic_ids) == 32);
const _: () = assert!(core::mem::offset_of!(BootInfo, apic_mode) == 320);
const _: () = assert!(core::mem::offset_of!(BootInfo, pinned_cpus) == 332);
const _: () = assert!(core::mem::offset_of!(BootInfo, args) == 588);

pub const fn stack_top(ram_size: u64, vcpu: u32) -> u64 {
    ram_size - vcpu as u64 * STACK_SIZE
}

/// Hypercalls: `VMCALL` with the number in RAX and arguments in RDI, RSI; the result in RAX
/// (negative = error).
pub mod hypercall {
    /// Print `len` bytes at guest-physical `ptr` on the host console, prefixed `[vm/vcpu]`.
    pub const PRINT: u64 = 1;
    /// Attach the JSON value at `ptr`, `len` bytes, to the VM's `reports` in HV-SUMMARY.
    pub const REPORT: u64 = 2;
    /// End this vCPU: code 0 = passed, anything else = failed (ends the VM). Does not return.
    pub const EXIT: u64 = 3;
    /// Copy this vCPU's exit counters (one u64 per basic exit reason) to `ptr`, at most `count`
    /// of them; returns how many were written.
    pub const EXIT_COUNTERS: u64 = 4;

    /// Test support for the IPIv rules (docs/guest-abi.md): `ptr` = target vCPU index, `count`
    /// = operation on its posted-interrupt descriptor (the PID_* constants); returns the
    /// control word or PIR word read, or 0. Only for VMs whose manifest sets
    /// `test_hooks = true`; others get E_NOSYS.
    pub const PID_OP: u64 = 5;

    pub const PID_READ_CONTROL: u64 = 0;
    pub const PID_SET_SN: u64 = 1;
    pub const PID_CLEAR_SN: u64 = 2;
    pub const PID_SET_ON: u64 = 3;
    pub const PID_CLEAR_ON: u64 = 4;
    /// 5..=8: read PIR word 0..3.
    pub const PID_READ_PIR0: u64 = 5;

    /// Most bytes PRINT and REPORT take at once.
    pub const MAX_LEN: u64 = 4096;

    /// The caller is not at CPL 0: hypercalls belong to the guest's kernel.
    pub const E_PERM: i64 = -1;
    pub const E_FAULT: i64 = -14;
    pub const E_INVAL: i64 = -22;
    pub const E_NOSYS: i64 = -38;
}

/// The guest's local APIC, xAPIC mode: the MMIO page (virtualized by the APIC-access page).
pub const APIC_MMIO_GPA: u64 = 0xfee0_0000;

/// The hypervisor's CPUID signature at leaf 0x4000_0000 (EBX, ECX, EDX).
pub const CPUID_SIGNATURE: &[u8; 12] = b"IPIvHV-Rust!";
