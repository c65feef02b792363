//! Physical memory: the frame allocator over the boot memory map, the physical-memory window
//! the bootloader maps, and the kernel heap.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::frames::{FrameAllocator, FrameError, PAGE_SIZE, PhysRange};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

const HEAP_SIZE: u64 = 8 * 1024 * 1024;
/// Real-mode code must sit below 1 MiB (a SIPI vector names a page below 0x100000).
pub const LOW_MEMORY_END: u64 = 0x10_0000;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static FRAMES: Mutex<FrameAllocator<256>> = Mutex::new(FrameAllocator::new());
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);

/// The kernel virtual address of physical address `pa` (the bootloader maps all physical
/// memory, and at least the first 4 GiB, at one offset).
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + pa) as *mut u8
}

/// Builds the frame allocator from the memory map, carves out `low_pages` pages below 1 MiB
/// for the AP trampoline (before anything else can take them) and sets up the heap.
/// Returns the physical address of the low pages.
pub fn init(phys_offset: u64, regions: &MemoryRegions, low_pages: u64) -> Result<u64, &'static str> {
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    let mut frames = FRAMES.lock();
    for r in regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        frames.add(PhysRange::new(r.start, r.end)).map_err(frame_error)?;
    }
    // Page 0 holds the real-mode IVT and BIOS data; never hand it out.
    frames.reserve(PhysRange::new(0, PAGE_SIZE)).map_err(frame_error)?;
    let low = frames
        .alloc_below(low_pages * PAGE_SIZE, PAGE_SIZE, LOW_MEMORY_END)
        .map_err(frame_error)?
        .ok_or("no usable memory below 1 MiB for the AP trampoline")?;
    let heap = frames.alloc(HEAP_SIZE, PAGE_SIZE).map_err(frame_error)?.ok_or("no memory for the kernel heap")?;
    // SAFETY: the range was just taken from the free set and is mapped by the physical window.
    unsafe { HEAP.lock().init(phys_to_virt(heap), HEAP_SIZE as usize) };
    Ok(low)
}

fn frame_error(e: FrameError) -> &'static str {
    match e {
        FrameError::TooManyRanges => "memory map has more usable ranges than the frame allocator tracks",
        FrameError::DoubleFree(_) => "memory map lists overlapping usable ranges",
        FrameError::BadRequest => "bad frame request",
    }
}

/// Allocates `size` bytes of zeroed physical memory aligned to `align`; returns the physical
/// address.
pub fn alloc_zeroed(size: u64, align: u64) -> Option<u64> {
    let pa = FRAMES.lock().alloc(size, align).ok().flatten()?;
    // SAFETY: freshly allocated, mapped by the physical window, owned by the caller from now.
    unsafe { core::ptr::write_bytes(phys_to_virt(pa), 0, size as usize) };
    Some(pa)
}

/// Returns memory from [`alloc_zeroed`].
pub fn free(pa: u64, size: u64) {
    if let Err(e) = FRAMES.lock().free(pa, size) {
        log::error!("freeing {pa:#x}+{size:#x}: {e:?}");
    }
}

pub fn free_bytes() -> u64 {
    FRAMES.lock().free_bytes()
}
