//! A rotated refresh token that the store cannot take: the broker keeps serving with the new
//! token from memory, says so in status and log, retries the write, and once the store is
//! back the new token is what a restarted broker finds.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::FakeTherappai;
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};

const EMAIL: &str = "heidi@example.com";
const PASSWORD: &str = "heidis-long-password";

/// A logged-in broker on gnome-keyring, a fake therappai that rotates refresh tokens (the
/// next refresh needs one), and gnome-keyring stopped: the rotated token cannot be stored.
async fn rotating_session_with_the_keyring_down() -> (FakeTherappai, Broker) {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    broker
        .secret_service
        .as_mut()
        .expect("secret service")
        .stop_keyring();
    (fake, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_after_rotation_is_kept_in_memory_and_retried() {
    let (fake, mut broker) = rotating_session_with_the_keyring_down().await;
    // therappai rotates (the stored token is now blacklisted); the store refuses the new one.
    let token = broker.token("default").await;
    assert!(
        fake.issued_tokens().contains(&token),
        "the caller is served"
    );
    assert_eq!(
        broker.log_lines_with(&["could not store the rotated refresh token"]),
        1,
        "{}",
        broker.logs()
    );
    let status = broker.ctl(&["status"]).await;
    assert!(
        status.stdout.contains("only in memory"),
        "status shows the problem:\n{}",
        status.stdout
    );
    let json = broker.ctl(&["status", "--json"]).await;
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("status JSON");
    assert_ne!(
        parsed["accounts"][0]["store_problem"], "",
        "{}",
        json.stdout
    );

    // The store comes back; the background task writes the token within its retry interval.
    broker
        .secret_service
        .as_mut()
        .expect("secret service")
        .restart_keyring();
    let socket = broker.socket_path().to_owned();
    let ctl = therappai_broker_e2e::workspace_bin("therappai-brokerctl");
    wait_until(
        "the broker to write the rotated token",
        Duration::from_secs(25),
        || {
            if std::env::var_os("DEBUG_STORE").is_some() {
                eprintln!(
                    "{}",
                    std::fs::read_to_string(broker.path("broker.log"))
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            let out = std::process::Command::new(&ctl)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .output()
                .expect("status");
            !String::from_utf8_lossy(&out.stdout).contains("only in memory")
        },
    );
    assert_eq!(
        broker.log_lines_with(&["the rotated refresh token is now in the store"]),
        1
    );

    // Proof it is the new token in the store: after a restart the broker refreshes with it,
    // and therappai (which blacklisted the old one) accepts it.
    broker.restart();
    broker.token("default").await;
    assert_eq!(fake.counters().refresh_rejected, 0, "{}", broker.logs());
    assert_eq!(fake.counters().refresh_ok, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_only_in_memory_is_written_at_shutdown() {
    let (fake, mut broker) = rotating_session_with_the_keyring_down().await;
    broker.token("default").await;
    assert_eq!(
        broker.log_lines_with(&["could not store the rotated refresh token"]),
        1
    );
    // The store is back, and the broker stops before its periodic retry (every 10 s).
    broker
        .secret_service
        .as_mut()
        .expect("secret service")
        .restart_keyring();
    broker.restart();
    broker.token("default").await;
    assert_eq!(
        fake.counters().refresh_rejected,
        0,
        "the rotated token was written on the way out:\n{}",
        broker.logs()
    );
}
