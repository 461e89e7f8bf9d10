//! The refresher: turns a refresh token into a new access token, one refresh per account at a
//! time, however many callers ask.
//!
//! Single flight: every refresh of an account runs under that account's flight slot and
//! re-checks the cache after taking it, so callers that queued behind a refresh get its result
//! without a second upstream call. The refresh itself runs in a task of its own, so a caller
//! that hangs up mid-refresh cannot abort it halfway (a rotated refresh token is always
//! stored). A refresh token the upstream rejects is deleted and the account goes to
//! `needs-login`: no further upstream call until a new login.
//!
//! A logout or revoke does not wait for a refresh in flight to end: it bumps the account's
//! session epoch at once (see `cache.rs`), and a refresh that started under an older epoch
//! drops its result instead of storing, caching or serving it.
//!
//! Never logs a token; logs carry fingerprints.

use crate::cache::{AccountSlot, ServedToken, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt;
use crate::secret::RefreshToken;
use crate::store::StoreHandle;
use crate::upstream::{Refreshed, Upstream, UpstreamError};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Refresher {
    upstream: Upstream,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
}

impl Refresher {
    pub fn new(upstream: Upstream, store: StoreHandle, clock: Arc<dyn Clock>) -> Self {
        Self {
            upstream,
            store,
            clock,
        }
    }

    /// A token for `slot` valid for `min_valid`, refreshing it if the cache cannot answer.
    pub async fn refresh(
        self: &Arc<Self>,
        slot: &Arc<AccountSlot>,
        min_valid: Duration,
    ) -> Result<ServedToken, BrokerError> {
        let this = Arc::clone(self);
        let slot = Arc::clone(slot);
        let account = slot.config.name.clone();
        // Detached on purpose: see the module doc.
        let cycle =
            tokio::spawn(async move { this.refresh_in_flight_slot(&slot, min_valid).await });
        cycle.await.map_err(|e| BrokerError::UpstreamUnavailable {
            account,
            reason: format!("the refresh task failed: {e}"),
        })?
    }

    async fn refresh_in_flight_slot(
        &self,
        slot: &AccountSlot,
        min_valid: Duration,
    ) -> Result<ServedToken, BrokerError> {
        let _flight = slot.flight.lock().await;
        // Read before the token, so a logout that wipes it after this point is noticed.
        let epoch = slot.epoch();
        // Someone else may have refreshed while we queued for the slot.
        if let Some(served) = slot.fresh_access(self.clock.now(), min_valid) {
            return Ok(served);
        }
        let account = slot.config.name.as_str();
        let refresh = self.current_refresh_token(slot, epoch).await?;

        slot.update_if_current(epoch, |state| state.set_session(SessionState::Refreshing));
        tracing::debug!(account, refresh_sha256 = %refresh.fingerprint(), "refreshing access token");
        let result = self.upstream.refresh(&refresh).await;
        let now = self.clock.now();

        let refreshed = match result {
            Ok(refreshed) => refreshed,
            Err(UpstreamError::TokenNotValid { detail }) => {
                return Err(self.end_session(slot, epoch, &refresh, detail).await);
            }
            Err(err) => {
                let outcome = err.to_string();
                tracing::warn!(account, error = %outcome, "refresh failed; will retry on the next request");
                slot.update_if_current(epoch, |state| {
                    state.set_session(SessionState::Active);
                    state.last_refresh = Some((now, outcome));
                });
                return Err(BrokerError::from_upstream(account, err));
            }
        };
        if slot.epoch() != epoch {
            return Err(self.discard_stale(slot, refreshed).await);
        }

        // Rotation: the new refresh token must be in the store before the new access token is
        // handed out, or a crash now would leave only a retired token behind.
        let mut stored = true;
        if let Some(rotated) = &refreshed.rotated {
            if let Err(err) = self.store.save(account, rotated).await {
                stored = false;
                tracing::error!(account, error = %err, "could not store the rotated refresh token; keeping it in memory only");
            }
        }
        let access_sha = refreshed.access.token.fingerprint();
        let committed = {
            let mut state = slot.state();
            if state.epoch() == epoch {
                if let Some(rotated) = refreshed.rotated {
                    state.refresh = Some(rotated);
                    state.refresh_stored = stored;
                }
                let served = ServedToken {
                    token: refreshed.access.token.duplicate(),
                    expires_at: refreshed.access.expires_at,
                };
                state.access = Some(refreshed.access);
                state.set_session(SessionState::Active);
                state.last_refresh = Some((now, "ok".to_owned()));
                Ok(served)
            } else {
                Err(refreshed)
            }
        };
        // A logout or revoke that ended the session during the store write deletes the entry
        // once this refresh releases the flight slot; here only memory and the caller matter.
        let served = match committed {
            Ok(served) => served,
            Err(refreshed) => return Err(self.discard_stale(slot, refreshed).await),
        };
        tracing::info!(
            account,
            access_sha256 = %access_sha,
            expires_at = jwt::unix_seconds(served.expires_at),
            "access token refreshed"
        );
        Ok(served)
    }

    /// The refresh token from memory; after a failed start-up load, from the store.
    async fn current_refresh_token(
        &self,
        slot: &AccountSlot,
        epoch: u64,
    ) -> Result<RefreshToken, BrokerError> {
        let account = slot.config.name.as_str();
        {
            let state = slot.state();
            match state.session() {
                SessionState::NeedsLogin => {
                    return Err(BrokerError::NeedsLogin {
                        account: account.to_owned(),
                        reason: state
                            .needs_login_reason
                            .clone()
                            .unwrap_or_else(|| "the session ended".to_owned()),
                    });
                }
                _ => {
                    if let Some(refresh) = &state.refresh {
                        return Ok(refresh.duplicate());
                    }
                }
            }
        }
        // Nothing in memory: the store may hold one (e.g. it was locked at start-up).
        match self.store.load(account).await {
            Ok(Some(refresh)) => {
                slot.update_if_current(epoch, |state| {
                    state.refresh = Some(refresh.duplicate());
                    state.refresh_stored = true;
                    state.set_session(SessionState::Active);
                });
                Ok(refresh)
            }
            Ok(None) => Err(BrokerError::NotLoggedIn {
                account: account.to_owned(),
            }),
            Err(source) => Err(BrokerError::Store {
                account: account.to_owned(),
                source,
            }),
        }
    }

    /// The upstream rejected `refresh` for good: delete it and stop.
    async fn end_session(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        refresh: &RefreshToken,
        detail: String,
    ) -> BrokerError {
        let account = slot.config.name.as_str();
        let reason = format!("therappai rejected the refresh token: {detail}");
        tracing::warn!(account, refresh_sha256 = %refresh.fingerprint(), %reason, "session ended; a new login is needed");
        if let Err(err) = self.store.delete(account).await {
            tracing::error!(account, error = %err, "could not delete the rejected refresh token from the store");
        }
        let now = self.clock.now();
        // After a logout during this refresh the account stays logged-out.
        slot.update_if_current(epoch, |state| {
            state.clear(SessionState::NeedsLogin);
            state.needs_login_reason = Some(reason.clone());
            state.last_refresh = Some((now, reason.clone()));
        });
        BrokerError::NeedsLogin {
            account: account.to_owned(),
            reason,
        }
    }

    /// A logout or revoke ended the session while this refresh was in flight: nothing it got
    /// is stored, cached or served, and a rotated refresh token is revoked (best effort) so
    /// the ended session cannot live on upstream.
    async fn discard_stale(&self, slot: &AccountSlot, refreshed: Refreshed) -> BrokerError {
        let account = slot.config.name.as_str();
        tracing::warn!(account, access_sha256 = %refreshed.access.token.fingerprint(), "the session ended during this refresh; its result is dropped");
        if let Some(rotated) = &refreshed.rotated {
            let outcome = self.upstream.revoke(rotated).await;
            tracing::info!(account, refresh_sha256 = %rotated.fingerprint(), ?outcome, "revoked the refresh token rotated during the ended session");
        }
        BrokerError::NeedsLogin {
            account: account.to_owned(),
            reason: "the session was logged out or revoked while this request was in flight"
                .to_owned(),
        }
    }
}
