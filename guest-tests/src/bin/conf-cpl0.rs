//! What a CPL-0 guest may execute, none of which may stop its VM (SDM Vol. 3C §26.1.2: some
//! instructions always exit in VMX non-root operation; the hypervisor must then do what the
//! processor would): INVD completes; VMX instructions (VMX is not offered) and GETSEC (SMX is
//! not offered) raise #UD; RDMSR over the architectural and hypervisor MSR ranges either
//! answers or raises #GP; every I/O port reads; REP INS and REP OUTS move their bytes and
//! registers; CPUID answers every leaf.
#![no_std]
#![no_main]

use guest_tests::idt::{raises_ud, try_rdmsr};
use guest_tests::{Platform, cpuid, entry, println, report};

entry!(main);

/// Each VMX instruction (and GETSEC) as bytes, with RAX and RCX pointing at a scratch page.
const UD_EXPECTED: &[(&str, &[u8])] = &[
    ("VMXON [rax]", &[0xf3, 0x0f, 0xc7, 0x30]),
    ("VMXOFF", &[0x0f, 0x01, 0xc4]),
    ("VMCLEAR [rax]", &[0x66, 0x0f, 0xc7, 0x30]),
    ("VMPTRLD [rax]", &[0x0f, 0xc7, 0x30]),
    ("VMPTRST [rax]", &[0x0f, 0xc7, 0x38]),
    ("VMREAD rax, rcx", &[0x0f, 0x78, 0xc8]),
    ("VMWRITE rcx, rax", &[0x0f, 0x79, 0xc8]),
    ("VMLAUNCH", &[0x0f, 0x01, 0xc2]),
    ("VMRESUME", &[0x0f, 0x01, 0xc3]),
    ("INVEPT rax, [rcx]", &[0x66, 0x0f, 0x38, 0x80, 0x01]),
    ("INVVPID rax, [rcx]", &[0x66, 0x0f, 0x38, 0x81, 0x01]),
    ("VMFUNC", &[0x0f, 0x01, 0xd4]),
    ("GETSEC", &[0x0f, 0x37]),
];

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SCRATCH: Page = Page([0; 4096]);
/// The instruction under test is copied here, followed by RET.
#[repr(C, align(64))]
struct Code([u8; 64]);
#[unsafe(link_section = ".text")]
static mut CODE: Code = Code([0xc3; 64]);

fn run_bytes(bytes: &[u8]) -> bool {
    let code = &raw mut CODE;
    // SAFETY: the buffer is in the identity-mapped, writable and executable image; it holds the
    // instruction then RET (0xC3), and runs with RAX and RCX pointing at a scratch page.
    unsafe {
        let p = code as *mut u8;
        for (i, b) in bytes.iter().enumerate() {
            p.add(i).write_volatile(*b);
        }
        p.add(bytes.len()).write_volatile(0xc3);
        let scratch = &raw mut SCRATCH as u64;
        raises_ud(
            bytes.len() as u8,
            || core::arch::asm!("call {f}", f = in(reg) p, inout("rax") scratch => _, inout("rcx") scratch => _, clobber_abi("C")),
        )
    }
}

fn main(vcpu: u32, info: &'static Platform) {
    if vcpu != 0 {
        return;
    }
    // INVD: completed (no cache the hypervisor keeps holds guest data).
    // SAFETY: nothing this test needs is only in a write-back cache line under emulation.
    unsafe { core::arch::asm!("invd", options(nostack)) };
    for (what, bytes) in UD_EXPECTED {
        assert!(run_bytes(bytes), "{what} must raise #UD");
    }

    let mut answered = 0u32;
    let mut faulted = 0u32;
    for range in [0..0x2000u32, 0xc000_0000..0xc000_2000, 0x4000_0000..0x4000_0200] {
        for msr in range {
            match try_rdmsr(msr) {
                Some(_) => answered += 1,
                None => faulted += 1,
            }
        }
    }
    // QEMU's TCG reads 0 from MSRs it does not know instead of raising #GP.
    assert!(answered > 10 && (faulted > 1000 || !info.hypervisor), "RDMSR sweep: {answered} answered, {faulted} #GP");

    for port in 0..=u16::MAX {
        // SAFETY: a read; ports whose reads change state (UART, PIT) are the test's own.
        let _ = unsafe { x86_64::instructions::port::Port::<u8>::new(port).read() };
    }

    let mut buf = [0xaau8; 16];
    let (mut rdi, mut rcx) = (buf.as_mut_ptr() as u64, buf.len() as u64);
    // SAFETY: REP INSB writes RCX bytes at RDI (the buffer); port 0x2F8 has no device (0xFF).
    unsafe { core::arch::asm!("rep insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") 0x2f8u16, options(nostack)) };
    assert_eq!((rcx, rdi), (0, buf.as_ptr() as u64 + 16), "REP INSB: RCX counted down, RDI advanced");
    assert_eq!(buf, [0xff; 16], "REP INSB from an unclaimed port: all ones");
    let (mut rsi, mut rcx) = (buf.as_ptr() as u64, buf.len() as u64);
    // SAFETY: REP OUTSB reads RCX bytes at RSI; port 0x80 (POST codes) has no device here.
    unsafe { core::arch::asm!("rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") 0x80u16, options(nostack)) };
    assert_eq!((rcx, rsi), (0, buf.as_ptr() as u64 + 16), "REP OUTSB: RCX counted down, RSI advanced");

    let max = cpuid(0, 0)[0];
    for leaf in (0..=max).chain(0x8000_0000..=cpuid(0x8000_0000, 0)[0]).chain(0x4000_0000..0x4000_0110) {
        let _ = cpuid(leaf, 0);
    }
    println!(
        "conf-cpl0: INVD, #UD for VMX and GETSEC, {answered} MSRs read and {faulted} #GP, every port read, string I/O, every CPUID leaf"
    );
    report!(r#"{{"test":"conf-cpl0","vcpu":0,"msrs_answered":{answered},"msrs_faulted":{faulted}}}"#);
}
