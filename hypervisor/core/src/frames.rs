//! Physical memory as a set of free ranges: single 4 KiB frames and large, aligned, contiguous
//! blocks (VMCS pages, EPT tables, guest RAM) come from the same allocator.
//!
//! Fixed capacity and no heap, so the kernel can use it before its heap exists. Ranges are kept
//! sorted and merged; allocation is first-fit (lowest address) so low memory, which the AP
//! trampoline needs, is not consumed by accident once it has been carved out.

pub const PAGE_SIZE: u64 = 4096;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More disjoint free ranges than the allocator can track.
    TooManyRanges,
    /// A freed range overlaps memory that is already free (double free or corrupt bookkeeping).
    DoubleFree(PhysRange),
    /// Size zero, size or address not page-aligned, or alignment not a power of two.
    BadRequest,
}

/// The free physical memory, as at most `N` sorted, disjoint, non-adjacent ranges.
pub struct FrameAllocator<const N: usize> {
    ranges: [PhysRange; N],
    len: usize,
}

impl<const N: usize> Default for FrameAllocator<N> {
    fn default() -> Self {
        Self::new()
    }
}

const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

impl<const N: usize> FrameAllocator<N> {
    pub const fn new() -> Self {
        Self { ranges: [PhysRange::new(0, 0); N], len: 0 }
    }

