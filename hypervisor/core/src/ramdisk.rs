//! The boot ramdisk: a tiny named-file archive that xtask writes and the kernel reads.
//!
//! Layout (little-endian): magic `HVRAMDSK`, u32 file count, u32 reserved; then per file
//! u32 name length, u32 data length, the name (UTF-8), the data, zero padding to 8 bytes.

use alloc::vec::Vec;

pub const MAGIC: &[u8; 8] = b"HVRAMDSK";
/// The file holding the boot config and VM manifest (see `bootcfg`).
pub const CONFIG_FILE: &str = "config";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveError {
    BadMagic,
    Truncated,
    BadName,
}

impl core::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadMagic => "ramdisk is not an HVRAMDSK archive",
            Self::Truncated => "ramdisk archive is truncated",
            Self::BadName => "ramdisk archive has a file name that is not UTF-8",
        })
    }
}

/// A parsed archive borrowing the ramdisk bytes.
pub struct Archive<'a> {
    files: Vec<(&'a str, &'a [u8])>,
}

const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], ArchiveError> {
    if b.len() < n {
        return Err(ArchiveError::Truncated);
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn u32_at(b: &mut &[u8]) -> Result<u32, ArchiveError> {
    Ok(u32::from_le_bytes(take(b, 4)?.try_into().unwrap()))
}

impl<'a> Archive<'a> {
    pub fn parse(mut b: &'a [u8]) -> Result<Self, ArchiveError> {
        if take(&mut b, 8)? != MAGIC {
            return Err(ArchiveError::BadMagic);
        }
        let count = u32_at(&mut b)?;
        u32_at(&mut b)?;
        let mut files = Vec::new();
        for _ in 0..count {
            let nlen = u32_at(&mut b)? as usize;
            let dlen = u32_at(&mut b)? as usize;
            let name = core::str::from_utf8(take(&mut b, nlen)?).map_err(|_| ArchiveError::BadName)?;
            let data = take(&mut b, dlen)?;
            take(&mut b, pad8(nlen + dlen) - (nlen + dlen))?;
            files.push((name, data));
        }
        Ok(Self { files })
    }

    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.files.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.files.iter().map(|(n, _)| *n)
    }
}

/// Builds an archive (xtask side).
pub fn build(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (name, data) in files {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + pad8(name.len() + data.len()) - (name.len() + data.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = build(&[("config", b"log = info\n"), ("hello", &[0x7f, b'E', b'L', b'F', 9])]);
        assert_eq!(bytes.len() % 8, 0);
        let a = Archive::parse(&bytes).unwrap();
        assert_eq!(a.get("config"), Some(&b"log = info\n"[..]));
        assert_eq!(a.get("hello").unwrap().len(), 5);
        assert_eq!(a.get("nope"), None);
        assert_eq!(a.names().count(), 2);
    }

    #[test]
    fn corrupt_archives_are_errors_not_panics() {
        let bytes = build(&[("config", b"0123456789")]);
        assert_eq!(Archive::parse(b"NOTRAMDK\0\0\0\0\0\0\0\0").err(), Some(ArchiveError::BadMagic));
        for cut in 0..bytes.len() - 1 {
            assert!(Archive::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[24] = 0xff; // first byte of the name
        assert_eq!(Archive::parse(&bad).err(), Some(ArchiveError::BadName));
    }
}
