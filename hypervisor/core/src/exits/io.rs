//! Port I/O exits: the exit qualification decoded, and IN's result merged into RAX. The ports
//! themselves are the VM's devices (`crate::devices::PortBus`).

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
    fn in_merges_by_size() {
        assert_eq!(merge_in(0x1122_3344_5566_7788, 1, 0xffff_ffff), 0x1122_3344_5566_77ff);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 2, 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(merge_in(0x1122_3344_5566_7788, 4, 0xdead_beef), 0xdead_beef);
    }
}
