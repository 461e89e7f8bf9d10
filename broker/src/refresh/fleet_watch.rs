//! Keeps each account in step with the fleet's OpenBao entry (the `vault` store): every
//! `poll_seconds` (with jitter) it reads the entry's version, and when it moved, the entry. A
//! logout or revoke on another broker ends the session here too (memory wiped, WatchSession
//! told `logged-out`, an audit event naming the broker it came from) at the next round, even
//! while a refresh is in flight here (ending bumps the epoch, so that refresh drops its result);
//! a login or rotation elsewhere is taken into memory; a rotation only memory holds (a
//! failed write-back) is written.

use super::Refresher;
use crate::cache::AccountSlot;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Failed rounds in a row after which the broker warns that fleet logouts are not reaching it.
const WARN_AFTER_MISSES: u32 = 3;

/// Runs until `shutdown` for one account; returns at once when the store is not a fleet's.
pub async fn watch_fleet(
    refresher: Arc<Refresher>,
    slot: Arc<AccountSlot>,
    shutdown: CancellationToken,
) {
    let Some(fleet) = refresher.store.fleet().cloned() else {
        return;
    };
    let account = slot.config.name.as_str();
    let mut known = None;
    let mut misses = 0u32;
    loop {
        let jitter = fleet.poll_interval().mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(fleet.poll_interval() - jitter) => {}
        }
        let checked = fleet.version(account).await;
        // Health and metrics follow OpenBao through these rounds.
        refresher
            .store
            .observe(&crate::store::Op::Load(account.to_owned()), &checked);
        let version = match checked {
            Ok(version) => version,
            Err(err) => {
                misses += 1;
                if misses == WARN_AFTER_MISSES {
                    tracing::warn!(account, error = %err, misses, "cannot reach the fleet's OpenBao: a logout on another broker will not reach this one until it answers");
                } else {
                    tracing::debug!(account, error = %err, "could not check the fleet's entry; will try again");
                }
                continue;
            }
        };
        if misses >= WARN_AFTER_MISSES {
            tracing::info!(account, "the fleet's OpenBao answers again");
        }
        misses = 0;
        if known.is_some() && version == known {
            continue;
        }
        let epoch = slot.epoch();
        let read = match fleet.read(account).await {
            Ok(read) => read,
            Err(err) => {
                tracing::debug!(account, error = %err, "could not read the fleet's entry; will try again");
                continue;
            }
        };
        let read_version = read.version;
        let ended = read.entry.as_ref().is_none_or(|e| e.refresh.is_none());
        if ended {
            // A refresh in flight here must not hold a fleet logout up (ending bumps the
            // epoch, so that refresh drops its result); a local login or logout in flight
            // must not be ended by a record it is about to replace: skip this round then.
            let flight = slot.flight.try_lock();
            let refreshing = slot.state().session() == crate::cache::SessionState::Refreshing;
            if flight.is_err() && !refreshing {
                continue;
            }
            // adopt() ends the session and reports it (audit event).
            let _ = refresher.adopt(&slot, epoch, read);
        } else {
            // Taking tokens in races a local login, logout or refresh: only between them.
            // One running now changes the entry itself, so the next round looks again.
            let Ok(_flight) = slot.flight.try_lock() else {
                continue;
            };
            if let Err(err) = refresher.settle_pending(&fleet, &slot, epoch).await {
                tracing::debug!(account, error = %err, "could not write the pending rotation; will try again");
                continue;
            }
            let _ = refresher.adopt(&slot, epoch, read);
        }
        known = Some(read_version).filter(|v| *v > 0).or(version);
    }
}
