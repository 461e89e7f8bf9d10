//! A global allocator that wipes every heap block before it goes back to the system.
//!
//! Tokens pass through buffers the broker does not own: hyper's and h2's read and write
//! buffers, rustls's record buffers, serde's and prost's scratch space. Those crates free
//! them without wiping, and glibc leaves a freed chunk's bytes in place until it is reused,
//! so a memory image taken after `logout` used to hold fragments of the account's tokens.
//! [`ZeroizingAlloc`] wraps the system allocator and overwrites each block with zeros
//! (`explicit_bzero`, which the compiler may not remove as a dead store) before freeing
//! it, and never leaves an old copy behind when `realloc` moves a block.
//!
//! What it cannot cover: memory that is reused without being freed (a pooled connection's
//! buffers, a `Vec` that is cleared and refilled), copies on the stack, and allocations made
//! by C code with `malloc` directly (glibc's own NSS and resolver buffers; nothing in the
//! dependency tree passes a token to C). The README's Security section lists them.
//!
//! The daemon binary installs it with `#[global_allocator]`; the library does not, so tests
//! and embedders choose for themselves.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, wiping each block before it is freed. See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroizingAlloc<A = System>(A);

impl ZeroizingAlloc {
    /// Wraps [`System`].
    pub const fn new() -> Self {
        Self(System)
    }
}

/// An allocator whose blocks are malloc's, so `malloc_usable_size` may be asked about them.
///
/// # Safety
/// Every non-null pointer the implementation returns must come from glibc/musl malloc,
/// calloc, realloc or posix_memalign.
pub unsafe trait MallocBacked: GlobalAlloc {}

// SAFETY: on Linux `System` allocates with malloc/calloc/posix_memalign.
unsafe impl MallocBacked for System {}

/// Overwrites `len` bytes at `ptr` with zeros in a way the optimiser keeps.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller guarantees `ptr..ptr + len` is writable. explicit_bzero is memset
    // that the compiler treats as observable, so the wipe survives even though the block is
    // freed right after (a plain memset before free is a dead store LLVM may delete).
    unsafe { libc::explicit_bzero(ptr.cast(), len) };
}

/// Bytes of the block at `ptr` that malloc reserved, at least `size`.
///
/// # Safety
/// `ptr` must be a live block from a [`MallocBacked`] allocator, of `size` bytes.
unsafe fn usable_size(ptr: *mut u8, size: usize) -> usize {
    // SAFETY: `ptr` came from malloc (MallocBacked), so malloc_usable_size accepts it.
    unsafe { libc::malloc_usable_size(ptr.cast()) }.max(size)
}

