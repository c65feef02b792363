//! Hypercall abuse: every number with buffers outside RAM, wrapping around, too long; unknown
//! numbers; PID_OP without `test_hooks`; and a flood of cheap hypercalls. Each must return its
//! error and change nothing; the VM then passes.
#![no_std]
#![no_main]

use guest_tests::hypercall::raw;
use guest_tests::{Platform, entry, report};
use hvcore::guest_abi::hypercall::*;

entry!(main);

fn main(me: u32, info: &'static Platform) {
    let ram = info.ram_size;
    for nr in [PRINT, REPORT] {
        assert_eq!(raw(nr, ram, 1), E_FAULT, "{nr}: buffer at the end of RAM");
        assert_eq!(raw(nr, ram - 1, 2), E_FAULT, "{nr}: buffer across the end of RAM");
        assert_eq!(raw(nr, u64::MAX, 2), E_FAULT, "{nr}: wrapping buffer");
        assert_eq!(raw(nr, 0xfee0_0000, 4), E_FAULT, "{nr}: the APIC page is not RAM");
        assert_eq!(raw(nr, 0x1000, MAX_LEN + 1), E_INVAL, "{nr}: longer than MAX_LEN");
        assert_eq!(raw(nr, 0x1000, u64::MAX), E_INVAL, "{nr}: huge length");
    }
    assert_eq!(raw(PRINT, 0x1000, 0), 0, "an empty PRINT is fine");
    assert_eq!(raw(EXIT_COUNTERS, ram - 8, 2), E_FAULT);
    assert_eq!(raw(EXIT_COUNTERS, u64::MAX - 7, 1), E_FAULT);
    assert_eq!(raw(EXIT_COUNTERS, 0x1000, 0), 0);
    for nr in [0, 6, 7, 99, 1 << 32, u64::MAX] {
        assert_eq!(raw(nr, 0, 0), E_NOSYS, "unknown hypercall {nr}");
    }
    for op in 0..10 {
        assert_eq!(raw(PID_OP, me as u64, op), E_NOSYS, "PID_OP without test_hooks (op {op})");
    }
    assert_eq!(raw(PID_OP, u64::MAX, 0), E_NOSYS);
    let flood = 20_000;
    for i in 0..flood {
        assert_eq!(raw(99, i, i), E_NOSYS);
    }
    let ring3 = if me == 0 { from_ring3() } else { [0; 3] };
    if me == 0 {
        assert_eq!(ring3, [E_PERM; 3], "PRINT, REPORT and EXIT from ring 3 must return E_PERM");
    }
    report!(
        r#"{{"test":"hostile-hypercall","vcpu":{me},"flood":{flood},"ring3":[{},{},{}]}}"#,
        ring3[0],
        ring3[1],
        ring3[2]
    );
}

/// GDT for SYSCALL/SYSRET: the runtime's kernel code (0x08) and data (0x10) unchanged, then
/// STAR's user base 0x18: user data at 0x20, 64-bit user code at 0x28 (SDM Vol. 2B SYSRET).
static GDT: [u64; 6] =
    [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0x00cf_f200_0000_ffff, 0x00af_fa00_0000_ffff];

/// Drops to ring 3 with SYSRET, makes PRINT, REPORT and EXIT hypercalls there, and comes back
/// with SYSCALL; returns what each returned. Interrupts stay off in ring 3 (this runtime has no
/// TSS for a ring change through the IDT).
fn from_ring3() -> [i64; 3] {
    // The runtime's identity map: PML4, then the PDPT and the four page directories (boot.rs).
    let pml4 = guest_tests::boot::page_table_root();
    // Every page user-accessible: the identity map's PML4 entry, its 4 PDPT entries and their
    // 2-MByte PD entries get U/S (bit 2). The guest owns these tables.
    let set_user = |gpa: u64, n: u64| {
        for i in 0..n {
            let e = (gpa + i * 8) as *mut u64;
            // SAFETY: the boot page tables are identity-mapped guest RAM owned by this vCPU.
            unsafe { e.write_volatile(e.read_volatile() | 4) };
        }
    };
    set_user(pml4, 1);
    set_user(pml4 + 0x1000, 4);
    set_user(pml4 + 0x2000, 4 * 512);
    let gdtr = (core::mem::size_of_val(&GDT) as u16 - 1, GDT.as_ptr() as u64);
    let mut pointer = [0u8; 10];
    pointer[..2].copy_from_slice(&gdtr.0.to_le_bytes());
    pointer[2..].copy_from_slice(&gdtr.1.to_le_bytes());
    let msg = b"printed from ring 3";
    let (print, report, exit): (i64, i64, i64);
    // SAFETY: the GDT keeps the selectors in use; EFER.SCE, STAR, LSTAR and FMASK set up
    // SYSCALL/SYSRET; CR3 is reloaded after the page-table change. Ring 3 runs with IF = 0 on
    // the same stack, makes three VMCALLs and returns by SYSCALL to the label after it.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "mov rax, cr3",
            "mov cr3, rax",
            "cli",
            // EFER.SCE
            "mov ecx, 0xc0000080",
            "rdmsr",
            "or eax, 1",
            "wrmsr",
            // STAR: kernel CS 0x08 (SS 0x10), user base 0x18 (SS 0x20|3, CS 0x28|3)
            "mov ecx, 0xc0000081",
            "xor eax, eax",
            "mov edx, 0x00180008",
            "wrmsr",
            "mov ecx, 0xc0000082",
            "lea rax, [rip + 3f]",
            "mov rdx, rax",
            "shr rdx, 32",
            "wrmsr",
            "mov ecx, 0xc0000084",
            "mov eax, 0x200",
            "xor edx, edx",
            "wrmsr",
            "mov r15, rsp",
            "lea rcx, [rip + 2f]",
            "mov r11, 0x2",
            "sysretq",
            "2:",
            "mov eax, 1",
            "mov rdi, {msg}",
            "mov esi, {len}",
            "vmcall",
            "mov r12, rax",
            "mov eax, 2",
            "mov rdi, {msg}",
            "mov esi, 2",
            "vmcall",
            "mov r13, rax",
            "mov eax, 3",
            "xor edi, edi",
            "vmcall",
            "mov r14, rax",
            "syscall",
            "3:",
            "mov rsp, r15",
            ptr = in(reg) pointer.as_ptr(),
            msg = in(reg) msg.as_ptr(),
            len = const 19,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r11") _, out("r12") print, out("r13") report, out("r14") exit, out("r15") _,
        )
    };
    [print, report, exit]
}
