//! Reading a running process's memory and scanning it for fragments of secrets.
//!
//! [`read_process`] reads every readable mapping through `/proc/PID/mem` (as root: the
//! broker is not dumpable, so only CAP_SYS_PTRACE may), including pages excluded from
//! core dumps; [`gcore`] takes a core image the way an attacker with gdb would. A
//! [`Needles`] set holds every 16-byte window of each secret; [`Needles::scan`] reports
//! where windows were found, never their content.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes in one fragment: short enough to catch a piece of a token split across buffers,
/// long enough that a match is never chance (16 base64url characters are 96 bits).
pub const WINDOW: usize = 16;

/// One mapping of the process, and what was read of it.
#[derive(Debug)]
pub struct Region {
    pub start: usize,
    pub end: usize,
    /// The rest of the maps line: permissions, offset, device, inode, path.
    pub description: String,
    pub bytes: Vec<u8>,
}

/// Every readable mapping of `pid`, read through `/proc/PID/mem`. Mappings the kernel
/// refuses to read (`[vvar]`, `[vsyscall]`) are skipped.
#[track_caller]
pub fn read_process(pid: i32) -> Vec<Region> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let stacks = thread_stack_pointers(pid);
    let mut regions = Vec::new();
    for line in maps.lines() {
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, end)) = parse_range(range) else {
            continue;
        };
        if !rest.starts_with('r') || rest.contains("[vvar") || rest.contains("[vsyscall]") {
            continue;
        }
        let mut bytes = vec![0; end - start];
        let ok =
            mem.seek(SeekFrom::Start(start as u64)).is_ok() && mem.read_exact(&mut bytes).is_ok();
        if ok {
            let mut description = rest.trim_end().to_owned();
            for (tid, name, sp) in stacks.iter().filter(|(_, _, sp)| (start..end).contains(sp)) {
                description.push_str(&format!(
                    " (the stack of thread {tid} \"{name}\", parked at sp {sp:#x})"
                ));
            }
            regions.push(Region {
                start,
                end,
                description,
                bytes,
            });
        }
    }
    assert!(
        !regions.is_empty(),
        "nothing of process {pid} could be read"
    );
    regions
}

/// (tid, name, stack pointer) of every thread of `pid` that is in a system call (an idle
/// one is), from `/proc/PID/task/TID/syscall`: which anonymous mapping is whose stack.
fn thread_stack_pointers(pid: i32) -> Vec<(u32, String, usize)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let syscall = std::fs::read_to_string(task.path().join("syscall")).ok()?;
            let sp = syscall.split_whitespace().nth(7)?.strip_prefix("0x")?;
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            Some((
                tid,
                name.trim().to_owned(),
                usize::from_str_radix(sp, 16).ok()?,
            ))
        })
        .collect()
}

fn parse_range(range: &str) -> Option<(usize, usize)> {
    let (lo, hi) = range.split_once('-')?;
    Some((
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
    ))
}

/// A core image of `pid` taken by gdb's `gcore` (which leaves out `MADV_DONTDUMP`
/// mappings, as the kernel does), split into its memory segments (at their addresses) and
/// its notes (registers of every thread, among others; at their file offsets); `None` when
/// gdb is not installed.
#[track_caller]
pub fn gcore(pid: i32, dir: &Path) -> Option<Vec<Region>> {
    if !Path::new("/usr/bin/gcore").exists() {
        return None;
    }
    let prefix = dir.join("core");
    let out = std::process::Command::new("/usr/bin/gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
        .expect("run gcore");
    let path = dir.join(format!("core.{pid}"));
    assert!(
        out.status.success() && path.exists(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(&path).expect("read the core image");
    std::fs::remove_file(&path).expect("remove the core image");
    Some(core_segments(&image))
}

/// The PT_LOAD and PT_NOTE segments of an ELF64 little-endian core file.
#[track_caller]
fn core_segments(image: &[u8]) -> Vec<Region> {
    let u16_at = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| {
        usize::try_from(u64::from_le_bytes(
            image[at..at + 8].try_into().expect("8 bytes"),
        ))
        .expect("fits usize")
    };
    assert_eq!(&image[..5], b"\x7fELF\x02", "an ELF64 core image");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let mut regions = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (kind, offset, vaddr, filesz) =
            (u32_at(ph), u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32));
        let bytes = image[offset..offset + filesz].to_vec();
        match kind {
            1 => regions.push(Region {
                start: vaddr,
                end: vaddr + filesz,
                description: "a memory segment of the gcore image".to_owned(),
                bytes,
            }),
            4 => regions.push(Region {
                start: offset,
                end: offset + filesz,
                description:
                    "the notes (thread registers) of the gcore image; the address is a file offset"
                        .to_owned(),
                bytes,
            }),
            _ => {}
        }
    }
    regions
}

/// The secret parts of a JWT: its payload and signature (the header is the same for every
/// token and says nothing).
pub fn secret_parts(token: &str) -> Vec<&str> {
    token.split('.').skip(1).collect()
}

/// Whether a token the fake issued is a refresh token (its `token_type` claim).
pub fn is_refresh_token(token: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|claims| serde_json::from_slice::<serde_json::Value>(&claims).ok())
        .is_some_and(|claims| claims["token_type"] == "refresh")
}

