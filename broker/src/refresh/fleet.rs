//! Fleet-wide single flight, for the `vault` store: one upstream refresh per access-token
//! lifetime for every broker sharing an account, with OpenBao as the only coordinator.
//!
//! Before it refreshes, a broker reads the account's entry:
//! 1. a logout record (or no entry) → the session ended elsewhere: wipe memory, refuse;
//! 2. an access token that serves the caller → adopt it (and the entry's refresh token);
//! 3. a live lease of another broker → poll the entry's version (short, jittered, bounded by
//!    the lease) and start over when it changes or the lease runs out;
//! 4. else claim the lease with a check-and-set write, and refresh with the entry's refresh
//!    token. A lost race starts over.
//!
//! The holder writes the result (rotated refresh token, new access token, lease cleared)
//! with check-and-set *before* serving it. If that write loses (the lease ran out and the
//! entry changed), the broker re-reads: when the entry still holds the refresh token it used,
//! only the lease moved, and its result is the fleet's newest: it writes again; otherwise
//! another broker's rotation won and its result is adopted. A broker whose refresh token is
//! rejected re-reads first and only ends the session if the entry did not change.

use super::Refresher;
use crate::cache::{AccountSlot, ServedToken, SessionState};
use crate::error::BrokerError;
use crate::secret::RefreshToken;
use crate::store::StoreError;
use crate::store::vault::entry::{Entry, Lease};
use crate::store::vault::{Pending, Read, VaultStore, Written};
use crate::upstream::{IssuedAccess, Refreshed};
use std::time::{Duration, SystemTime};

/// How often a waiting broker looks at the entry's version, before jitter.
const POLL: Duration = Duration::from_millis(150);
/// Check-and-set rounds before a broker gives up for this request (each lost round means
/// another broker made progress).
const MAX_ROUNDS: usize = 8;
/// After OpenBao failed a fleet step, how long queued callers are answered at once.
const OPENBAO_PAUSE: Duration = Duration::from_secs(2);
/// Reads retried while OpenBao is unavailable (250 ms, doubling: about 1.75 s in all).
const ELECTION_RETRIES: usize = 3;
/// A write-back is not retried this close to the end of the lease (another broker may
/// take over then).
pub(super) const WRITE_BACK_MARGIN: Duration = Duration::from_secs(1);

/// The lease this broker holds for one refresh.
#[derive(Debug)]
pub(super) struct Claim {
    /// The entry's version after the claim: the `cas` of the write-back.
    pub version: u64,
    /// When the lease runs out: until then no other broker refreshes this account, so a
    /// write-back that fails (OpenBao electing a new leader) may be retried until then.
    pub until: SystemTime,
    /// The refresh token the entry held, which this refresh uses.
    pub refresh: RefreshToken,
}

/// What the fleet says to do.
pub(super) enum Turn {
    /// The fleet already has a token for the caller.
    Served(ServedToken),
    /// This broker holds the lease: refresh.
    Refresh(Claim),
}

impl Refresher {
    /// Steps 1-4 of the module doc.
    pub(super) async fn fleet_turn(
        &self,
        fleet: &VaultStore,
        slot: &AccountSlot,
        epoch: u64,
        need: &super::Need,
    ) -> Result<Turn, BrokerError> {
        let account = slot.config.name.as_str();
        let store_error = |source: StoreError| BrokerError::Store {
            account: account.to_owned(),
            source,
        };
        for round in 0..MAX_ROUNDS {
            // A rotation only memory holds goes to the entry first: memory is newer.
            self.settle_pending(fleet, slot, epoch)
                .await
                .map_err(store_error)?;
            let read = self
                .read_riding_out_elections(fleet, account)
                .await
                .map_err(store_error)?;
            let version = read.version;
            let entry = self.adopt(slot, epoch, read)?;
            let now = self.clock.now();
            if let Some(served) = self.answer_from_cache(slot, need, now) {
                return Ok(Turn::Served(served));
            }
            if let Some(lease) = entry.lease_of_other(fleet.id())
                && let Some(until) = self.lease_runs_until(fleet, account, version, lease, now)
            {
                tracing::debug!(account, holder = %lease.holder, "another broker is refreshing; waiting for its result");
                self.wait_for_change(fleet, account, version, until)
                    .await
                    .map_err(store_error)?;
                continue;
            }
            let Some(refresh) = entry.refresh.as_ref().map(RefreshToken::duplicate) else {
                continue; // adopt() refuses an entry without one
            };
            let until = now + fleet.lease();
            let claimed = Entry {
                refresh: Some(refresh.duplicate()),
                access: entry.access,
                lease: Some(Lease {
                    holder: fleet.id().to_owned(),
                    until,
                }),
                ended: None,
                written_by: fleet.id().to_owned(),
            };
            match fleet
                .write(account, &claimed, version)
                .await
                .map_err(store_error)?
            {
                Written::Version(version) => {
                    return Ok(Turn::Refresh(Claim {
                        version,
                        until,
                        refresh,
                    }));
                }
                Written::Conflict => {
                    tracing::debug!(account, "lost the race for the refresh lease; re-reading");
                    crate::store::vault::conflict_pause(round).await;
                }
            }
        }
        Err(BrokerError::UpstreamUnavailable {
            account: account.to_owned(),
            reason:
                "the brokers of the fleet kept changing this account's OpenBao entry; try again"
                    .to_owned(),
        })
    }

