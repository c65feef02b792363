//! Task switches, which the processor does not perform in VMX non-root operation: any attempt
//! (CALL or JMP to a TSS or task gate, IRET with NT = 1, an interrupt or exception through a
//! task gate) causes a VM exit (SDM Vol. 3C §26.2), after the processor has checked the task
//! gate and, for CALL and JMP to a TSS directly, the privilege levels. The hypervisor then
//! switches the task as the processor would (SDM Vol. 3A §8.3 "Task Switching", steps 1-13,
//! and Table 8-1 for the faults and the context each is raised in), which 32-bit operating
//! systems rely on (a double-fault handler behind a task gate, say).
//!
//! Pure logic: the caller gives the old task's state and a window on guest-linear memory
//! through the paging of a given CR3; this module reads and writes the TSSs and descriptor
//! tables through it and returns the new task's state, or the fault to raise.
//!
//! Not modelled: the TSS's debug trap flag (T, a #DB with DR6.BT after the switch) and the
//! I/O permission bitmap (this hypervisor intercepts every port). A fault while loading the
//! new task's CS or SS keeps the old task's CS and SS (VM entry needs both usable), where a
//! processor would have loaded the new selectors with unusable descriptors.

/// The exit qualification of a task switch (SDM Vol. 3C §28.2.1, Table 28-2 "Exit
/// Qualification for Task Switches"): the new TSS's selector (bits 15:0) and what caused the
/// switch (bits 31:30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qualification {
    pub selector: u16,
    pub source: Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Call,
    Iret,
    Jmp,
    /// A task gate in the IDT (an interrupt, an exception, INT n).
    Gate,
}

pub fn decode(qualification: u64) -> Qualification {
    let source = match (qualification >> 30) & 3 {
        0 => Source::Call,
        1 => Source::Iret,
        2 => Source::Jmp,
        _ => Source::Gate,
    };
    Qualification { selector: qualification as u16, source }
}

/// VMX access rights: "segment unusable" (SDM Vol. 3C §25.4.1, Table 25-2).
pub const UNUSABLE: u32 = 1 << 16;
/// Access rights of every segment in virtual-8086 mode (SDM Vol. 3C §27.3.1.2).
const VM86_AR: u32 = 0xf3;

const EFLAGS_NT: u32 = 1 << 14;
const EFLAGS_VM: u32 = 1 << 17;
/// EFLAGS bit 1 always reads 1.
const EFLAGS_FIXED: u32 = 1 << 1;
const CR0_TS: u64 = 1 << 3;
/// DR7's local breakpoint enables L0-L3 and LE, cleared by every task switch (SDM Vol. 3B
/// §18.2.4).
const DR7_LOCAL: u64 = 0x155;

use crate::arch::vector::{GP, NP, PF, SS, TS};

/// Segment register indices, in the order of their encoding (ES, CS, SS, DS, FS, GS).
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS_REG: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

/// A segment register as VMX keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// In bytes (the granularity applied).
    pub limit: u32,
    /// VMX access-rights format (bits 7:0 of the descriptor's byte 5, AVL/L/D/G in 15:12, bit
    /// 16 unusable).
    pub ar: u32,
}

/// The state a task switch saves and loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub gpr: [u32; 8],
    /// For the old task: where it resumes (after CALL, JMP, IRET and INT n; at the faulting
    /// instruction for an exception; where it was for an interrupt).
    pub eip: u32,
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub cr0: u64,
    pub cr3: u64,
    pub dr7: u64,
}

/// An event the switch raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// For #PF: the linear address.
    pub cr2: Option<u64>,
}

/// Why guest memory could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// Not present (or not RAM-backed paging structures): #PF.
    NotPresent,
    /// Translates to this guest-physical address, which is not RAM.
    NotRam(u64),
}

/// Guest-linear memory through the paging rooted at a CR3 (the old task's, then the new
/// task's: its descriptor tables are read after its CR3 is loaded).
pub trait LinearMemory {
    fn read(&mut self, cr3: u64, linear: u64, buf: &mut [u8]) -> Result<(), MemError>;
    fn write(&mut self, cr3: u64, linear: u64, data: &[u8]) -> Result<(), MemError>;
}

