//! When to refresh and how long to wait between attempts: pure functions of times, settings
//! and a random draw, so they can be tested without a clock.

use crate::config::RefreshConfig;
use crate::upstream::{IssuedAccess, UpstreamError};
use std::time::{Duration, SystemTime};

/// The background refresher never refreshes more often than this, even when the upstream
/// issues tokens that are (nearly) expired on arrival: callers then refresh on demand.
pub const MIN_AHEAD_INTERVAL: Duration = Duration::from_secs(5);

/// Spread of the ahead-of-expiry point, as a share of the lifetime (±), so many brokers (or
/// accounts) issued tokens at the same moment do not all refresh at the same moment.
const JITTER_SHARE: f64 = 0.05;

/// When the background refresher should replace a token received at `received_at` that
/// expires at `expires_at`: at `ahead_share` of its lifetime, ± 5 % jitter (`draw` in
/// [0, 1)), never before it was received and at least a second before it expires.
pub fn refresh_due(
    received_at: SystemTime,
    expires_at: SystemTime,
    ahead_share: f64,
    draw: f64,
) -> SystemTime {
    let Ok(lifetime) = expires_at.duration_since(received_at) else {
        return received_at; // already expired on arrival: due now
    };
    let share = (ahead_share + JITTER_SHARE * (2.0 * draw.clamp(0.0, 1.0) - 1.0)).clamp(0.0, 1.0);
    let due = received_at + lifetime.mul_f64(share);
    let latest = expires_at
        .checked_sub(Duration::from_secs(1).min(lifetime / 2))
        .unwrap_or(received_at);
    due.min(latest).max(received_at)
}

/// When the background refresher replaces `access`, installed at `now` (by a login, a
/// refresh or from a fleet's entry): [`refresh_due`], never sooner than
/// [`MIN_AHEAD_INTERVAL`] from now.
pub fn ahead_due(
    access: &IssuedAccess,
    now: SystemTime,
    ahead_share: f64,
    draw: f64,
) -> SystemTime {
    refresh_due(access.received_at, access.expires_at, ahead_share, draw)
        .max(now + MIN_AHEAD_INTERVAL)
}

/// Delay before retry number `attempt` (1 for the first retry) after `error`: the server's
/// `Retry-After` when it gave one, else exponential backoff with full jitter (`draw` in
/// [0, 1)). `None` when the server asks for more than `retry_after_max`: the cycle then ends
/// rather than call again sooner than asked, and the failure back-off honours the wait.
pub fn retry_delay(
    error: &UpstreamError,
    attempt: u32,
    config: &RefreshConfig,
    draw: f64,
) -> Option<Duration> {
    if let UpstreamError::RateLimited {
        retry_after: Some(after),
    } = error
    {
        return (*after <= config.retry_after_max).then_some(*after);
    }
    let exponent = attempt.saturating_sub(1).min(16);
    let ceiling = config
        .backoff_initial
        .saturating_mul(1 << exponent)
        .min(config.backoff_max);
    Some(ceiling.mul_f64(draw.clamp(0.0, 1.0)))
}

/// Pause after the `failures`-th failed cycle in a row (1 for the first): exponential with
/// full jitter above a floor. The window's top starts at `failure_backoff_initial` and doubles
/// per failure up to `failure_backoff`; the pause is drawn (`draw` in [0, 1)) between half the
/// first step and that top. So a short blip costs callers about a second, a long outage is
/// asked about at most every few seconds on average (each cycle is itself bounded by
/// `max_attempts`), and many brokers that failed together do not come back together. The
/// floor keeps two cycles from ever starting back to back.
pub fn failure_pause(failures: u32, config: &RefreshConfig, draw: f64) -> Duration {
    let cap = config.failure_backoff;
    let first = config.failure_backoff_initial.min(cap);
    let exponent = failures.saturating_sub(1).min(20);
    let top = first.saturating_mul(1 << exponent).min(cap);
    let floor = first / 2;
    floor + (top - floor).mul_f64(draw.clamp(0.0, 1.0))
}

/// When the next cycle may start after the `failures`-th failed cycle in a row, which failed
/// with `error` at `now`: after [`failure_pause`], or later if the server asked (Retry-After,
/// capped at an hour).
pub fn next_attempt(
    error: &UpstreamError,
    failures: u32,
    now: SystemTime,
    config: &RefreshConfig,
    draw: f64,
) -> SystemTime {
    let asked = match error {
        UpstreamError::RateLimited {
            retry_after: Some(after),
        } => (*after).min(MAX_RETRY_AFTER),
        _ => Duration::ZERO,
    };
    now + failure_pause(failures, config, draw).max(asked)
}

