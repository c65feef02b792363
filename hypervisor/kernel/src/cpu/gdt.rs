//! Per-CPU GDT and TSS with IST stacks for the exceptions that must not run on a possibly
//! broken stack (#DF, NMI, #MC).

use alloc::boxed::Box;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;
const IST_STACK_SIZE: usize = 16 * 1024;

pub struct CpuTables {
    gdt: &'static GlobalDescriptorTable,
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss_sel: SegmentSelector,
    pub tss: &'static TaskStateSegment,
}

fn leak_stack() -> VirtAddr {
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
    // Stacks grow down; keep the top 16-byte aligned.
    VirtAddr::from_ptr(stack.as_ptr_range().end).align_down(16u64)
}

impl CpuTables {
    pub fn new() -> Self {
        let mut tss = TaskStateSegment::new();
        for ist in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
            tss.interrupt_stack_table[ist as usize] = leak_stack();
        }
        let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        Self { gdt: Box::leak(Box::new(gdt)), code, data, tss_sel, tss }
    }

    pub fn load(&self) {
        self.gdt.load();
        // SAFETY: the selectors index the GDT just loaded, with the segments they were made for.
        unsafe {
            CS::set_reg(self.code);
            DS::set_reg(self.data);
            ES::set_reg(self.data);
            SS::set_reg(self.data);
            load_tss(self.tss_sel);
        }
    }
}
