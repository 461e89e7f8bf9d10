//! Secret Service backend (pure-Rust zbus client): one item per account in the default
//! collection, attributes `service` and `username`.

use super::{Backend, Op, Store, StoreError, check_account};
use crate::secret::RefreshToken;
use keyring_core::{CredentialStore, Entry};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

/// How long `Auto` waits for the Secret Service before choosing keyutils (D-Bus activation of
/// gnome-keyring takes well under a second).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an explicit `secret-service` choice waits before failing start-up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Secret Service store: one connection, made at open and kept; made again when the
/// Secret Service provider went away and came back (its old session is then gone).
pub(super) struct SecretServiceStore {
    /// Always `Some` until drop; see the `Drop` impl.
    connection: Mutex<Option<Arc<CredentialStore>>>,
    service: String,
}

impl Drop for SecretServiceStore {
    fn drop(&mut self) {
        let last = self
            .connection
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        close(last);
    }
}

/// The zbus store owns a tokio runtime, and dropping a runtime from async context panics. The
/// broker's last handle may go away inside its own runtime (at shutdown), so the drop happens
/// on a plain thread.
fn close(connection: Option<Arc<CredentialStore>>) {
    if let Some(connection) = connection {
        let dropper = std::thread::Builder::new()
            .name("secret-service-close".into())
            .spawn(move || drop(connection));
        if let Ok(handle) = dropper {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for SecretServiceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretServiceStore")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl SecretServiceStore {
    /// Connects to the session bus and opens a Secret Service session, giving up after
    /// `timeout` (a bus that accepts the connection but never answers must not hang start-up).
    pub(super) fn open(service: &str, timeout: Duration) -> Result<Self, StoreError> {
        if let Some(missing) = missing_session_bus() {
            return Err(StoreError::NoSessionBus { detail: missing });
        }
        Ok(Self {
            connection: Mutex::new(Some(connect(timeout)?)),
            service: service.to_owned(),
        })
    }

    /// Runs `op` on the connection. When it failed because the connection went stale (the
    /// provider, e.g. gnome-keyring, restarted and forgot our session), connects again and
    /// runs it once more, so a keyring restart does not break the broker until its own restart.
    fn run<T>(
        &self,
        op: &Op,
        call: impl Fn(&Arc<CredentialStore>) -> Result<T, keyring_core::Error>,
    ) -> Result<T, StoreError> {
        let current = self.current(op)?;
        match call(&current) {
            Err(e) if is_stale(&e) => {
                tracing::warn!(error = %e, "the Secret Service connection went stale (was the keyring daemon restarted?); reconnecting");
                let fresh = connect(CONNECT_TIMEOUT)?;
                let old = {
                    let mut connection = self
                        .connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    // Another call may have reconnected meanwhile: keep the first new one.
                    match connection.as_ref() {
                        Some(now) if !Arc::ptr_eq(now, &current) => Some(fresh),
                        _ => connection.replace(Arc::clone(&fresh)),
                    }
                };
                close(old);
                let connection = self.current(op)?;
                call(&connection).map_err(|e| self.error(op.clone(), e))
            }
            result => result.map_err(|e| self.error(op.clone(), e)),
        }
    }

    fn current(&self, op: &Op) -> Result<Arc<CredentialStore>, StoreError> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Backend {
                backend: Backend::SecretService,
                op: op.clone(),
                detail: "the store was closed".to_owned(),
            })
    }

    fn entry(
        &self,
        store: &Arc<CredentialStore>,
        account: &str,
    ) -> Result<Entry, keyring_core::Error> {
        let label = format!("{} refresh token ({account})", self.service);
        let modifiers = HashMap::from([("label", label.as_str())]);
        Entry::new_in_store_with_modifiers(store, &self.service, account, &modifiers)
    }

    fn error(&self, op: Op, err: keyring_core::Error) -> StoreError {
        StoreError::from_keyring(Backend::SecretService, &self.service, op, err)
    }
}

