//! Ending sessions: logout of one account, device-level logout, and compromise revocation.
//!
//! Every path runs the same steps for an account, in this order:
//! 1. end the session epoch in memory at once (tokens out of memory and zeroized on drop,
//!    watchers told `logged-out`, a refresh or login in flight can no longer commit);
//! 2. take the flight slot, so whatever was in flight has finished before the store is touched;
//! 3. delete the store entry (having read the refresh token from it if memory had none), so
//!    that a slow or hanging upstream in step 4 cannot leave it behind;
//! 4. tell the upstream through the configured revocation path (bounded by the request timeout).
//!
//! The steps run in a task of their own (tracked, so shutdown drains it): a caller that gives
//! up (a client deadline, a hang-up) drops only its wait for the answer, never a step, so a
//! session ended in memory is always ended in the store too (issue 11, defect 2).
//!
//! A logout treats step 4 as best effort; a revoke requires it and reports it as incomplete
//! when it fails, but the local steps happen either way. Per-account audit events go to the
//! `audit` target. Never logs a token.

use super::Sessions;
use crate::cache::{AccountSlot, SessionState};
use crate::error::BrokerError;
use crate::secret::RefreshToken;
use crate::store::StoreError;
use crate::upstream::Revocation;
use futures_util::{StreamExt, stream};
use std::future::Future;
use std::sync::Arc;

/// How many accounts a device logout or revoke ends at once.
const DEVICE_CONCURRENCY: usize = 8;

/// Why a session is being ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndMode {
    /// Logout: the upstream revocation is best effort.
    Logout,
    /// Compromise: the upstream revocation is required; failing it makes the outcome
    /// incomplete (the local wipe still happens).
    Revoke,
}

impl EndMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Revoke => "revoke",
        }
    }

    /// The reason WatchSession streams give for the move to `logged-out`.
    fn session_reason(self) -> &'static str {
        match self {
            Self::Logout => "logged out by an admin",
            Self::Revoke => "revoked by an admin (compromise response)",
        }
    }
}

/// What ending one account's session did, step by step.
#[derive(Debug)]
pub struct AccountOutcome {
    pub account: String,
    /// The configured e-mail; `None` for a store entry left by an account no longer in the
    /// config.
    pub email: Option<String>,
    /// Whether the account held tokens (in memory or in the store) before this call.
    pub was_logged_in: bool,
    /// How many watchers were told `logged-out`.
    pub watchers_notified: usize,
    /// Whether the store entry is gone (true also when there was none).
    pub store_entry_deleted: bool,
    /// Why deleting the store entry failed.
    pub store_error: Option<StoreError>,
    /// `None` when there was no refresh token to revoke.
    pub upstream: Option<Revocation>,
}

impl AccountOutcome {
    /// Whether the upstream no longer honours this account's refresh token as far as the
    /// broker can tell: revoked, or there was none.
    pub fn upstream_revoked(&self) -> bool {
        matches!(self.upstream, None | Some(Revocation::Done))
    }

    /// Whether nothing of the session is left on this device.
    pub fn local_wipe_done(&self) -> bool {
        self.store_error.is_none()
    }

    /// Whether a revoke of this account achieved everything it must.
    pub fn revoke_complete(&self) -> bool {
        self.upstream_revoked() && self.local_wipe_done()
    }
}

/// What a device-level logout or revoke did.
#[derive(Debug)]
pub struct DeviceOutcome {
    /// Configured accounts in config order, then leftover store entries.
    pub accounts: Vec<AccountOutcome>,
    /// Why the store could not be searched for entries of accounts no longer in the config.
    pub listing_error: Option<StoreError>,
}

impl DeviceOutcome {
    /// Whether every step that `mode` requires succeeded for every account.
    pub fn complete(&self, mode: EndMode) -> bool {
        self.listing_error.is_none()
            && self.accounts.iter().all(|a| match mode {
                EndMode::Logout => a.local_wipe_done(),
                EndMode::Revoke => a.revoke_complete(),
            })
    }
}

impl Sessions {
    /// Ends `account`'s session. Ending a logged-out account succeeds and says so.
    pub async fn end_account(
        self: &Arc<Self>,
        account: &str,
        mode: EndMode,
    ) -> Result<AccountOutcome, BrokerError> {
        let slot = Arc::clone(self.slot(account)?);
        let this = Arc::clone(self);
        self.run_to_the_end(mode, async move { this.end_slot(&slot, mode).await })
            .await
    }

    /// Ends every configured account's session, then deletes every entry this broker's
    /// service still has in the store (accounts no longer in the config). One failing account
    /// does not stop the others.
    pub async fn end_device(self: &Arc<Self>, mode: EndMode) -> Result<DeviceOutcome, BrokerError> {
        let this = Arc::clone(self);
        self.run_to_the_end(mode, async move { this.end_device_now(mode).await })
            .await
    }

    /// Runs `steps` in a tracked task of its own and waits for its outcome: dropping this
    /// future (the caller's deadline passed) leaves the task running to its end.
    async fn run_to_the_end<T: Send + 'static>(
        &self,
        mode: EndMode,
        steps: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, BrokerError> {
        self.ends.spawn(steps).await.map_err(|e| {
            // A panic message is not for clients: logged here only.
            tracing::error!(action = mode.as_str(), error = %e, "the task ending a session failed");
            BrokerError::Internal {
                what: match mode {
                    EndMode::Logout => "the logout",
                    EndMode::Revoke => "the revoke",
                },
            }
        })
    }

