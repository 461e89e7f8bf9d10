//! One lane per account for calls into the store: at most one blocking call per account is
//! out at a time.
//!
//! Why: a store call runs on a blocking thread, and a thread that hangs (a stopped
//! gnome-keyring, a dead network mount) cannot be killed. [`super::StoreHandle::run`] stops
//! *waiting* after `[store] call_timeout_seconds`, but the thread stays until the call
//! returns. If every later call for that account started a thread of its own, a keyring that
//! hangs for an hour would pile up threads until the blocking pool is exhausted. So a call
//! takes its account's lane before it gets a thread, and the thread gives the lane back only
//! when the store really answered: a later call waits behind the hung one (within its own
//! timeout) instead of adding another thread. Calls that name no account (listing) share one
//! lane of their own.
//!
//! The lane is a FIFO (tokio's mutex is fair), so calls for one account also reach the store
//! in the order they were made: a save that timed out and landed late can never overtake a
//! later save or delete of the same account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Held by a store call for as long as its blocking thread runs.
pub(super) type Turn = tokio::sync::OwnedMutexGuard<()>;

#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// Bounded by the accounts the broker ever touches in the store: the configured ones and
    /// entries it found there (device logout), plus the listing lane.
    lanes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Lanes {
    /// The lane for `key` (an account, or `""` for calls about no account).
    pub(super) fn lane(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(lanes.entry(key.to_owned()).or_default())
    }
}