// SAFETY: every method forwards to the inner allocator with the layout it was given (or, in `realloc`,
// with a layout of the same alignment and the requested size), so the blocks returned are
// System's, with System's guarantees; the only additions are writes inside blocks this
// allocator owns at that moment.
unsafe impl<A: MallocBacked> GlobalAlloc for ZeroizingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract (non-zero size).
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract; calloc can skip zeroing fresh pages.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes (GlobalAlloc contract).
        // Bytes past `layout.size()` were wiped when `realloc` shrank the block in place.
        unsafe {
            wipe(ptr, layout.size());
            self.0.dealloc(ptr, layout);
        }
    }

    /// Never leaves a copy behind: a block grows in place only within what malloc already
    /// reserved for it, shrinks in place (its tail wiped), and otherwise moves by
    /// allocate-copy-wipe-free, where `System.realloc` would free the old copy unwiped.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_size = layout.size();
        // SAFETY: `ptr` is a live block of the inner (malloc-backed) allocator, `old_size` long.
        let reserved = unsafe { usable_size(ptr, old_size) };
        if new_size <= old_size {
            // Shrinking in place: free() reads the chunk's real size from its header, so the
            // block can keep its capacity; the dropped tail is wiped now because dealloc
            // will only see `new_size`. A block that shrinks to under a quarter moves, so
            // a large buffer trimmed to a few bytes gives its memory back.
            if new_size >= old_size / 4 {
                // SAFETY: `new_size <= old_size`, so the tail lies inside the block.
                unsafe { wipe(ptr.add(new_size), old_size - new_size) };
                return ptr;
            }
        } else if new_size <= reserved {
            // Growing into bytes malloc already reserved: nothing moves. They hold no old
            // data (a fresh chunk's slack, or a tail wiped by an earlier shrink).
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and, with the old alignment, a valid layout (the
        // GlobalAlloc contract for realloc).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: non-zero size (see above).
        let new_ptr = unsafe { self.0.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new)` long;
            // then the old block is wiped and freed with its own layout.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, old_size.min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        // On failure the old block stays valid and untouched, as the contract requires.
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // The library's whole unit-test suite runs on it: every test is also a stress test.
    #[global_allocator]
    static GLOBAL: ZeroizingAlloc = ZeroizingAlloc::new();

    /// System, counting the blocks that reach `dealloc` with a non-zero byte in them.
    struct Checking;
    static DIRTY_FREES: AtomicUsize = AtomicUsize::new(0);
    static FREES: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: forwards to System.
    unsafe impl GlobalAlloc for Checking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: a live block of `layout.size()` bytes.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            FREES.fetch_add(1, Ordering::SeqCst);
            if block.iter().any(|&b| b != 0) {
                DIRTY_FREES.fetch_add(1, Ordering::SeqCst);
            }
            // SAFETY: forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    // SAFETY: forwards every allocation to System.
    unsafe impl MallocBacked for Checking {}

    const A: ZeroizingAlloc = ZeroizingAlloc::new();

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    /// Fills a block with a byte pattern.
    unsafe fn fill(ptr: *mut u8, len: usize, byte: u8) {
        // SAFETY: the caller passes a live block of at least `len` bytes.
        unsafe { std::ptr::write_bytes(ptr, byte, len) };
    }

    unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
        // SAFETY: the caller passes a live block of at least `len` bytes.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    #[test]
    fn every_block_is_zero_when_it_reaches_the_system_allocator() {
        let checked = ZeroizingAlloc(Checking);
        // SAFETY: each block is used within its layout and freed with its current layout.
        unsafe {
            for size in [1, 16, 100, 1024, 70_000, 300_000] {
                let l = layout(size, 8);
                let p = checked.alloc(l);
                fill(p, size, 0xA5);
                checked.dealloc(p, l);
            }
            // realloc that moves (far past malloc's slack), then one that shrinks hard
            // (under a quarter: it moves too): the old copies must be wiped before freeing.
            let p = checked.alloc(layout(64, 8));
            fill(p, 64, 0xA5);
            let q = checked.realloc(p, layout(64, 8), 100_000);
            fill(q, 100_000, 0xA5);
            let r = checked.realloc(q, layout(100_000, 8), 10);
            assert!(bytes(r, 10).iter().all(|&b| b == 0xA5), "contents kept");
            checked.dealloc(r, layout(10, 8));
        }
        assert!(
            FREES.load(Ordering::SeqCst) >= 8,
            "the moves freed old blocks"
        );
        assert_eq!(
            DIRTY_FREES.load(Ordering::SeqCst),
            0,
            "a block was freed unwiped"
        );
    }

    #[test]
    fn blocks_honour_every_alignment() {
        for align in [1, 2, 8, 16, 64, 4096] {
            for size in [1, 7, 64, 1000, 5000] {
                let l = layout(size, align);
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    let p = A.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "align {align} size {size}");
                    fill(p, size, 0xAB);
                    A.dealloc(p, l);
                    let z = A.alloc_zeroed(l);
                    assert_eq!(z as usize % align, 0);
                    assert!(bytes(z, size).iter().all(|&b| b == 0));
                    A.dealloc(z, l);
                }
            }
        }
    }

    #[test]
    fn realloc_keeps_contents_and_alignment_growing_and_shrinking() {
        for align in [1, 8, 16, 256, 4096] {
            // Sizes that grow in place (within malloc's slack), move, shrink in place, and
            // shrink enough to move.
            let steps = [24, 25, 40, 200, 5000, 300_000, 4000, 100, 90, 3, 1];
            let mut size = 16;
            // SAFETY: each realloc gets the live block with its current layout; the block
            // is freed with its final layout.
            unsafe {
                let mut p = A.alloc(layout(size, align));
                for (i, b) in (0..size).zip(1u8..) {
                    *p.add(i) = b;
                }
                for new_size in steps {
                    let q = A.realloc(p, layout(size, align), new_size);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "align {align} after {new_size}");
                    let kept = size.min(new_size).min(16);
                    for (i, b) in (0..kept).zip(1u8..) {
                        assert_eq!(*q.add(i), b, "byte {i} after realloc to {new_size}");
                    }
                    if new_size > size {
                        fill(q.add(size), new_size - size, 0x5A);
                    }
                    p = q;
                    size = new_size;
                }
                A.dealloc(p, layout(size, align));
            }
        }
    }

    #[test]
    fn a_mild_shrink_stays_in_place_with_its_tail_wiped() {
        // SAFETY: the block stays live throughout; reads stay inside what malloc reserved.
        unsafe {
            let l = layout(1024, 8);
            let p = A.alloc(l);
            fill(p, 1024, 0xEE);
            let q = A.realloc(p, l, 600);
            assert_eq!(q, p, "a mild shrink stays in place");
            assert!(bytes(q.add(600), 424).iter().all(|&b| b == 0), "tail wiped");
            assert!(bytes(q, 600).iter().all(|&b| b == 0xEE));
            // Growing back within the reserved block: in place, the regained bytes zero.
            let r = A.realloc(q, layout(600, 8), 1024);
            assert_eq!(r, q);
            assert!(bytes(r.add(600), 424).iter().all(|&b| b == 0));
            A.dealloc(r, l);
        }
    }

    #[test]
    fn collections_work_through_it() {
        // This test binary's global allocator is a ZeroizingAlloc: growth by doubling,
        // shrink_to_fit, a large string.
        let mut v: Vec<u64> = (0..10_000).collect();
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
        let mut s = String::new();
        for _ in 0..1000 {
            s.push_str("0123456789");
        }
        assert_eq!(s.len(), 10_000);
    }
}
