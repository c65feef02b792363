//! What a run needs from outside the repository, fetched, built and cached: the machine's
//! packages and the doctor (`deps`, `apt`), the project's Bochs (`bochs`), Debian's kernel,
//! busybox and the Linux workload (`debian`), the guest kernels (`guests`), the hypervisor's
//! disk image (`image`) and the assembled test fixtures (`fixtures`).

pub mod apt;
pub mod bochs;
pub mod debian;
pub mod deps;
pub mod fixtures;
pub mod guests;
pub mod image;
