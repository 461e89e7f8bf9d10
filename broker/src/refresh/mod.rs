//! The refresher: turns a refresh token into a new access token, one refresh per account at a
//! time, however many callers ask — and never loops on a token the upstream rejected.
//!
//! - **Single flight**: every cycle runs under the account's flight slot and re-checks the
//!   cache after taking it, so callers that queued behind a refresh get its result without a
//!   second upstream call. Accounts never wait on each other.
//! - **Detached cycles**: a cycle runs in a task of its own, so a caller that hangs up cannot
//!   abort it halfway (a rotated refresh token is always stored).
//! - **Bounded retries**: transient failures (network, timeout, 5xx, 429) are retried with
//!   exponential backoff and full jitter, at most `max_attempts` per cycle, honouring
//!   `Retry-After` up to a cap. After a failed cycle no new one starts for a pause that
//!   starts at about a second and doubles, with jitter, per failed cycle in a row, up to
//!   `failure_backoff` (reset by a success); callers meanwhile are told when it ends.
//! - **Stop, don't loop**: `token_not_valid` deletes the refresh token and moves the account to
//!   `needs-login`; no upstream call is made for it until a new login. A rejection is retried
//!   once only when the store holds a newer generation than the token that was rejected.
//! - **Rotation**: a new refresh token is written to the store before the new access token is
//!   served; if that write fails it is kept in memory and the write is retried.
//! - **Logout wins**: a logout or revoke does not wait for a refresh in flight; it bumps the
//!   account's session epoch at once (see `cache.rs`), and a cycle that started under an older
//!   epoch drops its result instead of caching or serving it (a rotated token is revoked).
//!
//! Never logs a token; logs carry fingerprints. Here: who runs a cycle and who waits for
//! it; `cycle.rs` makes the upstream attempts, `outcome.rs` applies the result, [`schedule`]
//! says when, and `background.rs` keeps tokens in use warm.

mod background;
mod cycle;
mod fleet;
mod fleet_watch;
mod outcome;
pub mod schedule;

pub use background::run_background;
pub use fleet_watch::watch_fleet;

use outcome::session_ended_error;

