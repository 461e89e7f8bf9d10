//! A login whose store write did not answer within `[store] call_timeout_seconds`: save or
//! undo.
//!
//! The caller is told the login failed (nothing was committed to memory), but the blocking
//! write cannot be cancelled and may still land once the store answers. The broker must not
//! then find itself, after a restart, logged in with a token the user was told had failed. So
//! (1) therappai is asked at once to blacklist the new refresh token (best effort), and (2)
//! once the hung write has really returned, the store is set back to what memory holds for
//! the account, under its flight slot: the session's own refresh token when there is one (a
//! login over a live session must not leave the old session's entry replaced), else no entry.
//! Step 2 is retried while the store keeps timing out, at most [`UNDO_ATTEMPTS`] times; each
//! attempt first waits for the account's earlier call to return, so it never adds a thread.
//!
//! With a fleet's OpenBao only step 1 runs: the entry is shared, and another broker may have
//! logged in meanwhile; a late write then holds a blacklisted token, and every broker of the
//! fleet moves the account to `needs-login` at its next refresh instead of serving it.

use super::Sessions;
use crate::cache::AccountSlot;
use crate::secret::RefreshToken;
use crate::store::StoreHandle;
use crate::upstream::{LoginTokens, Upstream};
use std::sync::Arc;

/// How many times step 2 asks the store before giving up (with an error in the log).
const UNDO_ATTEMPTS: u32 = 5;

impl Sessions {
    /// Starts the undo of a login whose store write of `tokens` timed out (see the module
    /// doc). Runs as a tracked task: shutdown gives it its drain budget.
    pub(super) fn undo_timed_out_login(&self, slot: Arc<AccountSlot>, tokens: LoginTokens) {
        let store = self.store.clone();
        let upstream = self.upstream.clone();
        self.ends.spawn(undo(store, upstream, slot, tokens));
    }
}

async fn undo(store: StoreHandle, upstream: Upstream, slot: Arc<AccountSlot>, tokens: LoginTokens) {
    let account = slot.config.name.as_str();
    let refresh_sha256 = tokens.refresh.fingerprint();
    let revoked = upstream.revoke(&tokens.refresh).await;
    drop(tokens);
    tracing::warn!(
        account,
        refresh_sha256,
        ?revoked,
        "the login's store write timed out: the login failed; asked therappai to end its session, and the store is set back once the write returns"
    );
    if store.fleet().is_some() {
        return;
    }
    for attempt in 1..=UNDO_ATTEMPTS {
        // Never a second thread: the hung write returns first.
        store.settled(account).await;
        let _flight = slot.flight.lock().await;
        let current = slot.state().refresh.as_ref().map(RefreshToken::duplicate);
        let result = match &current {
            Some(token) => store
                .save(account, token)
                .await
                .map(|()| "rewrote the session's own refresh token over it"),
            None => store.delete(account).await.map(|_| "deleted the entry"),
        };
        match result {
            Ok(done) => {
                if let Some(token) = current {
                    let mut state = slot.state();
                    if state.refresh.as_ref() == Some(&token) {
                        state.refresh_stored = true;
                        state.store_problem = None;
                    }
                }
                tracing::info!(
                    account,
                    refresh_sha256,
                    attempt,
                    "undid the timed-out login's store write: {done}"
                );
                return;
            }
            Err(err) if err.is_call_timeout() && attempt < UNDO_ATTEMPTS => {
                tracing::warn!(
                    account,
                    attempt,
                    error = %err,
                    "could not undo the timed-out login's store write yet; trying again once the store answers"
                );
            }
            Err(err) => {
                tracing::error!(
                    account,
                    refresh_sha256,
                    attempt,
                    error = %err,
                    "could not undo the timed-out login's store write: the store may hold the failed login's (blacklisted) refresh token; run `therappai-brokerctl logout --account {account}` once the store answers"
                );
                return;
            }
        }
    }
}
