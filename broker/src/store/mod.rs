//! Secure store: owns the refresh tokens at rest, one entry per account in the OS secure
//! storage — the Secret Service (gnome-keyring, KWallet, … over the D-Bus session bus), the
//! kernel keyutils keyring, or an encrypted file (system services).
//!
//! It must never log a token or put one in an error message (errors carry the backend, the
//! operation and the account name only), and it must never be called from async code
//! directly: [`Store`] is blocking, and the Secret Service store runs its own runtime and
//! panics inside tokio. The rest of the broker goes through [`StoreHandle`], which moves every
//! call to `spawn_blocking`, bounded by `[store] call_timeout_seconds`, one call per account
//! at a time (see `lanes.rs`).
//!
//! # How entries are filed
//!
//! - Secret Service: one item per account in the *default* collection, with attributes
//!   `service` = the service name (default `therappai-broker`) and `username` = the account;
//!   [`Store::accounts`] searches on `service`.
//! - keyutils: one `user` key per account, description `keyring:{account}@{service}`, plus an
//!   index key `keyring:.accounts@{service}` listing the account names (keyutils has no search;
//!   account names never start with `.`, so the index can never collide with an account).
//!
//! # keyutils: which keyring, and surviving a restart (checked on Linux 6.x, as root and uid 1000)
//!
//! The key is added to the calling thread's session keyring and linked into the user's
//! persistent keyring (`KEYCTL_GET_PERSISTENT`, which also links the persistent keyring into
//! the session keyring and resets its expiry timer). A restarted daemon with a *new* session
//! keyring finds its entries again through that link: restart survival rests on the
//! persistent keyring, which the kernel drops after `persistent_keyring_expiry` (3 days) unused
//! and which a reboot clears.
//!
//! Linking into the persistent keyring needs a session keyring the process possesses. A
//! process that only has the user-default session keyring (`_uid_ses.N`: a plain shell, a
//! service without `KeyringMode=`) gets EACCES on save and silently finds nothing on load.
//! Session keyrings belong to a *thread* (credentials are per thread): joining one in
//! `main` after the tokio runtime has started leaves the runtime's existing threads on the
//! old keyring. So the keyutils store checks the calling thread before every operation and
//! joins a fresh anonymous session keyring ([`join_session_keyring`]) when the thread has
//! none of its own; calling it once in `main` before any thread starts is still good hygiene.
//!
//! # encrypted-file: for system services
//!
//! A system service has no Secret Service, and the kernel keyring is gone after a reboot. The
//! [`encrypted_file`] backend keeps every entry in one XChaCha20-Poly1305-encrypted file under
//! the state directory, with the key from the systemd credential `store-key` or a key file.
//!
//! # `auto`, and saying why
//!
//! [`open`] wraps whichever store it opens so that [`Store::describe`] ends with why that
//! backend was chosen (set in the config, or what `auto` found), which `status` shows.

pub mod encrypted_file;
mod error;
mod keyutils;
mod lanes;
#[cfg(test)]
mod memory;
mod secret_service;
pub mod vault;

pub use error::{Op, StoreError};
pub use keyutils::join_session_keyring;
#[cfg(test)]
pub use memory::MemoryStore;

use crate::config::StoreConfig;
use crate::secret::RefreshToken;
use encrypted_file::KeySource;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which OS backend holds the refresh tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The freedesktop Secret Service on the D-Bus session bus.
    SecretService,
    /// The kernel key retention service (session + persistent keyrings).
    Keyutils,
    /// One encrypted file under the state directory.
    EncryptedFile,
    /// An OpenBao (Vault) KV v2 mount shared by a fleet of brokers.
    Vault,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SecretService => "secret-service",
            Self::Keyutils => "keyutils",
            Self::EncryptedFile => "encrypted-file",
            Self::Vault => "vault",
        })
    }
}

/// What the config asked for: `backend = "auto" | "secret-service" | "keyutils" |
/// "encrypted-file" | "vault"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// Secret Service when the session bus offers it, else encrypted-file when its key is
    /// there (credential or `key_file`), else keyutils.
    Auto,
    /// Secret Service only; fail if it is not there.
    SecretService,
    /// Kernel keyutils only.
    Keyutils,
    /// The encrypted file only; fail without its key.
    EncryptedFile,
    /// OpenBao / Vault, from `[store.vault]`: a fleet's shared entries.
    Vault,
}

