//! An expired access token is replaced through `/refresh/`; a refresh token the upstream
//! rejects ends the session instead of looping.

use fake_therappai::FakeTherappai;
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user};

const EMAIL: &str = "dave@example.com";
const PASSWORD: &str = "daves-long-password";

async fn fake(access_lifetime: Duration) -> FakeTherappai {
    fake_with_user(EMAIL, PASSWORD, access_lifetime).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_refreshed_once_then_cached() {
    // Login hands out an access token that is already expired.
    let fake = fake(Duration::ZERO).await;
    let broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    let expired = fake.issued_tokens();
    fake.knobs().set_access_lifetime(Duration::from_secs(300));

    let fresh = broker.token("default").await;
    assert!(
        !expired.contains(&fresh),
        "an expired access token must never be served"
    );
    assert_eq!(fake.counters().refresh_ok, 1);

    let again = broker.token("default").await;
    assert_eq!(again, fresh, "a valid token is served from memory");
    assert_eq!(
        fake.counters().refresh_ok,
        1,
        "no second refresh while the token is valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_refresh_token_ends_the_session_without_a_loop() {
    let fake = fake(Duration::from_secs(300)).await;
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    broker.restart();
    fake.revoke_all_refresh_tokens();

    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, 3, "needs login: {}", out.stderr);
    assert!(out.stderr.contains("needs a new login"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("therappai-brokerctl login --account default"),
        "{}",
        out.stderr
    );
    assert!(
        !broker.store_has_entry("default"),
        "the dead refresh token is deleted"
    );

    let rejected = fake.counters().refresh_rejected;
    assert_eq!(rejected, 1);
    for _ in 0..5 {
        let out = broker.ctl(&["token", "--account", "default"]).await;
        assert_eq!(out.code, 3, "{}", out.stderr);
    }
    assert_eq!(
        fake.counters().refresh_rejected,
        rejected,
        "no further upstream call after a rejection"
    );
    assert_eq!(fake.counters().refresh_ok, 0);

    let status = broker.ctl(&["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(json["accounts"][0]["state"], "needs-login");

    // A new login recovers.
    broker.login("default", PASSWORD).await;
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_replaces_the_stored_one() {
    let fake = fake(Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // This refresh rotates: the login's refresh token is blacklisted by the fake.
    broker.token("default").await;
    // After a restart only the stored (rotated) token can work.
    broker.restart();
    broker.token("default").await;
    assert_eq!(fake.counters().refresh_ok, 2);
    assert_eq!(
        fake.counters().refresh_rejected,
        0,
        "the retired token was never used again"
    );
}