/// Errors that mean "this connection's session or peer is gone", not "the store refused".
/// Only platform errors are looked at: they carry D-Bus error names, never item data.
fn is_stale(err: &keyring_core::Error) -> bool {
    let (keyring_core::Error::PlatformFailure(inner) | keyring_core::Error::NoStorageAccess(inner)) =
        err
    else {
        return false;
    };
    let detail = inner.to_string();
    [
        "NoSession",
        "ServiceUnknown",
        "UnknownObject",
        "NameHasNoOwner",
        "Disconnected",
        "Broken pipe",
        "Connection reset",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

/// Connects to the session bus and opens a Secret Service session, giving up after `timeout`.
fn connect(timeout: Duration) -> Result<Arc<CredentialStore>, StoreError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("secret-service-open".into())
        .spawn(move || {
            // The receiver may have given up already; then nobody needs the answer.
            let _ = tx.send(zbus_secret_service_keyring_store::Store::new());
        })
        .map_err(|e| StoreError::Backend {
            backend: Backend::SecretService,
            op: Op::Open,
            detail: format!("cannot start the connection thread: {e}"),
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(connect_error(&e)),
        Err(_) => Err(StoreError::Timeout {
            seconds: timeout.as_secs(),
        }),
    }
}

/// zbus finds the session bus through `DBUS_SESSION_BUS_ADDRESS`, else
/// `$XDG_RUNTIME_DIR/bus`, else `/run/user/$UID/bus`. Says what is missing, if anything.
fn missing_session_bus() -> Option<String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty()) {
        return None;
    }
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(
        // SAFETY: geteuid has no preconditions and cannot fail.
        || format!("/run/user/{}", unsafe { libc::geteuid() }).into(),
        std::path::PathBuf::from,
    );
    let socket = runtime_dir.join("bus");
    if Path::new(&socket).exists() {
        None
    } else {
        Some(format!(
            "DBUS_SESSION_BUS_ADDRESS is not set and {} does not exist",
            socket.display()
        ))
    }
}

/// The zbus store reports every connection problem as a platform failure; the bus's
/// "ServiceUnknown" answer is the one that means "bus fine, no provider".
fn connect_error(err: &keyring_core::Error) -> StoreError {
    let detail = err.to_string();
    if detail.contains("ServiceUnknown") {
        StoreError::NoSecretService { detail }
    } else {
        StoreError::NoSessionBus { detail }
    }
}

impl Store for SecretServiceStore {
    fn backend(&self) -> Backend {
        Backend::SecretService
    }

    fn describe(&self) -> String {
        format!(
            "Secret Service on the D-Bus session bus: one item per account in the default collection, attributes service=\"{}\" and username=<account>; entries last until deleted",
            self.service
        )
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        check_account(account)?;
        self.run(&Op::Load(account.to_owned()), |store| {
            match self.entry(store, account)?.get_password() {
                Ok(token) => Ok(Some(RefreshToken::new(token))),
                Err(keyring_core::Error::NoEntry) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        check_account(account)?;
        self.run(&Op::Save(account.to_owned()), |store| {
            self.entry(store, account)?.set_password(token.expose())
        })
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        check_account(account)?;
        self.run(&Op::Delete(account.to_owned()), |store| {
            match self.entry(store, account)?.delete_credential() {
                Ok(()) => Ok(true),
                Err(keyring_core::Error::NoEntry) => Ok(false),
                // Logout must not leave a copy behind: remove every item that matches.
                Err(keyring_core::Error::Ambiguous(items)) => {
                    for item in items {
                        item.delete_credential()?;
                    }
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        let spec = HashMap::from([("service", self.service.as_str())]);
        let found = self.run(&Op::List, |store| Entry::search_in_store(store, &spec))?;
        let names: BTreeSet<String> = found
            .iter()
            .filter_map(Entry::get_specifiers)
            .filter(|(service, _)| *service == self.service)
            .map(|(_, user)| user)
            .collect();
        Ok(names.into_iter().collect())
    }
}