impl BackendChoice {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::SecretService => "secret-service",
            Self::Keyutils => "keyutils",
            Self::EncryptedFile => "encrypted-file",
            Self::Vault => "vault",
        }
    }
}

/// Blocking interface to one backend. One instance per process, created once (Secret Service
/// connects at creation, ~50-80 ms).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The backend this store writes to.
    fn backend(&self) -> Backend;
    /// One sentence for `status`: where entries live and how long they last.
    fn describe(&self) -> String;
    /// The account's refresh token, or `None` if the store has no entry for it.
    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError>;
    /// Creates or replaces the account's entry.
    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError>;
    /// Ok(true) if an entry existed and is now gone, Ok(false) if there was none.
    fn delete(&self, account: &str) -> Result<bool, StoreError>;
    /// Every account name this broker's service has an entry for, sorted (device-level logout
    /// uses this to find entries of accounts no longer in the config).
    fn accounts(&self) -> Result<Vec<String>, StoreError>;
}

/// Opens the backend `config` asks for. `config.service` is the keyring service name (default
/// "therappai-broker"; tests pass unique names so parallel tests never share entries).
///
/// `Auto` takes the Secret Service when a session bus is present and answers for
/// `org.freedesktop.secrets` within a few seconds; else the encrypted file when its key is
/// there (the systemd credential `store-key`, or a configured `key_file`); else keyutils. It
/// never hangs on a missing or silent bus. The store's `describe()` ends with why it was
/// chosen. Blocking: call it from `spawn_blocking` or before the runtime starts.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let service = config.service.as_str();
    let set_by = format!("set by [store] backend = \"{}\"", config.backend.as_str());
    match config.backend {
        BackendChoice::SecretService => chosen(
            secret_service::SecretServiceStore::open(service, secret_service::CONNECT_TIMEOUT)?,
            set_by,
        ),
        BackendChoice::Keyutils => chosen(keyutils::KeyutilsStore::open(service)?, set_by),
        BackendChoice::Vault => Ok(Arc::new(open_vault(config)?)),
        BackendChoice::EncryptedFile => {
            let key = KeySource::find(config.key_file.as_deref()).ok_or(StoreError::NoKey)?;
            chosen(open_encrypted_file(config, key)?, set_by)
        }
        BackendChoice::Auto => {
            match secret_service::SecretServiceStore::open(service, secret_service::PROBE_TIMEOUT) {
                Ok(store) => chosen(
                    store,
                    "chosen by backend = \"auto\": the session bus offers a Secret Service"
                        .to_owned(),
                ),
                Err(
                    e @ (StoreError::NoSessionBus { .. }
                    | StoreError::NoSecretService { .. }
                    | StoreError::Timeout { .. }),
                ) => {
                    let no_ss = why_no_secret_service(&e);
                    match KeySource::find(config.key_file.as_deref()) {
                        Some(key) => {
                            tracing::info!(reason = %e, key = %key, "no usable Secret Service; using the encrypted file");
                            let why = format!(
                                "chosen by backend = \"auto\": {no_ss}, and {key} is there"
                            );
                            chosen(open_encrypted_file(config, key)?, why)
                        }
                        None => {
                            tracing::info!(reason = %e, "no usable Secret Service and no encrypted-file key; using the kernel keyring");
                            let why = format!(
                                "chosen by backend = \"auto\": {no_ss}, and no encrypted-file key is set up (no $CREDENTIALS_DIRECTORY/{}, no [store] key_file)",
                                encrypted_file::CREDENTIAL_NAME
                            );
                            chosen(keyutils::KeyutilsStore::open(service)?, why)
                        }
                    }
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// The encrypted-file store's file: `[store] file`, or the default under the state directory.
pub fn encrypted_file_path(config: &StoreConfig) -> Result<PathBuf, StoreError> {
    match &config.file {
        Some(file) => Ok(file.clone()),
        None => crate::paths::default_store_file()
            .map_err(|detail| StoreError::NoStateDirectory { detail }),
    }
}

/// Re-encrypts the encrypted-file store of `config` (old key found as at start-up) under the
/// key from `new`, atomically. Refused while a broker holds the file. See
/// [`encrypted_file::rekey`].
pub fn rekey(config: &StoreConfig, new: &KeySource) -> Result<encrypted_file::Rekeyed, StoreError> {
    let old = match config.backend {
        BackendChoice::EncryptedFile | BackendChoice::Auto => {
            KeySource::find(config.key_file.as_deref()).ok_or(StoreError::NoKey)?
        }
        BackendChoice::SecretService | BackendChoice::Keyutils | BackendChoice::Vault => {
            return Err(StoreError::NotEncryptedFile {
                backend: config.backend.as_str(),
            });
        }
    };
    encrypted_file::rekey(&encrypted_file_path(config)?, old, new)
}

/// Opens the `vault` backend of `config` (a fleet's shared entries in OpenBao). Blocking, on
/// the daemon's blocking pool.
pub fn open_vault(config: &StoreConfig) -> Result<vault::VaultStore, StoreError> {
    let vault = config.vault.clone().ok_or_else(|| StoreError::Vault {
        op: Op::Open,
        problem: "backend = \"vault\" needs a [store.vault] section".to_owned(),
        unavailable: false,
    })?;
    vault::VaultStore::open(vault)
}

fn open_encrypted_file(
    config: &StoreConfig,
    key: KeySource,
) -> Result<encrypted_file::EncryptedFileStore, StoreError> {
    encrypted_file::EncryptedFileStore::open(&encrypted_file_path(config)?, key)
}

/// A short clause for `describe()`: why `auto` passed over the Secret Service.
fn why_no_secret_service(e: &StoreError) -> String {
    match e {
        StoreError::NoSessionBus { detail } => format!("there is no D-Bus session bus ({detail})"),
        StoreError::NoSecretService { .. } => "the D-Bus session has no Secret Service".to_owned(),
        StoreError::Timeout { seconds } => {
            format!("the Secret Service did not answer within {seconds} s")
        }
        other => other.to_string(),
    }
}

fn chosen(store: impl Store, why: String) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(Chosen {
        inner: Box::new(store),
        why,
    }))
}

/// An opened store with the reason it was chosen, so `status` can say why.
#[derive(Debug)]
struct Chosen {
    inner: Box<dyn Store>,
    why: String,
}

impl Store for Chosen {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn describe(&self) -> String {
        format!("{}; {}", self.inner.describe(), self.why)
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        self.inner.load(account)
    }

    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        self.inner.save(account, token)
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        self.inner.delete(account)
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        self.inner.accounts()
    }
}

/// Account names the store accepts: the config's rule (letters, digits, `-`, `_`, `.`, not
/// starting with `.`) is checked there; here only what the backends need, so a reserved name
/// like the keyutils index can never be written as an account.
fn check_account(account: &str) -> Result<(), StoreError> {
    let ok = !account.is_empty()
        && !account.starts_with('.')
        && !account.contains('@')
        && !account.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidAccount {
            account: account.to_owned(),
        })
    }
}

