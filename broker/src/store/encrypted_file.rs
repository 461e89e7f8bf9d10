//! Encrypted-file backend, for system services (no Secret Service, and a kernel keyring that
//! a reboot clears): every account's refresh token, and so the account index, in ONE file,
//! encrypted with XChaCha20-Poly1305 under a 32-byte key from a systemd credential or a key
//! file. The format is in [`format`], the key in [`key`], the file-system work in `atomic`.
//!
//! - The file is read once at open and kept in memory (zeroizing secret types); each save or
//!   delete writes the whole file again, atomically and durably, under one mutex. Memory
//!   changes only once the write succeeded, so memory and disk never disagree.
//! - A file that cannot be read with the key (wrong key, changed or cut bytes, unknown
//!   version) fails the open with a sentence naming the file and the fix; it is never
//!   treated as empty and never written over.
//! - One broker per file: an advisory lock (`FILE.lock`, flock) is held for the store's life;
//!   a second broker, or `--rekey` while a broker runs, gets a clear error.
//!
//! What it protects against: a copied disk, backup or file (without the key the file is
//! noise; with a host- or TPM-bound credential the key is useless off this machine), and
//! tampering (detected). Not against root on the running machine, which can read the key.

pub mod format;
pub mod key;

mod atomic;

use super::{Backend, Op, Store, StoreError, check_account};
use crate::secret::RefreshToken;
use atomic::{FileLock, LockError};
pub use format::{Entries, FileProblem};
pub use key::{CREDENTIAL_NAME, KEY_LEN, KeySource, StoreKey};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use zeroize::Zeroizing;

/// The encrypted-file store.
pub struct EncryptedFileStore {
    path: PathBuf,
    key: StoreKey,
    key_source: KeySource,
    entries: Mutex<Entries>,
    /// Held, never read: dropping it releases the lock.
    _lock: FileLock,
}

impl std::fmt::Debug for EncryptedFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedFileStore")
            .field("path", &self.path)
            .field("key_source", &self.key_source)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl EncryptedFileStore {
    /// Opens the store file at `path` with the key from `key_source`: creates its directory
    /// (0700) if missing, takes the lock, reads and authenticates the file, or writes an
    /// empty one when there is none (so a directory the broker cannot write fails start-up,
    /// not the first login).
    pub fn open(path: &Path, key_source: KeySource) -> Result<Self, StoreError> {
        let key = StoreKey::load(&key_source)?;
        let lock = lock(path)?;
        let entries = match read_file(path, &key)? {
            Some(entries) => entries,
            None => {
                let entries = Entries::new();
                write(path, &key, &entries, &Op::Open)?;
                tracing::info!(file = %path.display(), "created an empty encrypted store file");
                entries
            }
        };
        Ok(Self {
            path: path.to_owned(),
            key,
            key_source,
            entries: Mutex::new(entries),
            _lock: lock,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding the guard cannot leave the map half-changed: it changes
        // only after a successful write, in one insert or remove.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for EncryptedFileStore {
    fn backend(&self) -> Backend {
        Backend::EncryptedFile
    }

    fn describe(&self) -> String {
        format!(
            "encrypted file {} (XChaCha20-Poly1305), key from {} with key id {}; survives a reboot",
            self.path.display(),
            self.key_source,
            self.key.id_hex()
        )
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        check_account(account)?;
        Ok(self.entries().get(account).map(RefreshToken::duplicate))
    }

    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        check_account(account)?;
        let mut entries = self.entries();
        let previous = entries.insert(account.to_owned(), token.duplicate());
        if let Err(e) = write(
            &self.path,
            &self.key,
            &entries,
            &Op::Save(account.to_owned()),
        ) {
            match previous {
                Some(old) => entries.insert(account.to_owned(), old),
                None => entries.remove(account),
            };
            return Err(e);
        }
        Ok(())
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        check_account(account)?;
        let mut entries = self.entries();
        let Some(old) = entries.remove(account) else {
            return Ok(false);
        };
        if let Err(e) = write(
            &self.path,
            &self.key,
            &entries,
            &Op::Delete(account.to_owned()),
        ) {
            entries.insert(account.to_owned(), old);
            return Err(e);
        }
        Ok(true)
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.entries().keys().cloned().collect())
    }
}

/// Reads the entries of the store file at `path` with `key`, without taking the lock and
/// without writing anything: for backups, checks and tests. `Ok(None)`: there is no file.
pub fn read_file(path: &Path, key: &StoreKey) -> Result<Option<Entries>, StoreError> {
    let io = |action: &'static str, error| StoreError::Io {
        op: Op::Open,
        action,
        path: path.to_owned(),
        error,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", e)),
    };
    let len = file.metadata().map_err(|e| io("stat", e))?.len();
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(len).unwrap_or(0).saturating_add(1),
    ));
    file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
    format::open(key, &mut bytes)
        .map(Some)
        .map_err(|problem| StoreError::File {
            path: path.to_owned(),
            problem,
        })
}

/// What [`rekey`] did.
#[derive(Debug)]
pub struct Rekeyed {
    /// The store file, now under the new key.
    pub file: PathBuf,
    /// How many accounts it holds.
    pub accounts: usize,
    /// Where the old key came from.
    pub old_key: KeySource,
    /// Id of the old key.
    pub old_key_id: String,
    /// Id of the new key.
    pub new_key_id: String,
}

/// Re-encrypts the store file at `path` (key from `old`) under the key from `new`, in
/// one atomic replacement: afterwards the file opens with the new key only. Refused while a
/// broker holds the file, when the new key is the old one, and on any file the old key
/// cannot read (which is left unchanged).
pub fn rekey(path: &Path, old: KeySource, new: &KeySource) -> Result<Rekeyed, StoreError> {
    let new_key = StoreKey::load(new)?;
    let store = EncryptedFileStore::open(path, old)?;
    if new_key.id() == store.key.id() {
        return Err(StoreError::Key {
            key: new.to_string(),
            problem: "it is the key the store already uses; make a new one with `(umask 077; head -c 32 /dev/urandom > FILE)`".to_owned(),
        });
    }
    let entries = store.entries();
    write(path, &new_key, &entries, &Op::Rekey)?;
    Ok(Rekeyed {
        file: path.to_owned(),
        accounts: entries.len(),
        old_key: store.key_source.clone(),
        old_key_id: store.key.id_hex(),
        new_key_id: new_key.id_hex(),
    })
}

fn lock(path: &Path) -> Result<FileLock, StoreError> {
    let dir = atomic::parent(path);
    atomic::ensure_dir(dir).map_err(|problem| StoreError::UnsafeDirectory {
        path: dir.to_owned(),
        problem,
    })?;
    let lock_path = atomic::lock_path(path);
    FileLock::try_lock(&lock_path).map_err(|e| match e {
        LockError::Held => StoreError::InUse {
            path: path.to_owned(),
            lock: lock_path,
        },
        LockError::Io(error) => StoreError::Io {
            op: Op::Open,
            action: "lock",
            path: lock_path,
            error,
        },
    })
}

fn write(path: &Path, key: &StoreKey, entries: &Entries, op: &Op) -> Result<(), StoreError> {
    let bytes = format::seal(key, entries).map_err(|e| StoreError::Backend {
        backend: Backend::EncryptedFile,
        op: op.clone(),
        detail: e.0,
    })?;
    atomic::replace(path, &bytes).map_err(|e| StoreError::Io {
        op: op.clone(),
        action: e.step,
        path: e.path,
        error: e.error,
    })
}

#[cfg(test)]
mod tests;
