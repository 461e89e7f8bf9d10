//! Whatever therappai (or something answering in its place) sends, the broker stays up, keeps
//! what it must keep, and tells apps only what they need.

use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user};

const EMAIL: &str = "erin@example.com";
const PASSWORD: &str = "erins-long-password";

/// An `exp` no clock can hold (the fake writes `u64::MAX`) is a clear error, not a panic: the
/// rotated refresh token that came with it is stored, a restart reading that token from the
/// store starts normally, and once therappai issues sane tokens again the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_exp_is_a_clear_error_and_the_rotated_token_survives() {
    // Login's access token is expired on arrival, so the first token request refreshes.
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::Keyutils, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::MAX);
    fake.knobs().set_refresh_lifetime(Duration::MAX);

    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_ne!(
        out.code, 0,
        "an unusable token is not served: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("exp claim"),
        "the error says what was wrong: {}",
        out.stderr
    );
    assert!(broker.is_running(), "the broker stays up");
    assert_eq!(fake.counters().refresh_ok, 1, "therappai rotated once");

    // The store now holds the rotated token with the absurd exp: start-up reads it.
    broker.restart();
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs()
        .set_refresh_lifetime(Duration::from_secs(86_400));
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(
        fake.counters().refresh_rejected,
        0,
        "the rotated refresh token was kept, so therappai never saw a retired one"
    );
}

/// A 401 without therappai's `token_not_valid` code (a proxy, a WAF or a misrouted host
/// answering in its place) is an upstream failure, not a dead session: the store entry
/// stays, the caller is told what to check, and once the 401s stop the session is served
/// without a new login (issue 11, defect 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_without_token_not_valid_keeps_the_session() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.refresh_section.push_str("max_attempts = 1\n");
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs()
        .fail_next(fake_therappai::Endpoint::Refresh, 1, 401);

    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_ne!(out.code, 0, "no token while therappai's host answers 401");
    assert_ne!(out.code, 3, "not 'log in again': {}", out.stderr);
    assert!(
        out.stderr
            .contains("without therappai's token_not_valid code"),
        "says it is no verdict on the token: {}",
        out.stderr
    );
    assert!(
        broker.store_has_entry("default"),
        "the refresh token is kept"
    );
    let token = broker
        .token_eventually("default", Duration::from_secs(30))
        .await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().login_ok, 1, "no new login was needed");
}
