//! CR0 and CR4 writes with every bit VMX fixes, as a guest sees them (SDM Vol. 3A §2.5, Vol. 2B
//! "MOV—Move to/from Control Registers", Vol. 3C §25.6.6 on the read shadows):
//! - CR0.NE may be cleared and set; clearing PG in 64-bit mode, NW without CD and bits 63:32
//!   fault whether or not the write also changes NE (a change of NE is completed by the
//!   hypervisor, any other by the processor: both must agree); CD and NW read as the guest
//!   wrote them, whatever the host CPU's are (Linux's cache_disable/cache_enable pair);
//! - CR4.VMXE and SMXE (VMX and SMX are not offered), LA57 where CPUID does not offer it and
//!   reserved bits fault; CR4 reads never show VMXE; CPUID.1:ECX.OSXSAVE follows CR4.OSXSAVE;
//! - leaving IA-32e mode for protected mode without paging and coming back (from a
//!   compatibility-mode segment: clear CR0.PG, then set it again with EFER.LME = 1), once
//!   with NE changed in the same writes (the hypervisor then does what the processor would:
//!   EFER.LMA, the IA-32e mode entry control, the TLB) and once without.
#![no_std]
#![no_main]

use guest_tests::idt::raises_gp;
use guest_tests::{Platform, cpuid, entry, println, report};

entry!(main);

const NE: u64 = 1 << 5;
const NW: u64 = 1 << 29;
const CD: u64 = 1 << 30;
const PG: u64 = 1 << 31;
const LMA: u64 = 1 << 10;

fn cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