    /// Takes what a read found into memory: ends the session on a logout record, installs a
    /// refresh token and access token this memory lacks. Returns the entry (which holds a
    /// refresh token) for the caller to decide on.
    pub(super) fn adopt(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        read: Read,
    ) -> Result<Entry, BrokerError> {
        let account = slot.config.name.as_str();
        let now = self.clock.now();
        let ended_here = slot.state().ended_refresh.clone();
        // The session this broker ended (a logout whose record is on its way, or a token
        // therappai rejected whose mark failed): never taken back, whatever its state says.
        if let Some(ended) = &ended_here
            && read
                .entry
                .as_ref()
                .and_then(|e| e.refresh.as_ref())
                .is_some_and(|r| r.fingerprint() == *ended)
        {
            let state = slot.state();
            return Err(match (state.session(), &state.needs_login_reason) {
                (SessionState::NeedsLogin, Some(reason)) => BrokerError::NeedsLogin {
                    account: account.to_owned(),
                    reason: reason.clone(),
                },
                _ => BrokerError::NotLoggedIn {
                    account: account.to_owned(),
                },
            });
        }
        let mut entry = match read.entry {
            Some(entry) if entry.refresh.is_some() => entry,
            other => {
                let reason = match other.and_then(|e| e.ended) {
                    Some(ended) => format!(
                        "the session was ended by broker {} at {} ({})",
                        ended.by,
                        crate::clock::utc_rfc3339(ended.at),
                        ended.reason
                    ),
                    None => "the fleet's OpenBao holds no session for this account".to_owned(),
                };
                let had_session = slot.update_if_current(epoch, |state| {
                    let had = state.session() != SessionState::LoggedOut;
                    state.end_session(SessionState::LoggedOut, now, &reason);
                    had
                });
                if had_session == Some(true) {
                    crate::audit::session_ended_elsewhere(account, &reason);
                }
                return Err(BrokerError::NotLoggedIn {
                    account: account.to_owned(),
                });
            }
        };
        let access = entry.access.take();
        let adopted = slot.update_if_current(epoch, |state| {
            // Memory holds the rotation of the entry's token that OpenBao has not got yet:
            // memory is newer (settle_pending writes it).
            let pending_over_this = state.fleet_pending_from.is_some()
                && state.fleet_pending_from
                    == entry.refresh.as_ref().map(RefreshToken::fingerprint);
            if pending_over_this {
                return;
            }
            let same = state.refresh.as_ref() == entry.refresh.as_ref();
            if !same {
                state.refresh = entry.refresh.as_ref().map(RefreshToken::duplicate);
                state.generation += 1;
                state.access = None;
            }
            state.refresh_stored = true;
            state.store_unread = false;
            state.store_problem = None;
            if state.session() == SessionState::LoggedOut
                || state.session() == SessionState::NeedsLogin
            {
                state.needs_login_reason = None;
                state.set_session(SessionState::Active, now, "the fleet's session");
            }
            if let Some(access) = &access {
                let newer = state
                    .access
                    .as_ref()
                    .is_none_or(|held| held.expires_at < access.expires_at);
                if newer && access.expires_at > now {
                    self.install_access(state, now, copy_access(access));
                }
            }
        });
        if adopted.is_none() {
            return Err(super::session_ended_error(account));
        }
        entry.access = access;
        Ok(entry)
    }

    /// Until when this broker lets `lease` (seen at entry `version`) stand, by its own clock:
    /// a full lease from when it first saw that version, so neither a holder's fast clock nor
    /// a waiter's can make it steal or wait forever. `None`: the lease is long gone (its
    /// `until` more than a lease in the past even allowing for that much skew): take over.
    fn lease_runs_until(
        &self,
        fleet: &VaultStore,
        account: &str,
        version: u64,
        lease: &Lease,
        now: SystemTime,
    ) -> Option<SystemTime> {
        if lease.until + fleet.lease() < now {
            return None;
        }
        let mut seen = self.lease_seen.lock().unwrap_or_else(|p| p.into_inner());
        let first = match seen.get(account) {
            Some((v, at)) if *v == version => *at,
            _ => {
                seen.insert(account.to_owned(), (version, now));
                now
            }
        };
        let until = first + fleet.lease();
        (until > now).then_some(until)
    }

