//! Kernel keyutils backend: one `user` key per account, description
//! `keyring:{account}@{service}`, in the calling thread's session keyring and linked into the
//! user's persistent keyring; plus an index key listing the account names (keyutils has no
//! search). See the module doc of `store` for why each thread needs a session keyring of its
//! own.

use super::{Backend, Op, Store, StoreError, check_account};
use crate::secret::RefreshToken;
use keyring_core::{CredentialStore, Entry};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// The index entry's user name. Account names never start with '.', so no account can
/// overwrite it.
const INDEX_USER: &str = ".accounts";

const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_GET_PERSISTENT: libc::c_long = 22;
const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
const KEY_SPEC_USER_SESSION_KEYRING: libc::c_long = -5;

/// Gives the calling thread a fresh anonymous session keyring
/// (`keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`), so it may link keys into the user's
/// persistent keyring. Per thread: threads started afterwards by this thread inherit it,
/// threads that already exist do not. The keyutils store calls it itself when needed.
pub fn join_session_keyring() -> io::Result<()> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NULL name reads no memory; it only replaces
    // the calling thread's session keyring.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn keyring_id(special: libc::c_long) -> io::Result<libc::c_long> {
    // SAFETY: KEYCTL_GET_KEYRING_ID takes two integers (create = 0: never creates).
    let rc = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, special, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Makes sure the calling thread has a session keyring of its own (not the user-default
/// session keyring, from which the persistent keyring cannot be linked), and links the
/// persistent keyring into it. Cheap: two or three syscalls.
fn ensure_session_keyring() -> io::Result<()> {
    if keyring_id(KEY_SPEC_SESSION_KEYRING)? == keyring_id(KEY_SPEC_USER_SESSION_KEYRING)? {
        join_session_keyring()?;
    }
    // SAFETY: KEYCTL_GET_PERSISTENT takes two integers: uid (-1 = ours) and the keyring to
    // link the persistent keyring into.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_PERSISTENT,
            -1 as libc::c_long,
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The keyutils store.
pub(super) struct KeyutilsStore {
    store: Arc<CredentialStore>,
    service: String,
    /// Serialises read-modify-write of the index within this process.
    index: Mutex<()>,
}

impl std::fmt::Debug for KeyutilsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyutilsStore")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl KeyutilsStore {
    /// Builds the store and checks, on the calling thread, that the persistent keyring can be
    /// reached (the failure that would otherwise show up only as lost accounts after a restart).
    pub(super) fn open(service: &str) -> Result<Self, StoreError> {
        let config = HashMap::from([("service_no_divider", "true")]);
        let store: Arc<CredentialStore> =
            linux_keyutils_keyring_store::Store::new_with_configuration(&config)
                .map_err(|e| StoreError::from_keyring(Backend::Keyutils, service, Op::Open, e))?;
        let this = Self {
            store,
            service: service.to_owned(),
            index: Mutex::new(()),
        };
        this.prepare(&Op::Open)?;
        this.entry(INDEX_USER, &Op::Open)?;
        Ok(this)
    }

    fn prepare(&self, op: &Op) -> Result<(), StoreError> {
        ensure_session_keyring().map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) => StoreError::KeyringAccess {
                op: op.clone(),
                detail: e.to_string(),
            },
            _ => StoreError::Backend {
                backend: Backend::Keyutils,
                op: op.clone(),
                detail: format!("cannot set up a session keyring: {e}"),
            },
        })
    }

    fn entry(&self, user: &str, op: &Op) -> Result<Entry, StoreError> {
        Entry::new_in_store(&self.store, &self.service, user).map_err(|e| self.error(op.clone(), e))
    }

    fn error(&self, op: Op, err: keyring_core::Error) -> StoreError {
        StoreError::from_keyring(Backend::Keyutils, &self.service, op, err)
    }

    fn read_index(&self, op: &Op) -> Result<BTreeSet<String>, StoreError> {
        match self.entry(INDEX_USER, op)?.get_password() {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(keyring_core::Error::NoEntry) => Ok(BTreeSet::new()),
            Err(e) => Err(self.error(op.clone(), e)),
        }
    }

    /// Adds or removes one name; an empty index is deleted rather than stored (keyutils keys
    /// cannot be empty).
    fn update_index(&self, op: &Op, account: &str, present: bool) -> Result<(), StoreError> {
        let _guard = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names = self.read_index(op)?;
        let changed = if present {
            names.insert(account.to_owned())
        } else {
            names.remove(account)
        };
        if !changed {
            return Ok(());
        }
        let entry = self.entry(INDEX_USER, op)?;
        let result = if names.is_empty() {
            entry.delete_credential()
        } else {
            let text: Vec<&str> = names.iter().map(String::as_str).collect();
            entry.set_password(&text.join("\n"))
        };
        match result {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(self.error(op.clone(), e)),
        }
    }

    fn exists(&self, account: &str, op: &Op) -> Result<bool, StoreError> {
        // A search, not a read: the token is not copied out just to learn that it exists.
        match self.entry(account, op)?.get_credential() {
            Ok(_) => Ok(true),
            Err(keyring_core::Error::NoEntry) => Ok(false),
            Err(e) => Err(self.error(op.clone(), e)),
        }
    }
}

impl Store for KeyutilsStore {
    fn backend(&self) -> Backend {
        Backend::Keyutils
    }

    fn describe(&self) -> String {
        let expiry = std::fs::read_to_string("/proc/sys/kernel/keys/persistent_keyring_expiry")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or_else(
                || "a few days".to_owned(),
                |secs| format!("{} days", secs / 86_400),
            );
        format!(
            "kernel keyutils: entries (service \"{}\") live in the broker's session keyring linked into the user's persistent keyring, which the kernel expires after {expiry} unused and which does not survive a reboot",
            self.service
        )
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        let op = Op::Load(account.to_owned());
        check_account(account)?;
        self.prepare(&op)?;
        match self.entry(account, &op)?.get_password() {
            Ok(token) => Ok(Some(RefreshToken::new(token))),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(self.error(op, e)),
        }
    }

    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let op = Op::Save(account.to_owned());
        check_account(account)?;
        self.prepare(&op)?;
        // Index first: a name without an entry is harmless, an entry without a name would be
        // invisible to device-level logout.
        self.update_index(&op, account, true)?;
        self.entry(account, &op)?
            .set_password(token.expose())
            .map_err(|e| self.error(op, e))
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        let op = Op::Delete(account.to_owned());
        check_account(account)?;
        self.prepare(&op)?;
        let existed = match self.entry(account, &op)?.delete_credential() {
            Ok(()) => true,
            Err(keyring_core::Error::NoEntry) => false,
            Err(e) => return Err(self.error(op, e)),
        };
        self.update_index(&op, account, false)?;
        Ok(existed)
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        let op = Op::List;
        self.prepare(&op)?;
        let mut names = Vec::new();
        for name in self.read_index(&op)? {
            // Only names that still have an entry (a save may have failed after the index
            // was written, or the kernel may have expired the key).
            if check_account(&name).is_ok() && self.exists(&name, &op)? {
                names.push(name);
            }
        }
        Ok(names)
    }
}
