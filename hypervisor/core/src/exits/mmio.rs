//! Memory accesses the hypervisor completes itself (an xAPIC register the processor does not
//! virtualize; later, device MMIO): the faulting instruction is decoded with iced-x86 and only
//! plain moves are accepted. Anything else is refused with its mnemonic, never guessed at.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Longest x86 instruction.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// A general-purpose register operand: number 0..=15 (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
/// R8..R15, the hardware order) and width; `high8` for AH, CH, DH and BH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpr {
    pub number: u8,
    pub size: u8,
    pub high8: bool,
}

/// What the instruction does with the memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load `size` bytes into `dest`, zero-extended to the register's width (`MOV r, m` and
    /// `MOVZX r, m`).
    Read { dest: Gpr, size: u8 },
    /// Store `size` bytes of a register.
    WriteReg { src: Gpr, size: u8 },
    /// Store `size` bytes of an immediate.
    WriteImm { value: u64, size: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryInstruction {
    pub access: Access,
    /// Instruction length, to advance RIP.
    pub len: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a valid instruction (or cut short).
    Invalid,
    /// Valid, but not a plain move to or from memory.
    Unsupported(Mnemonic),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid => f.write_str("no valid instruction at RIP"),
            Self::Unsupported(m) => write!(f, "{m:?} is not a plain MOV to or from memory"),
        }
    }
}

fn gpr(r: Register) -> Option<Gpr> {
    if !r.is_gpr() {
        return None;
    }
    let high8 = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let number = if high8 {
        (r as u32 - Register::AH as u32) as u8
    } else {
        (r.full_register() as u32 - Register::RAX as u32) as u8
    };
    Some(Gpr { number, size: r.size() as u8, high8 })
}

/// iced-x86 builds its decoder tables on first use, which measured 3.6 million instructions
/// under Bochs: an exit that paid for it stalled its vCPU for tens of milliseconds (and made a
/// guest's APIC timer look late). The kernel calls this once at boot, before any VM runs.
pub fn warm_up() {
    let _ = decode(&[0x8b, 0x00], 64);
}

/// Decodes the instruction in `bytes` (fetched at RIP) for a CPU of `bitness` 16, 32 or 64.
pub fn decode(bytes: &[u8], bitness: u32) -> Result<MemoryInstruction, DecodeError> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let mut i = Instruction::default();
    decoder.decode_out(&mut i);
    if i.is_invalid() {
        return Err(DecodeError::Invalid);
    }
    let len = i.len() as u8;
    let unsupported = Err(DecodeError::Unsupported(i.mnemonic()));
    let mem_size = i.memory_size().size() as u8;
    let access = match (i.mnemonic(), i.op0_kind(), i.op_count()) {
        (Mnemonic::Mov | Mnemonic::Movzx, OpKind::Register, 2) if i.op1_kind() == OpKind::Memory => {
            let Some(dest) = gpr(i.op0_register()) else { return unsupported };
            Access::Read { dest, size: mem_size }
        }
        (Mnemonic::Mov, OpKind::Memory, 2) => match i.op1_kind() {
            OpKind::Register => {
                let Some(src) = gpr(i.op1_register()) else { return unsupported };
                Access::WriteReg { src, size: mem_size }
            }
            OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 | OpKind::Immediate32to64 => {
                Access::WriteImm { value: i.immediate(1), size: mem_size }
            }
            _ => return unsupported,
        },
        _ => return unsupported,
    };
    Ok(MemoryInstruction { access, len })
}