/// What the switch came to (returned once per switch, by value: no allocation in this
/// `no_std` core).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A check before the commit point failed: nothing changed; raise this in the old task.
    Refused(Exception),
    /// The switch happened; `fault`, if any, is raised in the new task's context (Table 8-1).
    Switched { state: TaskState, fault: Option<Exception> },
    /// Memory the switch needs is not guest RAM.
    NotRam(u64),
}

/// What the caller knows about the event behind a switch through a task gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateEvent {
    /// The exception's error code, pushed on the new task's stack (SDM Vol. 3A §6.12.2).
    pub error_code: Option<u32>,
    /// The event is external to the program (an interrupt, NMI or exception other than
    /// INT n / INT3 / INTO): error codes of faults during the switch carry EXT (bit 0).
    pub external: bool,
}

/// A descriptor of the GDT or an LDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Descriptor(u64);

impl Descriptor {
    fn base(self) -> u64 {
        ((self.0 >> 16) & 0xff_ffff) | ((self.0 >> 56) & 0xff) << 24
    }
    fn limit(self) -> u32 {
        let raw = ((self.0 & 0xffff) | ((self.0 >> 48) & 0xf) << 16) as u32;
        if self.0 & (1 << 55) != 0 { raw << 12 | 0xfff } else { raw }
    }
    fn ar(self) -> u32 {
        ((self.0 >> 40) & 0xff) as u32 | (((self.0 >> 52) & 0xf) as u32) << 12
    }
    fn kind(self) -> u32 {
        self.ar() & 0xf
    }
    fn system(self) -> bool {
        self.ar() & 0x10 == 0
    }
    fn dpl(self) -> u16 {
        ((self.ar() >> 5) & 3) as u16
    }
    fn present(self) -> bool {
        self.ar() & 0x80 != 0
    }
    fn segment(self, selector: u16) -> Segment {
        Segment { selector, base: self.base(), limit: self.limit(), ar: self.ar() }
    }
}

/// TSS types (SDM Vol. 3A Table 3-2): available/busy, 16/32-bit.
const TSS16_AVAILABLE: u32 = 1;
const TSS32_AVAILABLE: u32 = 9;
const TSS_BUSY: u32 = 2;
const LDT_TYPE: u32 = 2;

/// Where the fields are in a 32-bit TSS (SDM Vol. 3A Figure 8-2) and a 16-bit one (Figure 8-11).
mod layout {
    pub const T32_CR3: usize = 28;
    pub const T32_EIP: usize = 32;
    pub const T32_EFLAGS: usize = 36;
    pub const T32_GPR: usize = 40;
    pub const T32_SEG: usize = 72;
    pub const T32_LDT: usize = 96;
    pub const T32_MIN_LIMIT: u32 = 0x67;
    pub const T16_IP: usize = 14;
    pub const T16_FLAGS: usize = 16;
    pub const T16_GPR: usize = 18;
    pub const T16_SEG: usize = 34;
    pub const T16_LDT: usize = 42;
    pub const T16_MIN_LIMIT: u32 = 0x2b;
}

fn fault(vector: u8, code: u32) -> Exception {
    Exception { vector, error_code: Some(code), cr2: None }
}

enum Stop {
    Fault(Exception),
    NotRam(u64),
}

/// The memory and tables a switch reads, with faults turned into #PF (implicit supervisor
/// accesses: U/S = 0 in the error code).
struct Access<'m, M: LinearMemory> {
    mem: &'m mut M,
    gdt_base: u64,
    gdt_limit: u32,
}

