//! Hypercall abuse: every number with buffers outside RAM, wrapping around, too long; unknown
//! numbers; PID_OP without `test_hooks`; and a flood of cheap hypercalls. Each must return its
//! error and change nothing; the VM then passes.
#![no_std]
#![no_main]

use guest_tests::hypercall::raw;
use guest_tests::{BootInfo, entry, report};
use hvcore::guest_abi::hypercall::*;

entry!(main);

fn main(me: u32, info: &'static BootInfo) {
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
    report!(r#"{{"test":"hostile-hypercall","vcpu":{me},"flood":{flood}}}"#);
}
