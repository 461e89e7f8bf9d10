//! Login rate limiting through the real daemon: the sixth wrong password in a row is refused
//! without reaching therappai (the fake's counter says so), other account names do not get
//! around it, the refusal says when to retry (exit 9), the lockout ends when it said, and a
//! successful login resets the counter. The limiter's state machine (doubling, windows, the
//! overall limit) is unit-tested in `broker/src/ratelimit.rs` with an injected clock.

use fake_therappai::{FakeConfig, FakeTherappai};
use std::time::{Duration, Instant};
use therappai_broker_e2e::{Broker, BrokerOptions, CtlOutput, StoreKind};

const EMAIL: &str = "gina@example.com";
const PASSWORD: &str = "ginas-long-password";
/// Short, so the test can watch a lockout end.
const LOCKOUT_SECONDS: u64 = 2;

async fn login(broker: &Broker, account: &str, password: &str) -> CtlOutput {
    broker
        .ctl_with_stdin(
            &["login", "--account", account, "--password-stdin"],
            Some(&format!("{password}\n")),
        )
        .await
}

/// The "(in N s)" of a rate-limit message.
#[track_caller]
fn retry_in(message: &str) -> Duration {
    let seconds = message
        .split("(in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no \"(in N s)\" in: {message}"));
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixth_wrong_password_is_refused_until_the_lockout_ends() {
    let fake = FakeTherappai::start(FakeConfig::default().with_user(EMAIL, PASSWORD))
        .await
        .expect("start fake therappai");
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL).with_account("other", EMAIL);
    options.extra_config = format!("[login_limits]\nlockout_seconds = {LOCKOUT_SECONDS}\n");
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());

    for attempt in 1..=5 {
        let out = login(&broker, "default", "wrong-password-guess").await;
        assert_eq!(
            out.code, 7,
            "attempt {attempt} reaches therappai: {}",
            out.stderr
        );
    }
    assert_eq!(fake.counters().login_calls, 5);

    let refused = login(&broker, "default", "wrong-password-guess").await;
    let locked_at = Instant::now();
    assert_eq!(
        refused.code, 9,
        "the sixth is rate limited: {}",
        refused.stderr
    );
    for needle in ["locked", "uid", "wait until", "login --account default"] {
        assert!(
            refused.stderr.contains(needle),
            "no {needle:?} in: {}",
            refused.stderr
        );
    }
    let said = retry_in(&refused.stderr);
    assert!(
        said <= Duration::from_secs(LOCKOUT_SECONDS),
        "{}",
        refused.stderr
    );
    // Neither another account name nor the right password gets through while locked.
    let other = login(&broker, "other", "wrong-password-guess").await;
    assert_eq!(other.code, 9, "{}", other.stderr);
    let right = login(&broker, "default", PASSWORD).await;
    assert_eq!(right.code, 9, "{}", right.stderr);
    assert_eq!(
        fake.counters().login_calls,
        5,
        "refused attempts never reach therappai"
    );
    assert!(
        broker
            .logs()
            .lines()
            .any(|l| l.contains("audit") && l.contains("login-lockout")),
        "the lockout is an audit event"
    );

    // The lockout ends when it said: poll with the right password, with a deadline.
    let deadline = locked_at + said + Duration::from_secs(3);
    loop {
        let out = login(&broker, "default", PASSWORD).await;
        if out.code == 0 {
            break;
        }
        assert_eq!(
            out.code, 9,
            "only the rate limit may refuse it: {}",
            out.stderr
        );
        assert!(
            Instant::now() < deadline,
            "still locked out {:?} after the broker said {said:?}: {}",
            locked_at.elapsed(),
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whole-second rounding in the message: the wait was at least that second's start.
    assert!(locked_at.elapsed() + Duration::from_secs(1) >= said);
    assert_eq!(
        fake.counters().login_calls,
        6,
        "only the successful login was sent"
    );

    // Success reset the counter: a wrong password is an ordinary refusal again.
    let out = login(&broker, "default", "wrong-password-guess").await;
    assert_eq!(out.code, 7, "{}", out.stderr);
}
