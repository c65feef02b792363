//! REPORT abuse: values that once made HV-SUMMARY unreadable (whitespace newlines, 1e999, a lone
//! surrogate, deep nesting), bad pointers and lengths, then a flood of 4 KiB reports that must
//! end with the VM stopped for its report budget, never the host's heap.
#![no_std]
#![no_main]

use guest_tests::hypercall::{raw, report};
use guest_tests::{Platform, entry, println};
use hvcore::guest_abi::hypercall::{E_FAULT, E_INVAL, REPORT};

entry!(main);

static mut DEEP: [u8; 400] = [0; 400];
static mut BIG: [u8; 4000] = [b'x'; 4000];

fn main(me: u32, info: &'static Platform) {
    if me != 0 {
        return;
    }
    // Kept, in canonical form (the summary shows it on one line).
    assert_eq!(report("{\"test\" :\n \"hostile-report\",\r\n\t\"spaced\": [1, 2]}"), 0);
    for bad in ["1e999", "\"\\ud800\"", "{} {}", "not json", "[1,]", ""] {
        assert_eq!(report(bad), E_INVAL, "REPORT {bad:?} must be refused");
    }
    // SAFETY: only vCPU 0 touches these buffers.
    let deep = unsafe { &mut *(&raw mut DEEP) };
    deep[..200].fill(b'[');
    deep[200..].fill(b']');
    assert_eq!(raw(REPORT, deep.as_ptr() as u64, 400), E_INVAL, "200-deep nesting must be refused");
    assert_eq!(raw(REPORT, info.ram_size - 2, 16), E_FAULT);
    assert_eq!(raw(REPORT, u64::MAX - 4, 16), E_FAULT);
    assert_eq!(raw(REPORT, 0x1000, 5000), E_INVAL);

    // SAFETY: as above.
    let big = unsafe { &mut *(&raw mut BIG) };
    big[0] = b'"';
    big[3999] = b'"';
    for i in 0..100 {
        let r = raw(REPORT, big.as_ptr() as u64, big.len() as u64);
        assert_eq!(r, 0, "report {i} refused");
    }
    println!("100 reports of 4 KiB were kept: the report budget did not stop this VM");
    panic!("report flood not stopped");
}
