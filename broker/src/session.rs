//! Session lifecycle: restoring accounts from the store at start-up, login, logout and the
//! status snapshot.
//!
//! Login and logout take the account's flight slot, so they never interleave with a refresh
//! of the same account. The store is touched only here (load, login, logout) and by the
//! refresher (rotation, rejection). Never logs a token or a password.

use crate::cache::{Cache, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt;
use crate::secret::Password;
use crate::store::StoreHandle;
use crate::upstream::{Revocation, Upstream};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug)]
pub struct Sessions {
    cache: Arc<Cache>,
    upstream: Upstream,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    /// `[refresh] ahead_share`, to schedule the first background refresh after a login.
    ahead_share: f64,
}

/// What a logout did, step by step.
#[derive(Debug)]
pub struct LogoutOutcome {
    pub was_logged_in: bool,
    pub store_entry_deleted: bool,
    /// `None` when there was no refresh token to revoke.
    pub upstream: Option<Revocation>,
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
        }
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
                    let expired =
                        jwt::expiry(refresh.expose()).is_some_and(|exp| exp <= self.clock.now());
                    tracing::info!(account, refresh_sha256 = %refresh.fingerprint(), expired, "restored session from the store");
                    state.refresh = Some(refresh);
                    state.refresh_stored = true;
                    state.generation = 1;
                    state.set_session(SessionState::Active, self.clock.now(), "restored from the store");
                }
                Ok(None) => tracing::info!(account, "no stored session; logged out"),
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
        let tokens = self
            .upstream
            .login(&slot.config.email, &password)
            .await
            .map_err(|e| BrokerError::from_upstream(account, e))?;
        drop(password);
        self.store
            .save(account, &tokens.refresh)
            .await
            .map_err(|source| BrokerError::Store {
                account: account.to_owned(),
                source,
            })?;
        let expires_at = tokens.access.expires_at;
        let due = crate::refresh::schedule::refresh_due(
            tokens.access.received_at,
            expires_at,
            self.ahead_share,
            rand::random(),
        );
        tracing::info!(
            account,
            refresh_sha256 = %tokens.refresh.fingerprint(),
            access_sha256 = %tokens.access.token.fingerprint(),
            "logged in; refresh token stored"
        );
        let now = self.clock.now();
        let mut state = slot.state();
        state.access = Some(tokens.access);
        state.refresh = Some(tokens.refresh);
        state.refresh_stored = true;
        state.store_problem = None;
        state.generation = 1;
        state.refresh_due = Some(due.max(now + Duration::from_secs(5)));
        state.next_attempt_at = None;
        state.needs_login_reason = None;
        state.set_session(SessionState::Active, now, "logged in");
        state.wake_scheduler();
        Ok(expires_at)
    }

    /// Logs `account` out: tells the upstream (best effort), deletes the store entry and
    /// forgets the tokens. Logging out a logged-out account succeeds.
    pub async fn logout(&self, account: &str) -> Result<LogoutOutcome, BrokerError> {
        let slot = self.slot(account)?;
        let _flight = slot.flight.lock().await;
        let in_memory = slot.state().refresh.as_ref().map(|r| r.duplicate());
        let refresh = match in_memory {
            Some(r) => Some(r),
            None => self.store.load(account).await.ok().flatten(),
        };
        let had_access = slot.state().access.is_some();
        let upstream = match &refresh {
            Some(r) => Some(self.upstream.revoke(r).await),
            None => None,
        };
        let deleted = self.store.delete(account).await;
        // Memory is wiped whatever the store said: a token must not outlive a logout here.
        slot.state()
            .clear(SessionState::LoggedOut, self.clock.now(), "logged out");
        let store_existed = deleted.as_ref().is_ok_and(|existed| *existed);
        let outcome = LogoutOutcome {
            was_logged_in: refresh.is_some() || had_access || store_existed,
            store_entry_deleted: deleted.is_ok(),
            upstream,
        };
        tracing::info!(account, ?outcome, "logged out");
        deleted.map_err(|source| BrokerError::Store {
            account: account.to_owned(),
            source,
        })?;
        Ok(outcome)
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
