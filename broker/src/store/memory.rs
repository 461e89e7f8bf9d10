//! In-memory store for tests only: not selectable from the config (there is no
//! `BackendChoice` for it). It can be told to fail, to exercise the broker's error paths.

use super::{Backend, Op, Store, StoreError, check_account};
use crate::secret::RefreshToken;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A [`Store`] in a map, for unit and in-process tests.
#[derive(Debug)]
pub struct MemoryStore {
    backend: Backend,
    entries: Mutex<BTreeMap<String, RefreshToken>>,
    failing: AtomicBool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store that reports itself as keyutils.
    pub fn new() -> Self {
        Self::pretending(Backend::Keyutils)
    }

    /// An empty store that reports itself as `backend` (in `backend()` and errors).
    pub fn pretending(backend: Backend) -> Self {
        Self {
            backend,
            entries: Mutex::new(BTreeMap::new()),
            failing: AtomicBool::new(false),
        }
    }

    /// While `true`, every call fails with [`StoreError::Backend`].
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn entries(
        &self,
        op: &Op,
    ) -> Result<MutexGuard<'_, BTreeMap<String, RefreshToken>>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                backend: self.backend,
                op: op.clone(),
                detail: "the test store was told to fail".to_owned(),
            });
        }
        Ok(self.entries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Store for MemoryStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn describe(&self) -> String {
        format!("in-memory test store (standing in for {})", self.backend)
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        check_account(account)?;
        let entries = self.entries(&Op::Load(account.to_owned()))?;
        Ok(entries.get(account).map(RefreshToken::duplicate))
    }

    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        check_account(account)?;
        let mut entries = self.entries(&Op::Save(account.to_owned()))?;
        entries.insert(account.to_owned(), token.duplicate());
        Ok(())
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        check_account(account)?;
        let mut entries = self.entries(&Op::Delete(account.to_owned()))?;
        Ok(entries.remove(account).is_some())
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.entries(&Op::List)?.keys().cloned().collect())
    }
}
