//! The wall clock, injected so tests can jump it.
//!
//! Token expiry (JWT `exp`) is wall-clock time, and the monotonic clock stops while a laptop
//! sleeps, so every validity decision asks this clock at the moment a token is served.

use std::fmt::Debug;
use std::time::SystemTime;

pub trait Clock: Send + Sync + Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// `2024-05-01T12:34:56Z`: a wall-clock instant for messages a human reads (UTC, whole
/// seconds). Instants outside 1970..=9999 (a token's `exp` comes from outside) are clamped
/// rather than allowed to fail formatting.
pub fn utc_rfc3339(t: SystemTime) -> String {
    // 9999-12-31T23:59:59Z, the last instant RFC 3339 can write.
    let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799);
    let t = t.clamp(std::time::UNIX_EPOCH, last);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(utc_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(utc_rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_rfc3339(t), "2000-02-29T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 1000);
        assert_eq!(utc_rfc3339(far), "9999-12-31T23:59:59Z");
    }
}
