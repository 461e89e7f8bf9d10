//! Wipes what a thread leaves behind when it goes idle: the stack below it and its vector
//! registers.
//!
//! The zeroizing allocator wipes every freed heap block, but two places are not the heap.
//! glibc's `memcpy` and `strlen`, and the TLS and base64 code, move a token through the
//! XMM/YMM/ZMM registers 16 to 64 bytes at a time and leave the last chunk there; and the
//! functions that handled it leave copies in their stack frames, below where the thread's
//! run loop later sleeps. A parked thread keeps both for as long as it sleeps, and
//! `/proc/PID/mem` or `gcore` reads them (the memory-image test found a logged-out refresh
//! token 21 KiB below a parked worker's stack pointer, and in a worker's saved registers,
//! in about one run in three). The broker calls [`wipe_idle_thread`] where its threads go
//! idle: every tokio worker before it parks, and every store call on the blocking pool when
//! it ends. How deep it wipes depends on what ran since the thread last went idle
//! ([`DeepWork`]). General-purpose registers are left: the compiler reuses them at once,
//! and 8 bytes is less than any secret's entropy.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

/// Stack zeroed below an ordinary park. Measured in a release build (2026-12-03, a scratch
/// probe that found the deepest non-zero byte of the region before each wipe, over the
/// benchmark's smoke run): a cached GetAccessToken dirties 24–32 KiB below the point where
/// the worker parks (h2 builds the request's URI there). 48 KiB leaves half as much again
/// and costs about 0.7 µs of memset on an Intel host (64 KiB costs 1.5 µs: it no longer
/// fits L1). Past 48 KiB at ordinary parks the probe found only frames that hold no secret:
/// the accept path's peer reads, and Status and Logout handlers (whose secrets pass through
/// [`DeepWork`]). The memory-image test found a logged-out token 21 KiB down in a debug
/// build.
const SHALLOW_WIPE_BYTES: usize = 48 * 1024;

/// Stack zeroed below a park during or after [`DeepWork`]. HTTPS through reqwest, hyper and
/// rustls, and the stores, reached 56.8 and 57.6 KiB in two runs of the same probe; 128 KiB
/// more than doubles that, at about 3 µs a park, paid around a refresh, a login or a store
/// call, never for a cached token.
const DEEP_WIPE_BYTES: usize = 128 * 1024;

/// How many [`DeepWork`]s are running, process-wide.
static DEEP_WORK_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Bumped when a [`DeepWork`] begins and when it ends.
static DEEP_WORK_EDGES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// [`DEEP_WORK_EDGES`] as this thread last saw it when it went idle.
    static EDGES_SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Held while secrets pass through deep call stacks: an HTTPS exchange with therappai or
/// OpenBao, or a store call. While one runs, every thread that goes idle wipes
/// [`DEEP_WIPE_BYTES`], and so does each thread's first idle after one began or ended.
///
/// Process-wide, not per task, because the work is not all in the task that holds this:
/// hyper's connection tasks (spawned by reqwest, on any worker) decrypt the answer, and
/// the caller parses it later in the same poll that ends the exchange.
#[derive(Debug)]
#[must_use = "deep work is only marked while this is held"]
pub struct DeepWork(());

impl DeepWork {
    pub fn begin() -> Self {
        DEEP_WORK_RUNNING.fetch_add(1, SeqCst);
        DEEP_WORK_EDGES.fetch_add(1, SeqCst);
        Self(())
    }
}

impl Drop for DeepWork {
    fn drop(&mut self) {
        // The edge first: a thread that then sees nothing running also sees the edge.
        DEEP_WORK_EDGES.fetch_add(1, SeqCst);
        DEEP_WORK_RUNNING.fetch_sub(1, SeqCst);
    }
}

/// Runs `work`, a blocking call that handles secrets (a store call, opening the store), on
/// this thread as [`DeepWork`], then wipes the thread as deep as such work reaches: the
/// blocking pool's threads may idle for seconds holding its last bytes.
pub fn deep_work_then_wipe<T>(work: impl FnOnce() -> T) -> T {
    let deep = DeepWork::begin();
    let result = work();
    wipe_idle_thread();
    drop(deep);
    result
}

/// Whether this thread's coming idle must wipe deep.
fn deep_work_since_last_idle() -> bool {
    // Running first, then edges: see `DeepWork::drop`.
    let running = DEEP_WORK_RUNNING.load(SeqCst);
    let edges = DEEP_WORK_EDGES.load(SeqCst);
    EDGES_SEEN.with(|seen| must_wipe_deep(seen, running, edges))
}

/// Deep while any [`DeepWork`] runs, or when one began or ended since `seen`, which this
/// moves on to `edges`.
fn must_wipe_deep(seen: &Cell<u64>, running: usize, edges: u64) -> bool {
    let moved = seen.replace(edges) != edges;
    running > 0 || moved
}

