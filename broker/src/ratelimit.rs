//! Login rate limiting: failed logins are counted per peer uid and over all peers, and a
//! caller over the limit is locked out, for twice as long each time it fails again.
//!
//! Threat: any local process a policy lets log in could use the broker to guess a therappai
//! password. The limit is keyed on the kernel's uid of the caller, never on the account name,
//! so trying many account names does not get around it. Attempts in flight count against the
//! allowance, so concurrent calls cannot slip past it either.
//!
//! [`LoginLimiter`] is a pure state machine: every method takes the wall-clock time, so the
//! unit tests drive it with made-up instants. [`SharedLimiter`] wraps it with a mutex and the
//! broker's clock. Nothing here sees a password.

use crate::clock::Clock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// The limits in force (`[login_limits]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed logins one uid may make within `window` before it is locked out.
    pub failures_per_uid: u32,
    /// Failed logins all callers together may make within `window` before every login is
    /// locked out.
    pub failures_overall: u32,
    /// How long a failure counts.
    pub window: Duration,
    /// The first lockout; each further failure after a lockout doubles it.
    pub lockout: Duration,
    /// The longest lockout.
    pub max_lockout: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            failures_per_uid: 5,
            failures_overall: 20,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(60),
            max_lockout: Duration::from_secs(60 * 60),
        }
    }
}

/// Whose failures tripped a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One caller uid.
    Uid(u32),
    /// All callers together.
    Overall,
}

impl Scope {
    pub fn describe(self) -> String {
        match self {
            Self::Uid(uid) => format!("uid {uid}"),
            Self::Overall => "all callers".to_owned(),
        }
    }
}

/// Why an attempt may not start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    /// When the caller may try again.
    pub retry_at: SystemTime,
    /// True when the scope is locked out; false when only attempts still in flight use up
    /// what is left of the allowance.
    pub locked_out: bool,
}

/// A lockout that a failure just imposed (an audit event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub scope: Scope,
    pub until: SystemTime,
    /// How many lockouts in a row this scope has had, this one included.
    pub strikes: u32,
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in: the uid's failures on that account are forgotten.
    Success,
    /// Wrong e-mail or password.
    Failure,
    /// Ended without an answer on the credentials (upstream down, bad request, cancelled).
    Neutral,
}

/// When a retry is suggested while the allowance is taken by attempts in flight.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// One scope's recent history.
#[derive(Debug, Default)]
struct Tally {
    /// Failures within the window, oldest first, with the account each was for.
    failures: Vec<(SystemTime, String)>,
    in_flight: u32,
    /// Lockouts in a row; while non-zero, a single failure locks out again.
    strikes: u32,
    locked_until: Option<SystemTime>,
}

impl Tally {
    /// Forgets failures older than the window, and the strikes once a whole window has
    /// passed without a failure after the last lockout ended.
    fn expire(&mut self, limits: &LoginLimits, now: SystemTime) {
        self.failures.retain(|(at, _)| *at + limits.window > now);
        if let Some(until) = self.locked_until {
            if until <= now && self.failures.is_empty() && until + limits.window <= now {
                self.locked_until = None;
                self.strikes = 0;
            }
        }
    }

    fn locked(&self, now: SystemTime) -> Option<SystemTime> {
        self.locked_until.filter(|until| *until > now)
    }

    /// Failures still allowed before the next lockout, not counting attempts in flight.
    fn allowance(&self, limit: u32) -> u32 {
        if self.strikes > 0 {
            1
        } else {
            limit.saturating_sub(u32::try_from(self.failures.len()).unwrap_or(u32::MAX))
        }
    }

    fn check(&self, limit: u32, scope: Scope, now: SystemTime) -> Result<(), Refusal> {
        if let Some(until) = self.locked(now) {
            return Err(Refusal {
                scope,
                retry_at: until,
                locked_out: true,
            });
        }
        if self.in_flight >= self.allowance(limit) {
            return Err(Refusal {
                scope,
                retry_at: now + IN_FLIGHT_RETRY,
                locked_out: false,
            });
        }
        Ok(())
    }

    fn fail(
        &mut self,
        limits: &LoginLimits,
        limit: u32,
        scope: Scope,
        account: &str,
        now: SystemTime,
    ) -> Option<Lockout> {
        let exhausted = self.allowance(limit) <= 1;
        self.failures.push((now, account.to_owned()));
        if !exhausted {
            return None;
        }
        self.strikes = self.strikes.saturating_add(1);
        let doublings = self.strikes.saturating_sub(1).min(31);
        let length = limits
            .lockout
            .saturating_mul(1u32 << doublings)
            .min(limits.max_lockout);
        let until = now + length;
        self.locked_until = Some(until);
        Some(Lockout {
            scope,
            until,
            strikes: self.strikes,
        })
    }

    fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.in_flight == 0 && self.locked_until.is_none()
    }
}

/// The limiter's state: one tally per uid that failed recently, and one for everybody.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    uids: HashMap<u32, Tally>,
    overall: Tally,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            uids: HashMap::new(),
            overall: Tally::default(),
        }
    }

    /// Starts an attempt by `uid`, or says when it may try again. Every `begin` that
    /// succeeds must be followed by one [`LoginLimiter::finish`].
    pub fn begin(&mut self, uid: u32, now: SystemTime) -> Result<(), Refusal> {
        self.overall.expire(&self.limits, now);
        let tally = self.uids.entry(uid).or_default();
        tally.expire(&self.limits, now);
        tally.check(self.limits.failures_per_uid, Scope::Uid(uid), now)?;
        self.overall
            .check(self.limits.failures_overall, Scope::Overall, now)?;
        tally.in_flight += 1;
        self.overall.in_flight += 1;
        Ok(())
    }

    /// Ends an attempt `begin` let through. Returns the lockouts this failure imposed.
    pub fn finish(
        &mut self,
        uid: u32,
        account: &str,
        outcome: Outcome,
        now: SystemTime,
    ) -> Vec<Lockout> {
        let limits = &self.limits;
        let tally = self.uids.entry(uid).or_default();
        tally.in_flight = tally.in_flight.saturating_sub(1);
        self.overall.in_flight = self.overall.in_flight.saturating_sub(1);
        let mut lockouts = Vec::new();
        match outcome {
            Outcome::Failure => {
                lockouts.extend(tally.fail(
                    limits,
                    limits.failures_per_uid,
                    Scope::Uid(uid),
                    account,
                    now,
                ));
                lockouts.extend(self.overall.fail(
                    limits,
                    limits.failures_overall,
                    Scope::Overall,
                    account,
                    now,
                ));
            }
            Outcome::Success => {
                // Only this account's failures: a caller who knows one password cannot wipe
                // the failures it piled up guessing another account's.
                tally.failures.retain(|(_, a)| a != account);
                if tally.failures.is_empty() {
                    tally.strikes = 0;
                    tally.locked_until = None;
                }
            }
            Outcome::Neutral => {}
        }
        self.uids.retain(|_, t| !t.is_idle() || t.strikes > 0);
        lockouts
    }
}

/// The limiter shared by every handler, reading the broker's clock.
#[derive(Debug)]
pub struct SharedLimiter {
    inner: Mutex<LoginLimiter>,
    clock: Arc<dyn Clock>,
}

/// One login attempt that [`SharedLimiter::begin`] let through. Dropping it without
/// [`Attempt::finish`] (the caller hung up) ends it as [`Outcome::Neutral`].
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a SharedLimiter,
    uid: u32,
    account: String,
    finished: bool,
}

impl SharedLimiter {
    pub fn new(limits: LoginLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(LoginLimiter::new(limits)),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LoginLimiter> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an attempt by `uid` on `account`, or says when it may try again.
    pub fn begin(&self, uid: u32, account: &str) -> Result<Attempt<'_>, Refusal> {
        let now = self.clock.now();
        self.lock().begin(uid, now)?;
        Ok(Attempt {
            limiter: self,
            uid,
            account: account.to_owned(),
            finished: false,
        })
    }

    fn end(&self, uid: u32, account: &str, outcome: Outcome) -> Vec<Lockout> {
        let now = self.clock.now();
        self.lock().finish(uid, account, outcome, now)
    }
}

