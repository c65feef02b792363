//! The guest page walk the hypervisor does on a guest's own, guest-written page tables:
//! `guest_paging::translate` in every paging mode over a 64 KiB guest memory filled from the
//! input. It never panics or loops, and a translation keeps the offset within the 4 KiB page.
#![no_main]

use hvcore::guest_paging::{Mode, translate};
use libfuzzer_sys::fuzz_target;

const MEMORY: usize = 64 * 1024;

fuzz_target!(|input: (u64, u64, u64, &[u8])| {
    let (linear, cr3, cr4, bytes) = input;
    let mut memory = vec![0u8; MEMORY];
    let n = bytes.len().min(MEMORY);
    memory[..n].copy_from_slice(&bytes[..n]);
    // Entries keep their flags (bits 11:0) and address bits 15:12, so that every table
    // pointer lands inside the 64 KiB and walks go deep.
    let read = |pa: u64, size: usize| -> Option<u64> {
        let pa = usize::try_from(pa).ok()?;
        let b = memory.get(pa..pa.checked_add(size)?)?;
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(b);
        Some(u64::from_le_bytes(v) & 0xffff)
    };
    for mode in [Mode::None, Mode::Bits32, Mode::Pae, Mode::Level4, Mode::Level5] {
        if let Ok(pa) = translate(linear, mode, cr3 & 0xffff, cr4, read) {
            assert_eq!(pa & 0xfff, linear & 0xfff, "{mode:?}: the page offset is kept");
        }
    }
});
