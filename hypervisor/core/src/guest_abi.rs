//! What is particular to this hypervisor in the platform a guest sees: its hypercalls and CPUID
//! signature (a guest boots as on any PC: `multiboot`, ACPI, devices). Shared by the hypervisor
//! and the test kernels (`guest-tests`), so both sides use one definition. Documented for people
//! in docs/platform.md.

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
    /// of them; returns how many were written. After the basic reasons comes one more slot,
    /// [`EXIT_COUNTER_POSTED_NOTIFICATION`].
    pub const EXIT_COUNTERS: u64 = 4;
    /// The slot after the basic exit reasons: external-interrupt exits that carried the
    /// posted-interrupt notification vector on a path where the processor processes posted
    /// interrupts (also counted as external-interrupt exits). Hardware takes none; a nested
    /// KVM with a known bug hands them to its L1 (docs/hardware.md).
    pub const EXIT_COUNTER_POSTED_NOTIFICATION: usize = crate::vmx::exit_reason::COUNT;
    /// How many slots EXIT_COUNTERS fills at most.
    pub const EXIT_COUNTER_SLOTS: usize = EXIT_COUNTER_POSTED_NOTIFICATION + 1;

    /// Test support for the IPIv rules (docs/platform.md): `ptr` = target vCPU index, `count`
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