impl<M: LinearMemory> Access<'_, M> {
    fn read(&mut self, cr3: u64, linear: u64, buf: &mut [u8]) -> Result<(), Stop> {
        self.mem.read(cr3, linear, buf).map_err(|e| Self::stop(e, linear, false))
    }
    fn write(&mut self, cr3: u64, linear: u64, data: &[u8]) -> Result<(), Stop> {
        self.mem.write(cr3, linear, data).map_err(|e| Self::stop(e, linear, true))
    }
    fn stop(e: MemError, linear: u64, write: bool) -> Stop {
        match e {
            MemError::NotPresent => {
                Stop::Fault(Exception { vector: PF, error_code: Some((write as u32) << 1), cr2: Some(linear) })
            }
            MemError::NotRam(gpa) => Stop::NotRam(gpa),
        }
    }
    /// The linear address of `selector`'s descriptor in the GDT, if within its limit.
    fn gdt_slot(&self, selector: u16) -> Option<u64> {
        let at = (selector & !7) as u32;
        (at + 7 <= self.gdt_limit).then_some(self.gdt_base + at as u64)
    }
    fn descriptor(&mut self, cr3: u64, at: u64) -> Result<Descriptor, Stop> {
        let mut b = [0u8; 8];
        self.read(cr3, at, &mut b)?;
        Ok(Descriptor(u64::from_le_bytes(b)))
    }
    /// Rewrites the type byte (byte 5) of the descriptor at `at`.
    fn set_type_byte(&mut self, cr3: u64, at: u64, d: Descriptor) -> Result<(), Stop> {
        self.write(cr3, at + 5, &[(d.0 >> 40) as u8])
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Switches from `old` to the task whose TSS `q.selector` names, as the processor would.
/// `gdt` is the GDTR (base, limit); `gate` describes the event of a switch through a task gate.
pub fn switch(
    mem: &mut impl LinearMemory,
    gdt: (u64, u32),
    old: &TaskState,
    q: Qualification,
    gate: GateEvent,
) -> Outcome {
    let mut a = Access { mem, gdt_base: gdt.0, gdt_limit: gdt.1 };
    match switch_inner(&mut a, old, q, gate) {
        Ok(o) => o,
        Err(Stop::Fault(e)) => Outcome::Refused(e),
        Err(Stop::NotRam(gpa)) => Outcome::NotRam(gpa),
    }
}

fn switch_inner<M: LinearMemory>(
    a: &mut Access<'_, M>,
    old: &TaskState,
    q: Qualification,
    gate: GateEvent,
) -> Result<Outcome, Stop> {
    let ext = (q.source == Source::Gate && gate.external) as u32;
    let sel = q.selector;
    let code = (sel & 0xfffc) as u32 | ext;
    let iret = q.source == Source::Iret;
    // Steps 3-4 and Table 8-1, before the commit point: faults in the old task's context.
    // A selector that does not name a TSS descriptor: #GP, or #TS for IRET (IRET's pseudo-code).
    let refuse = |vector| Err(Stop::Fault(fault(vector, code)));
    let not_tss = if iret { TS } else { GP };
    let Some(new_slot) = a.gdt_slot(sel).filter(|_| sel & 4 == 0 && sel & !7 != 0) else {
        return refuse(not_tss);
    };
    let new_desc = a.descriptor(old.cr3, new_slot)?;
    if !new_desc.system() || !matches!(new_desc.kind() & !TSS_BUSY, TSS16_AVAILABLE | TSS32_AVAILABLE) {
        return refuse(not_tss);
    }
    let busy = new_desc.kind() & TSS_BUSY != 0;
    if iret && !busy {
        return refuse(TS);
    }
    if !iret && busy {
        return refuse(GP);
    }
    if !new_desc.present() {
        return refuse(NP);
    }
    let new32 = new_desc.kind() & 8 != 0;
    let min = if new32 { layout::T32_MIN_LIMIT } else { layout::T16_MIN_LIMIT };
    if new_desc.limit() < min {
        return refuse(TS);
    }
    // Step 5: every page the switch touches is there before anything is written.
    let mut image = [0u8; 0x68];
    let image = &mut image[..min as usize + 1];
    a.read(old.cr3, new_desc.base(), image)?;
    let old32 = old.tr.ar & 8 != 0;
    let old_slot = a.gdt_slot(old.tr.selector);
    let old_desc = match old_slot {
        Some(at) => Some(a.descriptor(old.cr3, at)?),
        None => None,
    };
    // Steps 6-8: the old task's state into its TSS, NT cleared in the image for IRET, and the
    // old TSS no longer busy after JMP or IRET.
    let eflags = if iret { old.eflags & !EFLAGS_NT } else { old.eflags };
    let mut saved = [0u8; 64];
    let (at, len) = if old32 {
        saved[0..4].copy_from_slice(&old.eip.to_le_bytes());
        saved[4..8].copy_from_slice(&eflags.to_le_bytes());
        for (i, r) in old.gpr.iter().enumerate() {
            saved[8 + i * 4..12 + i * 4].copy_from_slice(&r.to_le_bytes());
        }
        for (i, s) in old.seg.iter().enumerate() {
            saved[40 + i * 4..42 + i * 4].copy_from_slice(&s.selector.to_le_bytes());
        }
        // Selector slots are 16 bits with 16 reserved: keep what the TSS holds there.
        let mut tss = [0u8; 64];
        a.read(old.cr3, old.tr.base + layout::T32_EIP as u64, &mut tss)?;
        for i in 0..6 {
            saved[42 + i * 4..44 + i * 4].copy_from_slice(&tss[42 + i * 4..44 + i * 4]);
        }
        (old.tr.base + layout::T32_EIP as u64, 64)
    } else {
        saved[0..2].copy_from_slice(&(old.eip as u16).to_le_bytes());
        saved[2..4].copy_from_slice(&(eflags as u16).to_le_bytes());
        for (i, r) in old.gpr.iter().enumerate() {
            saved[4 + i * 2..6 + i * 2].copy_from_slice(&(*r as u16).to_le_bytes());
        }
        for (i, s) in old.seg[..4].iter().enumerate() {
            saved[20 + i * 2..22 + i * 2].copy_from_slice(&s.selector.to_le_bytes());
        }
        (old.tr.base + layout::T16_IP as u64, 28)
    };
    a.write(old.cr3, at, &saved[..len])?;
    if let (Some(at), Some(d), Source::Jmp | Source::Iret) = (old_slot, old_desc, q.source) {
        a.set_type_byte(old.cr3, at, Descriptor(d.0 & !((TSS_BUSY as u64) << 40)))?;
    }
    // The new TSS again: it may be the old one (a task returning to itself).
    a.read(old.cr3, new_desc.base(), image)?;
    // Steps 9-10: the back link and NT for a nested task, the new TSS busy.
    let nested = matches!(q.source, Source::Call | Source::Gate);
    if nested {
        a.write(old.cr3, new_desc.base(), &old.tr.selector.to_le_bytes())?;
    }
    let busy_desc = Descriptor(new_desc.0 | (TSS_BUSY as u64) << 40);
    if !iret {
        a.set_type_byte(old.cr3, new_slot, busy_desc)?;
    }

    // Step 11, the commit point: TR, CR0.TS. From here faults belong to the new task.
    let mut new = TaskState {
        tr: busy_desc.segment(sel),
        cr0: old.cr0 | CR0_TS,
        dr7: old.dr7 & !DR7_LOCAL,
        cr3: old.cr3,
        ..*old
    };
    let (selectors, ldt) = if new32 {
        new.cr3 = u32_at(image, layout::T32_CR3) as u64;
        new.eip = u32_at(image, layout::T32_EIP);
        new.eflags = u32_at(image, layout::T32_EFLAGS);
        for (i, r) in new.gpr.iter_mut().enumerate() {
            *r = u32_at(image, layout::T32_GPR + i * 4);
        }
        (core::array::from_fn::<u16, 6, _>(|i| u16_at(image, layout::T32_SEG + i * 4)), u16_at(image, layout::T32_LDT))
    } else {
        new.eip = u16_at(image, layout::T16_IP) as u32;
        new.eflags = u16_at(image, layout::T16_FLAGS) as u32;
        for (i, r) in new.gpr.iter_mut().enumerate() {
            *r = u16_at(image, layout::T16_GPR + i * 2) as u32;
        }
        // A 16-bit TSS has no FS and GS: they are loaded null.
        let s = |i: usize| if i < 4 { u16_at(image, layout::T16_SEG + i * 2) } else { 0 };
        (core::array::from_fn::<u16, 6, _>(s), u16_at(image, layout::T16_LDT))
    };
    new.eflags |= EFLAGS_FIXED;
    if nested {
        new.eflags |= EFLAGS_NT;
    }
    // Steps 12-13: LDTR, then the segment registers, checked as Table 8-1 lists.
    let fault = match load_segments(a, &mut new, old, selectors, ldt, ext) {
        Ok(()) => None,
        Err(Stop::NotRam(gpa)) => return Err(Stop::NotRam(gpa)),
        Err(Stop::Fault(e)) => Some(e),
    };
    // An exception with an error code pushes it on the new task's stack (SDM Vol. 3A §6.12.2).
    let fault = match (fault, gate.error_code) {
        (None, Some(code)) => push_error_code(a, &mut new, new32, code)?,
        (f, _) => f,
    };
    Ok(Outcome::Switched { state: new, fault })
}

/// Loads LDTR and the segment registers of the new task; on a fault the registers not yet
/// loaded hold their new selectors and are unusable (CS and SS keep the old task's).
fn load_segments<M: LinearMemory>(
    a: &mut Access<'_, M>,
    new: &mut TaskState,
    old: &TaskState,
    selectors: [u16; 6],
    ldt: u16,
    ext: u32,
) -> Result<(), Stop> {
    for (i, s) in selectors.iter().enumerate() {
        if i != CS && i != SS_REG {
            new.seg[i] = Segment { selector: *s, ar: UNUSABLE, ..Segment::default() };
        }
    }
    new.ldtr = Segment { selector: ldt, ar: UNUSABLE, ..Segment::default() };
    let err = |vector: u8, sel: u16| Err(Stop::Fault(fault(vector, (sel & 0xfffc) as u32 | ext)));
    // LDTR: null leaves it unusable; else a present LDT descriptor in the GDT, or #TS.
    if ldt & !3 != 0 {
        let Some(at) = a.gdt_slot(ldt).filter(|_| ldt & 4 == 0) else { return err(TS, ldt) };
        let d = a.descriptor(new.cr3, at)?;
        if !d.system() || d.kind() != LDT_TYPE || !d.present() {
            return err(TS, ldt);
        }
        new.ldtr = d.segment(ldt);
    }
    if new.eflags & EFLAGS_VM != 0 {
        // Virtual-8086 mode: base = selector × 16, 64 KiB, CPL 3 (SDM Vol. 3A §20.2.1).
        for (i, s) in selectors.iter().enumerate() {
            new.seg[i] = Segment { selector: *s, base: (*s as u64) << 4, limit: 0xffff, ar: VM86_AR };
        }
        return Ok(());
    }
    let cs_sel = selectors[CS];
    let cpl = cs_sel & 3;
    // CS: a present code segment whose DPL equals the RPL (non-conforming) or is at most it
    // (conforming).
    let (cs_at, cs) = match descriptor_of(a, new, cs_sel)? {
        Some((at, d)) if !d.system() && d.kind() & 8 != 0 => (at, d),
        _ => return keep_old_stack(new, old, err(TS, cs_sel)),
    };
    let conforming = cs.kind() & 4 != 0;
    if (!conforming && cs.dpl() != cpl) || (conforming && cs.dpl() > cpl) {
        return keep_old_stack(new, old, err(TS, cs_sel));
    }
    if !cs.present() {
        return keep_old_stack(new, old, err(NP, cs_sel));
    }
    // SS: a present writable data segment with RPL = DPL = CPL.
    let ss_sel = selectors[SS_REG];
    let (ss_at, ss) = match descriptor_of(a, new, ss_sel)? {
        Some((at, d)) if !d.system() && d.kind() & 0b1010 == 0b0010 && ss_sel & 3 == cpl && d.dpl() == cpl => (at, d),
        _ => return keep_old_stack(new, old, err(TS, ss_sel)),
    };
    if !ss.present() {
        return keep_old_stack(new, old, err(SS, ss_sel));
    }
    new.seg[CS] = accessed(a, new.cr3, cs_at, cs_sel, cs)?;
    new.seg[SS_REG] = accessed(a, new.cr3, ss_at, ss_sel, ss)?;
    // DS, ES, FS, GS: null is unusable; else data or readable code, DPL ≥ CPL and RPL unless
    // conforming code, present.
    for i in [ES, DS, FS, GS] {
        let sel = selectors[i];
        let Some((at, d)) = descriptor_of(a, new, sel)? else {
            if sel & !3 == 0 {
                continue;
            }
            return err(TS, sel);
        };
        let code = d.kind() & 8 != 0;
        let readable = !code || d.kind() & 2 != 0;
        let conforming_code = code && d.kind() & 4 != 0;
        if d.system() || !readable || (!conforming_code && (d.dpl() < cpl || d.dpl() < sel & 3)) {
            return err(TS, sel);
        }
        if !d.present() {
            return err(NP, sel);
        }
        new.seg[i] = accessed(a, new.cr3, at, sel, d)?;
    }
    Ok(())
}

/// On a CS or SS fault the old task's CS and SS stay (VM entry needs both usable).
fn keep_old_stack(new: &mut TaskState, old: &TaskState, r: Result<(), Stop>) -> Result<(), Stop> {
    new.seg[CS] = old.seg[CS];
    new.seg[SS_REG] = old.seg[SS_REG];
    r
}

/// The descriptor `selector` names, through the GDT or the new task's LDT; `None` for a null
/// selector or one beyond its table's limit.
fn descriptor_of<M: LinearMemory>(
    a: &mut Access<'_, M>,
    new: &TaskState,
    selector: u16,
) -> Result<Option<(u64, Descriptor)>, Stop> {
    let at = if selector & 4 != 0 {
        let index = (selector & !7) as u32;
        if new.ldtr.ar & UNUSABLE != 0 || index + 7 > new.ldtr.limit {
            return Ok(None);
        }
        new.ldtr.base + index as u64
    } else {
        if selector & !3 == 0 {
            return Ok(None);
        }
        match a.gdt_slot(selector) {
            Some(at) => at,
            None => return Ok(None),
        }
    };
    Ok(Some((at, a.descriptor(new.cr3, at)?)))
}

/// The segment register for `d`, its accessed bit set in the table as loading a segment
/// register does (SDM Vol. 3A §3.4.5.1).
fn accessed<M: LinearMemory>(
    a: &mut Access<'_, M>,
    cr3: u64,
    at: u64,
    selector: u16,
    d: Descriptor,
) -> Result<Segment, Stop> {
    let d = if d.kind() & 1 == 0 {
        let set = Descriptor(d.0 | 1 << 40);
        a.set_type_byte(cr3, at, set)?;
        set
    } else {
        d
    };
    Ok(d.segment(selector))
}

/// Pushes an exception's error code on the new task's stack: a doubleword for a 32-bit TSS, a
/// word for a 16-bit one, at SS:ESP (SP for a 16-bit stack segment).
fn push_error_code<M: LinearMemory>(
    a: &mut Access<'_, M>,
    new: &mut TaskState,
    new32: bool,
    code: u32,
) -> Result<Option<Exception>, Stop> {
    let size = if new32 { 4 } else { 2 };
    let esp = new.gpr[4];
    let big = new.seg[SS_REG].ar & (1 << 14) != 0;
    let esp = if big { esp.wrapping_sub(size) } else { (esp & 0xffff_0000) | (esp.wrapping_sub(size) & 0xffff) };
    let offset = if big { esp } else { esp & 0xffff };
    let bytes = code.to_le_bytes();
    match a.write(new.cr3, new.seg[SS_REG].base + offset as u64, &bytes[..size as usize]) {
        Ok(()) => {
            new.gpr[4] = esp;
            Ok(None)
        }
        Err(Stop::Fault(e)) => Ok(Some(e)),
        Err(other) => Err(other),
    }
}

/// The exception a fault met while delivering `first` (an exception through a task gate)
/// becomes (SDM Vol. 3A §6.15, Table 6-5): a contributory fault (#DE, #TS, #NP, #SS, #GP) or a
/// #PF after a contributory one, or anything but a benign one after a #PF, is a double fault;
/// `None` where a double fault meets another: the processor shuts down (a triple fault).
pub fn combine(first: Option<u8>, second: u8) -> Option<u8> {
    const DF: u8 = 8;
    let contributory = |v: u8| matches!(v, 0 | TS | NP | SS | GP);
    match first {
        Some(DF) if contributory(second) || second == PF => None,
        Some(f) if contributory(f) && contributory(second) => Some(DF),
        Some(PF) if contributory(second) || second == PF => Some(DF),
        _ => Some(second),
    }
}

#[cfg(test)]
mod tests;
