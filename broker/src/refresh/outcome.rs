//! What a cycle's result does to the account: a rotated token to the store first, then the
//! access token to the cache and the caller; or the session ends (rejected token), or the
//! result is dropped (a logout or revoke ran meanwhile).

use super::fleet::Claim;
use super::{Refresher, schedule};
use crate::cache::{AccountSlot, ServedToken, SessionState, SlotState};
use crate::error::BrokerError;
use crate::jwt;
use crate::secret::RefreshToken;
use crate::store::StoreError;
use crate::upstream::{IssuedAccess, Refreshed};
use std::time::SystemTime;

impl Refresher {
    /// Stores a rotated refresh token first, then caches the access token and serves it
    /// (unless a logout or revoke ended the session meanwhile).
    pub(super) async fn accept(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        refreshed: Refreshed,
        for_caller: bool,
        claim: Option<&Claim>,
    ) -> Result<ServedToken, BrokerError> {
        let account = slot.config.name.as_str();
        let store_result = match (self.store.fleet(), claim) {
            // The fleet's entry gets the access token too, so the other brokers serve it.
            (Some(fleet), Some(claim)) => {
                match self
                    .fleet_write_back(fleet, account, claim, &refreshed)
                    .await
                {
                    Ok(None) => refreshed.rotated.as_ref().map(|_| Ok(())),
                    Ok(Some(won)) => {
                        // Another broker's rotation won: ours is not the fleet's session.
                        if let Some(rotated) = &refreshed.rotated {
                            let outcome = self.upstream.revoke(rotated).await;
                            tracing::info!(account, refresh_sha256 = %rotated.fingerprint(), ?outcome, "revoked the refresh token of the rotation that lost");
                        }
                        self.adopt(slot, epoch, won)?;
                        let now = self.clock.now();
                        slot.update_if_current(epoch, |state| {
                            if state.session() == SessionState::Refreshing {
                                state.set_session(SessionState::Active, now, "");
                            }
                        });
                        let need = super::Need::ValidFor(std::time::Duration::ZERO);
                        return self.answer_from_cache(slot, &need, now).ok_or_else(|| {
                            BrokerError::UpstreamUnavailable {
                                account: account.to_owned(),
                                reason: "another broker of the fleet rotated the session at the same time; try again".to_owned(),
                            }
                        });
                    }
                    // Nothing is served that the fleet's entry could lose.
                    Err(err) => {
                        if slot.epoch() != epoch {
                            return Err(self.discard_stale(slot, refreshed).await);
                        }
                        return Err(self.keep_pending(slot, epoch, claim, refreshed, &err));
                    }
                }
            }
            _ => match &refreshed.rotated {
                Some(rotated) => Some(self.store.save(account, rotated).await),
                None => None,
            },
        };
        // A logout that ran during the store write deletes the entry once this cycle releases
        // the flight slot; here only memory and the caller matter.
        match self.commit(slot, epoch, refreshed, store_result, for_caller) {
            Ok(served) => served,
            Err(refreshed) => Err(self.discard_stale(slot, refreshed).await),
        }
    }

