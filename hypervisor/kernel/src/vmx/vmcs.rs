//! The VMCS: region allocation, VMCLEAR/VMPTRLD, and width-typed VMREAD/VMWRITE over the field
//! enums of `hvcore::vmx::fields`. A failing VMX instruction reports the decoded
//! VM-instruction error (SDM Vol. 3C §31.4) and the field involved.

use core::arch::asm;
use core::fmt;

use hvcore::vmx::fields::{Vmcs16, Vmcs32, Vmcs64, VmcsNatural};
use hvcore::vmx::instruction_error;

use crate::memory;

/// A failed VMX instruction.
#[derive(Clone, Copy, Debug)]
pub struct VmxInstrError {
    pub instruction: &'static str,
    /// The field involved (VMREAD/VMWRITE), by SDM name.
    pub field: Option<&'static str>,
    /// `None` for VMfailInvalid (no current VMCS to hold an error number).
    pub error: Option<u32>,
}

impl fmt::Display for VmxInstrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.instruction)?;
        if let Some(field) = self.field {
            write!(f, " {field}")?;
        }
        match self.error {
            Some(n) => write!(f, " failed: VM-instruction error {n} ({})", instruction_error::describe(n)),
            None => write!(f, " failed: VMfailInvalid (no current VMCS or bad pointer)"),
        }
    }
}

/// RFLAGS after a VMX instruction: CF = VMfailInvalid, ZF = VMfailValid.
const VMFAIL_INVALID: u64 = 1 << 0;
const VMFAIL_VALID: u64 = 1 << 6;

/// The error of a failed VMX instruction. Cold and out of line: the field's name is looked up
/// only here, so a VMCS access on the exit path costs its instruction and a flag test.
#[cold]
#[inline(never)]
fn failure(rflags: u64, instruction: &'static str, field: Option<&'static str>) -> VmxInstrError {
    let error = (rflags & VMFAIL_INVALID == 0).then(|| read_raw(Vmcs32::VmInstructionError.encoding()) as u32);
    VmxInstrError { instruction, field, error }
}

fn check(rflags: u64, instruction: &'static str, field: Option<&'static str>) -> Result<(), VmxInstrError> {
    if rflags & (VMFAIL_INVALID | VMFAIL_VALID) != 0 { Err(failure(rflags, instruction, field)) } else { Ok(()) }
}

fn read_raw(encoding: u32) -> u64 {
    let v: u64;
    // SAFETY: VMREAD only reads the current VMCS; a bad encoding sets flags, it does not fault.
    unsafe { asm!("vmread {v}, {e}", v = out(reg) v, e = in(reg) encoding as u64, options(nostack)) };
    v
}

/// VMREAD, with the flags that tell whether it failed.
#[inline(always)]
fn vmread(encoding: u32) -> (u64, u64) {
    let (v, rflags): (u64, u64);
    // SAFETY: as in read_raw; the flags are captured to report failures.
    unsafe {
        asm!("vmread {v}, {e}", "pushfq", "pop {f}", v = out(reg) v, e = in(reg) encoding as u64, f = out(reg) rflags)
    };
    (v, rflags)
}

/// VMWRITE, returning the flags that tell whether it failed.
#[inline(always)]
fn vmwrite(encoding: u32, value: u64) -> u64 {
    let rflags: u64;
    // SAFETY: VMWRITE changes only the current VMCS, which this CPU owns.
    unsafe {
        asm!("vmwrite {e}, {v}", "pushfq", "pop {f}", e = in(reg) encoding as u64, v = in(reg) value, f = out(reg) rflags)
    };
    rflags
}

macro_rules! accessors {
    ($ty:ty, $val:ty) => {
        impl Access for $ty {
            type Value = $val;
            #[inline]
            fn read(self) -> Result<$val, VmxInstrError> {
                let (v, rflags) = vmread(self.encoding());
                if rflags & (VMFAIL_INVALID | VMFAIL_VALID) != 0 {
                    return Err(failure(rflags, "VMREAD", Some(self.name())));
                }
                Ok(v as $val)
            }
            #[inline]
            fn write(self, value: $val) -> Result<(), VmxInstrError> {
                let rflags = vmwrite(self.encoding(), value as u64);
                if rflags & (VMFAIL_INVALID | VMFAIL_VALID) != 0 {
                    return Err(failure(rflags, "VMWRITE", Some(self.name())));
                }
                Ok(())
            }
        }
    };
}

/// Typed access to the current VMCS: a field's width fixes the value type.
pub trait Access: Copy {
    type Value;
    fn read(self) -> Result<Self::Value, VmxInstrError>;
    fn write(self, value: Self::Value) -> Result<(), VmxInstrError>;
}

accessors!(Vmcs16, u16);
accessors!(Vmcs32, u32);
accessors!(Vmcs64, u64);
accessors!(VmcsNatural, u64);

/// A VMCS region (4 KiB, revision id at offset 0).
pub struct Vmcs {
    pa: u64,
}

impl Vmcs {
    pub fn new(revision_id: u32) -> Option<Self> {
        let pa = memory::alloc_zeroed(0x1000, 0x1000)?;
        // SAFETY: fresh frame; bits 30:0 of the first word are the revision identifier.
        unsafe { *(memory::phys_to_virt(pa) as *mut u32) = revision_id };
        Some(Self { pa })
    }

    /// VMCLEAR then VMPTRLD: this VMCS becomes current (and clear, so VMLAUNCH is next).
    pub fn load(&self) -> Result<(), VmxInstrError> {
        let mut rflags: u64;
        // SAFETY: VMCLEAR/VMPTRLD take the physical address of our VMCS region.
        unsafe { asm!("vmclear [{p}]", "pushfq", "pop {f}", p = in(reg) &self.pa, f = out(reg) rflags) };
        check(rflags, "VMCLEAR", None)?;
        // SAFETY: as above.
        unsafe { asm!("vmptrld [{p}]", "pushfq", "pop {f}", p = in(reg) &self.pa, f = out(reg) rflags) };
        check(rflags, "VMPTRLD", None)
    }

    /// VMCLEAR (flushes the VMCS to memory; it is no longer current) and frees the region.
    pub fn release(self) {
        // SAFETY: as in load.
        unsafe { asm!("vmclear [{p}]", p = in(reg) &self.pa, options(nostack)) };
        memory::free(self.pa, 0x1000);
    }
}

/// INVVPID of `kind` (SDM Vol. 3C §31.3 "INVVPID": 1 single-context, 2 all-context): every
/// linear and combined mapping tagged with `vpid` (or with any VPID) goes, as a guest's own
/// MOV to CR0 changing PG would have done. The caller checked IA32_VMX_EPT_VPID_CAP offers it.
pub fn invvpid(kind: u64, vpid: u16) -> Result<(), VmxInstrError> {
    let descriptor: [u64; 2] = [vpid as u64, 0];
    let rflags: u64;
    // SAFETY: INVVPID only invalidates cached translations; the descriptor is a valid
    // 16-byte operand on this stack, and failures are reported in RFLAGS.
    unsafe {
        asm!("invvpid {t}, [{d}]", "pushfq", "pop {f}", t = in(reg) kind, d = in(reg) &descriptor, f = out(reg) rflags)
    };
    check(rflags, "INVVPID", None)
}
