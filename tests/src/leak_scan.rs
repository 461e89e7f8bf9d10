//! Everything a test could observe of a broker and its clients, collected as named byte
//! "surfaces" (a log, an RPC status, a process's environment, a file) and scanned for every
//! 16-byte window of every secret with [`Needles`], so that a partial or re-encoded echo is
//! caught too. A hit is reported by surface, offset and secret number, never by content.

use crate::memory_image::{Found, Needles, WINDOW, is_refresh_token, secret_parts};
use std::path::Path;

/// Named bytes to scan.
#[derive(Debug, Default)]
pub struct Surfaces {
    items: Vec<(String, Vec<u8>)>,
}

impl Surfaces {
    pub fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((what.into(), bytes.into()));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `/proc/PID/cmdline` and `/proc/PID/environ` of a running process; false when it is gone
    /// (or has not exec'd yet: then its files are empty), so the caller can count captures.
    pub fn add_process(&mut self, what: &str, pid: u32) -> bool {
        let mut captured = true;
        for file in ["cmdline", "environ"] {
            match std::fs::read(format!("/proc/{pid}/{file}")) {
                Ok(bytes) if !bytes.is_empty() => {
                    self.add(format!("/proc/PID/{file} of {what}"), bytes)
                }
                _ => captured = false,
            }
        }
        captured
    }

    /// Every regular file under `dir`, recursively (sockets and other special files skipped).
    /// Returns how many files were added.
    pub fn add_tree(&mut self, what: &str, dir: &Path) -> usize {
        let mut added = 0;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                added += self.add_tree(what, &path);
            } else if kind.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    self.add(format!("{what}: file {}", path.display()), bytes);
                    added += 1;
                }
            }
        }
        added
    }

    /// Every hit of `needles` in every surface; a hit's place is its byte offset in the surface.
    pub fn scan(&self, needles: &Needles) -> Found {
        let mut found = Found::default();
        for (what, bytes) in &self.items {
            needles.scan_bytes(bytes, 0, what, &mut found);
        }
        found
    }
}

/// Needles for every token (its payload and signature: the JWT header is the same for every
/// token) as `token #i (access|refresh)`, in the fake's issue order, and every password as
/// `password #i`. Windows two secrets share (the claims every payload starts with) are left
/// out: they are structure, not secret.
#[track_caller]
pub fn secret_needles(tokens: &[String], passwords: &[&str]) -> Needles {
    let mut needles = Needles::default();
    for (i, token) in tokens.iter().enumerate() {
        let kind = if is_refresh_token(token) {
            "refresh"
        } else {
            "access"
        };
        for part in secret_parts(token) {
            assert!(part.len() >= WINDOW, "a token part shorter than a window");
            needles.add(&format!("token #{i} ({kind})"), part);
        }
    }
    for (i, password) in passwords.iter().enumerate() {
        assert!(
            password.len() >= WINDOW,
            "password #{i} is shorter than a scan window: use longer test passwords"
        );
        needles.add(&format!("password #{i}"), password);
    }
    needles.drop_shared();
    needles
}
