//! Multiboot v1 (the GNU Multiboot Specification 0.6.96), as QEMU's `-kernel` boots it: the
//! header search, the load plan for ELF32, ELF64 and a.out-kludge images, and the information
//! structure (memory map, command line, modules) the kernel finds through EBX. RAM is a byte
//! slice here, so all of it is host-tested; the kernel copies and starts. The constants are
//! shared with the test kernels, which read the structure.

pub mod abi;
#[cfg(feature = "alloc")]
pub mod load;
