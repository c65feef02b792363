//! Hypercall arguments: `exits::hypercall::decode` and `check_buffer` on arbitrary registers.
//! A decoded call is the one its registers select (`Call::encode` gives them back, and decodes
//! to the same call); a buffer that passes the check must lie inside guest RAM, be at most
//! `max` long and start at the guest's address; one that fails must really be too long or
//! outside RAM.
#![no_main]

use hvcore::exits::hypercall::{Call, check_buffer, decode};
use hvcore::guest_abi::hypercall::{E_FAULT, E_INVAL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|regs: [u64; 5]| {
    let [rax, rdi, rsi, max, ram_size] = regs;
    let call = decode(rax, rdi, rsi);
    let (number, arg0, arg1) = call.encode();
    assert_eq!(number, rax, "{call:?} is not the call RAX selects");
    assert_eq!(decode(number, arg0, arg1), call, "{call:?} does not survive encode and decode");
    // Arguments are taken from the registers as they are, never altered.
    assert!(arg0 == rdi || arg0 == 0, "{call:?}: RDI {rdi:#x}");
    assert!(arg1 == rsi || arg1 == 0, "{call:?}: RSI {rsi:#x}");
    if !matches!(call, Call::Unknown(_)) {
        assert_eq!(arg0, rdi, "{call:?}: every known call takes RDI");
    }

    // Small values are where the edges are; the fuzzer's raw u64s are mostly huge.
    for (gpa, len, max, ram_size) in [(rdi, rsi, max, ram_size), (rdi >> 40, rsi >> 40, max >> 40, ram_size >> 40)] {
        match check_buffer(gpa, len, max, ram_size) {
            Ok(range) => {
                assert!(range.end as u64 <= ram_size, "{range:?} past RAM {ram_size:#x}");
                assert!(range.len() as u64 <= max, "{range:?} longer than {max}");
                assert_eq!(range.start as u64, gpa);
                assert_eq!(range.len() as u64, len);
                assert!(range.start <= range.end);
            }
            Err(e) if e == E_INVAL => assert!(len > max),
            Err(e) if e == E_FAULT => {
                assert!(len <= max);
                assert!(gpa.checked_add(len).is_none_or(|end| end > ram_size));
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
});