    /// Puts a refresh's result in memory, in one critical section with the epoch check;
    /// hands the result back when the session it belongs to has ended.
    fn commit(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        refreshed: Refreshed,
        store_result: Option<Result<(), StoreError>>,
        for_caller: bool,
    ) -> Result<Result<ServedToken, BrokerError>, Refreshed> {
        let account = slot.config.name.as_str();
        let now = self.clock.now();
        let mut state = slot.state();
        if state.epoch() != epoch {
            return Err(refreshed);
        }
        if let Some(rotated) = refreshed.rotated {
            tracing::info!(
                account,
                old_refresh_sha256 = %state.refresh.as_ref().map(|r| r.fingerprint()).unwrap_or_default(),
                new_refresh_sha256 = %rotated.fingerprint(),
                generation = state.generation + 1,
                stored = matches!(store_result, Some(Ok(()))),
                "refresh token rotated"
            );
            state.refresh = Some(rotated);
            state.generation += 1;
            match store_result {
                Some(Err(err)) => {
                    tracing::error!(account, error = %err, "could not store the rotated refresh token; keeping it in memory and retrying the write");
                    state.refresh_stored = false;
                    state.store_problem = Some(err.to_string());
                }
                _ => {
                    state.refresh_stored = true;
                    state.store_problem = None;
                }
            }
        }
        // An unusable access token is never served, and the failure back-off keeps callers
        // from refreshing again and again for tokens that can never be served. A rotated
        // refresh token that came with it is kept (above): therappai retired the old one.
        let access = match refreshed.access {
            Ok(access) => access,
            Err(err) => {
                self.unusable_access(account, &mut state, now, err.to_string());
                return Ok(Err(BrokerError::from_upstream(account, err)));
            }
        };
        if access.expires_at <= now {
            // Expired on arrival by this machine's clock (a clock far ahead of therappai's).
            let reason = format!(
                "therappai issued an access token that had already expired by this machine's clock (it expires at {}, the clock says {}); check the clock (`timedatectl status`)",
                crate::clock::utc_rfc3339(access.expires_at),
                crate::clock::utc_rfc3339(now)
            );
            self.unusable_access(account, &mut state, now, reason.clone());
            return Ok(Err(BrokerError::UpstreamUnavailable {
                account: account.to_owned(),
                reason,
            }));
        }
        let access_sha = access.token.fingerprint();
        let served = ServedToken {
            token: access.token.duplicate(),
            expires_at: access.expires_at,
        };
        let due = self.ahead_due(now, &access);
        state.install_access(access, due);
        state.access_served = for_caller;
        state.last_refresh = Some((now, "ok".to_owned()));
        state.set_session(SessionState::Active, now, "");
        let generation = state.generation;
        drop(state);
        tracing::info!(account, access_sha256 = %access_sha, generation, expires_at = jwt::unix_seconds(served.expires_at), "access token refreshed");
        Ok(Ok(served))
    }

    /// When the background refresher replaces `access` (see [`schedule::ahead_due`]).
    pub(super) fn ahead_due(&self, now: SystemTime, access: &IssuedAccess) -> SystemTime {
        schedule::ahead_due(access, now, self.config.ahead_share, rand::random())
    }

    /// A refresh answered with an access token that cannot be served: none is cached, and
    /// the failure back-off starts.
    fn unusable_access(
        &self,
        account: &str,
        state: &mut SlotState,
        now: SystemTime,
        reason: String,
    ) {
        tracing::error!(account, %reason, "refresh gave an unusable token");
        state.access = None;
        state.next_attempt_at = Some(now + self.config.failure_backoff);
        state.last_refresh = Some((now, reason));
        state.set_session(SessionState::Active, now, "");
    }

    /// The upstream rejected `refresh` for good: delete it and stop.
    pub(super) async fn end_session(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        refresh: &RefreshToken,
        detail: String,
        claim: Option<&Claim>,
    ) -> BrokerError {
        let account = slot.config.name.as_str();
        // Fixed text: the reason reaches status and WatchSession; the server's words (scrubbed)
        // stay in this log line.
        tracing::warn!(account, %detail, "therappai rejected the refresh token");
        let reason = crate::upstream::REJECTED_REFRESH_TOKEN.to_owned();
        match (self.store.fleet(), claim) {
            // Only if the entry did not change since this broker claimed it: another broker
            // may have rotated meanwhile, and then the fleet's session lives on.
            (Some(fleet), Some(claim)) => match fleet.end_at(account, claim.version, &reason).await
            {
                Ok(crate::store::vault::Written::Version(_)) => {}
                Ok(crate::store::vault::Written::Conflict) => {
                    tracing::info!(
                        account,
                        "the rejected token was already replaced in the fleet's entry; the session lives on"
                    );
                    let now = self.clock.now();
                    slot.update_if_current(epoch, |state| {
                        if state.refresh.as_ref() == Some(refresh) {
                            state.refresh = None;
                        }
                        state.set_session(SessionState::Active, now, "");
                    });
                    return BrokerError::UpstreamUnavailable {
                        account: account.to_owned(),
                        reason: "another broker of the fleet replaced the session's refresh token during this refresh; try again".to_owned(),
                    };
                }
                Err(err) => {
                    tracing::error!(account, error = %err, "could not mark the fleet's entry as ended");
                }
            },
            _ => {
                if let Err(err) = self.store.delete(account).await {
                    tracing::error!(account, error = %err, "could not delete the rejected refresh token from the store");
                }
            }
        }
        tracing::warn!(account, refresh_sha256 = %refresh.fingerprint(), %reason, "session ended; a new login is needed");
        let now = self.clock.now();
        // After a logout during this cycle the account stays logged-out.
        slot.update_if_current(epoch, |state| {
            state.needs_login_reason = Some(reason.clone());
            state.last_refresh = Some((now, reason.clone()));
            state.clear(SessionState::NeedsLogin, now, &reason);
            // A fleet's entry may still hold it (the mark failed): never present it again.
            state.ended_refresh = Some(refresh.fingerprint());
        });
        BrokerError::NeedsLogin {
            account: account.to_owned(),
            reason,
        }
    }

