//! The store's one error type. Messages are sentences a sysadmin can act on; they carry the
//! backend, the operation and the account name, never a secret (no token, no raw secret bytes,
//! no panic payload).

use super::Backend;
use super::encrypted_file::FileProblem;
use std::fmt;
use std::path::PathBuf;

/// The store operation that failed, with its account: context for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Opening the backend at start-up.
    Open,
    /// Reading an account's refresh token.
    Load(String),
    /// Writing an account's refresh token.
    Save(String),
    /// Removing an account's refresh token.
    Delete(String),
    /// Listing the accounts that have entries.
    List,
    /// Re-encrypting the encrypted-file store under a new key.
    Rekey,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open => f.write_str("open the store"),
            Self::Load(a) => write!(f, "load the refresh token of account \"{a}\""),
            Self::Save(a) => write!(f, "save the refresh token of account \"{a}\""),
            Self::Delete(a) => write!(f, "delete the refresh token of account \"{a}\""),
            Self::List => f.write_str("list the accounts in the store"),
            Self::Rekey => f.write_str("re-encrypt the store file under the new key"),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// There is no D-Bus session bus to reach the Secret Service on.
    #[error(
        "no D-Bus session: run inside a desktop session, or set backend = \"keyutils\" in [store] ({detail})"
    )]
    NoSessionBus {
        /// What was missing or refused (address, socket).
        detail: String,
    },
    /// The session bus is there but nothing provides `org.freedesktop.secrets` on it.
    #[error(
        "the D-Bus session has no Secret Service (org.freedesktop.secrets): start gnome-keyring-daemon (or another provider) in the session, or set backend = \"keyutils\" in [store] ({detail})"
    )]
    NoSecretService {
        /// The bus's answer.
        detail: String,
    },
    /// The Secret Service did not answer while opening the store.
    #[error(
        "the Secret Service did not answer within {seconds} s: check that gnome-keyring-daemon is running and responsive, or set backend = \"keyutils\" in [store]"
    )]
    Timeout {
        /// How long the broker waited.
        seconds: u64,
    },
    /// The Secret Service has no unlocked default collection (locked, or never created).
    #[error(
        "cannot {op}: the Secret Service keyring is locked or has no default collection; unlock it by logging in to the desktop session (or with Seahorse), or restart gnome-keyring-daemon with --unlock and the keyring password on stdin ({detail})"
    )]
    Locked {
        /// What the broker was doing, with the account.
        op: Op,
        /// The Secret Service's own words (often an opaque "result not returned from SS API").
        detail: String,
    },
    /// The kernel refused access to the keyring (EACCES), typically when linking into the
    /// persistent keyring from a process without a session keyring of its own.
    #[error(
        "cannot {op} in the kernel keyring: access denied; the process needs a session keyring of its own (the daemon joins one at start), or run it under systemd with KeyringMode=private ({detail})"
    )]
    KeyringAccess {
        /// What the broker was doing, with the account.
        op: Op,
        /// The kernel's answer.
        detail: String,
    },
    /// The account name cannot name a store entry.
    #[error(
        "account name {account:?} cannot be used in the secure store: it must be non-empty, must not start with '.' and must not contain '@' or control characters"
    )]
    InvalidAccount {
        /// The rejected name.
        account: String,
    },
    /// The stored value is not a refresh token (not UTF-8 text).
    #[error(
        "the {backend} entry of account \"{account}\" does not hold a valid refresh token; log the account out and in again to replace it"
    )]
    Corrupt {
        /// Where the entry is.
        backend: Backend,
        /// Whose entry it is.
        account: String,
    },
    /// Several Secret Service items match one account (e.g. written by another program).
    #[error(
        "{count} Secret Service items match account \"{account}\" of service \"{service}\"; remove them with `secret-tool clear service {service} username {account}` and log in again"
    )]
    Ambiguous {
        /// The keyring service name.
        service: String,
        /// The account.
        account: String,
        /// How many items matched.
        count: usize,
    },
    /// Any other failure of the backend.
    #[error("the {backend} store could not {op}: {detail}")]
    Backend {
        /// The backend that failed.
        backend: Backend,
        /// What the broker was doing, with the account.
        op: Op,
        /// The backend's own words.
        detail: String,
    },
    /// The encrypted-file store found no key to use.
    #[error(
        "the encrypted-file store has no key: under systemd give the unit LoadCredentialEncrypted=store-key:/etc/therappai-broker/store-key.cred (create it with `head -c 32 /dev/urandom | systemd-creds encrypt --name=store-key --with-key=host - /etc/therappai-broker/store-key.cred`); outside systemd set [store] key_file to a file of 32 random bytes (`(umask 077; head -c 32 /dev/urandom > FILE)`)"
    )]
    NoKey,
    /// The key (credential or key file) cannot be used.
    #[error("cannot use the store key, {key}: {problem}")]
    Key {
        /// Where the key was looked for ("the key file /etc/…", "the systemd credential …").
        key: String,
        /// What is wrong, with the fix.
        problem: String,
    },
    /// The store file cannot be read as a store with this key. Start-up stops; the file is
    /// left exactly as it was.
    #[error(
        "the encrypted store file {} {problem}. The broker did not change the file.",
        path.display()
    )]
    File {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it, with the fix.
        problem: FileProblem,
    },
    /// Another process (a second broker, or a `--rekey`) holds the store file's lock.
    #[error(
        "the encrypted store file {} is in use by another therappai-broker process (it holds the lock {}); two brokers cannot share one store file: stop the other one first (e.g. `systemctl stop therappai-broker.service`), or give this one its own [store] file",
        path.display(),
        lock.display()
    )]
    InUse {
        /// The store file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The store's directory is unsafe or cannot be created.
    #[error("the encrypted store's directory {} cannot be used: {problem}", path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong, with the fix.
        problem: String,
    },
    /// `--rekey` with a config whose store is not the encrypted file.
    #[error(
        "--rekey re-encrypts the encrypted-file store, but this config sets [store] backend = \"{backend}\"; there is no key to rotate"
    )]
    NotEncryptedFile {
        /// The configured backend.
        backend: &'static str,
    },
    /// No default location for the store file could be found.
    #[error("the encrypted store file has no default location: {detail}")]
    NoStateDirectory {
        /// What was missing.
        detail: &'static str,
    },
    /// A file-system call of the encrypted-file store failed.
    #[error("the encrypted-file store could not {op}: {action} {}: {error}", path.display())]
    Io {
        /// What the broker was doing, with the account.
        op: Op,
        /// The step that failed ("open", "write", "fsync", "rename over", …).
        action: &'static str,
        /// The file the step worked on.
        path: PathBuf,
        /// The OS's answer (not `source`: the message already shows it).
        error: std::io::Error,
    },
    /// OpenBao (the `vault` backend) refused or could not answer.
    #[error("cannot {op} in OpenBao: {problem}")]
    Vault {
        /// What the broker was doing, with the account.
        op: Op,
        /// What OpenBao said, and what to do about it.
        problem: String,
        /// Whether OpenBao itself is down (sealed, unreachable, no leader).
        unavailable: bool,
    },
    /// The store did not answer one call within `[store] call_timeout_seconds` (the call
    /// itself, or an earlier call for the same account it had to wait behind, still hangs).
    #[error(
        "the {backend} store did not answer within {seconds} s while trying to {op}: {}; the broker keeps running and other accounts are served, try again once the store answers (the bound is [store] call_timeout_seconds)",
        what_to_check(*.backend)
    )]
    CallTimeout {
        /// The backend that did not answer.
        backend: Backend,
        /// What the broker was doing, with the account.
        op: Op,
        /// The bound that ran out.
        seconds: u64,
    },
    /// The blocking task running the store call died.
    #[error(
        "the {backend} store task {how} while trying to {op}; the broker keeps running, try again"
    )]
    TaskFailed {
        /// The backend in use.
        backend: Backend,
        /// What the broker was doing, with the account.
        op: Op,
        /// "panicked" or "was cancelled".
        how: &'static str,
    },
}

