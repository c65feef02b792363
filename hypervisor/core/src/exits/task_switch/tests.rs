use super::*;
use alloc::vec;
use alloc::vec::Vec;

/// Flat guest memory (paging ignored: linear = physical), with an optional hole.
struct Mem {
    bytes: Vec<u8>,
    hole: Option<core::ops::Range<u64>>,
    cr3s: Vec<u64>,
}

impl Mem {
    fn check(&mut self, cr3: u64, at: u64, len: usize) -> Result<usize, MemError> {
        self.cr3s.push(cr3);
        if let Some(h) = &self.hole
            && at < h.end
            && at + len as u64 > h.start
        {
            return Err(MemError::NotPresent);
        }
        if at as usize + len > self.bytes.len() {
            return Err(MemError::NotRam(at));
        }
        Ok(at as usize)
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.bytes[at..at + 2].try_into().unwrap())
    }
    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(&mut self, at: usize, v: u64) {
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// The type nibble of GDT entry `sel`.
    fn gdt_type(&self, sel: u16) -> u8 {
        self.bytes[GDT as usize + (sel & !7) as usize + 5] & 0xf
    }
}

impl LinearMemory for Mem {
    fn read(&mut self, cr3: u64, linear: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let at = self.check(cr3, linear, buf.len())?;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, cr3: u64, linear: u64, data: &[u8]) -> Result<(), MemError> {
        let at = self.check(cr3, linear, data.len())?;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

const GDT: u64 = 0x1000;
const GDT_LIMIT: u32 = 0x57;
const TSS_A: u64 = 0x2000;
const TSS_B: u64 = 0x3000;
const TSS_16: u64 = 0x4000;
const LDT: u64 = 0x5000;
const SEL_CODE: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_A: u16 = 0x18;
const SEL_B: u16 = 0x20;
const SEL_16: u16 = 0x28;
const SEL_LDT: u16 = 0x30;
const SEL_ABSENT: u16 = 0x38;
const SEL_SHORT: u16 = 0x40;
const SEL_DATA_ABSENT: u16 = 0x48;
const SEL_DATA_IN_LDT: u16 = 0x0c | 4; // LDT entry 1, TI = 1

/// A descriptor from base, limit (20 bits), access byte and flags nibble (G, D/B, L, AVL).
fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | (base as u64 & 0xff_ffff) << 16
        | (access as u64) << 40
        | ((limit as u64 >> 16) & 0xf) << 48
        | (flags as u64 & 0xf) << 52
        | (base as u64 >> 24) << 56
}

fn machine() -> Mem {
    let mut m = Mem { bytes: vec![0; 0x10000], hole: None, cr3s: Vec::new() };
    let g = GDT as usize;
    m.put64(g + 0x08, desc(0, 0xfffff, 0x9a, 0xc));
    m.put64(g + 0x10, desc(0, 0xfffff, 0x92, 0xc));
    m.put64(g + 0x18, desc(TSS_A as u32, 0x67, 0x8b, 0)); // busy: the current task
    m.put64(g + 0x20, desc(TSS_B as u32, 0x67, 0x89, 0));
    m.put64(g + 0x28, desc(TSS_16 as u32, 0x2b, 0x81, 0));
    m.put64(g + 0x30, desc(LDT as u32, 0xf, 0x82, 0));
    m.put64(g + 0x38, desc(TSS_B as u32, 0x67, 0x09, 0)); // not present
    m.put64(g + 0x40, desc(TSS_B as u32, 0x60, 0x89, 0)); // limit below 67H
    m.put64(g + 0x48, desc(0, 0xfffff, 0x12, 0xc)); // data, not present
    m.put64(LDT as usize + 8, desc(0x7000, 0xffff, 0x93, 0x4));
    // Task B: CR3, EIP, EFLAGS, registers, selectors.
    let b = TSS_B as usize;
    m.put32(b + 28, 0xa000);
    m.put32(b + 32, 0x5678);
    m.put32(b + 36, 0x202);
    for i in 0..8 {
        m.put32(b + 40 + i * 4, 0x1100 + i as u32);
    }
    for (i, s) in [SEL_DATA, SEL_CODE, SEL_DATA, SEL_DATA, 0, SEL_DATA].iter().enumerate() {
        m.put16(b + 72 + i * 4, *s);
    }
    m.put16(b + 74, 0xbeef); // a reserved half next to ES, to be kept
    // The 16-bit task.
    let t = TSS_16 as usize;
    m.put16(t + 14, 0x0100);
    m.put16(t + 16, 0x0002);
    for i in 0..8 {
        m.put16(t + 18 + i * 2, 0x20 + i as u16);
    }
    for (i, s) in [SEL_DATA, SEL_CODE, SEL_DATA, SEL_DATA].iter().enumerate() {
        m.put16(t + 34 + i * 2, *s);
    }
    m
}

fn seg(selector: u16, base: u64, limit: u32, ar: u32) -> Segment {
    Segment { selector, base, limit, ar }
}

/// Task A, running.
fn task_a() -> TaskState {
    let data = seg(SEL_DATA, 0, 0xffff_ffff, 0xc093);
    TaskState {
        gpr: [1, 2, 3, 4, 0x8000, 6, 7, 8],
        eip: 0x1234,
        eflags: 0x202,
        seg: [data, seg(SEL_CODE, 0, 0xffff_ffff, 0xc09b), data, data, data, data],
        ldtr: Segment { ar: UNUSABLE, ..Segment::default() },
        tr: seg(SEL_A, TSS_A, 0x67, 0x8b),
        cr0: 0x8000_0011,
        cr3: 0x9000,
        dr7: 0x455,
    }
}

fn go(m: &mut Mem, old: &TaskState, selector: u16, source: Source, gate: GateEvent) -> Outcome {
    switch(m, (GDT, GDT_LIMIT), old, Qualification { selector, source }, gate)
}

fn switched(o: Outcome) -> TaskState {
    match o {
        Outcome::Switched { state, fault: None } => state,
        other => panic!("expected a clean switch, got {other:?}"),
    }
}

fn refused(o: Outcome) -> (u8, u32) {
    match o {
        Outcome::Refused(e) => (e.vector, e.error_code.unwrap_or(u32::MAX)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn qualification_decodes() {
    assert_eq!(decode(0x20), Qualification { selector: 0x20, source: Source::Call });
    assert_eq!(decode(1 << 30 | 0x18), Qualification { selector: 0x18, source: Source::Iret });
    assert_eq!(decode(2 << 30 | 0x28), Qualification { selector: 0x28, source: Source::Jmp });
    assert_eq!(decode(3 << 30 | 0x30), Qualification { selector: 0x30, source: Source::Gate });
}

#[test]
fn jmp_saves_the_old_task_loads_the_new_and_moves_the_busy_bit() {
    let mut m = machine();
    let new = switched(go(&mut m, &task_a(), SEL_B, Source::Jmp, GateEvent::default()));
    // The old task's state in its TSS.
    let a = TSS_A as usize;
    assert_eq!((m.u32(a + 32), m.u32(a + 36)), (0x1234, 0x202));
    assert_eq!((0..8).map(|i| m.u32(a + 40 + i * 4)).collect::<Vec<_>>(), [1, 2, 3, 4, 0x8000, 6, 7, 8]);
    assert_eq!(m.u16(a + 76), SEL_CODE);
    assert_eq!(m.u16(a), 0, "no back link for JMP");
    // JMP: the old task is available again, the new one busy.
    assert_eq!((m.gdt_type(SEL_A), m.gdt_type(SEL_B)), (9, 0xb));
    // The new task.
    assert_eq!((new.eip, new.eflags, new.cr3), (0x5678, 0x202, 0xa000));
    assert_eq!(new.gpr, core::array::from_fn(|i| 0x1100 + i as u32));
    assert_eq!(new.tr, seg(SEL_B, TSS_B, 0x67, 0x8b));
    assert_eq!(new.cr0, 0x8000_0019, "CR0.TS set");
    assert_eq!(new.dr7, 0x400, "local breakpoint enables cleared");
    assert_eq!(new.seg[CS], seg(SEL_CODE, 0, 0xffff_ffff, 0xc09b));
    assert_eq!(new.seg[DS], seg(SEL_DATA, 0, 0xffff_ffff, 0xc093), "accessed bit set");
    assert_eq!(m.bytes[GDT as usize + 0x10 + 5], 0x93, "and written back to the GDT");
    assert_eq!(new.seg[FS].ar, UNUSABLE, "a null selector leaves FS unusable");
    assert_eq!(new.ldtr.ar, UNUSABLE);
    // The new task's descriptors were read through its CR3.
    assert_eq!(m.cr3s.last(), Some(&0xa000));
}

#[test]
fn call_links_the_tasks_and_iret_returns() {
    let mut m = machine();
    let a = task_a();
    let b = switched(go(&mut m, &a, SEL_B, Source::Call, GateEvent::default()));
    assert_eq!(m.u16(TSS_B as usize), SEL_A, "back link");
    assert_ne!(b.eflags & EFLAGS_NT, 0, "NT set in the nested task");
    assert_eq!((m.gdt_type(SEL_A), m.gdt_type(SEL_B)), (0xb, 0xb), "both busy");
    // The nested task returns with IRET to its back link.
    let mut b_running = b;
    b_running.eip = 0x5700;
    b_running.gpr[0] = 0xdead;
    let back = switched(go(&mut m, &b_running, SEL_A, Source::Iret, GateEvent::default()));
    assert_eq!((m.gdt_type(SEL_A), m.gdt_type(SEL_B)), (0xb, 9), "B available, A still busy");
    assert_eq!(m.u32(TSS_B as usize + 36) & EFLAGS_NT, 0, "NT cleared in B's saved EFLAGS");
    assert_eq!(m.u32(TSS_B as usize + 40), 0xdead);
    assert_eq!(m.u16(TSS_B as usize + 74), 0xbeef, "reserved halves of selector slots kept");
    assert_eq!((back.eip, back.gpr, back.eflags & EFLAGS_NT), (0x1234, a.gpr, 0));
    assert_eq!(back.tr.selector, SEL_A);
}

#[test]
fn a_task_gate_pushes_the_error_code_on_the_new_stack() {
    let mut m = machine();
    let gate = GateEvent { error_code: Some(0x10), external: true };
    let new = switched(go(&mut m, &task_a(), SEL_B, Source::Gate, gate));
    assert_eq!(new.gpr[4], 0x1104 - 4);
    assert_eq!(m.u32(0x1104 - 4), 0x10);
    assert_eq!(m.u16(TSS_B as usize), SEL_A, "an exception nests like CALL");
}

#[test]
fn checks_before_the_commit_point_refuse_in_the_old_task() {
    let a = task_a();
    let mut m = machine();
    m.put64(GDT as usize + 0x20, desc(TSS_B as u32, 0x67, 0x8b, 0));
    assert_eq!(refused(go(&mut m, &a, SEL_B, Source::Jmp, GateEvent::default())), (GP, SEL_B as u32));
    let mut m = machine();
    assert_eq!(refused(go(&mut m, &a, SEL_B, Source::Iret, GateEvent::default())), (TS, SEL_B as u32));
    assert_eq!(refused(go(&mut m, &a, SEL_ABSENT, Source::Call, GateEvent::default())), (NP, SEL_ABSENT as u32));
    assert_eq!(refused(go(&mut m, &a, SEL_SHORT, Source::Call, GateEvent::default())), (TS, SEL_SHORT as u32));
    assert_eq!(refused(go(&mut m, &a, SEL_CODE, Source::Jmp, GateEvent::default())), (GP, SEL_CODE as u32));
    assert_eq!(refused(go(&mut m, &a, 0x60, Source::Jmp, GateEvent::default())), (GP, 0x60), "past the GDT limit");
    assert_eq!(refused(go(&mut m, &a, SEL_B | 4, Source::Jmp, GateEvent::default())), (GP, (SEL_B | 4) as u32));
    let ext = GateEvent { error_code: None, external: true };
    assert_eq!(refused(go(&mut m, &a, SEL_ABSENT, Source::Gate, ext)), (NP, SEL_ABSENT as u32 | 1), "EXT");
    // Nothing was written by any of them.
    assert_eq!((m.gdt_type(SEL_A), m.gdt_type(SEL_B)), (0xb, 9));
    assert_eq!(m.u32(TSS_A as usize + 32), 0);
    // A TSS page that is not present: #PF with the address, nothing written.
    let mut m = machine();
    m.hole = Some(TSS_B..TSS_B + 0x1000);
    match go(&mut m, &a, SEL_B, Source::Jmp, GateEvent::default()) {
        Outcome::Refused(e) => assert_eq!((e.vector, e.cr2), (PF, Some(TSS_B))),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.gdt_type(SEL_A), 0xb);
    // Memory that is not RAM.
    let mut m = machine();
    m.put64(GDT as usize + 0x20, desc(0x20_0000, 0x67, 0x89, 0));
    assert_eq!(go(&mut m, &a, SEL_B, Source::Jmp, GateEvent::default()), Outcome::NotRam(0x20_0000));
}

#[test]
fn segment_faults_after_the_commit_point_belong_to_the_new_task() {
    let a = task_a();
    let cases: [(usize, u16, u8); 5] = [
        (76, SEL_DATA, TS),        // CS: a data segment
        (80, SEL_CODE, TS),        // SS: a code segment
        (80, 0, TS),               // SS: null
        (84, SEL_DATA_ABSENT, NP), // DS: not present
        (84, 0x50 | 3, TS),        // DS: past the GDT limit
    ];
    for (at, sel, vector) in cases {
        let mut m = machine();
        m.put16(TSS_B as usize + at, sel);
        match go(&mut m, &a, SEL_B, Source::Jmp, GateEvent::default()) {
            Outcome::Switched { state, fault: Some(e) } => {
                assert_eq!((e.vector, e.error_code), (vector, Some((sel & 0xfffc) as u32)), "{at} {sel:#x}");
                assert_eq!(state.tr.selector, SEL_B, "TR already the new task's");
                assert_eq!(state.eip, 0x5678);
                if at != 84 {
                    assert_eq!((state.seg[CS], state.seg[SS_REG]), (a.seg[CS], a.seg[SS_REG]));
                }
            }
            other => panic!("{at} {sel:#x}: {other:?}"),
        }
    }
    // A stack segment that is not present: #SS.
    let mut m = machine();
    m.put64(GDT as usize + 0x48, desc(0, 0xfffff, 0x12, 0xc));
    m.put16(TSS_B as usize + 80, SEL_DATA_ABSENT);
    match go(&mut m, &a, SEL_B, Source::Jmp, GateEvent::default()) {
        Outcome::Switched { fault: Some(e), .. } => assert_eq!(e.vector, SS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_ldt_and_segments_in_it() {
    let mut m = machine();
    m.put16(TSS_B as usize + 96, SEL_LDT);
    m.put16(TSS_B as usize + 88, SEL_DATA_IN_LDT);
    let new = switched(go(&mut m, &task_a(), SEL_B, Source::Jmp, GateEvent::default()));
    assert_eq!(new.ldtr, seg(SEL_LDT, LDT, 0xf, 0x82));
    assert_eq!(new.seg[FS], seg(SEL_DATA_IN_LDT, 0x7000, 0xffff, 0x4093));
    // An LDT selector that is not an LDT: #TS in the new task.
    let mut m = machine();
    m.put16(TSS_B as usize + 96, SEL_DATA);
    match go(&mut m, &task_a(), SEL_B, Source::Jmp, GateEvent::default()) {
        Outcome::Switched { fault: Some(e), state } => {
            assert_eq!((e.vector, e.error_code), (TS, Some(SEL_DATA as u32)));
            assert_eq!(state.ldtr.ar, UNUSABLE);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_16_bit_tss() {
    let mut m = machine();
    let new = switched(go(&mut m, &task_a(), SEL_16, Source::Call, GateEvent::default()));
    assert_eq!((new.eip, new.eflags & !EFLAGS_NT), (0x100, 2));
    assert_eq!(new.gpr, core::array::from_fn(|i| 0x20 + i as u32));
    assert_eq!(new.cr3, 0x9000, "a 16-bit TSS has no CR3");
    assert_eq!((new.seg[FS].ar, new.seg[GS].ar), (UNUSABLE, UNUSABLE));
    assert_eq!(new.tr.ar, 0x83, "busy 16-bit TSS");
    // Back to the 32-bit task, saving the 16-bit one's state in 16-bit slots.
    let mut t = new;
    t.gpr[0] = 0x1_2345;
    t.eip = 0x1_0200;
    let back = switched(go(&mut m, &t, SEL_A, Source::Iret, GateEvent::default()));
    assert_eq!(back.tr.selector, SEL_A);
    assert_eq!((m.u16(TSS_16 as usize + 14), m.u16(TSS_16 as usize + 18)), (0x0200, 0x2345));
}

#[test]
fn virtual_8086_mode_segments() {
    let mut m = machine();
    m.put32(TSS_B as usize + 36, 0x2_0202);
    for (i, s) in [0x1000u16, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000].iter().enumerate() {
        m.put16(TSS_B as usize + 72 + i * 4, *s);
    }
    let new = switched(go(&mut m, &task_a(), SEL_B, Source::Jmp, GateEvent::default()));
    assert_eq!(new.seg[CS], seg(0x2000, 0x2_0000, 0xffff, 0xf3));
    assert_eq!(new.seg[GS], seg(0x6000, 0x6_0000, 0xffff, 0xf3));
}

#[test]
fn faults_during_an_exception_become_double_faults_as_table_6_5_says() {
    assert_eq!(combine(None, TS), Some(TS));
    assert_eq!(combine(Some(GP), TS), Some(8));
    assert_eq!(combine(Some(GP), PF), Some(PF), "contributory then #PF: the #PF");
    assert_eq!(combine(Some(PF), NP), Some(8));
    assert_eq!(combine(Some(PF), PF), Some(8));
    assert_eq!(combine(Some(3), GP), Some(GP), "benign first");
    assert_eq!(combine(Some(8), GP), None, "a fault while delivering #DF shuts down");
    assert_eq!(combine(Some(8), 3), Some(3));
}

proptest::proptest! {
    /// Whatever a guest puts in its GDT, TSSs and registers, the switch ends in an outcome
    /// (never a panic), and a refusal writes nothing.
    #[test]
    fn any_tables_and_state_end_in_an_outcome(
        gdt in proptest::collection::vec(proptest::prelude::any::<u64>(), 12),
        tss in proptest::collection::vec(proptest::prelude::any::<u8>(), 0x68),
        selector in proptest::prelude::any::<u16>(),
        source in 0u64..4,
        gdt_limit in 0u32..0x80,
        tr_selector in proptest::prelude::any::<u16>(),
        tr_ar in proptest::prelude::any::<u32>(),
        error_code in proptest::option::of(proptest::prelude::any::<u32>()),
    ) {
        let mut m = machine();
        for (i, d) in gdt.iter().enumerate() {
            // Keep bases inside the small memory now and then, so switches get far.
            let d = if i % 2 == 0 { *d & !(0xff00_00ff_ffff_0000) | (TSS_B << 16) } else { *d };
            m.put64(GDT as usize + i * 8, d);
        }
        m.bytes[TSS_B as usize..TSS_B as usize + 0x68].copy_from_slice(&tss);
        let before = m.bytes.clone();
        let mut a = task_a();
        a.tr = seg(tr_selector, TSS_A, 0x67, tr_ar);
        let q = decode(source << 30 | selector as u64);
        let gate = GateEvent { error_code, external: true };
        match switch(&mut m, (GDT, gdt_limit), &a, q, gate) {
            Outcome::Refused(_) => proptest::prop_assert!(m.bytes == before, "a refusal wrote memory"),
            Outcome::Switched { state, .. } => proptest::prop_assert_eq!(state.tr.selector, selector),
            Outcome::NotRam(_) => {}
        }
    }
}
