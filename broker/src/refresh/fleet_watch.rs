//! Keeps each account in step with the fleet's OpenBao entry (the `vault` store): every
//! `poll_seconds` (with jitter) it reads the entry's version, and when it moved, the entry. A
//! logout or revoke on another broker ends the session here too (memory wiped, WatchSession
//! told `logged-out`, an audit event naming the broker it came from); a login or rotation
//! elsewhere is taken into memory, so this broker never presents an already-rotated token.

use super::Refresher;
use crate::cache::AccountSlot;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    loop {
        let jitter = fleet.poll_interval().mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(fleet.poll_interval() - jitter) => {}
        }
        let version = match fleet.version(account).await {
            Ok(version) => version,
            Err(err) => {
                tracing::debug!(account, error = %err, "could not check the fleet's entry; will try again");
                continue;
            }
        };
        if known.is_some() && version == known {
            continue;
        }
        // The flight slot keeps this from racing a local login, logout or refresh; one that is
        // running now will have changed the entry itself, so the next round looks again.
        let Ok(_flight) = slot.flight.try_lock() else {
            continue;
        };
        let epoch = slot.epoch();
        match fleet.read(account).await {
            Ok(read) => {
                let read_version = read.version;
                // An ended session is reported by adopt() (audit event); nothing else to do.
                let _ = refresher.adopt(&slot, epoch, read);
                known = Some(read_version).filter(|v| *v > 0).or(version);
            }
            Err(err) => {
                tracing::debug!(account, error = %err, "could not read the fleet's entry; will try again");
            }
        }
    }
}