    async fn end_device_now(&self, mode: EndMode) -> DeviceOutcome {
        // Accounts are independent (each has its own flight slot and store lane), so they are
        // ended side by side, at most DEVICE_CONCURRENCY at once: with therappai slow, a
        // device with many accounts is wiped in about one request timeout, not one per
        // account. All inside this one task, so it stays as cancellation-safe as before;
        // `buffered` keeps the results in config order.
        let slots: Vec<Arc<AccountSlot>> = self.cache.slots().cloned().collect();
        let mut accounts: Vec<AccountOutcome> = stream::iter(slots)
            .map(|slot| async move { self.end_slot(&slot, mode).await })
            .buffered(DEVICE_CONCURRENCY)
            .collect()
            .await;
        let configured = self.cache.names();
        let listing_error = match self.store.accounts().await {
            Ok(names) => {
                let leftovers = names.into_iter().filter(|n| !configured.contains(n));
                let ended: Vec<AccountOutcome> = stream::iter(leftovers)
                    .map(|name| self.end_leftover(name, mode))
                    .buffered(DEVICE_CONCURRENCY)
                    .collect()
                    .await;
                accounts.extend(ended);
                None
            }
            Err(err) => {
                crate::audit::store_search_failed(mode.as_str(), &err);
                Some(err)
            }
        };
        DeviceOutcome {
            accounts,
            listing_error,
        }
    }

    async fn end_slot(&self, slot: &AccountSlot, mode: EndMode) -> AccountOutcome {
        let account = slot.config.name.as_str();
        // Step 1, before waiting for anything: from here on no cached token is served and no
        // refresh or login in flight can bring tokens back.
        let reason = mode.session_reason();
        let ended = {
            let mut state = slot.state();
            state.end_waits();
            state.end_session(SessionState::LoggedOut, self.clock.now(), reason)
        };
        // Step 2: a refresh or login in flight finishes (and drops its result) first, so it
        // cannot write to the store after our delete. If it rotated, therappai has already
        // blacklisted the token step 1 took: the rotated one is the live session, and the one
        // revoked and reported on.
        let _flight = slot.flight.lock().await;
        let rotated = slot.state().end_proceeds();
        let outcome = self
            .revoke_and_delete(
                account.to_owned(),
                Some(slot.config.email.clone()),
                rotated.or(ended.refresh),
                ended.had_access,
                ended.watchers_notified,
                mode,
            )
            .await;
        // Anything a refresh in flight put back (it cannot commit, but be certain) goes too.
        slot.state()
            .end_session(SessionState::LoggedOut, self.clock.now(), reason);
        outcome
    }

    async fn end_leftover(&self, account: String, mode: EndMode) -> AccountOutcome {
        self.revoke_and_delete(account, None, None, false, 0, mode)
            .await
    }

    /// Steps 3 and 4. `refresh` is the token from memory; without one, the store's is used.
    async fn revoke_and_delete(
        &self,
        account: String,
        email: Option<String>,
        refresh: Option<RefreshToken>,
        had_access: bool,
        watchers_notified: usize,
        mode: EndMode,
    ) -> AccountOutcome {
        let refresh = match refresh {
            Some(token) => Ok(Some(token)),
            None => self.store.load(&account).await,
        };
        // A fleet's entry may hold a newer rotation than this broker's memory (another broker
        // rotated a moment ago): that one is the live session, and is revoked too.
        let fleet_newer = match (self.store.fleet(), &refresh) {
            (Some(fleet), Ok(mine)) => fleet
                .read(&account)
                .await
                .ok()
                .and_then(|read| read.entry)
                .and_then(|entry| entry.refresh)
                .filter(|held| Some(held) != mine.as_ref()),
            _ => None,
        };
        // Before the upstream call, which may be slow or hang until its timeout.
        let deleted = self.store.delete(&account).await;
        let mut upstream = match &refresh {
            Ok(Some(token)) => Some(self.upstream.revoke(token).await),
            Ok(None) => None,
            Err(err) => Some(Revocation::Failed(format!(
                "the refresh token could not be read from the store to revoke it ({err})"
            ))),
        };
        if let Some(newer) = &fleet_newer {
            let revoked = self.upstream.revoke(newer).await;
            tracing::info!(account, refresh_sha256 = %newer.fingerprint(), ?revoked, "revoked the fleet's newer refresh token too");
            // The outcome reported is the worse of the two.
            if !matches!(revoked, Revocation::Done) || upstream.is_none() {
                upstream = Some(revoked);
            }
        }
        let refresh_sha256 = match &refresh {
            Ok(Some(token)) => token.fingerprint(),
            _ => String::new(),
        };
        let had_refresh = matches!(refresh, Ok(Some(_)));
        // Zeroized here: nothing needs it any more.
        drop(refresh);
        let outcome = AccountOutcome {
            was_logged_in: had_refresh || had_access || matches!(deleted, Ok(true)),
            store_entry_deleted: deleted.is_ok(),
            store_error: deleted.err(),
            upstream,
            watchers_notified,
            email,
            account,
        };
        crate::audit::session_ended(&crate::audit::SessionEnded {
            action: mode.as_str(),
            account: &outcome.account,
            configured: outcome.email.is_some(),
            refresh_sha256: &refresh_sha256,
            was_logged_in: outcome.was_logged_in,
            upstream: &format!("{:?}", outcome.upstream),
            store_error: outcome.store_error.as_ref().map(ToString::to_string),
            incomplete: mode == EndMode::Revoke && !outcome.revoke_complete(),
        });
        outcome
    }
}