    /// The free ranges, lowest first.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.ranges().iter().map(PhysRange::len).sum()
    }

    /// Adds usable memory. The range is shrunk inwards to page boundaries; what overlaps memory
    /// already free is an error (the memory map listed it twice).
    pub fn add(&mut self, range: PhysRange) -> Result<(), FrameError> {
        let r = PhysRange::new(align_up(range.start, PAGE_SIZE), range.end & !(PAGE_SIZE - 1));
        if r.is_empty() {
            return Ok(());
        }
        self.insert_free(r)
    }

    /// Gives back a block obtained from [`Self::alloc`].
    pub fn free(&mut self, start: u64, size: u64) -> Result<(), FrameError> {
        if size == 0 || !start.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::BadRequest);
        }
        self.insert_free(PhysRange::new(start, start + size))
    }

    fn insert_free(&mut self, r: PhysRange) -> Result<(), FrameError> {
        // First range that starts at or after r.start.
        let i = self.ranges().partition_point(|x| x.start < r.start);
        if (i > 0 && self.ranges[i - 1].end > r.start) || (i < self.len && self.ranges[i].start < r.end) {
            return Err(FrameError::DoubleFree(r));
        }
        let merge_prev = i > 0 && self.ranges[i - 1].end == r.start;
        let merge_next = i < self.len && self.ranges[i].start == r.end;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.ranges[i - 1].end = self.ranges[i].end;
                self.remove(i);
            }
            (true, false) => self.ranges[i - 1].end = r.end,
            (false, true) => self.ranges[i].start = r.start,
            (false, false) => self.insert(i, r)?,
        }
        Ok(())
    }

    fn insert(&mut self, i: usize, r: PhysRange) -> Result<(), FrameError> {
        if self.len == N {
            return Err(FrameError::TooManyRanges);
        }
        self.ranges.copy_within(i..self.len, i + 1);
        self.ranges[i] = r;
        self.len += 1;
        Ok(())
    }

    fn remove(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Takes `[start, start + size)` out of the free set wherever it overlaps free memory (for
    /// memory that must not be handed out, such as what the AP trampoline uses).
    pub fn reserve(&mut self, range: PhysRange) -> Result<(), FrameError> {
        let mut i = 0;
        while i < self.len {
            let cur = self.ranges[i];
            if cur.end <= range.start || cur.start >= range.end {
                i += 1;
                continue;
            }
            let head = PhysRange::new(cur.start, range.start.max(cur.start));
            let tail = PhysRange::new(range.end.min(cur.end), cur.end);
            match (head.is_empty(), tail.is_empty()) {
                (true, true) => {
                    self.remove(i);
                    continue;
                }
                (false, true) => self.ranges[i] = head,
                (true, false) => self.ranges[i] = tail,
                (false, false) => {
                    self.ranges[i] = head;
                    self.insert(i + 1, tail)?;
                    i += 1;
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` (a power of two, at least a page) that end at or
    /// below `limit`. Returns the physical start address.
    pub fn alloc_below(&mut self, size: u64, align: u64, limit: u64) -> Result<Option<u64>, FrameError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !align.is_power_of_two() {
            return Err(FrameError::BadRequest);
        }
        let align = align.max(PAGE_SIZE);
        for i in 0..self.len {
            let cur = self.ranges[i];
            let start = align_up(cur.start, align);
            let Some(end) = start.checked_add(size) else { continue };
            if end <= cur.end && end <= limit {
                self.reserve(PhysRange::new(start, end))?;
                return Ok(Some(start));
            }
        }
        Ok(None)
    }

    /// Allocates `size` bytes aligned to `align` anywhere.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<Option<u64>, FrameError> {
        self.alloc_below(size, align, u64::MAX)
    }

    /// One 4 KiB frame.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc(PAGE_SIZE, PAGE_SIZE).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc_with(ranges: &[(u64, u64)]) -> FrameAllocator<8> {
        let mut a = FrameAllocator::new();
        for &(s, e) in ranges {
            a.add(PhysRange::new(s, e)).unwrap();
        }
        a
    }

    #[test]
    fn add_aligns_inwards_and_merges_neighbours() {
        let a = alloc_with(&[(0x1001, 0x5000), (0x5000, 0x8fff), (0x10000, 0x20000)]);
        assert_eq!(a.ranges(), &[PhysRange::new(0x2000, 0x8000), PhysRange::new(0x10000, 0x20000)]);
        assert_eq!(a.free_bytes(), 0x6000 + 0x10000);
    }

    #[test]
    fn overlapping_memory_map_entries_are_refused() {
        let mut a = alloc_with(&[(0x1000, 0x4000)]);
        assert!(matches!(a.add(PhysRange::new(0x3000, 0x6000)), Err(FrameError::DoubleFree(_))));
    }

    #[test]
    fn aligned_blocks_split_ranges_and_come_back() {
        let mut a = alloc_with(&[(0x1000, 0x40_0000)]);
        let big = a.alloc(0x20_0000, 0x20_0000).unwrap().unwrap();
        assert_eq!(big, 0x20_0000);
        assert_eq!(a.ranges(), &[PhysRange::new(0x1000, 0x20_0000)]);
        let f = a.alloc_frame().unwrap();
        assert_eq!(f, 0x1000);
        a.free(big, 0x20_0000).unwrap();
        a.free(f, PAGE_SIZE).unwrap();
        assert_eq!(a.ranges(), &[PhysRange::new(0x1000, 0x40_0000)]);
        assert_eq!(a.free(f, PAGE_SIZE), Err(FrameError::DoubleFree(PhysRange::new(f, f + PAGE_SIZE))));
    }

    #[test]
    fn alignment_gap_stays_free() {
        let mut a = alloc_with(&[(0x3000, 0x10_0000)]);
        let p = a.alloc(0x4000, 0x10000).unwrap().unwrap();
        assert_eq!(p, 0x10000);
        assert_eq!(a.ranges(), &[PhysRange::new(0x3000, 0x10000), PhysRange::new(0x14000, 0x10_0000)]);
    }

    #[test]
    fn alloc_below_respects_limit_and_exhaustion() {
        let mut a = alloc_with(&[(0x1000, 0x3000), (0x10_0000, 0x20_0000)]);
        assert_eq!(a.alloc_below(0x4000, PAGE_SIZE, 0x10_0000).unwrap(), None);
        assert_eq!(a.alloc_below(0x2000, PAGE_SIZE, 0x10_0000).unwrap(), Some(0x1000));
        assert_eq!(a.alloc_below(PAGE_SIZE, PAGE_SIZE, 0x10_0000).unwrap(), None);
        assert_eq!(a.alloc(0x10_0000, PAGE_SIZE).unwrap(), Some(0x10_0000));
        assert_eq!(a.alloc_frame(), None);
        assert_eq!(a.free_bytes(), 0);
    }

    #[test]
    fn reserve_cuts_holes_across_ranges() {
        let mut a = alloc_with(&[(0x0, 0x10000), (0x20000, 0x30000)]);
        a.reserve(PhysRange::new(0x4000, 0x6000)).unwrap();
        a.reserve(PhysRange::new(0xf000, 0x21000)).unwrap();
        assert_eq!(
            a.ranges(),
            &[PhysRange::new(0x0, 0x4000), PhysRange::new(0x6000, 0xf000), PhysRange::new(0x21000, 0x30000)]
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut a = alloc_with(&[(0x1000, 0x10000)]);
        assert_eq!(a.alloc(0, PAGE_SIZE), Err(FrameError::BadRequest));
        assert_eq!(a.alloc(0x1800, PAGE_SIZE), Err(FrameError::BadRequest));
        assert_eq!(a.alloc(PAGE_SIZE, 0x3000), Err(FrameError::BadRequest));
        assert_eq!(a.free(0x1234, PAGE_SIZE), Err(FrameError::BadRequest));
    }

    #[test]
    fn capacity_overflow_is_reported() {
        let mut a: FrameAllocator<2> = FrameAllocator::new();
        a.add(PhysRange::new(0x0, 0x1000)).unwrap();
        a.add(PhysRange::new(0x2000, 0x3000)).unwrap();
        assert_eq!(a.add(PhysRange::new(0x4000, 0x5000)), Err(FrameError::TooManyRanges));
    }
}
