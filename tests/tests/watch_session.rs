//! WatchSession: an app sees every state change of its account, in order, with reasons, and
//! the stream ends cleanly when the broker stops.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::time::Duration;
use therappai_broker_client::{SessionChange, SessionState, SessionWatch};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user};

const EMAIL: &str = "grace@example.com";
const PASSWORD: &str = "graces-long-password";

async fn next(watch: &mut SessionWatch) -> SessionChange {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream is open")
        .expect("a valid event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_session_sees_every_transition() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    let mut client = broker.client().await;
    let mut watch = client.watch_session("default").await.expect("watch");
    let first = next(&mut watch).await;
    assert!(first.snapshot);
    assert_eq!(first.state, SessionState::LoggedOut);

    broker.login("default", PASSWORD).await;
    let event = next(&mut watch).await;
    assert_eq!(
        (event.state, event.reason.as_str()),
        (SessionState::Active, "logged in")
    );
    assert!(!event.snapshot);

    // The login's access token is expired: the token request refreshes.
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let token = client.access_token("default").await.expect("token");
    assert_eq!(next(&mut watch).await.state, SessionState::Refreshing);
    assert_eq!(next(&mut watch).await.state, SessionState::Active);

    // therappai kills the session; the next refresh finds out.
    fake.revoke_all_refresh_tokens();
    client
        .report_rejected("default", token.fingerprint())
        .await
        .expect_err("the session is dead");
    assert_eq!(next(&mut watch).await.state, SessionState::Refreshing);
    let dead = next(&mut watch).await;
    assert_eq!(dead.state, SessionState::NeedsLogin);
    assert!(dead.state.needs_login());
    assert!(
        dead.reason.contains("rejected the refresh token"),
        "{}",
        dead.reason
    );

    broker.login("default", PASSWORD).await;
    assert_eq!(next(&mut watch).await.state, SessionState::Active);

    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let gone = next(&mut watch).await;
    assert_eq!(gone.state, SessionState::LoggedOut);
    assert!(gone.reason.contains("logged out"), "{}", gone.reason);

    // Stopping the broker ends the stream instead of holding the shutdown up.
    let status = broker.stop();
    assert!(status.success(), "{status}");
    let end = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the stream ends when the broker stops");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no event after shutdown: {end:?}"
    );
    assert_eq!(
        broker.log_lines_with(&["did not finish within the grace period"]),
        0,
        "the open stream did not delay the shutdown"
    );
}
