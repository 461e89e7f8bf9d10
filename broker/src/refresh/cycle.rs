//! One refresh cycle: up to `max_attempts` calls to therappai, retrying transient failures
//! with backoff, and stopping early when a logout or revoke ends the session.

use super::{Refresher, schedule};
use crate::cache::{AccountSlot, SessionEvent, SessionState};
use crate::secret::RefreshToken;
use crate::upstream::{Refreshed, UpstreamError};
use tokio::sync::broadcast;

impl Refresher {
    /// One refresh cycle: up to `max_attempts` upstream calls, retrying transient failures.
    /// Stops early (with the last error) when a logout or revoke ends the session: its
    /// caller must not keep calling therappai for a session that is gone.
    pub(super) async fn cycle(
        &self,
        slot: &AccountSlot,
        epoch: u64,
        refresh: &RefreshToken,
        lease_until: Option<std::time::SystemTime>,
    ) -> Result<Refreshed, UpstreamError> {
        let account = slot.config.name.as_str();
        let (_, mut events) = slot.subscribe(self.clock.now());
        let mut attempt = 1;
        loop {
            // Also before the first call: a logout may have come between the epoch read and
            // the subscription above.
            if slot.epoch() != epoch {
                return Err(UpstreamError::Unavailable {
                    reason: "the session ended".to_owned(),
                });
            }
            // A fleet's holder starts no attempt that could outlast its lease: past the lease
            // another broker may refresh, and two refreshes of one token lose the session.
            if let Some(until) = lease_until
                && self.clock.now() + self.attempt_budget + super::fleet::WRITE_BACK_MARGIN > until
            {
                return Err(UpstreamError::Unavailable {
                    reason: "the fleet's refresh lease would run out before therappai could answer; another broker may take over".to_owned(),
                });
            }
            let err = match self.upstream.refresh(refresh).await {
                Ok(refreshed) => return Ok(refreshed),
                Err(err) if err.is_transient() && attempt < self.config.max_attempts => err,
                Err(err) => return Err(err),
            };
            let Some(delay) = schedule::retry_delay(&err, attempt, &self.config, rand::random())
            else {
                return Err(err); // the server asked for a longer wait than a cycle may take
            };
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(account, attempt, max_attempts = self.config.max_attempts, delay_ms, error = %err, "refresh attempt failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = session_ended(&mut events) => return Err(err),
            }
            if slot.epoch() != epoch {
                return Err(err);
            }
            attempt += 1;
        }
    }
}

/// Resolves when the session moves to `logged-out` (a logout or revoke).
async fn session_ended(events: &mut broadcast::Receiver<SessionEvent>) {
    loop {
        match events.recv().await {
            Ok(event) if event.state == SessionState::LoggedOut => return,
            Err(broadcast::error::RecvError::Closed) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}
