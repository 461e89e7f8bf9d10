//! File-system work of the encrypted-file store: its directory, the lock that keeps a second
//! broker off the file, and atomic, durable replacement of the file.
//!
//! Replacement: write a temporary file in the same directory (mode 0600, created exclusively),
//! fsync it, rename it over the store file, fsync the directory. rename(2) is atomic, so a
//! crash at any point leaves either the old or the new file under the store's name, never a
//! mix; the fsyncs make the new one survive a power cut once the call returned.

use std::fs::{DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The temporary file next to `file` (one name: writers are serialised and the lock keeps
/// other brokers out, so two writes never share it).
pub(super) fn temp_path(file: &Path) -> PathBuf {
    sibling(file, ".tmp")
}

/// The lock file next to `file`. A separate file, because the store file itself is replaced
/// on every write and a lock on the old inode would not cover the new one. It is never
/// deleted (deleting lock files races with the next locker).
pub(super) fn lock_path(file: &Path) -> PathBuf {
    sibling(file, ".lock")
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    file.with_file_name(name)
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist, then checks that
/// it belongs to us or root and that no one else may write to it (who can write to the
/// directory can swap the store file, or the lock). `Err` is a sentence with the fix.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), String> {
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(format!("cannot create the directory: {e}"));
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot stat the directory: {e}"))?;
    if !meta.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    let me = super::key::euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "the directory belongs to uid {}, not to the broker's user (uid {me}): run the broker (or --rekey) as that user, e.g. `runuser -u $(id -nu {}) -- therappai-broker …`, or fix the owner with `chown {me} {}`",
            meta.uid(),
            meta.uid(),
            dir.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    // Sticky directories such as /tmp are writable by all but protect each entry.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "the directory has mode {mode:04o}, so other users can replace the store file: run `chmod 0700 {}`",
            dir.display()
        ));
    }
    Ok(())
}

/// An exclusive advisory lock (flock) held for as long as this lives.
#[derive(Debug)]
pub(super) struct FileLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub(super) enum LockError {
    /// Another process holds it.
    Held,
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

impl FileLock {
    /// Takes the lock on `path` without waiting.
    pub(super) fn try_lock(path: &Path) -> Result<Self, LockError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(LockError::Io)?;
        // flock, not fcntl locks: fcntl locks are dropped when *any* descriptor of the file
        // in the process closes, and belong to the process rather than the descriptor.
        // SAFETY: flock on a descriptor we own; no pointers involved.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc == 0 {
            return Ok(Self { _file: file });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(LockError::Held)
        } else {
            Err(LockError::Io(e))
        }
    }
}

/// Which step of a replacement failed, for the error message.
#[derive(Debug)]
pub(super) struct WriteError {
    /// "create", "write", "fsync", "rename over", "fsync the directory of".
    pub(super) step: &'static str,
    /// The path the step worked on.
    pub(super) path: PathBuf,
    pub(super) error: io::Error,
}

/// Replaces `file` with `bytes`, atomically and durably (see the module doc). On failure the
/// old file is untouched and the temporary file is removed.
pub(super) fn replace(file: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let temp = temp_path(file);
    let fail = |step, path: &Path, error| WriteError {
        step,
        path: path.to_owned(),
        error,
    };
    // A temporary file left by a crash is garbage: the store file is still the old one.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove the stale temporary file", &temp, e)),
    }
    let result = (|| {
        // create_new (O_EXCL) never follows a planted symlink.
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(|e| fail("create", &temp, e))?;
        out.write_all(bytes).map_err(|e| fail("write", &temp, e))?;
        out.sync_all().map_err(|e| fail("fsync", &temp, e))?;
        drop(out);
        std::fs::rename(&temp, file).map_err(|e| fail("rename over", file, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    // Makes the rename itself durable. After this point the new file is in place; a failure
    // here is still reported, because it may not survive a power cut.
    let dir = parent(file);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("fsync the directory of", file, e))
}

/// The directory holding `file` (its parent, or `.` for a bare name).
pub(super) fn parent(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_a_private_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.enc");
        replace(&file, b"first").expect("write");
        replace(&file, b"second").expect("replace");
        assert_eq!(std::fs::read(&file).expect("read"), b"second");
        let mode = std::fs::metadata(&file).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp_path(&file).exists(), "no temporary file left");
    }

    #[test]
    fn a_stale_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.enc");
        std::fs::write(temp_path(&file), b"torn half-written garbage").expect("stale");
        replace(&file, b"new").expect("write over a stale temporary");
        assert_eq!(std::fs::read(&file).expect("read"), b"new");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.enc");
        replace(&file, b"old").expect("write");
        // A directory where the temporary file must go makes the create step fail.
        std::fs::create_dir(temp_path(&file)).expect("block the temporary name");
        let err = replace(&file, b"new").expect_err("cannot write");
        assert_eq!(err.step, "remove the stale temporary file");
        assert_eq!(std::fs::read(&file).expect("read"), b"old");
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.enc.lock");
        let held = FileLock::try_lock(&path).expect("first lock");
        assert!(matches!(FileLock::try_lock(&path), Err(LockError::Held)));
        drop(held);
        FileLock::try_lock(&path).expect("free again");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state/sub");
        ensure_dir(&state).expect("created");
        let mode = std::fs::metadata(&state).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ensure_dir(&state).expect_err("world-writable");
        assert!(err.contains("chmod 0700"), "{err}");
    }
}