fn cr4() -> u64 {
    let v: u64;
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// MOV to CR0 (3 bytes: `0f 22 c0`, RAX); true if it raised #GP.
fn set_cr0(v: u64) -> bool {
    // SAFETY: the values written keep paging and protection as they are, or fault.
    raises_gp(3, || unsafe { core::arch::asm!("mov cr0, rax", in("rax") v, options(nostack)) })
}

/// MOV to CR4 (3 bytes: `0f 22 e0`, RAX); true if it raised #GP.
fn set_cr4(v: u64) -> bool {
    // SAFETY: as above.
    raises_gp(3, || unsafe { core::arch::asm!("mov cr4, rax", in("rax") v, options(nostack)) })
}

// The round trip out of IA-32e mode and back: compatibility mode (the 32-bit code segment
// 0x18 of boot.rs), CR0.PG cleared (EFER.LMA falls), EFER read, CR0.PG set again (LMA rises),
// a far jump back to 64-bit code. RDI is XORed into CR0 at both writes (NE or 0).
core::arch::global_asm!(
    r#"
    .section .text.conf_cr, "ax"
    .global conf_cr_round_trip
conf_cr_round_trip:
    pushq %rbx
    pushfq
    cli
    movq %rsp, conf_cr_saved_rsp(%rip)
    movl %edi, conf_cr_toggle(%rip)
    leaq 1f(%rip), %rax
    pushq $0x18
    pushq %rax
    lretq
    .code32
1:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr0, %eax
    andl $0x7fffffff, %eax
    xorl conf_cr_toggle, %eax
    movl %eax, %cr0
    movl %cr0, %eax
    movl %eax, conf_cr_cr0_off
    movl $0xC0000080, %ecx
    rdmsr
    movl %eax, conf_cr_efer_off
    movl conf_cr_cr0_off, %eax
    orl $0x80000000, %eax
    xorl conf_cr_toggle, %eax
    movl %eax, %cr0
    movl $0xC0000080, %ecx
    rdmsr
    movl %eax, conf_cr_efer_on
    ljmp $0x08, $2f
    .code64
2:
    movq conf_cr_saved_rsp(%rip), %rsp
    popfq
    popq %rbx
    ret

    .section .data.conf_cr, "aw"
    .balign 8
conf_cr_saved_rsp: .quad 0
    .global conf_cr_cr0_off, conf_cr_efer_off, conf_cr_efer_on
conf_cr_toggle: .long 0
conf_cr_cr0_off: .long 0
conf_cr_efer_off: .long 0
conf_cr_efer_on: .long 0
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn conf_cr_round_trip(toggle: u64);
    static conf_cr_cr0_off: u32;
    static conf_cr_efer_off: u32;
    static conf_cr_efer_on: u32;
}

/// One round trip; what CR0 and EFER were in between and after.
fn round_trip(toggle: u64) -> (u64, u64, u64) {
    // SAFETY: the code and stack are identity-mapped below 4 GiB and stay so without paging;
    // interrupts are off throughout; callee-saved registers are kept.
    unsafe {
        conf_cr_round_trip(toggle);
        (
            (&raw const conf_cr_cr0_off).read_volatile() as u64,
            (&raw const conf_cr_efer_off).read_volatile() as u64,
            (&raw const conf_cr_efer_on).read_volatile() as u64,
        )
    }
}

fn main(vcpu: u32, info: &'static Platform) {
    if vcpu != 0 {
        return;
    }
    let c0 = cr0();
    assert_ne!(c0 & NE, 0, "the runtime set CR0.NE");
    assert!(!set_cr0(c0 & !NE), "clearing CR0.NE is legal");
    assert_eq!(cr0() & NE, 0, "CR0.NE reads as written");
    assert!(!set_cr0(c0), "setting it again");
    assert_eq!(cr0(), c0);
    for (what, toggle) in [("with NE unchanged", 0), ("changing NE", NE)] {
        // QEMU's TCG checks none of these (clearing PG in 64-bit mode takes it out of long
        // mode there): the rules are checked under this hypervisor only.
        if info.hypervisor {
            assert!(set_cr0((c0 & !PG) ^ toggle), "clearing CR0.PG in 64-bit mode faults ({what})");
            assert!(set_cr0((c0 | NW) & !CD ^ toggle), "CR0.NW without CD faults ({what})");
            assert!(set_cr0(c0 | (1 << 32) ^ toggle), "CR0 bits 63:32 fault ({what})");
            assert_eq!(cr0(), c0, "a faulting write changed nothing ({what})");
        }
        assert!(!set_cr0(c0 | CD ^ toggle), "CR0.CD is legal ({what})");
        assert_eq!(cr0() & (CD | NW), (c0 | CD) & (CD | NW), "CR0.CD reads as written ({what})");
        assert!(!set_cr0(c0), "and back ({what})");
        assert_eq!(cr0(), c0, "CR0 reads as written ({what})");
    }
    // Linux's cache_disable/cache_enable: CD set with NW clear, then CD cleared from what CR0
    // reads. VM entry keeps the host's CD and NW (SDM Vol. 3C §27.3.2.1): the guest must read
    // its own, or the second write sets NW without CD and faults.
    assert!(!set_cr0((c0 & !NW) | CD), "entering no-fill mode");
    assert_eq!(cr0() & (CD | NW), CD, "CD set, NW clear");
    assert!(!set_cr0(cr0() & !CD), "caches on again from what CR0 reads");
    assert_eq!(cr0() & (CD | NW), 0, "CD and NW clear");
    assert!(!set_cr0(c0));

    let c4 = cr4();
    assert_eq!(c4 & (1 << 13), 0, "CR4.VMXE reads 0");
    // QEMU's TCG does not check CR4 against its CPUID either: under this hypervisor only.
    if info.hypervisor {
        assert!(set_cr4(c4 | (1 << 13)), "CR4.VMXE faults: VMX is not offered");
        if cpuid(1, 0)[2] & (1 << 6) == 0 {
            assert!(set_cr4(c4 | (1 << 14)), "CR4.SMXE faults: SMX is not offered");
        }
        if cpuid(7, 0)[2] & (1 << 16) == 0 {
            assert!(set_cr4(c4 | (1 << 12)), "CR4.LA57 faults where CPUID has no 5-level paging");
        }
        assert!(set_cr4(c4 | (1 << 15)), "CR4 bit 15 is reserved");
        assert!(set_cr4(c4 | (1 << 27)), "CR4 bit 27 is reserved");
    }
    assert_eq!(cr4(), c4, "a faulting write changed nothing");
    if cpuid(1, 0)[2] & (1 << 26) != 0 {
        assert!(!set_cr4(c4 | (1 << 18)), "CR4.OSXSAVE with XSAVE offered");
        assert_ne!(cpuid(1, 0)[2] & (1 << 27), 0, "CPUID.1:ECX.OSXSAVE follows CR4");
        assert!(!set_cr4(c4));
        assert_eq!(cpuid(1, 0)[2] & (1 << 27), 0, "and clears with it");
    }

    for (what, toggle) in [("natively", 0), ("through the hypervisor (NE changed)", NE)] {
        let (cr0_off, efer_off, efer_on) = round_trip(toggle);
        assert_eq!(cr0_off & PG, 0, "paging off in between ({what})");
        assert_eq!(cr0_off & NE, (c0 ^ toggle) & NE, "NE as written ({what})");
        assert_eq!(efer_off & LMA, 0, "EFER.LMA clear without paging ({what})");
        assert_ne!(efer_on & LMA, 0, "EFER.LMA set with paging again ({what})");
        assert_eq!(cr0(), c0, "back in 64-bit mode with CR0 as before ({what})");
    }
    println!("conf-cr: CR0.NE owned, CR0/CR4 faults, OSXSAVE in CPUID, IA-32e mode left and re-entered");
    report!(r#"{{"test":"conf-cr","vcpu":0}}"#);
}