use crate::cache::{AccountSlot, ServedToken, SessionState};
use crate::clock::Clock;
use crate::config::RefreshConfig;
use crate::error::BrokerError;
use crate::secret::RefreshToken;
use crate::store::StoreHandle;
use crate::upstream::{Upstream, UpstreamError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;

/// What the caller of the refresher needs.
#[derive(Debug, Clone)]
pub enum Need {
    /// A token that stays valid for at least this long (a GetAccessToken caller).
    ValidFor(Duration),
    /// The background refresher: replace the token once it is due.
    Ahead,
    /// An app reports that the API rejected the token with this fingerprint: replace it if it
    /// is still the current one, else answer with the current one.
    Replace {
        fingerprint: String,
        min_valid: Duration,
    },
}

#[derive(Debug)]
pub struct Refresher {
    upstream: Upstream,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    config: RefreshConfig,
    /// The detached cycles, so shutdown can let them finish (a rotation half done at
    /// therappai must reach the store).
    cycles: TaskTracker,
    /// Bound on one upstream attempt (`[upstream] request_timeout_seconds`): a fleet's holder
    /// starts an attempt only if it can finish within the lease.
    attempt_budget: Duration,
    /// Fleet only: when this broker first saw each account's current lease (its entry
    /// version), so a lease runs out by this machine's clock, never by the holder's.
    lease_seen: std::sync::Mutex<std::collections::HashMap<String, (u64, SystemTime)>>,
}

impl Refresher {
    pub fn new(
        upstream: Upstream,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        config: RefreshConfig,
    ) -> Self {
        Self {
            upstream,
            store,
            clock,
            config,
            cycles: TaskTracker::new(),
            attempt_budget: Duration::from_secs(10),
            lease_seen: std::sync::Mutex::default(),
        }
    }

    /// Sets the bound on one upstream attempt (see `attempt_budget`).
    #[must_use]
    pub fn with_attempt_budget(mut self, budget: Duration) -> Self {
        self.attempt_budget = budget;
        self
    }

    /// Resolves once no refresh cycle is running (shutdown waits on it, within its grace).
    pub async fn finish_cycles(&self) {
        self.cycles.close();
        self.cycles.wait().await;
    }

    /// Refuses a report on the current access token while it is younger than
    /// `report_min_age`: an allowed app reporting every token it gets must not turn the
    /// broker into a refresh loop. A report on an older token, or on one no longer current,
    /// is not refused (it is answered from the cache or by one refresh, as before).
    pub fn report_too_soon(&self, slot: &AccountSlot, fingerprint: &str) -> Option<BrokerError> {
        let now = self.clock.now();
        let state = slot.state();
        let access = state
            .access
            .as_ref()
            .filter(|a| a.token.fingerprint() == fingerprint)?;
        let age = now.duration_since(access.received_at).unwrap_or_default();
        let retry_in = self.config.report_min_age.checked_sub(age)?;
        (!retry_in.is_zero()).then(|| BrokerError::ReportTooSoon {
            account: slot.config.name.clone(),
            age,
            min_age: self.config.report_min_age,
            retry_at: now + retry_in,
            retry_in,
        })
    }

    /// A token for `slot` that satisfies `need`, refreshing if the cache cannot answer.
    pub async fn obtain(
        self: &Arc<Self>,
        slot: &Arc<AccountSlot>,
        need: Need,
    ) -> Result<ServedToken, BrokerError> {
        let this = Arc::clone(self);
        let slot = Arc::clone(slot);
        let account = slot.config.name.clone();
        // Detached on purpose: see the module doc.
        let task_slot = Arc::clone(&slot);
        let cycle = self
            .cycles
            .spawn(async move { this.obtain_in_flight_slot(&task_slot, need).await });
        match cycle.await {
            Ok(result) => result,
            Err(e) => {
                // A bug, not an upstream problem: logged here, never sent to the caller (a panic
                // message is not for clients), and the account is not left `refreshing`.
                tracing::error!(account, error = %e, "the refresh task failed");
                let now = self.clock.now();
                let mut state = slot.state();
                if state.session() == SessionState::Refreshing {
                    state.set_session(SessionState::Active, now, "");
                }
                Err(BrokerError::UpstreamUnavailable {
                    account,
                    reason: "the refresh task failed, which is a bug: the broker's log (`journalctl -u therappai-broker`) has the details; please report them".to_owned(),
                })
            }
        }
    }

    async fn obtain_in_flight_slot(
        &self,
        slot: &AccountSlot,
        need: Need,
    ) -> Result<ServedToken, BrokerError> {
        let _flight = match self.wait_for_cycle(slot, &need).await {
            Ok(flight) => flight,
            Err(answer) => return answer,
        };
        // Declared after the guard, so dropped before it: waiters hear the cycle ended.
        let _done = CycleDone(&slot.cycle_done);
        // Read before the token, so a logout that wipes it after this point is noticed.
        let epoch = slot.epoch();
        let now = self.clock.now();
        let account = slot.config.name.as_str();
        // Someone else may have refreshed while we queued for the slot.
        if let Some(served) = self.answer_from_cache(slot, &need, now) {
            return Ok(served);
        }
        if let Some(paused) = self.failed_cycle_error(slot, now, false) {
            return Err(paused);
        }
        // With a fleet's OpenBao, the fleet may have the token already, or another broker may
        // be refreshing: see fleet.rs.
        let fleet = self.store.fleet().cloned();
        let claim = match &fleet {
            Some(fleet) => match self.fleet_turn(fleet, slot, epoch, &need).await {
                Ok(fleet::Turn::Served(served)) => {
                    // Another broker refreshed: therappai answers again.
                    slot.update_if_current(epoch, |state| state.failed_cycles = 0);
                    return Ok(served);
                }
                Ok(fleet::Turn::Refresh(claim)) => Some(claim),
                Err(err) => return Err(self.fleet_unavailable(slot, epoch, err)),
            },
            None => None,
        };
        let refresh = match &claim {
            Some(claim) => claim.refresh.duplicate(),
            None => self.current_refresh_token(slot, epoch).await?,
        };
        slot.update_if_current(epoch, |state| {
            state.set_session(SessionState::Refreshing, now, "")
        });
        tracing::debug!(account, refresh_sha256 = %refresh.fingerprint(), ?need, "refreshing access token");

        let lease_until = claim.as_ref().map(|c| c.until);
        let result = match self.cycle(slot, epoch, &refresh, lease_until).await {
            // In a fleet the rejected token is re-read under the lease instead (end_session
            // marks the entry ended only if it did not change since the claim).
            Err(UpstreamError::TokenNotValid { detail }) if claim.is_some() => {
                Err(UpstreamError::TokenNotValid { detail })
            }
            Err(UpstreamError::TokenNotValid { detail }) => match self
                .newer_stored_token(slot, epoch, &refresh)
                .await
            {
                // The store holds a newer generation than the token that was rejected: try
                // that one, once, before declaring the session dead.
                Some(newer) => {
                    tracing::info!(account, refresh_sha256 = %newer.fingerprint(), "rejected token was stale; retrying once with the newer stored one");
                    slot.update_if_current(epoch, |state| state.refresh = Some(newer.duplicate()));
                    self.cycle(slot, epoch, &newer, None).await
                }
                None => Err(UpstreamError::TokenNotValid { detail }),
            },
            other => other,
        };

        // A failed refresh gives the lease back; a rejected token keeps it until the session
        // is marked ended (only an entry unchanged since the claim may be).
        if let (Some(fleet), Some(claim)) = (&fleet, &claim)
            && result
                .as_ref()
                .is_err_and(|e| !matches!(e, UpstreamError::TokenNotValid { .. }))
        {
            self.fleet_release(fleet, account, claim).await;
        }
        if slot.epoch() != epoch {
            // A logout or revoke ended the session during the cycle: nothing it got counts.
            return Err(match result {
                Ok(refreshed) => self.discard_stale(slot, refreshed).await,
                Err(_) => session_ended_error(account),
            });
        }
        match result {
            Ok(refreshed) => {
                let for_caller = !matches!(need, Need::Ahead);
                let served = self
                    .accept(slot, epoch, refreshed, for_caller, claim.as_ref())
                    .await;
                if served.is_ok() {
                    // The next failure is a first one again: a pause of about a second.
                    slot.update_if_current(epoch, |state| state.failed_cycles = 0);
                }
                served
            }
            Err(UpstreamError::TokenNotValid { detail }) => Err(self
                .end_session(slot, epoch, &refresh, detail, claim.as_ref())
                .await),
            Err(err) => Err(self.pause_after_failure(slot, epoch, err)),
        }
    }

    /// Records a failed cycle and starts the pause before the next one, longer the more
    /// cycles failed in a row (see [`schedule::failure_pause`]). A caller told UNAVAILABLE is
    /// told when that pause ends; one refused for good (a malformed answer) is told why.
    fn pause_after_failure(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        err: UpstreamError,
    ) -> BrokerError {
        let account = slot.config.name.as_str();
        let now = self.clock.now();
        let outcome = err.to_string();
        let next = slot.update_if_current(epoch, |state| {
            state.failed_cycles = state.failed_cycles.saturating_add(1);
            let next = schedule::next_attempt(
                &err,
                state.failed_cycles,
                now,
                &self.config,
                rand::random(),
            );
            state.set_session(SessionState::Active, now, "");
            state.last_refresh = Some((now, outcome.clone()));
            state.next_attempt_at = Some(next);
            (next, state.failed_cycles)
        });
        let Some((next, failed_cycles)) = next else {
            return session_ended_error(account);
        };
        let retry_in = next.duration_since(now).unwrap_or_default();
        let retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(account, error = %outcome, failed_cycles, retry_in_ms, "refresh cycle failed");
        if !err.is_transient() {
            return BrokerError::from_upstream(account, err);
        }
        BrokerError::UpstreamRetrying {
            account: account.to_owned(),
            reason: outcome,
            retry_at: next,
            retry_in,
        }
    }

    /// Takes the flight slot. When a cycle holds it and ends first, answers from its result
    /// (every waiter at once, instead of one by one through the slot): its token if that
    /// serves `need`, its failure if it failed; and queues for the slot only otherwise.
    async fn wait_for_cycle<'a>(
        &self,
        slot: &'a AccountSlot,
        need: &Need,
    ) -> Result<tokio::sync::MutexGuard<'a, ()>, Result<ServedToken, BrokerError>> {
        let failed_before = slot.state().failed_cycles;
        // Registered before the slot is tried, so the end of the cycle cannot be missed.
        let done = slot.cycle_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        // The slot may be held by a login or logout too, which end no cycle: whichever comes
        // first, the slot or the end of a cycle.
        tokio::select! {
            biased;
            () = &mut done => {}
            flight = slot.flight.lock() => return Ok(flight),
        }
        let now = self.clock.now();
        if let Some(served) = self.answer_from_cache(slot, need, now) {
            return Err(Ok(served));
        }
        // The cycle this caller waited for failed: that is its answer too, even when no pause
        // is configured (`failure_backoff_seconds = 0`), or every waiter would run a full
        // cycle of its own, one after another.
        if slot.state().failed_cycles > failed_before
            && let Some(failed) = self.failed_cycle_error(slot, now, true)
        {
            return Err(Err(failed));
        }
        Ok(slot.flight.lock().await)
    }

    /// The UNAVAILABLE for a caller that may not start a cycle because the last one failed:
    /// while the pause after it runs, or (`even_after_the_pause`) for a caller that waited
    /// for that very cycle. Says when the broker tries again.
    fn failed_cycle_error(
        &self,
        slot: &AccountSlot,
        now: SystemTime,
        even_after_the_pause: bool,
    ) -> Option<BrokerError> {
        let state = slot.state();
        let next = state
            .next_attempt_at
            .filter(|next| even_after_the_pause || *next > now)?;
        let last = state.last_refresh.as_ref().map(|(_, o)| o.as_str());
        Some(BrokerError::UpstreamRetrying {
            account: slot.config.name.clone(),
            reason: format!("the last refresh failed ({})", last.unwrap_or_default()),
            retry_at: next,
            retry_in: next.duration_since(now).unwrap_or_default(),
        })
    }

    fn answer_from_cache(
        &self,
        slot: &AccountSlot,
        need: &Need,
        now: SystemTime,
    ) -> Option<ServedToken> {
        match need {
            Need::ValidFor(min_valid) => slot.fresh_access(now, *min_valid),
            Need::Ahead => {
                let state = slot.state();
                let access = state.access.as_ref()?;
                let due = state.refresh_due.unwrap_or(now);
                (due > now).then(|| ServedToken {
                    token: access.token.duplicate(),
                    expires_at: access.expires_at,
                })
            }
            Need::Replace {
                fingerprint,
                min_valid,
            } => {
                {
                    let mut state = slot.state();
                    if state
                        .access
                        .as_ref()
                        .is_some_and(|a| a.token.fingerprint() == *fingerprint)
                    {
                        // The API says no to the current token: it must not be served again.
                        state.access = None;
                        return None;
                    }
                }
                // An older token was reported: the current one (if fresh) is the answer.
                slot.fresh_access(now, *min_valid)
            }
        }
    }

    /// The refresh token from memory; when memory has none, from the store.
    async fn current_refresh_token(
        &self,
        slot: &AccountSlot,
        epoch: u64,
    ) -> Result<RefreshToken, BrokerError> {
        let account = slot.config.name.as_str();
        {
            let state = slot.state();
            if state.session() == SessionState::NeedsLogin {
                return Err(BrokerError::NeedsLogin {
                    account: account.to_owned(),
                    reason: state
                        .needs_login_reason
                        .clone()
                        .unwrap_or_else(|| "the session ended".to_owned()),
                });
            }
            if let Some(refresh) = &state.refresh {
                return Ok(refresh.duplicate());
            }
            if !state.store_unread {
                return Err(BrokerError::NotLoggedIn {
                    account: account.to_owned(),
                });
            }
        }
        // Nothing in memory and the store could not be read at start-up (e.g. it was locked):
        // it may hold one.
        match self.store.load(account).await {
            Ok(Some(refresh)) => {
                let now = self.clock.now();
                let current = slot.update_if_current(epoch, |state| {
                    state.refresh = Some(refresh.duplicate());
                    state.refresh_stored = true;
                    state.store_unread = false;
                    state.generation = state.generation.max(1);
                    state.set_session(SessionState::Active, now, "loaded from the store");
                });
                // A logout or revoke ran while the store was read: that token is not ours now.
                current
                    .map(|()| refresh)
                    .ok_or_else(|| session_ended_error(account))
            }
            Ok(None) => {
                slot.update_if_current(epoch, |state| state.store_unread = false);
                Err(BrokerError::NotLoggedIn {
                    account: account.to_owned(),
                })
            }
            Err(source) => Err(BrokerError::Store {
                account: account.to_owned(),
                source,
            }),
        }
    }

    /// The stored refresh token, if it differs from `rejected` (a newer generation written
    /// by an earlier rotation whose result this memory missed).
    async fn newer_stored_token(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        rejected: &RefreshToken,
    ) -> Option<RefreshToken> {
        {
            let state = slot.state();
            // When memory holds a token the store does not have yet (a failed write), the
            // store's is *older*; after a logout it is about to be deleted.
            if !state.refresh_stored || state.epoch() != epoch {
                return None;
            }
        }
        let stored = self.store.load(&slot.config.name).await.ok().flatten()?;
        // The read may have waited (an unlock prompt): the session must still stand.
        (stored != *rejected && slot.epoch() == epoch).then_some(stored)
    }
}

/// Wakes every caller waiting for the end of a cycle when dropped (whatever way it ended).
struct CycleDone<'a>(&'a tokio::sync::Notify);

impl Drop for CycleDone<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}
