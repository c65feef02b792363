//! Port I/O: under this hypervisor each access is an I/O exit to the VM's device models; on
//! QEMU it reaches QEMU's devices. IN and OUT have no memory effects, and the tests touch only
//! the PC's device ports.

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags)) };
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: see the module comment.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) };
}
