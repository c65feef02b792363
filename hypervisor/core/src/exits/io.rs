//! Port I/O exits: the exit qualification decoded, and IN's result merged into RAX. The ports
//! themselves are the VM's devices (`crate::devices::bus::PortBus`).

/// The decoded exit qualification of an I/O instruction exit (SDM Vol. 3C Table 29-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub input: bool,
    pub string: bool,
    pub rep: bool,
}

impl IoExit {
    pub fn decode(qual: u64) -> Self {
        Self {
            size: (qual & 7) as u8 + 1,
            input: qual & (1 << 3) != 0,
            string: qual & (1 << 4) != 0,
            rep: qual & (1 << 5) != 0,
            port: (qual >> 16) as u16,
        }
    }
}

/// RAX after an IN of `size` bytes returning `value` (SDM: IN to AL/AX leaves the rest of RAX;
/// IN to EAX zero-extends into RAX).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (rax & !0xff) | (value as u64 & 0xff),
        2 => (rax & !0xffff) | (value as u64 & 0xffff),
        _ => value as u64,
    }
}

/// INS and OUTS (SDM Vol. 3C §28.2.5, Table 28-8: the VM-exit instruction-information field
/// gives the address size in bits 9:7; the guest-linear-address field the memory operand's
/// linear address): the address size in bytes (2, 4 or 8).
pub fn string_address_size(instruction_info: u32) -> u8 {
    match (instruction_info >> 7) & 7 {
        0 => 2,
        1 => 4,
        _ => 8,
    }
}

/// A pointer or count register advanced by `delta` within the address size (SDM Vol. 2B
/// "INS", "OUTS": SI/DI/CX, ESI/EDI/ECX or RSI/RDI/RCX; a 32-bit result clears bits 63:32).
pub fn advance(reg: u64, delta: i64, addr_size: u8) -> u64 {
    let sum = reg.wrapping_add(delta as u64);
    match addr_size {
        2 => (reg & !0xffff) | (sum & 0xffff),
        4 => sum & 0xffff_ffff,
        _ => sum,
    }
}

/// The REP count in RCX for the address size.
pub fn rep_count(rcx: u64, addr_size: u8) -> u64 {
    match addr_size {
        2 => rcx & 0xffff,
        4 => rcx & 0xffff_ffff,
        _ => rcx,
    }
}

/// How many elements one exit completes: the whole count, at most `max` (a REP string
/// instruction the hypervisor leaves unfinished simply exits again at the same RIP, as the
/// processor restarts one after an interrupt, SDM Vol. 2B "REP").
pub fn elements_now(count: u64, max: u64) -> u64 {
    count.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_out_dx_al() {
        let io = IoExit::decode((0x3f8 << 16) | (1 << 6));
        assert_eq!(io, IoExit { port: 0x3f8, size: 1, input: false, string: false, rep: false });
        let io = IoExit::decode((0x60 << 16) | (1 << 3) | 3);
        assert_eq!((io.port, io.size, io.input), (0x60, 4, true));
    }

    #[test]
    fn string_operands_wrap_by_address_size() {
        assert_eq!(string_address_size(0), 2);
        assert_eq!(string_address_size(1 << 7), 4);
        assert_eq!(string_address_size(2 << 7), 8);
        assert_eq!(advance(0x1234_ffff, 1, 2), 0x1234_0000, "SI wraps in 16 bits");
        assert_eq!(advance(0xffff_ffff, 1, 4), 0, "ESI wraps, bits 63:32 cleared");
        assert_eq!(advance(0x10, -4, 8), 0xc);
        assert_eq!(rep_count(0x1_0000_0003, 4), 3);
        assert_eq!(elements_now(10_000, 4096), 4096);
    }

    #[test]
    fn in_merges_by_size() {
        assert_eq!(merge_in(0x1122_3344_5566_7788, 1, 0xffff_ffff), 0x1122_3344_5566_77ff);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 2, 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 4, 0xdead_beef), 0xdead_beef);
    }
}
