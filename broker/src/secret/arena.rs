//! Where the secret types keep their bytes: a small arena of anonymous pages that are
//! excluded from core dumps (`MADV_DONTDUMP`) and locked in RAM (`mlock`, so never written
//! to swap), with every slot wiped when its secret is dropped.
//!
//! Slots come in power-of-two classes from 64 bytes to one page; each page serves one class
//! and is mapped the first time that class needs room, then kept (its slots are reused), so
//! a broker with a few accounts holds two or three pages. A secret larger than a page gets
//! a mapping of its own, unmapped when it is dropped. Both protections are best effort: if
//! the kernel refuses one (`RLIMIT_MEMLOCK`, a seccomp filter) the broker says so once at
//! debug level and goes on; if no page can be mapped at all the secret lives on the heap,
//! still wiped on drop.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use zeroize::Zeroize;

/// The smallest slot, as a power of two (64 bytes).
const MIN_SHIFT: u32 = 6;

/// One secret's bytes, immutable after construction, wiped on drop.
pub(super) struct SecretBytes {
    storage: Storage,
}

enum Storage {
    /// A slot of the arena (`class` indexes [`Arena::free`]).
    Slot {
        ptr: NonNull<u8>,
        len: usize,
        class: usize,
    },
    /// A mapping of its own, `mapped` bytes long.
    Mapping {
        ptr: NonNull<u8>,
        len: usize,
        mapped: usize,
    },
    /// The fallback when nothing could be mapped (and the empty secret).
    Heap(Box<[u8]>),
}

// SAFETY: a SecretBytes owns its slot or mapping exclusively (no other SecretBytes points
// into it until it is dropped and the slot returned) and never writes to it after
// construction except in Drop, which has `&mut self`. Sharing `&SecretBytes` across
// threads only ever reads.
unsafe impl Send for SecretBytes {}
// SAFETY: see `Send`: the bytes are immutable while shared.
unsafe impl Sync for SecretBytes {}

impl SecretBytes {
    /// Copies `value` into locked, undumpable memory and wipes `value`.
    pub(super) fn new(mut value: String) -> Self {
        let storage = store(value.as_bytes());
        value.zeroize();
        Self { storage }
    }

    /// The secret as text. It was a `String` when it came in, so it is UTF-8.
    pub(super) fn as_str(&self) -> &str {
        let bytes: &[u8] = match &self.storage {
            // SAFETY: `ptr` points at `len` initialised bytes this value owns (see `store`).
            Storage::Slot { ptr, len, .. } | Storage::Mapping { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
            Storage::Heap(bytes) => bytes,
        };
        // Never fails: the bytes are a copy of a `String`'s. An empty string is still safe
        // if it ever did.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        match &mut self.storage {
            Storage::Slot { ptr, len, class } => {
                // SAFETY: this value owns the slot's `len` initialised bytes.
                unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) }.zeroize();
                arena().free[*class].push(ptr.as_ptr() as usize);
            }
            Storage::Mapping { ptr, len, mapped } => {
                // SAFETY: this value owns the mapping; nothing points into it after this.
                unsafe {
                    std::slice::from_raw_parts_mut(ptr.as_ptr(), *len).zeroize();
                    libc::munlock(ptr.as_ptr().cast(), *mapped);
                    libc::munmap(ptr.as_ptr().cast(), *mapped);
                }
            }
            Storage::Heap(bytes) => bytes.zeroize(),
        }
    }
}

/// Free slots per class, as addresses (not secret). Pages are never unmapped.
struct Arena {
    free: Vec<Vec<usize>>,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena { free: Vec::new() });

fn arena() -> std::sync::MutexGuard<'static, Arena> {
    // A panic while the lock was held cannot leave the free lists inconsistent (each
    // update is one push or pop), so poisoning is ignored.
    ARENA.lock().unwrap_or_else(PoisonError::into_inner)
}

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// The class of a `len`-byte secret, or `None` when it needs a mapping of its own.
fn class_of(len: usize, page: usize) -> Option<usize> {
    let slot = len.max(1).next_power_of_two().max(1 << MIN_SHIFT);
    (slot <= page).then(|| (slot.trailing_zeros() - MIN_SHIFT) as usize)
}

fn store(bytes: &[u8]) -> Storage {
    if bytes.is_empty() {
        return Storage::Heap(Box::default());
    }
    let page = page_size();
    let target = match class_of(bytes.len(), page) {
        Some(class) => slot(class, page).map(|ptr| Storage::Slot {
            ptr,
            len: bytes.len(),
            class,
        }),
        None => {
            let mapped = bytes.len().div_ceil(page) * page;
            map_locked(mapped).map(|ptr| Storage::Mapping {
                ptr,
                len: bytes.len(),
                mapped,
            })
        }
    };
    match target {
        Some(storage) => {
            if let Storage::Slot { ptr, .. } | Storage::Mapping { ptr, .. } = &storage {
                // SAFETY: the slot or mapping is at least `bytes.len()` long, owned by the
                // new value alone, and cannot overlap `bytes` (which is on the heap).
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len());
                }
            }
            storage
        }
        None => Storage::Heap(bytes.into()),
    }
}