/// Longest server-requested wait the broker honours before trying again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    #[test]
    fn due_at_the_configured_share_with_bounded_jitter() {
        // 300 s token, 80 %: 240 s, ± 15 s.
        assert_eq!(refresh_due(t(0), t(300), 0.8, 0.5), t(240));
        assert_eq!(refresh_due(t(0), t(300), 0.8, 0.0), t(225));
        assert_eq!(refresh_due(t(0), t(300), 0.8, 1.0), t(255));
    }

    #[test]
    fn due_never_after_expiry_nor_before_receipt() {
        assert_eq!(refresh_due(t(0), t(300), 0.95, 1.0), t(299));
        assert_eq!(refresh_due(t(10), t(10), 0.8, 0.5), t(10));
        assert_eq!(
            refresh_due(t(10), t(5), 0.8, 0.5),
            t(10),
            "expired on arrival: due now"
        );
    }

    #[test]
    fn backoff_grows_capped_with_full_jitter() {
        let config = RefreshConfig::default(); // 500 ms initial, 10 s cap
        let unavailable = UpstreamError::Unavailable {
            reason: "503".into(),
        };
        assert_eq!(
            retry_delay(&unavailable, 1, &config, 1.0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            retry_delay(&unavailable, 2, &config, 1.0),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            retry_delay(&unavailable, 3, &config, 0.5),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            retry_delay(&unavailable, 30, &config, 1.0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_delay(&unavailable, 2, &config, 0.0),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let config = RefreshConfig::default(); // 30 s cap
        let limited = |s| UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            retry_delay(&limited(7), 1, &config, 0.0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_delay(&limited(3600), 1, &config, 0.0), None);
        // ... and after the cycle, the next one waits as long as the server asked (the
        // failure pause when that is longer), at most an hour.
        assert_eq!(next_attempt(&limited(3600), 1, t(0), &config, 0.0), t(3600));
        assert_eq!(next_attempt(&limited(7), 1, t(0), &config, 1.0), t(7));
        assert_eq!(next_attempt(&limited(7), 9, t(0), &config, 1.0), t(30));
        assert_eq!(
            next_attempt(&limited(86_400), 1, t(0), &config, 0.0),
            t(3600)
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failure_pause_doubles_per_failure_up_to_the_cap() {
        let config = RefreshConfig::default(); // 1 s first step, 30 s cap
        let tops: Vec<_> = (1..=7).map(|n| failure_pause(n, &config, 1.0)).collect();
        assert_eq!(
            tops,
            [
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16_000),
                ms(30_000),
                ms(30_000)
            ]
        );
        assert_eq!(failure_pause(u32::MAX, &config, 1.0), ms(30_000));
        // Not an error of the server's asking: the pause alone decides.
        let unavailable = UpstreamError::Unavailable {
            reason: "503".into(),
        };
        assert_eq!(next_attempt(&unavailable, 1, t(0), &config, 1.0), t(1));
        assert_eq!(next_attempt(&unavailable, 40, t(0), &config, 1.0), t(30));
    }

    #[test]
    fn failure_pause_jitters_over_the_whole_window_above_the_floor() {
        let config = RefreshConfig::default();
        // The floor is half the first step, whatever the failure count.
        for n in [1, 2, 5, 50] {
            assert_eq!(failure_pause(n, &config, 0.0), ms(500), "failure {n}");
        }
        assert_eq!(failure_pause(1, &config, 0.5), ms(750));
        assert_eq!(failure_pause(6, &config, 0.5), ms(15_250));
        // Out-of-range draws stay inside the window.
        assert_eq!(failure_pause(3, &config, -3.0), ms(500));
        assert_eq!(failure_pause(3, &config, 7.0), ms(4000));
        for i in 0..100 {
            let draw = f64::from(i) / 100.0;
            let pause = failure_pause(4, &config, draw);
            assert!((ms(500)..=ms(8000)).contains(&pause), "{pause:?}");
        }
    }

    #[test]
    fn the_configured_cap_bounds_every_pause() {
        let mut config = RefreshConfig {
            failure_backoff: Duration::from_secs(3),
            ..RefreshConfig::default()
        };
        assert_eq!(failure_pause(1, &config, 1.0), ms(1000));
        assert_eq!(failure_pause(3, &config, 1.0), ms(3000));
        // A cap below the first step is the first step (and its floor is half of it).
        config.failure_backoff = ms(400);
        assert_eq!(failure_pause(1, &config, 1.0), ms(400));
        assert_eq!(failure_pause(1, &config, 0.0), ms(200));
        // No cap, no pause: every cycle may start at once.
        config.failure_backoff = Duration::ZERO;
        assert_eq!(failure_pause(5, &config, 1.0), Duration::ZERO);
    }

    #[test]
    fn after_a_success_the_count_restarts_and_so_does_the_pause() {
        // The refresher resets its count of failed cycles to 0 on success, so the next failure
        // is the first again: back to about a second, however long the outage before was.
        let config = RefreshConfig::default();
        assert_eq!(failure_pause(8, &config, 1.0), ms(30_000));
        assert_eq!(failure_pause(1, &config, 1.0), ms(1000));
        // A count of 0 (never failed) is treated as the first failure, not as no pause.
        assert_eq!(failure_pause(0, &config, 1.0), ms(1000));
    }
}