/// Async facade used by the rest of the broker: each call runs on tokio's blocking pool,
/// bounded by the call timeout, at most one per account at a time.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    inner: Arc<dyn Store>,
    /// The same store when it is a fleet's OpenBao: the refresher and the watcher use its
    /// versions and leases.
    fleet: Option<Arc<vault::VaultStore>>,
    /// Told of every call's outcome: store errors and availability (health, metrics).
    metrics: Arc<crate::metrics::Metrics>,
    /// `[store] call_timeout_seconds`: how long a caller waits for one call (its turn in the
    /// account's lane included).
    call_timeout: Duration,
    /// Shared by every clone: one blocking call per account at a time.
    lanes: Arc<lanes::Lanes>,
}

impl StoreHandle {
    /// Wraps an opened store.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fleet: None,
            metrics: Arc::default(),
            call_timeout: crate::config::DEFAULT_STORE_CALL_TIMEOUT,
            lanes: Arc::default(),
        }
    }

    /// Wraps a fleet's OpenBao store.
    pub fn fleet_store(store: Arc<vault::VaultStore>) -> Self {
        Self {
            inner: Arc::clone(&store) as Arc<dyn Store>,
            fleet: Some(store),
            metrics: Arc::default(),
            call_timeout: crate::config::DEFAULT_STORE_CALL_TIMEOUT,
            lanes: Arc::default(),
        }
    }

    /// Bounds every call by `timeout` (`[store] call_timeout_seconds`).
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Resolves once no call for `account` is out in the store (a call that timed out has
    /// really returned), without starting one. Not bounded: the caller decides how long.
    pub async fn settled(&self, account: &str) {
        drop(self.lanes.lane(account).lock().await);
    }

    /// The fleet's OpenBao store, when that is the backend.
    pub fn fleet(&self) -> Option<&Arc<vault::VaultStore>> {
        self.fleet.as_ref()
    }

    /// Tells the metrics (and so the health service) how a call made straight to the
    /// fleet's store went, as [`StoreHandle::run`] does for the others.
    pub fn observe<T>(&self, op: &Op, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.metrics.store_answered(),
            Err(e) => self.metrics.store_failed(op, e.is_unavailable()),
        }
    }

    /// Reports every call's outcome to `metrics` (store errors, and availability, which the
    /// health service follows).
    #[must_use]
    pub fn observed_by(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    /// One sentence for `status`.
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// See [`Store::load`].
    pub async fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        let account = account.to_owned();
        self.run(Op::Load(account.clone()), move |s| s.load(&account))
            .await
    }

    /// See [`Store::save`]. The token is duplicated into the blocking task.
    pub async fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let account = account.to_owned();
        let token = token.duplicate();
        self.run(Op::Save(account.clone()), move |s| s.save(&account, &token))
            .await
    }

    /// See [`Store::delete`].
    pub async fn delete(&self, account: &str) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.run(Op::Delete(account.clone()), move |s| s.delete(&account))
            .await
    }

    /// See [`Store::accounts`].
    pub async fn accounts(&self) -> Result<Vec<String>, StoreError> {
        self.run(Op::List, |s| s.accounts()).await
    }

    async fn run<T, F>(&self, op: Op, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let backend = inner.backend();
        // One deadline for the wait for the lane and the call itself: the caller is answered
        // within the timeout whatever is ahead of it.
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        let lane = self.lanes.lane(lane_key(&op));
        let result = match tokio::time::timeout_at(deadline, lane.lock_owned()).await {
            Err(_) => Err(self.timed_out(backend, &op, true)),
            Ok(turn) => {
                // The turn moves into the blocking call and is given back when it returns
                // (or unwinds), never when this future stops waiting.
                let task = tokio::task::spawn_blocking(move || {
                    crate::secret::deep_work_then_wipe(|| {
                        let result = call(inner.as_ref());
                        drop::<lanes::Turn>(turn);
                        result
                    })
                });
                match tokio::time::timeout_at(deadline, task).await {
                    Ok(Ok(result)) => result,
                    // The panic payload is not shown: we cannot vouch for what it contains.
                    Ok(Err(e)) => Err(StoreError::TaskFailed {
                        backend,
                        op: op.clone(),
                        how: if e.is_panic() {
                            "panicked"
                        } else {
                            "was cancelled"
                        },
                    }),
                    Err(_) => Err(self.timed_out(backend, &op, false)),
                }
            }
        };
        match &result {
            Ok(_) => self.metrics.store_answered(),
            Err(e) => self.metrics.store_failed(&op, e.is_unavailable()),
        }
        result
    }

    fn timed_out(&self, backend: Backend, op: &Op, behind_earlier_call: bool) -> StoreError {
        let seconds = self.call_timeout.as_secs();
        tracing::warn!(%backend, op = %op, seconds, behind_earlier_call, "the store did not answer within [store] call_timeout_seconds");
        StoreError::CallTimeout {
            backend,
            op: op.clone(),
            seconds,
        }
    }
}

/// The lane a call waits in: its account's, or the one for calls about no account.
fn lane_key(op: &Op) -> &str {
    match op {
        Op::Load(account) | Op::Save(account) | Op::Delete(account) => account,
        Op::Open | Op::List | Op::Rekey => "",
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;