/// The 16-byte windows of a set of named secrets.
#[derive(Debug)]
pub struct Needles {
    windows: HashMap<[u8; WINDOW], usize>,
    names: Vec<String>,
    /// The bytes that occur in some secret: a window holding any other byte cannot match.
    alphabet: [bool; 256],
    /// Windows that more than one secret holds (see [`Needles::drop_shared`]).
    shared: HashSet<[u8; WINDOW]>,
}

impl Default for Needles {
    fn default() -> Self {
        Self {
            windows: HashMap::new(),
            names: Vec::new(),
            alphabet: [false; 256],
            shared: HashSet::new(),
        }
    }
}

/// Where fragments were found: per secret name, the addresses (or offsets) of its hits.
#[derive(Debug, Default)]
pub struct Found {
    pub hits: Vec<(String, usize, String)>,
}

impl Found {
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// One line per hit: which secret, where, in which mapping. Never the bytes.
    pub fn summary(&self) -> String {
        let mut per_secret: HashMap<&str, usize> = HashMap::new();
        for (name, _, _) in &self.hits {
            *per_secret.entry(name).or_default() += 1;
        }
        let mut lines: Vec<String> = self
            .hits
            .iter()
            .map(|(name, at, region)| format!("  {name} at {at:#x} in {region}"))
            .collect();
        lines.sort();
        lines.dedup();
        format!(
            "{} fragment hit(s) ({} distinct secrets: {:?}):\n{}",
            self.hits.len(),
            per_secret.len(),
            per_secret,
            lines.join("\n")
        )
    }
}

impl Needles {
    /// Adds every window of `secret` under `name`. A secret shorter than a window is
    /// added whole-window-only, which a test should not rely on.
    pub fn add(&mut self, name: &str, secret: &str) {
        let index = self.names.len();
        self.names.push(name.to_owned());
        for &b in secret.as_bytes() {
            self.alphabet[usize::from(b)] = true;
        }
        for window in secret.as_bytes().windows(WINDOW) {
            let mut key = [0; WINDOW];
            key.copy_from_slice(window);
            if self
                .windows
                .insert(key, index)
                .is_some_and(|other| other != index)
            {
                self.shared.insert(key);
            }
        }
    }

    /// Forgets the windows two different secrets share: the fixed structure of a format (a
    /// JWT payload's first claims are the same in every token) is not secret, and a hit on
    /// it could not say whose it is. Returns how many were dropped.
    pub fn drop_shared(&mut self) -> usize {
        for key in &self.shared {
            self.windows.remove(key);
        }
        std::mem::take(&mut self.shared).len()
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Every window found in `bytes` (at `base + offset`), one hit per place where a run
    /// of matching windows starts.
    pub fn scan_bytes(&self, bytes: &[u8], base: usize, region: &str, found: &mut Found) {
        // Only runs of the secrets' own bytes can hold a window: this skips the zeros and
        // binary data that make up most of memory.
        let is_text = |b: u8| self.alphabet[usize::from(b)];
        let mut i = 0;
        let mut last_hit: Option<usize> = None;
        while i + WINDOW <= bytes.len() {
            if !is_text(bytes[i + WINDOW - 1]) {
                i += WINDOW;
                continue;
            }
            if let Some(&index) = self.windows.get(&bytes[i..i + WINDOW]) {
                if last_hit.is_none_or(|at| at + 1 != i) {
                    found
                        .hits
                        .push((self.names[index].clone(), base + i, region.to_owned()));
                }
                last_hit = Some(i);
            }
            i += 1;
        }
    }

    /// Scans every region.
    pub fn scan(&self, regions: &[Region]) -> Found {
        let mut found = Found::default();
        for region in regions {
            self.scan_bytes(&region.bytes, region.start, &region.description, &mut found);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fragments_anywhere_and_skips_binary() {
        let mut needles = Needles::default();
        needles.add("secret", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef");
        let mut memory = vec![0u8; 100];
        memory.extend_from_slice(b"\x01\x02QRSTUVWXYZabcdef\x00");
        memory.extend(std::iter::repeat_n(0xffu8, 37));
        memory.extend_from_slice(b"xxDEFGHIJKLMNOPQRSTxx");
        let mut found = Found::default();
        needles.scan_bytes(&memory, 0x1000, "test", &mut found);
        assert_eq!(found.hits.len(), 2, "{}", found.summary());
        assert_eq!(found.hits[0].1, 0x1000 + 102);
    }
}
