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

    // The first blacklist call fails upstream: "default"'s or "bob"'s (they are ended side
    // by side, and the entry of "retired" after them).
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
    let (failed, revoked): (Vec<String>, Vec<String>) = [line("default"), line("bob")]
        .into_iter()
        .partition(|l| l.contains("warning"));
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(failed[0].contains("store entry deleted"), "{}", out.stdout);
    assert!(revoked[0].contains("therappai: revoked"), "{}", out.stdout);
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

/// With therappai slow to answer each blacklist call, `logout --all` ends the accounts side by
/// side (bounded), not one after another: the fake sees several calls in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_logout_ends_accounts_side_by_side() {
    let fake = fake().await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, ALICE)
        .with_account("bob", BOB)
        .with_account("carol", ALICE)
        .with_account("dave", BOB);
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    let accounts = [
        ("default", ALICE_PASSWORD),
        ("bob", BOB_PASSWORD),
        ("carol", ALICE_PASSWORD),
        ("dave", BOB_PASSWORD),
    ];
    for (account, password) in accounts {
        broker.login(account, password).await;
    }
    // Well under request_timeout_seconds (5): every call succeeds, each takes a while.
    fake.knobs()
        .set_blacklist_delay(std::time::Duration::from_secs(2));

    let out = broker.ctl(&["logout", "--all"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for (account, _) in accounts {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&format!("\"{account}\"")))
            .unwrap_or_else(|| panic!("no line for {account} in:\n{}", out.stdout));
        assert!(line.contains("therappai: revoked"), "{}", out.stdout);
        assert!(line.contains("store entry deleted"), "{}", out.stdout);
        assert!(
            !broker.store_has_entry(account),
            "{account} is still stored"
        );
    }
    let counters = fake.counters();
    assert_eq!(counters.blacklist_ok, 4, "each account's token was revoked");
    assert!(
        counters.blacklist_max_in_flight >= 2,
        "the accounts were ended one after another (at most {} blacklist call in flight)",
        counters.blacklist_max_in_flight
    );
}
