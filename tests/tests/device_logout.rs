//! `logout --all` cleans the whole device: every configured account, and the store entries of
//! accounts no longer in the config, even when one account's upstream call fails. Checked in
//! the store itself and by a freshly started broker, on both real stores.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{Endpoint, FakeConfig, FakeTherappai};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind};

const ALICE: &str = "alice@example.com";
const ALICE_PASSWORD: &str = "alices-long-password";
const BOB: &str = "bob@example.com";
const BOB_PASSWORD: &str = "bobs-long-password";

async fn fake() -> FakeTherappai {
    FakeTherappai::start(
        FakeConfig::default()
            .with_user(ALICE, ALICE_PASSWORD)
            .with_user(BOB, BOB_PASSWORD),
    )
    .await
    .expect("start fake therappai")
}

async fn device_logout_wipes_everything(store: StoreKind) {
    let fake = fake().await;
    let mut options = BrokerOptions::new(store, ALICE)
        .with_account("bob", BOB)
        .with_account("retired", ALICE);
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", ALICE_PASSWORD).await;
    broker.login("bob", BOB_PASSWORD).await;
    broker.login("retired", ALICE_PASSWORD).await;
    // "retired" leaves the config; its entry stays in the store.
    broker.restart_with_accounts(&[("default", ALICE), ("bob", BOB)]);
    for account in ["default", "bob", "retired"] {
        assert!(broker.store_has_entry(account), "{account} is stored");
    }

    // The first blacklist call (account "default") fails upstream.
    fake.knobs().fail_next(Endpoint::Blacklist, 1, 500);
    let out = broker.ctl(&["logout", "--all"]).await;
    assert_eq!(
        out.code, 0,
        "a failed upstream call does not fail a logout: {}{}",
        out.stdout, out.stderr
    );
    let line = |account: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("\"{account}\"")))
            .unwrap_or_else(|| panic!("no line for {account} in:\n{}", out.stdout))
            .to_owned()
    };
    assert!(line("default").contains("warning"), "{}", out.stdout);
    assert!(
        line("default").contains("store entry deleted"),
        "{}",
        out.stdout
    );
    assert!(line("bob").contains("therappai: revoked"), "{}", out.stdout);
    assert!(
        line("retired").contains("no longer in the config"),
        "{}",
        out.stdout
    );
    assert!(
        line("retired").contains("therappai: revoked"),
        "{}",
        out.stdout
    );
    assert_eq!(fake.counters().blacklist_calls, 3, "each token was sent");
    assert_eq!(fake.counters().blacklist_ok, 2, "one call failed upstream");

    for account in ["default", "bob", "retired"] {
        assert!(
            !broker.store_has_entry(account),
            "{account}'s entry must be gone from the store"
        );
    }
    for account in ["default", "bob"] {
        let token = broker.ctl(&["token", "--account", account]).await;
        assert_eq!(token.code, 3, "no token after logout: {}", token.stderr);
    }

    // A freshly started broker, with every account configured again, finds nothing.
    broker.restart_with_accounts(&[("default", ALICE), ("bob", BOB), ("retired", ALICE)]);
    let status = broker.ctl(&["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    for account in status["accounts"].as_array().expect("accounts") {
        assert_eq!(account["state"], "logged-out", "{account}");
        assert_eq!(account["refresh_token_stored"], false, "{account}");
    }
    let again = broker.ctl(&["logout", "--all"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.matches("was already logged out").count(),
        3,
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_service_device_logout_leaves_nothing() {
    device_logout_wipes_everything(StoreKind::SecretService).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyutils_device_logout_leaves_nothing() {
    device_logout_wipes_everything(StoreKind::Keyutils).await;
}