/// Zeroes the stack below the caller ([`SHALLOW_WIPE_BYTES`], or [`DEEP_WIPE_BYTES`] around
/// [`DeepWork`]) and then every vector register.
pub fn wipe_idle_thread() {
    if deep_work_since_last_idle() {
        wipe_stack_below::<DEEP_WIPE_BYTES>();
    } else {
        wipe_stack_below::<SHALLOW_WIPE_BYTES>();
    }
    clear_vector_registers();
}

/// Puts a zeroed buffer in a frame of its own, below the caller's; `black_box` makes the
/// compiler write it out rather than prove it unused.
#[inline(never)]
fn wipe_stack_below<const BYTES: usize>() {
    let zeros = [0u8; BYTES];
    std::hint::black_box(&zeros);
}

/// Zeroes every vector register this CPU has (ZMM0–31 with AVX-512, YMM0–15 with AVX,
/// XMM0–15 otherwise). Costs a few nanoseconds; a no-op on other architectures.
fn clear_vector_registers() {
    #[cfg(target_arch = "x86_64")]
    x86_64::clear();
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::asm;

    pub(super) fn clear() {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above), which is all the function needs.
            unsafe { clear_avx512() }
        } else if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked above).
            unsafe { clear_avx() }
        } else {
            clear_sse()
        }
    }

    /// VZEROALL clears ZMM0–15 whole; ZMM16–31 (which glibc's EVEX string functions use so
    /// that they need no VZEROUPPER) are cleared one by one.
    #[target_feature(enable = "avx512f")]
    unsafe fn clear_avx512() {
        // SAFETY: only writes registers, every one of them declared clobbered.
        unsafe {
            asm!(
                "vzeroall",
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18",
                "vpxord zmm19, zmm19, zmm19",
                "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21",
                "vpxord zmm22, zmm22, zmm22",
                "vpxord zmm23, zmm23, zmm23",
                "vpxord zmm24, zmm24, zmm24",
                "vpxord zmm25, zmm25, zmm25",
                "vpxord zmm26, zmm26, zmm26",
                "vpxord zmm27, zmm27, zmm27",
                "vpxord zmm28, zmm28, zmm28",
                "vpxord zmm29, zmm29, zmm29",
                "vpxord zmm30, zmm30, zmm30",
                "vpxord zmm31, zmm31, zmm31",
                clobber_abi("C"),
                options(nostack, preserves_flags),
            );
        }
    }

    #[target_feature(enable = "avx")]
    unsafe fn clear_avx() {
        // SAFETY: only writes registers, every one of them declared clobbered.
        unsafe {
            asm!(
                "vzeroall",
                clobber_abi("C"),
                options(nostack, preserves_flags)
            )
        }
    }

    fn clear_sse() {
        // SAFETY: SSE2 is part of x86_64; only writes registers, all declared clobbered.
        unsafe {
            asm!(
                "xorps xmm0, xmm0",
                "xorps xmm1, xmm1",
                "xorps xmm2, xmm2",
                "xorps xmm3, xmm3",
                "xorps xmm4, xmm4",
                "xorps xmm5, xmm5",
                "xorps xmm6, xmm6",
                "xorps xmm7, xmm7",
                "xorps xmm8, xmm8",
                "xorps xmm9, xmm9",
                "xorps xmm10, xmm10",
                "xorps xmm11, xmm11",
                "xorps xmm12, xmm12",
                "xorps xmm13, xmm13",
                "xorps xmm14, xmm14",
                "xorps xmm15, xmm15",
                clobber_abi("C"),
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_wipes_deep_while_deep_work_runs_and_once_after_each_edge() {
        let seen = Cell::new(7);
        assert!(!must_wipe_deep(&seen, 0, 7), "nothing happened since");
        assert!(must_wipe_deep(&seen, 1, 8), "deep work began");
        assert!(must_wipe_deep(&seen, 1, 8), "it is still running");
        assert!(must_wipe_deep(&seen, 0, 9), "it ended since the last idle");
        assert!(
            !must_wipe_deep(&seen, 0, 9),
            "the end was already wiped for"
        );
        assert!(
            must_wipe_deep(&seen, 0, 11),
            "one began and ended in between"
        );
    }

    #[test]
    fn holding_deep_work_makes_every_idle_deep() {
        let _deep = DeepWork::begin();
        assert!(deep_work_since_last_idle());
        assert!(deep_work_since_last_idle());
    }

    /// Loads a pattern into XMM15 (and ZMM31 where there is one), clears, and reads both back.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_registers_read_back_as_zero() {
        use std::arch::asm;
        let pattern = [0xA5u8; 16];
        let mut xmm15 = [0u8; 16];
        // SAFETY: loads from and stores to 16-byte buffers we own; clobbers only xmm15.
        unsafe {
            asm!("movdqu xmm15, [{0}]", in(reg) pattern.as_ptr(), out("xmm15") _);
        }
        clear_vector_registers();
        // SAFETY: as above.
        unsafe {
            asm!("movdqu [{0}], xmm15", in(reg) xmm15.as_mut_ptr(), out("xmm15") _);
        }
        assert_eq!(xmm15, [0; 16]);
    }
}