    /// A logout or revoke ended the session while this cycle was in flight: nothing it got
    /// is stored, cached or served. A rotated refresh token goes to the logout or revoke
    /// waiting for the flight slot (it revokes the live token and reports on it); with none
    /// waiting (a fleet's logout elsewhere) it is revoked here, best effort, so the ended
    /// session cannot live on upstream.
    pub(super) async fn discard_stale(
        &self,
        slot: &AccountSlot,
        mut refreshed: Refreshed,
    ) -> BrokerError {
        let account = slot.config.name.as_str();
        let access_sha256 = refreshed
            .access
            .as_ref()
            .map(|a| a.token.fingerprint())
            .unwrap_or_default();
        tracing::warn!(
            account,
            access_sha256,
            "the session ended during this refresh; its result is dropped"
        );
        let unclaimed = refreshed
            .rotated
            .take()
            .and_then(|rotated| slot.state().hand_to_end(rotated).err());
        if let Some(rotated) = &unclaimed {
            let outcome = self.upstream.revoke(rotated).await;
            tracing::info!(account, refresh_sha256 = %rotated.fingerprint(), ?outcome, "revoked the refresh token rotated during the ended session");
        }
        session_ended_error(account)
    }

    /// Retries writing a rotated refresh token that only memory holds.
    pub async fn retry_store_write(&self, slot: &AccountSlot) {
        let _flight = slot.flight.lock().await;
        let account = slot.config.name.as_str();
        let pending = {
            let state = slot.state();
            match (&state.store_problem, &state.refresh) {
                (Some(_), Some(refresh)) => refresh.duplicate(),
                _ => return,
            }
        };
        if let Some(fleet) = self.store.fleet() {
            // Only over the token it was rotated from: a logout or login since wins.
            let epoch = slot.epoch();
            if let Err(err) = self.settle_pending(fleet, slot, epoch).await {
                tracing::warn!(account, error = %err, "the rotated refresh token is still not in the fleet's entry; will retry");
            }
            return;
        }
        match self.store.save(account, &pending).await {
            Ok(()) => {
                tracing::info!(account, "the rotated refresh token is now in the store");
                let mut state = slot.state();
                if state.refresh.as_ref() == Some(&pending) {
                    state.refresh_stored = true;
                    state.store_problem = None;
                }
            }
            Err(err) => {
                tracing::warn!(account, error = %err, "the rotated refresh token is still not in the store; will retry");
                slot.state().store_problem = Some(err.to_string());
            }
        }
    }
}

/// What a caller whose request outlived its session (a logout or revoke ran meanwhile) is
/// told: that it needs a login, and why.
pub(super) fn session_ended_error(account: &str) -> BrokerError {
    BrokerError::NeedsLogin {
        account: account.to_owned(),
        reason: "the session was logged out or revoked while this request was in flight".to_owned(),
    }
}
