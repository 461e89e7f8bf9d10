//! What the daemon's memory hygiene costs a cached GetAccessToken, in process: the
//! zeroizing allocator against the plain system allocator on the alloc/free pattern of one
//! call, and the secret arena's `duplicate()` (every cached call copies the access token)
//! against a plain `String` clone; and the wipe of an idle thread (64 KiB of stack and the
//! vector registers, once per worker park), which a cached call pays at most once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;
use therappai_broker::alloc::ZeroizingAlloc;
use therappai_broker::secret::AccessToken;

/// Blocks one cached call allocates and frees, roughly: small request/response structs
/// and h2 frame bookkeeping, the ~1 KiB token `String` of the response and its protobuf
/// encoding, and an 8 KiB encode buffer.
const PATTERN: [usize; 8] = [48, 64, 128, 256, 1024, 1100, 4096, 8192];

/// Median nanoseconds per pattern (every block allocated, written, then freed).
fn pattern_ns(alloc: &dyn GlobalAlloc, iterations: usize, repeats: usize) -> f64 {
    let layouts: Vec<Layout> = PATTERN
        .iter()
        .filter_map(|&size| Layout::from_size_align(size, 8).ok())
        .collect();
    let mut runs = Vec::new();
    let mut blocks = vec![std::ptr::null_mut::<u8>(); layouts.len()];
    for _ in 0..repeats {
        let started = Instant::now();
        for _ in 0..iterations {
            for (block, layout) in blocks.iter_mut().zip(&layouts) {
                // SAFETY: non-zero sizes; each block is written within its layout and freed
                // below with the same layout.
                unsafe {
                    *block = alloc.alloc(*layout);
                    if !block.is_null() {
                        // Code fills what it allocates (a token is copied in, a frame written).
                        std::ptr::write_bytes(*block, 0x41, layout.size().min(1100));
                    }
                }
            }
            for (block, layout) in blocks.iter().zip(&layouts).rev() {
                if !block.is_null() {
                    // SAFETY: allocated above with this layout.
                    unsafe { alloc.dealloc(black_box(*block), *layout) };
                }
            }
        }
        runs.push(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    crate::load::median(runs)
}

fn duplicate_ns(iterations: usize, repeats: usize) -> (f64, f64) {
    let token = AccessToken::new("eyJhbGciOiJIUzI1NiJ9.".to_owned() + &"x".repeat(1000));
    let plain = token.expose().to_owned();
    let (mut arena, mut string) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(token.duplicate());
        }
        arena.push(started.elapsed().as_nanos() as f64 / iterations as f64);
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(plain.clone());
        }
        string.push(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    (crate::load::median(arena), crate::load::median(string))
}

/// Median nanoseconds of one `wipe_idle_thread()`: an ordinary park, or (`deep`) one
/// while an upstream exchange or store call runs.
fn idle_wipe_ns(iterations: usize, repeats: usize, deep: bool) -> f64 {
    let _deep = deep.then(therappai_broker::secret::DeepWork::begin);
    let mut runs = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        for _ in 0..iterations {
            therappai_broker::secret::wipe_idle_thread();
        }
        runs.push(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    crate::load::median(runs)
}

/// The figures, as JSON for the report.
pub fn measure(smoke: bool) -> serde_json::Value {
    let (iterations, repeats) = if smoke { (2_000, 1) } else { (200_000, 7) };
    let system = pattern_ns(&System, iterations, repeats);
    let zeroizing = pattern_ns(&ZeroizingAlloc::new(), iterations, repeats);
    let (arena, string) = duplicate_ns(iterations, repeats);
    let idle_wipe = idle_wipe_ns(iterations / 10, repeats, false);
    let idle_wipe_deep = idle_wipe_ns(iterations / 10, repeats, true);
    serde_json::json!({
        "pattern_bytes": PATTERN,
        "system_ns": system,
        "zeroizing_ns": zeroizing,
        "ratio": zeroizing / system,
        "arena_duplicate_ns": arena,
        "string_clone_ns": string,
        "ratio_duplicate": arena / string,
        "idle_wipe_ns": idle_wipe,
        "idle_wipe_deep_ns": idle_wipe_deep,
    })
}