    /// Writes a rotation only memory holds (a write-back that failed) over the token it was
    /// rotated from; drops it when the fleet moved on meanwhile (a logout, a new login), so a
    /// late write never revives or overwrites a session. No-op when nothing is pending.
    pub(super) async fn settle_pending(
        &self,
        fleet: &VaultStore,
        slot: &AccountSlot,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let account = slot.config.name.as_str();
        let (token, from) = {
            let state = slot.state();
            match (&state.fleet_pending_from, &state.refresh) {
                (Some(from), Some(token)) => (token.duplicate(), from.clone()),
                _ => return Ok(()),
            }
        };
        let outcome = match fleet.write_pending(account, &token, &from).await {
            Ok(outcome) => outcome,
            Err(err) => {
                slot.update_if_current(epoch, |state| state.store_problem = Some(err.to_string()));
                return Err(err);
            }
        };
        let now = self.clock.now();
        if outcome == Pending::Written {
            tracing::info!(account, refresh_sha256 = %token.fingerprint(), "the rotated refresh token is now in the fleet's entry");
            slot.update_if_current(epoch, |state| {
                if state.refresh.as_ref() == Some(&token) {
                    state.fleet_pending_from = None;
                    state.store_problem = None;
                    state.refresh_stored = true;
                }
            });
            return Ok(());
        }
        tracing::warn!(
            account,
            ?outcome,
            "the fleet's session changed while this broker held an unstored rotation; dropping it"
        );
        slot.update_if_current(epoch, |state| {
            if state.refresh.as_ref() == Some(&token) {
                state.refresh = None;
                state.fleet_pending_from = None;
                state.store_problem = None;
                state.refresh_stored = false;
                state.access = None;
            }
        });
        let revoked = self.upstream.revoke(&token).await;
        tracing::info!(account, refresh_sha256 = %token.fingerprint(), ?revoked, "revoked the dropped rotation");
        if outcome == Pending::Ended {
            slot.update_if_current(epoch, |state| {
                state.end_session(
                    SessionState::LoggedOut,
                    now,
                    "the session was ended elsewhere in the fleet",
                )
            });
        }
        Ok(())
    }

    /// Keeps a refresh's result whose write-back failed in memory only, unserved: no caller
    /// may use an access token the fleet's entry could lose. `settle_pending` writes it.
    pub(super) fn keep_pending(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        claim: &Claim,
        refreshed: Refreshed,
        err: &StoreError,
    ) -> BrokerError {
        let account = slot.config.name.as_str();
        let now = self.clock.now();
        tracing::error!(account, error = %err, "could not write the refresh's result to OpenBao; keeping the rotated token in memory, unserved, and writing it when OpenBao answers");
        slot.update_if_current(epoch, |state| {
            if let Some(rotated) = refreshed.rotated {
                state.refresh = Some(rotated);
                state.generation += 1;
                state.fleet_pending_from = Some(claim.refresh.fingerprint());
                state.refresh_stored = false;
                state.store_problem = Some(err.to_string());
            }
            state.access = None;
            state.last_refresh = Some((now, err.to_string()));
            state.set_session(SessionState::Active, now, "");
        });
        BrokerError::UpstreamUnavailable {
            account: account.to_owned(),
            reason: format!(
                "the refreshed token could not be stored in the fleet's OpenBao ({err}); the broker keeps it and stores it as soon as OpenBao answers"
            ),
        }
    }

    /// A fleet step that failed on OpenBao: the callers queued behind this one are answered
    /// at once for a short while instead of each waiting on OpenBao again.
    pub(super) fn fleet_unavailable(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        err: BrokerError,
    ) -> BrokerError {
        if let BrokerError::Store { source, .. } = &err
            && source.is_unavailable()
        {
            let now = self.clock.now();
            slot.update_if_current(epoch, |state| {
                state.next_attempt_at = Some(now + OPENBAO_PAUSE);
                state.last_refresh = Some((now, source.to_string()));
                if state.session() == SessionState::Refreshing {
                    state.set_session(SessionState::Active, now, "");
                }
            });
        }
        err
    }

    /// Puts an access token the fleet issued into memory, scheduled like one of our own.
    fn install_access(
        &self,
        state: &mut crate::cache::SlotState,
        now: SystemTime,
        access: IssuedAccess,
    ) {
        let due = self.ahead_due(now, &access);
        state.install_access(access, due);
    }

