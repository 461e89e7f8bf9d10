//! The background refresher: one task per account that replaces the access token ahead of
//! its expiry (so callers almost never wait) and retries a pending store write.
//!
//! Timers are tokio's (tests can pause time); what is due is judged on the wall clock, and no
//! sleep is longer than [`MAX_NAP`], so after a suspend the task notices within that bound
//! (callers are never served an expired token meanwhile: the cache checks the wall clock).

use super::{Need, Refresher};
use crate::cache::{AccountSlot, SessionState};
use crate::clock::Clock;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Longest single sleep; bounds how late a refresh can be after the wall clock jumped.
const MAX_NAP: Duration = Duration::from_secs(30);
/// How often a rotated refresh token that failed to reach the store is written again.
const STORE_RETRY: Duration = Duration::from_secs(10);

/// Runs until `shutdown` for one account.
pub async fn run_background(
    refresher: Arc<Refresher>,
    slot: Arc<AccountSlot>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    loop {
        let now = clock.now();
        let (due, store_pending) = {
            let state = slot.state();
            (next_due(&state, now), state.store_problem.is_some())
        };
        let mut nap = due.map_or(MAX_NAP, |due| {
            due.duration_since(now).unwrap_or_default().min(MAX_NAP)
        });
        if store_pending {
            nap = nap.min(STORE_RETRY);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = slot.changed() => continue,
            () = tokio::time::sleep(nap) => {}
        }
        if store_pending {
            refresher.retry_store_write(&slot).await;
        }
        let now = clock.now();
        let due_now = {
            let state = slot.state();
            next_due(&state, now).is_some_and(|due| due <= now)
        };
        if due_now {
            // Errors are logged and recorded by the refresher; callers see them on demand.
            let _ = refresher.obtain(&slot, Need::Ahead).await;
        }
    }
}

/// When this account next needs a background refresh, if ever.
fn next_due(state: &crate::cache::SlotState, now: SystemTime) -> Option<SystemTime> {
    if state.session() != SessionState::Active || state.refresh.is_none() {
        return None; // logged out, needs login, or a refresh is already running
    }
    // Only a token somebody was given is kept warm: an account nobody asks for (or one just
    // restored at start-up, with no access token yet) causes no upstream traffic.
    if state.access.is_none() || !state.access_served {
        return None;
    }
    if let Some(next) = state.next_attempt_at {
        return Some(next.max(now));
    }
    Some(state.refresh_due.unwrap_or(now))
}
