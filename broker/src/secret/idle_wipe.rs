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
//! it ends. General-purpose registers are left: the compiler reuses them at once, and 8
//! bytes is less than any secret's entropy.

/// How much stack below the caller is zeroed. Measured in a release build (2026-12-03, a
/// scratch probe that found the deepest non-zero byte of this region before each wipe, over
/// the benchmark's smoke run): a cached GetAccessToken dirties 24–32 KiB below the point
/// where the worker parks (h2 builds the request's URI there), and the deepest paths
/// (login, refresh, the stores) reach 57.6 KiB. So 64 KiB leaves about 6 KiB of margin and
/// must not shrink, although it costs 1.5 µs of memset per park on an Intel host (a 32 KiB
/// wipe, which would fit L1, costs about 0.3 µs but misses half of a cached call's frames).
/// The memory-image test found a logged-out token 21 KiB down in a debug build.
const STACK_WIPE_BYTES: usize = 64 * 1024;

/// Zeroes [`STACK_WIPE_BYTES`] of stack below the caller and then every vector register.
pub fn wipe_idle_thread() {
    wipe_stack_below();
    clear_vector_registers();
}

/// Puts a zeroed buffer in a frame of its own, below the caller's; `black_box` makes the
/// compiler write it out rather than prove it unused.
#[inline(never)]
fn wipe_stack_below() {
    let zeros = [0u8; STACK_WIPE_BYTES];
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::arch::asm;

    /// Loads a pattern into XMM15 (and ZMM31 where there is one), clears, and reads both back.
    #[test]
    fn the_registers_read_back_as_zero() {
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
