//! Login → token → broker restart → token again without a new login, on both real stores.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind};

const EMAIL: &str = "alice@example.com";
const PASSWORD: &str = "correct horse battery staple";

async fn fake() -> FakeTherappai {
    FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}

async fn login_survives_restart(store: StoreKind) {
    let fake = fake().await;
    let mut broker = Broker::start(
        BrokerOptions::new(store, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );

    broker.login("default", PASSWORD).await;
    assert!(
        broker.store_has_entry("default"),
        "login must put the refresh token in the store"
    );
    let first = broker.token("default").await;
    assert!(
        fake.issued_tokens().contains(&first),
        "the token printed must be one the upstream issued"
    );
    // The access token from login is served from memory: no refresh needed yet.
    assert_eq!(fake.counters().refresh_ok, 0);

    broker.restart();

    // Memory is gone, the store is not: the broker refreshes with the stored token.
    let second = broker.token("default").await;
    assert_ne!(
        first, second,
        "after a restart the access token comes from a refresh"
    );
    assert!(fake.issued_tokens().contains(&second));
    assert_eq!(fake.counters().refresh_ok, 1);
    assert_eq!(fake.counters().login_ok, 1, "no second login was needed");

    let status = broker.ctl(&["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&status.stdout).expect("status --json is JSON");
    let account = &json["accounts"][0];
    assert_eq!(account["state"], "active");
    assert_eq!(account["refresh_token_stored"], true);
    assert_eq!(account["last_refresh_outcome"], "ok");
    assert_eq!(json["store_backend"], store.backend());

    // Leave nothing behind in the (shared) kernel keyring.
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_service_login_survives_restart() {
    login_survives_restart(StoreKind::SecretService).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyutils_login_survives_restart() {
    login_survives_restart(StoreKind::Keyutils).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_file_login_survives_restart() {
    login_survives_restart(StoreKind::EncryptedFile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lib_gets_the_same_cached_token_as_the_cli() {
    let fake = fake().await;
    let broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    let from_cli = broker.token("default").await;
    let mut client = broker.client().await;
    let token = client
        .access_token("default")
        .await
        .expect("client-lib token");
    assert_eq!(token.expose_secret(), from_cli);
    assert!(
        !format!("{token:?} {token}").contains(&from_cli),
        "client-lib's AccessToken must print masked"
    );
    assert!(token.expires_at() > std::time::SystemTime::now());
}
