//! Generations: a refresh token rejected because a newer one was rotated into the store
//! meanwhile (here by a second broker sharing the store) is retried once with the newer one
//! instead of ending the session.

use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, unique_name};

const EMAIL: &str = "ivan@example.com";
const PASSWORD: &str = "ivans-long-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_older_than_the_stored_one_is_retried_once_with_the_newer() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.store_service = Some(unique_name("therappai-broker-shared"));
    let first = Broker::start(options.clone(), &fake.base_url(), &fake.ca_pem());
    first.login("default", PASSWORD).await;
    // The second broker restores the same (first-generation) refresh token from the store.
    let second = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    fake.knobs().set_access_lifetime(Duration::from_secs(300));

    // The first broker rotates: generation 1 is blacklisted, generation 2 is stored.
    first.token("default").await;
    // The second still holds generation 1: rejected, then retried with the stored newer one.
    let token = second.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    let counters = fake.counters();
    assert_eq!(counters.refresh_rejected, 1, "one rejection");
    assert_eq!(counters.refresh_ok, 2, "then success with the newer token");
    assert_eq!(
        second.log_lines_with(&["retrying once with the newer stored one"]),
        1,
        "{}",
        second.logs()
    );
    let status = second.ctl(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["accounts"][0]["state"], "active", "{status}");

    // The first broker's memory is now the stale one; a report of its token makes it refresh,
    // be rejected, pick up the third generation from the store, and carry on.
    let mut client = first.client().await;
    let current = client.access_token("default").await.expect("cached token");
    client
        .report_rejected("default", current.fingerprint())
        .await
        .expect("recovered with the stored generation");
    assert_eq!(fake.counters().refresh_rejected, 2);
    assert_eq!(fake.counters().refresh_ok, 3);
}
