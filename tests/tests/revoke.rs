//! `revoke`: the upstream revocation is required (a failure exits non-zero and says what to
//! do), the local wipe always happens (checked in the store itself), it is an audit event, and
//! a token request in flight during a revoke never gets the old session's token.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{Endpoint, FakeTherappai};
use std::time::Duration;
use therappai_broker_e2e::memory_image;
use therappai_broker_e2e::{
    Broker, BrokerOptions, CtlOutput, StoreKind, fake_with_user, wait_until,
};

const EMAIL: &str = "frank@example.com";
const PASSWORD: &str = "franks-long-password";

async fn fake(access_lifetime: Duration) -> FakeTherappai {
    fake_with_user(EMAIL, PASSWORD, access_lifetime).await
}

fn options(store: StoreKind, revoke_path: Option<&str>) -> BrokerOptions {
    let mut options = BrokerOptions::new(store, EMAIL);
    options.revoke_path = revoke_path.map(str::to_owned);
    options
}

/// Every refresh token the fake issued, to check what it blacklisted.
fn refresh_tokens(fake: &FakeTherappai) -> Vec<String> {
    // Logins mint the refresh token first, then the access token.
    fake.issued_tokens().into_iter().step_by(2).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_blacklists_upstream_wipes_locally_and_is_audited() {
    let fake = fake(Duration::from_secs(300)).await;
    let broker = Broker::start(
        options(StoreKind::Keyutils, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    let old_access = broker.token("default").await;
    assert!(broker.store_has_entry("default"));

    let out = broker.ctl(&["revoke", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("therappai: revoked"), "{}", out.stdout);
    assert_eq!(
        fake.counters().blacklist_ok,
        1,
        "the upstream blacklisted it"
    );
    let refresh = refresh_tokens(&fake);
    assert!(
        refresh.iter().all(|t| fake.is_refresh_blacklisted(t)),
        "the session's refresh token is dead upstream"
    );
    assert!(
        !broker.store_has_entry("default"),
        "the store entry is gone"
    );
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(
        token.code, 3,
        "re-authentication is forced: {}",
        token.stderr
    );
    assert!(!token.stdout.contains(&old_access));
    let logs = broker.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("audit") && l.contains("Revoke") && l.contains("outcome=\"ok\"")),
        "the revoke is an audit event:\n{logs}"
    );
}

async fn revoke_fails_loudly_but_wipes(fake: &FakeTherappai, broker: &Broker, reason: &str) {
    broker.login("default", PASSWORD).await;
    assert!(broker.store_has_entry("default"));
    let out = broker.ctl(&["revoke", "--account", "default"]).await;
    assert_eq!(
        out.code, 11,
        "an unconfirmed revocation exits 11: {}{}",
        out.stdout, out.stderr
    );
    for needle in [
        reason,
        "NOT told",
        "ask therappai to revoke every session",
        EMAIL,
    ] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?} in: {}",
            out.stderr
        );
    }
    assert!(
        !broker.store_has_entry("default"),
        "the local wipe happens anyway"
    );
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "{}", token.stderr);
    assert_eq!(fake.counters().blacklist_ok, 0);
    assert!(
        broker
            .logs()
            .lines()
            .any(|l| l.contains("audit") && l.contains("revocation incomplete")),
        "an incomplete revocation is an audit event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_with_upstream_down_exits_non_zero_but_wipes() {
    let fake = fake(Duration::from_secs(300)).await;
    let broker = Broker::start(
        options(StoreKind::SecretService, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_down(true);
    let out = broker.ctl(&["revoke", "--account", "default"]).await;
    fake.knobs().set_down(false);
    assert_eq!(out.code, 11, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("HTTP 503"), "{}", out.stderr);
    assert!(!broker.store_has_entry("default"));
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "{}", token.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_without_revoke_path_or_with_404_is_an_error() {
    let fake = fake(Duration::from_secs(300)).await;
    let broker = Broker::start(
        options(StoreKind::Keyutils, None),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    revoke_fails_loudly_but_wipes(&fake, &broker, "no [upstream] revoke_path is configured").await;

    let broker = Broker::start(
        options(StoreKind::Keyutils, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    fake.knobs().set_revoke_path_enabled(false);
    revoke_fails_loudly_but_wipes(&fake, &broker, "HTTP 404").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_racing_a_revoke_never_gets_the_old_sessions_token() {
    // Every access token is born expired, so each token request refreshes.
    let fake = fake(Duration::ZERO).await;
    let broker = Broker::start(
        options(StoreKind::SecretService, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs().set_refresh_delay(Duration::from_secs(2));

    let in_flight = token_request_held_upstream(&fake, &broker);
    let revoke = broker.ctl(&["revoke", "--account", "default"]).await;
    assert_eq!(revoke.code, 0, "{}{}", revoke.stdout, revoke.stderr);

    let result = in_flight.await.expect("token task");
    assert_eq!(
        fake.counters().refresh_ok,
        1,
        "the refresh did complete upstream"
    );
    let minted = fake
        .issued_tokens()
        .last()
        .cloned()
        .expect("a token was minted");
    match result {
        Ok(token) => panic!(
            "the in-flight caller got a token from the revoked session (minted by the refresh: {})",
            token.expose_secret() == minted
        ),
        Err(therappai_broker_client::Error::NotLoggedIn { message, .. }) => {
            assert!(message.contains("revoked"), "{message}");
        }
        Err(other) => panic!("expected a not-logged-in error, got {other}"),
    }
    // Nothing was cached or stored.
    assert!(!broker.store_has_entry("default"));
    let status = broker.ctl(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let account = &status["accounts"][0];
    assert_eq!(account["state"], "logged-out", "{account}");
    assert!(account["access_expires_at_unix"].is_null(), "{account}");
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "{}", token.stderr);
    assert!(!token.stdout.contains(&minted));
}

/// A client-lib token request whose refresh has reached therappai (which holds it for the
/// refresh delay the caller set), still waiting for its answer.
fn token_request_held_upstream(
    fake: &FakeTherappai,
    broker: &Broker,
) -> tokio::task::JoinHandle<
    Result<therappai_broker_client::AccessToken, therappai_broker_client::Error>,
> {
    let socket = broker.socket_path().to_owned();
    let in_flight = tokio::spawn(async move {
        let mut client = therappai_broker_client::Client::connect(&socket)
            .await
            .expect("connect");
        client.access_token("default").await
    });
    wait_until(
        "the token request's refresh to reach the upstream",
        Duration::from_secs(10),
        || fake.counters().refresh_calls == 1,
    );
    in_flight
}

/// Starts a refresh that therappai holds for 3 s and rotates, and a revoke while it is held;
/// returns the revoke's output and the refresh token the rotation issued (the live one).
async fn revoke_during_a_rotation(fake: &FakeTherappai, broker: &Broker) -> (CtlOutput, String) {
    broker.login("default", PASSWORD).await;
    fake.knobs().set_rotation(true);
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs().set_refresh_delay(Duration::from_secs(3));
    let in_flight = token_request_held_upstream(fake, broker);
    let revoke = broker.ctl(&["revoke", "--account", "default"]).await;
    assert!(
        in_flight.await.expect("token task").is_err(),
        "the in-flight caller gets no token of the revoked session"
    );
    assert_eq!(
        fake.counters().refresh_ok,
        1,
        "the rotation happened upstream"
    );
    let rotated = fake
        .issued_tokens()
        .into_iter()
        .rfind(|t| memory_image::is_refresh_token(t))
        .expect("the rotation issued a refresh token");
    (revoke, rotated)
}

/// A revoke racing a rotation revokes the rotated refresh token (therappai blacklisted the
/// one the revoke took from memory when it rotated) and reports on it: one blacklist call,
/// the live token dead upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_a_rotation_revokes_the_rotated_token() {
    let fake = fake(Duration::ZERO).await;
    let broker = Broker::start(
        options(StoreKind::Keyutils, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    let (revoke, rotated) = revoke_during_a_rotation(&fake, &broker).await;
    assert_eq!(revoke.code, 0, "{}{}", revoke.stdout, revoke.stderr);
    assert!(
        fake.is_refresh_blacklisted(&rotated),
        "the live token is dead"
    );
    assert_eq!(
        fake.counters().blacklist_calls,
        1,
        "the revoke itself revoked the rotated token"
    );
    assert!(!broker.store_has_entry("default"));
}

/// The same race with therappai failing that revocation: the revoke says it is unconfirmed
/// (exit 11), never "revoked" while the rotated token lives on upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_a_rotation_reports_a_failure_to_revoke_the_rotated_token() {
    let fake = fake(Duration::ZERO).await;
    let broker = Broker::start(
        options(StoreKind::Keyutils, Some("/token/blacklist/")),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    fake.knobs().fail_next(Endpoint::Blacklist, 1, 503);
    let (revoke, rotated) = revoke_during_a_rotation(&fake, &broker).await;
    assert!(
        !fake.is_refresh_blacklisted(&rotated),
        "the fault hit the rotated token's revocation"
    );
    assert_eq!(
        revoke.code, 11,
        "not reported as revoked while the live token lives: {}{}",
        revoke.stdout, revoke.stderr
    );
    assert!(
        !broker.store_has_entry("default"),
        "the local wipe happened"
    );
}
