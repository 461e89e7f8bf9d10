//! A store that stops answering (gnome-keyring SIGSTOPped in the test's private D-Bus
//! session): a login that must write to it answers UNAVAILABLE naming the store and the
//! timeout within `[store] call_timeout_seconds` (+ a margin), a second one waits behind the
//! hung call and answers in time too, status and the other account's cached token keep
//! working, and the broker stays up. Once the keyring thaws, the hung write lands and is
//! undone (the login was reported failed, so the account must not come back logged in), and
//! the same login then succeeds.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, wait_until};
use therappai_broker_proto::v1 as pb;

const ALICE: &str = "alice@example.com";
const ALICE_PASSWORD: &str = "alices-long-password";
const BOB: &str = "bob@example.com";
const BOB_PASSWORD: &str = "bobs-long-password";
/// `[store] call_timeout_seconds` in this test.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for the upstream login, process start-up and a loaded machine: a bound on "it
/// answered", not a measurement.
const MARGIN: Duration = Duration::from_secs(8);

/// Logs `second` in over gRPC, which must fail within the bound; returns the status.
async fn login_fails_in_time(
    raw: &mut pb::broker_client::BrokerClient<tonic::transport::Channel>,
) -> tonic::Status {
    let login = raw.login(pb::LoginRequest {
        account: "second".to_owned(),
        password: BOB_PASSWORD.to_owned(),
    });
    tokio::time::timeout(CALL_TIMEOUT + MARGIN, login)
        .await
        .expect("the login answered within the store call timeout (+ margin)")
        .expect_err("the store is frozen: the login cannot succeed")
}

#[track_caller]
fn assert_names_the_store_and_the_timeout(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let message = status.message();
    for needle in [
        "login for account \"second\" did not complete",
        "the secret-service store did not answer within 2 s",
        "systemctl --user status gnome-keyring-daemon",
        "call_timeout_seconds",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
    assert!(!message.contains(BOB_PASSWORD), "{message}");
}

async fn status_json(broker: &Broker) -> serde_json::Value {
    let out = tokio::time::timeout(MARGIN, broker.ctl(&["status", "--json"]))
        .await
        .expect("status answers while the store hangs");
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status JSON")
}

fn account<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["name"] == name)
        .expect("the account is in status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_keyring_answers_unavailable_in_time_and_a_timed_out_login_is_undone() {
    let fake = FakeTherappai::start(
        FakeConfig::default()
            .with_user(ALICE, ALICE_PASSWORD)
            .with_user(BOB, BOB_PASSWORD),
    )
    .await
    .expect("start fake therappai");
    let mut options =
        BrokerOptions::new(StoreKind::SecretService, ALICE).with_account("second", BOB);
    options.store_config = format!("call_timeout_seconds = {}", CALL_TIMEOUT.as_secs());
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", ALICE_PASSWORD).await;
    let cached = broker.token("default").await;

    broker
        .secret_service
        .as_ref()
        .expect("secret service")
        .freeze_keyring();
    let mut raw = broker.raw_client().await;
    let first = login_fails_in_time(&mut raw).await;
    assert_names_the_store_and_the_timeout(&first);
    // The first write still hangs: this one waits behind it (never a second thread) and is
    // answered within its own timeout as well.
    let second = login_fails_in_time(&mut raw).await;
    assert_names_the_store_and_the_timeout(&second);

    let status = status_json(&broker).await;
    assert_eq!(
        account(&status, "second")["state"],
        "logged-out",
        "{status}"
    );
    assert_eq!(account(&status, "default")["state"], "active", "{status}");
    assert_eq!(
        broker.token("default").await,
        cached,
        "the other account's cached token is served while the store hangs"
    );
    assert!(broker.is_running(), "{}", broker.logs());

    broker
        .secret_service
        .as_ref()
        .expect("secret service")
        .thaw_keyring();
    // The hung write lands once the keyring answers, and both failed logins are undone.
    wait_until(
        "the timed-out logins' store writes to be undone",
        Duration::from_secs(30),
        || broker.log_lines_with(&["undid the timed-out login's store write"]) == 2,
    );
    assert!(
        !broker.store_has_entry("second"),
        "a login reported as failed left its token in the store:\n{}",
        broker.logs()
    );
    assert_eq!(
        fake.counters().blacklist_ok,
        2,
        "therappai was told to end both failed logins' sessions"
    );
    let status = status_json(&broker).await;
    assert_eq!(
        account(&status, "second")["state"],
        "logged-out",
        "{status}"
    );
    assert_eq!(
        account(&status, "second")["refresh_token_stored"],
        false,
        "{status}"
    );

    // The same login now succeeds, and is stored.
    broker.login("second", BOB_PASSWORD).await;
    assert!(broker.store_has_entry("second"));
    broker.token("second").await;
    assert!(broker.is_running());
}