/// The register's new value after loading `value` into it: 32-bit destinations clear bits 63:32
/// (in 64-bit mode, as in any mode for the architectural register), 8- and 16-bit ones keep the
/// rest of the register (SDM Vol. 1 §3.4.1.1).
pub fn load_into(old: u64, dest: Gpr, value: u64) -> u64 {
    match (dest.size, dest.high8) {
        (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (old & !0xff) | (value & 0xff),
        (2, _) => (old & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

/// The bytes a register store writes, from the register's full value.
pub fn stored_value(reg_value: u64, src: Gpr, size: u8) -> u64 {
    let v = if src.high8 { reg_value >> 8 } else { reg_value };
    if size >= 8 { v } else { v & ((1u64 << (size * 8)) - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAX: Gpr = Gpr { number: 0, size: 4, high8: false };

    #[test]
    fn loads_linux_and_guest_tests_use() {
        // mov eax, [rdi+0xa0]
        let m = decode(&[0x8b, 0x87, 0xa0, 0, 0, 0], 64).unwrap();
        assert_eq!(m, MemoryInstruction { access: Access::Read { dest: EAX, size: 4 }, len: 6 });
        // mov r9d, [0xfee00390] (absolute, SIB without base)
        let m = decode(&[0x44, 0x8b, 0x0c, 0x25, 0x90, 0x03, 0xe0, 0xfe], 64).unwrap();
        assert_eq!(m.access, Access::Read { dest: Gpr { number: 9, size: 4, high8: false }, size: 4 });
        assert_eq!(m.len, 8);
        // movzx ecx, byte [rax]
        let m = decode(&[0x0f, 0xb6, 0x08], 64).unwrap();
        assert_eq!(m.access, Access::Read { dest: Gpr { number: 1, size: 4, high8: false }, size: 1 });
        // mov ah, [rbx]
        let m = decode(&[0x8a, 0x23], 64).unwrap();
        assert_eq!(m.access, Access::Read { dest: Gpr { number: 0, size: 1, high8: true }, size: 1 });
        // 32-bit code: mov eax, [0xfee000a0] (moffs form A1)
        let m = decode(&[0xa1, 0xa0, 0x00, 0xe0, 0xfe], 32).unwrap();
        assert_eq!(m.access, Access::Read { dest: EAX, size: 4 });
        assert_eq!(m.len, 5);
    }

    #[test]
    fn stores_of_registers_and_immediates() {
        // mov [rdi+0x2f0], esi
        let m = decode(&[0x89, 0xb7, 0xf0, 0x02, 0, 0], 64).unwrap();
        assert_eq!(m.access, Access::WriteReg { src: Gpr { number: 6, size: 4, high8: false }, size: 4 });
        // mov dword [rax], 0x10000
        let m = decode(&[0xc7, 0x00, 0x00, 0x00, 0x01, 0x00], 64).unwrap();
        assert_eq!(m.access, Access::WriteImm { value: 0x10000, size: 4 });
        // mov qword [rax], -1 (sign-extended imm32)
        let m = decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], 64).unwrap();
        assert_eq!(m.access, Access::WriteImm { value: u64::MAX, size: 8 });
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        // add eax, [rdi]
        assert_eq!(decode(&[0x03, 0x07], 64), Err(DecodeError::Unsupported(Mnemonic::Add)));
        // jmp rax: an instruction fetch is not a data access
        assert_eq!(decode(&[0xff, 0xe0], 64), Err(DecodeError::Unsupported(Mnemonic::Jmp)));
        // mov eax, ecx: no memory operand
        assert_eq!(decode(&[0x89, 0xc8], 64), Err(DecodeError::Unsupported(Mnemonic::Mov)));
        // mov ds, [rax]: not a general-purpose register
        assert_eq!(decode(&[0x8e, 0x18], 64), Err(DecodeError::Unsupported(Mnemonic::Mov)));
        // cut short, and empty
        assert_eq!(decode(&[0x8b, 0x87, 0xa0], 64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[], 64), Err(DecodeError::Invalid));
    }

    #[test]
    fn register_merging_follows_operand_size() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(load_into(old, EAX, 0xdead_beef), 0xdead_beef);
        assert_eq!(load_into(old, Gpr { number: 0, size: 2, high8: false }, 0xbeef), 0x1122_3344_5566_beef);
        assert_eq!(load_into(old, Gpr { number: 0, size: 1, high8: true }, 0xef), 0x1122_3344_5566_ef88);
        assert_eq!(load_into(old, Gpr { number: 0, size: 8, high8: false }, 7), 7);
        assert_eq!(stored_value(old, Gpr { number: 0, size: 1, high8: true }, 1), 0x77);
        assert_eq!(stored_value(old, EAX, 4), 0x5566_7788);
        assert_eq!(stored_value(old, Gpr { number: 0, size: 8, high8: false }, 8), old);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut b = [0u8; MAX_INSTRUCTION_LEN];
            for byte in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            for bitness in [16, 32, 64] {
                if let Ok(m) = decode(&b[..(x as usize % 16)], bitness) {
                    assert!(m.len as usize <= MAX_INSTRUCTION_LEN);
                }
            }
        }
    }
}