impl Attempt<'_> {
    /// Records how the attempt ended; returns the lockouts it imposed.
    pub fn finish(mut self, outcome: Outcome) -> Vec<Lockout> {
        self.finished = true;
        self.limiter.end(self.uid, &self.account, outcome)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.limiter.end(self.uid, &self.account, Outcome::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(LoginLimits::default())
    }

    /// One whole failed attempt; returns the lockouts it imposed.
    #[track_caller]
    fn fail(l: &mut LoginLimiter, uid: u32, account: &str, now: SystemTime) -> Vec<Lockout> {
        l.begin(uid, now).expect("attempt allowed");
        l.finish(uid, account, Outcome::Failure, now)
    }

    #[test]
    fn sixth_failure_in_a_row_is_refused_until_the_lockout_ends() {
        let mut l = limiter();
        for i in 0..4 {
            assert!(fail(&mut l, 1000, "default", t0() + MIN * i).is_empty());
        }
        let fifth = t0() + MIN * 4;
        let lockouts = fail(&mut l, 1000, "default", fifth);
        assert_eq!(
            lockouts,
            vec![Lockout {
                scope: Scope::Uid(1000),
                until: fifth + MIN,
                strikes: 1
            }]
        );
        let refusal = l
            .begin(1000, fifth + MIN / 2)
            .expect_err("sixth is refused");
        assert_eq!(refusal.retry_at, fifth + MIN);
        assert!(refusal.locked_out);
        // Another uid is not affected.
        assert!(l.begin(1001, fifth).is_ok());
        // The lockout ends exactly when it said.
        assert!(
            l.begin(1000, fifth + MIN - Duration::from_millis(1))
                .is_err()
        );
        assert!(l.begin(1000, fifth + MIN).is_ok());
    }

    #[test]
    fn failing_again_after_a_lockout_doubles_it_up_to_the_maximum() {
        let mut l = limiter();
        let mut now = t0();
        for _ in 0..4 {
            fail(&mut l, 7, "a", now);
        }
        let mut expected = MIN;
        for strike in 1..=8 {
            let lockouts = fail(&mut l, 7, "a", now);
            assert_eq!(lockouts.len(), 1, "strike {strike} locks out");
            assert_eq!(lockouts[0].until, now + expected);
            now = lockouts[0].until;
            expected = (expected * 2).min(Duration::from_secs(3600));
        }
    }

    #[test]
    fn many_account_names_share_one_uid_allowance() {
        let mut l = limiter();
        for (i, account) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert!(fail(&mut l, 5, account, t0() + Duration::from_secs(i as u64)).is_empty());
        }
        assert_eq!(fail(&mut l, 5, "e", t0() + MIN).len(), 1);
        assert!(l.begin(5, t0() + MIN).is_err(), "a new name does not help");
    }

    #[test]
    fn success_forgets_that_accounts_failures_only() {
        let mut l = limiter();
        for _ in 0..3 {
            fail(&mut l, 9, "mine", t0());
        }
        l.begin(9, t0()).expect("allowed");
        l.finish(9, "mine", Outcome::Success, t0());
        // The counter is back to zero: five more failures before a lockout.
        for _ in 0..4 {
            assert!(fail(&mut l, 9, "mine", t0()).is_empty());
        }
        assert_eq!(fail(&mut l, 9, "mine", t0()).len(), 1);

        // Guessing "theirs" while logging in to "mine" in between does not reset "theirs".
        let mut l = limiter();
        for _ in 0..4 {
            fail(&mut l, 9, "theirs", t0());
            l.begin(9, t0()).expect("allowed");
            l.finish(9, "mine", Outcome::Success, t0());
        }
        assert_eq!(fail(&mut l, 9, "theirs", t0()).len(), 1);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let mut l = limiter();
        for _ in 0..4 {
            fail(&mut l, 3, "a", t0());
        }
        let later = t0() + Duration::from_secs(15 * 60);
        for _ in 0..4 {
            assert!(fail(&mut l, 3, "a", later).is_empty());
        }
    }

    #[test]
    fn attempts_in_flight_count_against_the_allowance() {
        let mut l = limiter();
        for _ in 0..5 {
            l.begin(4, t0()).expect("within the allowance");
        }
        let refusal = l.begin(4, t0()).expect_err("a sixth concurrent attempt");
        assert!(!refusal.locked_out);
        l.finish(4, "a", Outcome::Neutral, t0());
        assert!(l.begin(4, t0()).is_ok(), "a neutral end frees its place");
    }

    #[test]
    fn the_overall_limit_stops_many_uids() {
        let mut l = LoginLimiter::new(LoginLimits {
            failures_overall: 6,
            ..LoginLimits::default()
        });
        for uid in 0..5 {
            assert!(fail(&mut l, uid, "a", t0()).is_empty());
        }
        let lockouts = fail(&mut l, 99, "a", t0());
        assert_eq!(lockouts[0].scope, Scope::Overall);
        let refusal = l.begin(1234, t0()).expect_err("everyone is locked out");
        assert_eq!(refusal.scope, Scope::Overall);
        assert!(l.begin(1234, t0() + MIN).is_ok());
    }

    #[test]
    fn dropping_an_attempt_ends_it() {
        #[derive(Debug)]
        struct Fixed(SystemTime);
        impl Clock for Fixed {
            fn now(&self) -> SystemTime {
                self.0
            }
        }
        let shared = SharedLimiter::new(
            LoginLimits {
                failures_per_uid: 1,
                ..LoginLimits::default()
            },
            Arc::new(Fixed(t0())),
        );
        let attempt = shared.begin(1, "a").expect("allowed");
        assert!(shared.begin(1, "a").is_err(), "one in flight uses it all");
        drop(attempt);
        let attempt = shared.begin(1, "a").expect("freed by the drop");
        assert_eq!(attempt.finish(Outcome::Failure).len(), 1);
    }
}