/// Where a sysadmin looks when a backend stops answering.
fn what_to_check(backend: Backend) -> &'static str {
    match backend {
        Backend::SecretService => {
            "check that the session's Secret Service is running and not stuck (for GNOME Keyring: `systemctl --user status gnome-keyring-daemon`, and `busctl --user status org.freedesktop.secrets`); restarting it ends a hang"
        }
        Backend::Keyutils => {
            "the kernel keyring should answer at once; check the kernel log (`journalctl -k`) and whether the machine is overloaded or a request-key helper is stuck (`ps -ef | grep request-key`)"
        }
        Backend::EncryptedFile => {
            "check that the file system holding the store file ([store] file) responds: a hung network mount or a failing disk (`journalctl -k`, `df`), or a full disk"
        }
        Backend::Vault => {
            "check that OpenBao is reachable and unsealed (`bao status` against [store.vault] address) and that the network to it is not stalled"
        }
    }
}

impl StoreError {
    /// Whether this is a call that did not answer within `[store] call_timeout_seconds`.
    pub fn is_call_timeout(&self) -> bool {
        matches!(self, Self::CallTimeout { .. })
    }

    /// Whether the store itself failed (no bus, no Secret Service, locked, refused, gone),
    /// rather than answering about one entry (corrupt, ambiguous, a name it cannot file).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::InvalidAccount { .. } | Self::Corrupt { .. } | Self::Ambiguous { .. } => false,
            Self::Vault { unavailable, .. } => *unavailable,
            _ => true,
        }
    }

    /// Translates a keyring-core error for `op`. Never formats the variants that carry secret
    /// bytes (`BadEncoding`, `BadDataFormat`).
    pub(super) fn from_keyring(
        backend: Backend,
        service: &str,
        op: Op,
        err: keyring_core::Error,
    ) -> Self {
        use keyring_core::Error as E;
        let account = match &op {
            Op::Load(a) | Op::Save(a) | Op::Delete(a) => a.clone(),
            Op::Open | Op::List | Op::Rekey => String::new(),
        };
        match err {
            E::NoStorageAccess(e) if backend == Backend::SecretService => Self::Locked {
                op,
                detail: e.to_string(),
            },
            E::NoStorageAccess(e) => Self::KeyringAccess {
                op,
                detail: e.to_string(),
            },
            E::BadEncoding(_) | E::BadDataFormat(..) => Self::Corrupt { backend, account },
            E::Ambiguous(items) => Self::Ambiguous {
                service: service.to_owned(),
                account,
                count: items.len(),
            },
            other => Self::Backend {
                backend,
                op,
                detail: other.to_string(),
            },
        }
    }
}
