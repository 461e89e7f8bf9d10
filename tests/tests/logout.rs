//! Logout removes the refresh token from the store (checked in the store itself), tells the
//! upstream when a revocation path is configured, and wipes memory.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind};

const EMAIL: &str = "carol@example.com";
const PASSWORD: &str = "carols-long-password";

async fn fake() -> FakeTherappai {
    FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}

async fn logout_leaves_nothing(store: StoreKind) {
    let fake = fake().await;
    let mut options = BrokerOptions::new(store, EMAIL);
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    assert!(broker.store_has_entry("default"));

    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("refresh token in secure store: deleted"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("revoked"), "{}", out.stdout);
    assert!(
        !broker.store_has_entry("default"),
        "logout must delete the store entry"
    );
    assert_eq!(
        fake.counters().blacklist_calls,
        1,
        "the upstream must be told"
    );

    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "no token after logout: {}", token.stderr);

    // Idempotent, and a restarted broker finds nothing either.
    let again = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("already logged out"),
        "{}",
        again.stdout
    );
    broker.restart();
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "{}", token.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_service_logout_leaves_no_entry() {
    logout_leaves_nothing(StoreKind::SecretService).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyutils_logout_leaves_no_entry() {
    logout_leaves_nothing(StoreKind::Keyutils).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_revoke_path_completes_and_warns() {
    let fake = fake().await;
    let broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("warning"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("no [upstream] revoke_path is configured"),
        "{}",
        out.stdout
    );
    assert!(!broker.store_has_entry("default"));
    assert_eq!(fake.counters().blacklist_calls, 0);
}