    /// Reads the entry, trying again for about two seconds when OpenBao is unavailable: a
    /// Raft cluster usually elects a new leader in 2-5 s (measured on loopback), and callers
    /// should see as little of it as possible.
    async fn read_riding_out_elections(
        &self,
        fleet: &VaultStore,
        account: &str,
    ) -> Result<Read, StoreError> {
        let mut pause = Duration::from_millis(250);
        for _ in 0..ELECTION_RETRIES {
            match fleet.read(account).await {
                Err(err) if err.is_unavailable() => {
                    tracing::debug!(account, error = %err, "OpenBao unavailable; reading again shortly");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        fleet.read(account).await
    }

    /// Waits until the entry's version moves past `version` or `until` passes, polling
    /// (an OpenBao that does not answer meanwhile only means polling on).
    async fn wait_for_change(
        &self,
        fleet: &VaultStore,
        account: &str,
        version: u64,
        until: SystemTime,
    ) -> Result<(), StoreError> {
        loop {
            if self.clock.now() >= until {
                return Ok(());
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 100);
            tokio::time::sleep(POLL + jitter).await;
            match fleet.version(account).await {
                Ok(now) if now != Some(version) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.is_unavailable() => {
                    tracing::debug!(account, error = %err, "OpenBao unavailable while waiting for another broker's refresh");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes a refresh's result for the fleet before anyone serves it (see the module doc).
    /// `Ok(None)`: written, serve `refreshed`. `Ok(Some(read))`: another broker's rotation
    /// won; `read` is the entry to adopt instead.
    pub(super) async fn fleet_write_back(
        &self,
        fleet: &VaultStore,
        account: &str,
        claim: &Claim,
        refreshed: &Refreshed,
    ) -> Result<Option<Read>, StoreError> {
        let refresh = refreshed.rotated.as_ref().unwrap_or(&claim.refresh);
        let entry = Entry {
            refresh: Some(refresh.duplicate()),
            access: refreshed.access.as_ref().ok().map(copy_access),
            lease: None,
            ended: None,
            written_by: fleet.id().to_owned(),
        };
        let mut version = claim.version;
        let mut pause = Duration::from_millis(250);
        for _ in 0..MAX_ROUNDS {
            match fleet.write(account, &entry, version).await {
                Ok(Written::Version(_)) => return Ok(None),
                Ok(Written::Conflict) => {}
                // While the lease holds nobody else acts on this account: keep the rotated
                // token's only copy and try again (a new leader is usually elected in ~1 s).
                Err(err)
                    if err.is_unavailable()
                        && self.clock.now() + pause + WRITE_BACK_MARGIN < claim.until =>
                {
                    tracing::warn!(account, error = %err, retry_in_ms = pause.as_millis() as u64, "could not write the refresh's result to OpenBao; trying again within the lease");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(err) => return Err(err),
            }
            let read = fleet.read(account).await?;
            let held = read.entry.as_ref().and_then(|e| e.refresh.as_ref());
            // The write went through although its answer was lost (and the retry on another
            // node saw the new version): the entry holds this very result.
            if held == Some(refresh) && read.entry.as_ref().is_some_and(|e| e.lease.is_none()) {
                return Ok(None);
            }
            let ours = held == Some(&claim.refresh);
            if !ours {
                tracing::warn!(
                    account,
                    "another broker wrote this account's entry while this refresh ran; using the fleet's entry"
                );
                return Ok(Some(read));
            }
            // Only the lease moved (it ran out and another broker claimed it): this result
            // is still the newest the fleet has.
            version = read.version;
        }
        Err(StoreError::Vault {
            op: crate::store::Op::Save(account.to_owned()),
            problem: "the entry kept changing while the broker wrote a refresh's result".to_owned(),
            unavailable: true,
        })
    }

    /// Gives the lease back after a failed refresh, so another broker need not wait for it
    /// to run out (best effort: it runs out anyway).
    pub(super) async fn fleet_release(&self, fleet: &VaultStore, account: &str, claim: &Claim) {
        let Ok(read) = fleet.read(account).await else {
            return;
        };
        if read.version != claim.version {
            return;
        }
        let Some(mut entry) = read.entry else { return };
        entry.lease = None;
        entry.written_by = fleet.id().to_owned();
        let _ = fleet.write(account, &entry, claim.version).await;
    }
}

fn copy_access(access: &IssuedAccess) -> IssuedAccess {
    IssuedAccess {
        token: access.token.duplicate(),
        expires_at: access.expires_at,
        received_at: access.received_at,
    }
}
