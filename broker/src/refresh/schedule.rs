//! When to refresh and how long to wait between attempts: pure functions of times, settings
//! and a random draw, so they can be tested without a clock.

use crate::config::RefreshConfig;
use crate::upstream::UpstreamError;
use std::time::{Duration, SystemTime};

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

/// When the next cycle may start after one that failed with `error` at `now`: after
/// `failure_backoff`, or later if the server asked (Retry-After, capped at an hour).
pub fn next_attempt(error: &UpstreamError, now: SystemTime, config: &RefreshConfig) -> SystemTime {
    let asked = match error {
        UpstreamError::RateLimited {
            retry_after: Some(after),
        } => (*after).min(MAX_RETRY_AFTER),
        _ => Duration::ZERO,
    };
    now + config.failure_backoff.max(asked)
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
        // ... and after the cycle, the next one waits as long as the server asked.
        assert_eq!(next_attempt(&limited(3600), t(0), &config), t(3600));
        assert_eq!(next_attempt(&limited(7), t(0), &config), t(30));
        assert_eq!(next_attempt(&limited(86_400), t(0), &config), t(3600));
    }
}
