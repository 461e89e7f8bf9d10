//! Session lifecycle: restoring accounts from the store at start-up, login, logout and the
//! status snapshot.
//!
//! Login takes the account's flight slot, so it never interleaves with a refresh of the same
//! account. Logout and revoke (in `session/end.rs`) first end the session epoch — at once, without
//! waiting for a refresh in flight — and then take the flight slot for the upstream and store
//! steps. The store is touched only here (load, login, logout) and by the refresher (rotation,
//! rejection). Never logs a token or a password.

mod end;
mod undo;

pub use end::{AccountOutcome, DeviceOutcome, EndMode};

use crate::cache::{Cache, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt;
use crate::refresh::schedule;
use crate::secret::Password;
use crate::store::StoreHandle;
use crate::upstream::{LoginTokens, Upstream};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug)]
pub struct Sessions {
    cache: Arc<Cache>,
    upstream: Upstream,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    /// `[refresh] ahead_share`, to schedule the first background refresh after a login.
    ahead_share: f64,
    /// Logouts and revokes run as tasks of their own, so they finish whatever their caller
    /// does (a deadline, a hang-up); shutdown waits for them (see `session/end.rs`).
    ends: tokio_util::task::TaskTracker,
}

/// One account in the status report. Never carries a token.
#[derive(Debug)]
pub struct AccountStatus {
    pub name: String,
    pub email: String,
    pub state: SessionState,
    pub access_expires_at: Option<SystemTime>,
    pub refresh_token_stored: bool,
    /// Why the current refresh token is only in memory, if it is.
    pub store_problem: Option<String>,
    /// After a failed refresh cycle: no new cycle before this time.
    pub next_attempt_at: Option<SystemTime>,
    pub last_refresh: Option<(SystemTime, String)>,
}

impl Sessions {
    pub fn new(
        cache: Arc<Cache>,
        upstream: Upstream,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        ahead_share: f64,
    ) -> Self {
        Self {
            cache,
            upstream,
            store,
            clock,
            ahead_share,
            ends: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Resolves once no logout or revoke is running (the shutdown drain waits on it).
    pub async fn finish_ends(&self) {
        self.ends.close();
        self.ends.wait().await;
    }

    /// Loads every account's refresh token from the store, so a restarted broker serves
    /// without a new login. A failing account is logged and left logged-out; the refresher
    /// tries the store again on its next request.
    pub async fn restore(&self) {
        for slot in self.cache.slots() {
            let account = slot.config.name.as_str();
            match self.store.load(account).await {
                Ok(Some(refresh)) => {
                    let mut state = slot.state();
                    // Only for the log: therappai decides whether the token still works. An
                    // exp no clock can hold is said so, never a reason to stop starting.
                    let expired = match jwt::expiry(refresh.expose()) {
                        Ok(exp) => exp.is_some_and(|exp| exp <= self.clock.now()).to_string(),
                        Err(err) => format!("unknown ({err})"),
                    };
                    tracing::info!(account, refresh_sha256 = %refresh.fingerprint(), %expired, "restored session from the store");
                    state.refresh = Some(refresh);
                    state.refresh_stored = true;
                    state.store_unread = false;
                    state.generation = 1;
                    state.set_session(
                        SessionState::Active,
                        self.clock.now(),
                        "restored from the store",
                    );
                }
                Ok(None) => {
                    slot.state().store_unread = false;
                    tracing::info!(account, "no stored session; logged out");
                }
                Err(err) => {
                    tracing::warn!(account, error = %err, "could not read the store; will retry on the next token request")
                }
            }
        }
    }

    /// Logs `account` in. On success its refresh token is in the store and its access token in
    /// memory; on any failure nothing changes.
    pub async fn login(
        &self,
        account: &str,
        password: Password,
    ) -> Result<SystemTime, BrokerError> {
        let slot = self.slot(account)?;
        let _flight = slot.flight.lock().await;
        let epoch = slot.epoch();
        let tokens = self
            .upstream
            .login(&slot.config.email, &password)
            .await
            .map_err(|e| BrokerError::from_upstream(account, e))?;
        drop(password);
        if slot.epoch() != epoch {
            return Err(self.discard_login(account, tokens).await);
        }
        if let Err(source) = self.store.save(account, &tokens.refresh).await {
            if source.is_call_timeout() {
                // The write may still land: the login is reported failed, and undone.
                self.undo_timed_out_login(Arc::clone(slot), tokens);
                return Err(BrokerError::LoginNotStored {
                    account: account.to_owned(),
                    source,
                });
            }
            return Err(BrokerError::Store {
                account: account.to_owned(),
                source,
            });
        }
        let expires_at = tokens.access.expires_at;
        tracing::info!(
            account,
            refresh_sha256 = %tokens.refresh.fingerprint(),
            access_sha256 = %tokens.access.token.fingerprint(),
            "logged in; refresh token stored"
        );
        let now = self.clock.now();
        let committed = {
            let mut state = slot.state();
            if state.epoch() == epoch {
                let due =
                    schedule::ahead_due(&tokens.access, now, self.ahead_share, rand::random());
                state.install_access(tokens.access, due);
                state.refresh = Some(tokens.refresh);
                state.refresh_stored = true;
                state.store_problem = None;
                state.generation = 1;
                // Nobody has been given this token yet: it is kept warm once someone is.
                state.access_served = false;
                state.store_unread = false;
                state.needs_login_reason = None;
                state.set_session(SessionState::Active, now, "logged in");
                state.wake_scheduler();
                Ok(expires_at)
            } else {
                Err(tokens)
            }
        };
        // After a logout that ran meanwhile, the logout deletes the entry we just wrote once
        // this login releases the flight slot.
        match committed {
            Ok(expires_at) => Ok(expires_at),
            Err(tokens) => Err(self.discard_login(account, tokens).await),
        }
    }

    /// A logout or revoke ran while this login was in flight: the new session must not
    /// survive it, so its refresh token is revoked (best effort) and nothing is kept.
    async fn discard_login(&self, account: &str, tokens: LoginTokens) -> BrokerError {
        let outcome = self.upstream.revoke(&tokens.refresh).await;
        tracing::warn!(account, refresh_sha256 = %tokens.refresh.fingerprint(), ?outcome, "a logout or revoke ran during this login; the new session is dropped");
        BrokerError::NeedsLogin {
            account: account.to_owned(),
            reason: "a logout or revoke of this account ran while the login was in flight"
                .to_owned(),
        }
    }

    /// Every account's state, in config order.
    pub fn status(&self) -> Vec<AccountStatus> {
        self.cache
            .slots()
            .map(|slot| {
                let state = slot.state();
                AccountStatus {
                    name: slot.config.name.clone(),
                    email: slot.config.email.clone(),
                    state: state.session(),
                    access_expires_at: state.access.as_ref().map(|a| a.expires_at),
                    refresh_token_stored: state.refresh_stored,
                    store_problem: state.store_problem.clone(),
                    next_attempt_at: state.next_attempt_at,
                    last_refresh: state.last_refresh.clone(),
                }
            })
            .collect()
    }

    pub fn base_url(&self) -> &str {
        self.upstream.base_url()
    }

    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    fn slot(&self, account: &str) -> Result<&Arc<crate::cache::AccountSlot>, BrokerError> {
        self.cache
            .slot(account)
            .ok_or_else(|| BrokerError::UnknownAccount {
                account: account.to_owned(),
                known: self.cache.names(),
            })
    }
}