/// A free slot of `class`, mapping a new page for the class when none is left.
fn slot(class: usize, page: usize) -> Option<NonNull<u8>> {
    let mut arena = arena();
    if arena.free.len() <= class {
        arena.free.resize_with(class + 1, Vec::new);
    }
    if arena.free[class].is_empty() {
        let base = map_locked(page)?;
        let size = 1usize << (class as u32 + MIN_SHIFT);
        let slots = (0..page / size)
            .rev()
            .map(|i| base.as_ptr() as usize + i * size);
        arena.free[class].extend(slots);
    }
    let addr = arena.free[class].pop()?;
    NonNull::new(addr as *mut u8)
}

/// Maps `len` bytes (a multiple of the page size) of private anonymous memory, excluded
/// from core dumps and locked in RAM where the kernel allows.
fn map_locked(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address the kernel picks: no existing
    // memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        note_once(&MAP_FAILED, "mmap", "secrets are kept on the ordinary heap");
        return None;
    }
    // SAFETY: both act on the mapping just created, which only this module knows.
    unsafe {
        if libc::madvise(ptr, len, libc::MADV_DONTDUMP) != 0 {
            note_once(
                &DONTDUMP_FAILED,
                "madvise(MADV_DONTDUMP)",
                "core dumps would include secrets (RLIMIT_CORE is 0 anyway)",
            );
        }
        if libc::mlock(ptr, len) != 0 {
            note_once(
                &MLOCK_FAILED,
                "mlock",
                "secret pages may be swapped out; raise LimitMEMLOCK (RLIMIT_MEMLOCK) to lock them",
            );
        }
    }
    NonNull::new(ptr.cast())
}

static MAP_FAILED: AtomicBool = AtomicBool::new(false);
static DONTDUMP_FAILED: AtomicBool = AtomicBool::new(false);
static MLOCK_FAILED: AtomicBool = AtomicBool::new(false);

/// Logs the first failure of each kind at debug level; the broker goes on without it.
fn note_once(seen: &AtomicBool, call: &str, consequence: &str) {
    if !seen.swap(true, Ordering::Relaxed) {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "{call} failed for the secret arena: {consequence}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(s: &SecretBytes) -> usize {
        s.as_str().as_ptr() as usize
    }

    #[test]
    fn classes_cover_a_page_and_larger_secrets_map_their_own() {
        assert_eq!(class_of(1, 4096), Some(0));
        assert_eq!(class_of(64, 4096), Some(0));
        assert_eq!(class_of(65, 4096), Some(1));
        assert_eq!(class_of(4096, 4096), Some(6));
        assert_eq!(class_of(4097, 4096), None);
    }

    #[test]
    fn values_round_trip_at_every_size() {
        for len in [0, 1, 63, 64, 65, 300, 1024, 4095, 4096, 4097, 10_000] {
            let value: String = "abcdefghij".chars().cycle().take(len).collect();
            let secret = SecretBytes::new(value.clone());
            assert_eq!(secret.as_str(), value, "length {len}");
        }
    }

    #[test]
    fn a_dropped_secret_s_slot_is_wiped_and_reused() {
        let secret = SecretBytes::new("s".repeat(700));
        let at = address(&secret);
        assert!(
            matches!(secret.storage, Storage::Slot { .. }),
            "in the arena"
        );
        drop(secret);
        // The page stays mapped (arena pages are never unmapped), so reading it is sound.
        // SAFETY: `at` is inside a live arena page, 700 bytes within its 1024-byte slot.
        let after = unsafe { std::slice::from_raw_parts(at as *const u8, 700) };
        // Another test may have taken the slot since; it wrote its own bytes, never ours.
        assert!(
            !after.windows(16).any(|w| w == [b's'; 16]),
            "slot not wiped"
        );
    }

    #[test]
    fn secret_pages_are_undumpable_in_smaps() {
        let secret = SecretBytes::new("t".repeat(200));
        let at = address(&secret);
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let flags = mapping_flags(&smaps, at).expect("the secret's mapping is in smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "VmFlags: {flags}"
        );
    }

    /// The VmFlags line of the mapping containing `addr`.
    fn mapping_flags(smaps: &str, addr: usize) -> Option<String> {
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if inside {
                    return Some(flags.to_owned());
                }
            } else if let Some(range) = mapping_range(line) {
                inside = range.contains(&addr);
            }
        }
        None
    }

    /// The address range of an smaps header line (`lo-hi perms ...`).
    fn mapping_range(line: &str) -> Option<std::ops::Range<usize>> {
        let (range, _) = line.split_once(' ')?;
        let (lo, hi) = range.split_once('-')?;
        Some(usize::from_str_radix(lo, 16).ok()?..usize::from_str_radix(hi, 16).ok()?)
    }
}
