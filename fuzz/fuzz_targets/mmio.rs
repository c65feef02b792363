//! The decoder behind every access the hypervisor completes for a guest (APIC-access exits):
//! `exits::mmio::decode` on any bytes in 16-, 32- and 64-bit code, then `load_into` /
//! `stored_value`. An accepted instruction is no longer than the bytes and 15, decodes the same
//! from exactly its own bytes, names a real register and a real access size; loads change only
//! the destination's width (32-bit ones clear bits 63:32).
#![no_main]

use hvcore::exits::mmio::{Access, Gpr, MAX_INSTRUCTION_LEN, decode, load_into, stored_value};
use libfuzzer_sys::fuzz_target;

fn check_gpr(g: Gpr) {
    assert!(g.number <= 15, "{g:?}");
    assert!(matches!(g.size, 1 | 2 | 4 | 8), "{g:?}");
    if g.high8 {
        assert!(g.size == 1 && g.number <= 3, "{g:?}");
    }
}

fuzz_target!(|input: (u64, u64, &[u8])| {
    let (old, value, bytes) = input;
    for bitness in [16, 32, 64] {
        let Ok(m) = decode(bytes, bitness) else { continue };
        let len = m.len as usize;
        assert!(len >= 1 && len <= MAX_INSTRUCTION_LEN && len <= bytes.len(), "{m:?}");
        assert_eq!(decode(&bytes[..len], bitness), Ok(m), "decoding its own bytes again");
        match m.access {
            Access::Read { dest, size } => {
                check_gpr(dest);
                assert!(matches!(size, 1 | 2 | 4 | 8) && size <= dest.size, "{m:?}");
                let new = load_into(old, dest, value);
                let width = if dest.high8 {
                    0xff00
                } else if dest.size == 8 {
                    u64::MAX
                } else {
                    (1u64 << (dest.size * 8)) - 1
                };
                match dest.size {
                    4 => assert_eq!(new >> 32, 0, "a 32-bit load clears bits 63:32"),
                    8 => {}
                    _ => assert_eq!(new & !width, old & !width, "an 8/16-bit load keeps the rest"),
                }
            }
            Access::WriteReg { src, size } => {
                check_gpr(src);
                assert!(matches!(size, 1 | 2 | 4 | 8), "{m:?}");
                let v = stored_value(old, src, size);
                if size < 8 {
                    assert_eq!(v >> (size * 8), 0);
                }
            }
            Access::WriteImm { size, .. } => assert!(matches!(size, 1 | 2 | 4 | 8), "{m:?}"),
        }
    }
});
