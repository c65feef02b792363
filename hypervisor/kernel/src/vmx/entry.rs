//! VM entry and the VM-exit landing pad.
//!
//! `vmx_enter` saves the host's callee-saved registers and the `GuestRegs` pointer on this
//! CPU's stack, writes that stack pointer to HOST_RSP, loads the guest's general-purpose
//! registers and executes VMLAUNCH or VMRESUME. A VM exit lands at `vmx_exit` (HOST_RIP) on
//! that stack, stores the guest registers through the saved pointer, and returns 0 from
//! `vmx_enter`. A failed entry instruction returns 1 (VMfailInvalid) or 2 (VMfailValid).

use core::mem::offset_of;

/// The guest registers the VMCS does not hold (RSP, RIP and RFLAGS are VMCS fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The guest ran and exited; read the exit reason.
    Exited,
    /// VMLAUNCH/VMRESUME failed with VMfailInvalid.
    FailInvalid,
    /// VMLAUNCH/VMRESUME failed with VMfailValid (see the VM-instruction error field).
    FailValid,
}

unsafe extern "C" {
    fn vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64;
    fn vmx_exit();
}

/// HOST_RIP for every VMCS.
pub fn exit_landing() -> u64 {
    vmx_exit as *const () as u64
}

/// Enters the guest until its next VM exit.
///
/// # Safety
/// A VMCS whose host state and HOST_RIP (= [`exit_landing`]) are set must be current on this
/// CPU; `launched` must say whether it was launched.
pub unsafe fn enter(regs: &mut GuestRegs, launched: bool) -> Entry {
    // SAFETY: forwarded to the caller; the assembly preserves the ABI's callee-saved state.
    match unsafe { vmx_enter(regs, launched as u64) } {
        0 => Entry::Exited,
        1 => Entry::FailInvalid,
        _ => Entry::FailValid,
    }
}

core::arch::global_asm!(
    r#"
    // Page-aligned as the exit path's Rust functions are (`#[rustc_align(4096)]`).
    .p2align 12
    .global vmx_enter
vmx_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, {host_rsp}
    vmwrite rax, rsp
    jbe 3f
    cmp rsi, 0
    mov rax, [rdi + {rax}]
    mov rbx, [rdi + {rbx}]
    mov rcx, [rdi + {rcx}]
    mov rdx, [rdi + {rdx}]
    mov rsi, [rdi + {rsi}]
    mov rbp, [rdi + {rbp}]
    mov r8,  [rdi + {r8}]
    mov r9,  [rdi + {r9}]
    mov r10, [rdi + {r10}]
    mov r11, [rdi + {r11}]
    mov r12, [rdi + {r12}]
    mov r13, [rdi + {r13}]
    mov r14, [rdi + {r14}]
    mov r15, [rdi + {r15}]
    mov rdi, [rdi + {rdi}]
    je 2f
    vmresume
    jmp 3f
2:
    vmlaunch
3:
    mov eax, 1
    jc 4f
    mov eax, 2
4:
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global vmx_exit
vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + {rax}], rax
    mov [rdi + {rbx}], rbx
    mov [rdi + {rcx}], rcx
    mov [rdi + {rdx}], rdx
    mov [rdi + {rsi}], rsi
    mov [rdi + {rbp}], rbp
    mov [rdi + {r8}], r8
    mov [rdi + {r9}], r9
    mov [rdi + {r10}], r10
    mov [rdi + {r11}], r11
    mov [rdi + {r12}], r12
    mov [rdi + {r13}], r13
    mov [rdi + {r14}], r14
    mov [rdi + {r15}], r15
    pop rax
    mov [rdi + {rdi}], rax
    pop rdi
    xor eax, eax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    "#,
    host_rsp = const 0x6c14,
    rax = const offset_of!(GuestRegs, rax),
    rbx = const offset_of!(GuestRegs, rbx),
    rcx = const offset_of!(GuestRegs, rcx),
    rdx = const offset_of!(GuestRegs, rdx),
    rsi = const offset_of!(GuestRegs, rsi),
    rdi = const offset_of!(GuestRegs, rdi),
    rbp = const offset_of!(GuestRegs, rbp),
    r8 = const offset_of!(GuestRegs, r8),
    r9 = const offset_of!(GuestRegs, r9),
    r10 = const offset_of!(GuestRegs, r10),
    r11 = const offset_of!(GuestRegs, r11),
    r12 = const offset_of!(GuestRegs, r12),
    r13 = const offset_of!(GuestRegs, r13),
    r14 = const offset_of!(GuestRegs, r14),
    r15 = const offset_of!(GuestRegs, r15),
);

const _: () = assert!(hvcore::vmx::fields::VmcsNatural::HostRsp as u32 == 0x6c14);
