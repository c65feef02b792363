//! The boot ramdisk archive (`ramdisk::Archive::parse`), which the kernel reads from whatever
//! the bootloader hands it. Arbitrary bytes never panic, and every file of a parsed archive is
//! a slice of the input; archives written by `ramdisk::build` read back as written.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use hvcore::ramdisk::{Archive, MAGIC, build};
use libfuzzer_sys::fuzz_target;

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

fn parse_any(bytes: &[u8]) {
    let Ok(archive) = Archive::parse(bytes) else { return };
    let names: Vec<&str> = archive.names().collect();
    // Each file takes 8 bytes of header at least, after the 16-byte archive header.
    assert!(16 + 8 * names.len() <= bytes.len());
    for name in &names {
        assert!(within(bytes, name.as_bytes()), "name {name:?} outside the input");
        let data = archive.get(name).expect("a listed name is found");
        assert!(within(bytes, data), "data of {name:?} outside the input");
    }
}

fn round_trip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let files: Vec<(String, Vec<u8>)> = Vec::arbitrary(u)?;
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let bytes = build(&refs);
    assert_eq!(bytes.len() % 8, 0);
    let archive = Archive::parse(&bytes).expect("a built archive parses");
    assert!(archive.names().eq(files.iter().map(|(n, _)| n.as_str())));
    for (name, _) in &files {
        // get() finds the first file of that name.
        let first = &files.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(archive.get(name), Some(first.as_slice()));
    }
    // Any strict prefix is truncated.
    let cut = u.int_in_range(0..=bytes.len() - 1)?;
    assert!(Archive::parse(&bytes[..cut]).is_err(), "prefix of {cut} of {} bytes parses", bytes.len());
    parse_any(&bytes);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    parse_any(data);
    // The same bytes behind the magic, so the fuzzer need not find it.
    let mut with_magic = MAGIC.to_vec();
    with_magic.extend_from_slice(data);
    parse_any(&with_magic);
    let _ = round_trip(&mut Unstructured::new(data));
});
