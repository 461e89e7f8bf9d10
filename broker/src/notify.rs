//! Telling the service manager how the broker is doing (the sd_notify protocol): `READY=1`
//! once the listener is up and the store answered, a one-line `STATUS=` kept current,
//! `WATCHDOG=1` pings from the event loop, `RELOADING=1` … `READY=1` around a SIGHUP reload
//! and `STOPPING=1` at shutdown.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is not set (not under systemd, or a unit
//! without `Type=notify`), so the daemon behaves the same everywhere else. A failed send is
//! logged, never fatal: systemd's own timeouts then tell the admin.

use crate::cache::{Cache, SessionState};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
    }
}

/// The listener is up and the store answered: systemd may start sending connections.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload starts (systemd 252 has no `Type=notify-reload`, but `systemctl reload`
/// still waits for the `READY=1` that follows when the service says it is reloading).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for RELOADING=1");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// The reload finished (applied or refused: either way the broker serves again).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown started.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The one-line summary `systemctl status` shows, e.g. `2 accounts: default active, ci
/// needs-login; store keyutils`. Up to four accounts are named; past that, counts by state.
pub fn summary(cache: &Cache, store: &str) -> String {
    let sessions: Vec<(String, SessionState)> = cache
        .slots()
        .map(|slot| (slot.config.name.clone(), slot.state().session()))
        .collect();
    // A refresh in flight is a healthy session: the line should not flicker every few minutes.
    let shown = |state: SessionState| match state {
        SessionState::Refreshing => SessionState::Active.as_str(),
        other => other.as_str(),
    };
    let accounts = match sessions.len() {
        1 => "1 account".to_owned(),
        n => format!("{n} accounts"),
    };
    let detail = if sessions.len() <= 4 {
        sessions
            .iter()
            .map(|(name, state)| format!("{name} {}", shown(*state)))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, state) in &sessions {
            let name = shown(*state);
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
        counts
            .iter()
            .map(|(name, count)| format!("{count} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{accounts}: {detail}; store {store}")
}

/// Sends a new `STATUS=` line whenever an account's session changes, until `stop`.
pub async fn keep_status_current(cache: Arc<Cache>, store: String, stop: CancellationToken) {
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::BroadcastStream;
    let now = std::time::SystemTime::now();
    let mut changes = tokio_stream::StreamMap::new();
    for (index, slot) in cache.slots().enumerate() {
        let (_, events) = slot.subscribe(now);
        changes.insert(index, BroadcastStream::new(events));
    }
    let mut last = summary(&cache, &store);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            next = changes.next() => {
                if next.is_none() {
                    return;
                }
                // A lagged receiver is fine: the summary is read from the current state.
                let line = summary(&cache, &store);
                if line != last {
                    send(&[NotifyState::Status(&line)]);
                    last = line;
                }
            }
        }
    }
}

/// How often to ping: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|usec| usec / 2)
}

/// Pings the watchdog every `interval` from a task on the runtime, until `stop`. The task runs
/// only when the runtime's workers do, so a wedged or stopped event loop stops the pings and
/// systemd restarts the service.
pub async fn watchdog(interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountConfig;

    fn cache(names: &[&str]) -> Cache {
        let accounts: Vec<AccountConfig> = names
            .iter()
            .map(|name| AccountConfig {
                name: (*name).to_owned(),
                email: format!("{name}@example.com"),
            })
            .collect();
        Cache::new(&accounts)
    }

    #[test]
    fn summary_names_few_accounts_and_counts_many() {
        let few = cache(&["default", "ci"]);
        assert_eq!(
            summary(&few, "keyutils"),
            "2 accounts: default logged-out, ci logged-out; store keyutils"
        );
        let many = cache(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            summary(&many, "encrypted-file"),
            "5 accounts: 5 logged-out; store encrypted-file"
        );
    }
}
