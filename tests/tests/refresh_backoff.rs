//! The pause after failed refresh cycles, against the real daemon, a real store and the fake
//! therappai: a short upstream blip costs callers about a second, not the whole
//! `failure_backoff_seconds`, every UNAVAILABLE meanwhile says when the broker tries again,
//! and a success resets the pause.

use fake_therappai::{Endpoint, FakeTherappai};
use std::time::{Duration, Instant};
use therappai_broker_client::Client;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};

const EMAIL: &str = "fay@example.com";
const PASSWORD: &str = "fays-long-password";
/// What a caller may wait for a token once therappai is healthy again: the first pause
/// (at most a second) plus the refresh itself, with room for a slow machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

/// A broker with the default pause cap (30 s, the figure a blip used to cost) and fast
/// in-cycle retries, logged in with an access token that is already expired; therappai
/// issues 5 s access tokens from then on.
async fn broker_with_expired_token() -> (FakeTherappai, Broker) {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.refresh_section =
        "[refresh]\nmax_attempts = 3\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\nfailure_backoff_seconds = 30\n"
            .to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(5));
    (fake, broker)
}

/// Asks for a token every 50 ms until one other than `old` comes back, and returns it with
/// when it came; every failure on the way must be an UNAVAILABLE that says when the broker
/// tries again. Panics after `deadline`.
async fn new_token_by(client: &mut Client, old: &str, deadline: Instant) -> (String, Instant) {
    loop {
        match client.access_token("default").await {
            Ok(token) if token.expose_secret() != old => {
                return (token.expose_secret().to_owned(), Instant::now());
            }
            Ok(_) => {}
            Err(err) => {
                let message = err.to_string();
                assert!(message.contains("tries again from"), "{message}");
                assert!(!message.contains("try again shortly"), "{message}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new token by the deadline: the failure pause is too long"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_503s_cost_callers_about_a_second_not_the_failure_backoff_cap() {
    let (fake, mut broker) = broker_with_expired_token().await;
    fake.knobs().fail_next(Endpoint::Refresh, 3, 503);
    let mut client = broker.client().await;

    // The first caller's cycle meets all three 503s and tells it when the next one starts.
    let err = client
        .access_token("default")
        .await
        .expect_err("every attempt of the cycle failed");
    let faults_used_up = Instant::now();
    let message = err.to_string();
    assert!(message.contains("503"), "{message}");
    assert!(message.contains("tries again from"), "{message}");
    assert!(
        message.contains("(in 1 s)"),
        "the first pause is a second at most: {message}"
    );
    assert!(!message.contains("try again shortly"), "{message}");
    assert_eq!(
        fake.counters().refresh_calls,
        3,
        "one cycle of max_attempts"
    );

    // therappai is healthy again: callers have a token within seconds, not 30 s.
    let (token, served_at) = new_token_by(&mut client, "", faults_used_up + RECOVERY_BOUND).await;
    let outage = served_at - faults_used_up;
    eprintln!("served again {} ms after the last 503", outage.as_millis());
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(
        fake.counters().refresh_calls,
        4,
        "callers polling during the pause caused no upstream call; the next cycle did one"
    );
    assert!(broker.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_resets_the_pause_so_the_next_blip_is_short_too() {
    let (fake, broker) = broker_with_expired_token().await;
    let mut client = broker.client().await;

    // A longer blip: two cycles fail in a row, the second pause is up to 2 s.
    fake.knobs().fail_next(Endpoint::Refresh, 6, 503);
    let (first, _) = new_token_by(&mut client, "", Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(fake.counters().refresh_calls, 7);
    assert_eq!(
        broker.log_lines_with(&["refresh cycle failed", "failed_cycles=2"]),
        1,
        "{}",
        broker.logs()
    );

    // A second blip hits the refresh of that 5 s token (by a caller near its expiry or by
    // the background refresher).
    fake.knobs().fail_next(Endpoint::Refresh, 3, 503);
    wait_until(
        "the second blip to be used up",
        Duration::from_secs(20),
        || fake.counters().refresh_calls >= 10,
    );
    let faults_used_up = Instant::now();
    let (second, served_at) =
        new_token_by(&mut client, &first, faults_used_up + RECOVERY_BOUND).await;
    eprintln!(
        "second blip: served again {} ms after the last 503",
        (served_at - faults_used_up).as_millis()
    );
    assert!(fake.issued_tokens().contains(&second));
    // After the success in between, the second blip's failure counts as the first again.
    assert_eq!(
        broker.log_lines_with(&["refresh cycle failed", "failed_cycles=1"]),
        2,
        "{}",
        broker.logs()
    );
    assert_eq!(
        broker.log_lines_with(&["refresh cycle failed", "failed_cycles=3"]),
        0,
        "{}",
        broker.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pause_callers_queued_behind_a_failed_cycle_get_its_failure_not_a_cycle_each() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.refresh_section =
        "[refresh]\nmax_attempts = 3\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\nfailure_backoff_seconds = 0\n"
            .to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // A slow therappai keeps the failing cycle open (three attempts of 300 ms and more)
    // while the other callers queue behind it.
    fake.knobs().set_refresh_delay(Duration::from_millis(300));
    fake.knobs().fail_next(Endpoint::Refresh, 3, 503);

    let client = broker.client().await;
    let mut callers = tokio::task::JoinSet::new();
    let mut first = client.clone();
    callers.spawn(async move { first.access_token("default").await.map(|_| ()) });
    wait_until(
        "the first caller's cycle to reach therappai",
        Duration::from_secs(20),
        || fake.counters().refresh_calls == 1,
    );
    for _ in 0..20 {
        let mut client = client.clone();
        callers.spawn(async move { client.access_token("default").await.map(|_| ()) });
    }
    while let Some(result) = callers.join_next().await {
        let message = result
            .expect("task")
            .expect_err("every caller waited for the failing cycle")
            .to_string();
        assert!(message.contains("503"), "{message}");
        assert!(message.contains("tries again from"), "{message}");
    }
    assert_eq!(
        fake.counters().refresh_calls,
        3,
        "one cycle for all 21 callers, not one per queued caller"
    );

    // No pause is configured: the next caller starts a new cycle at once.
    fake.knobs().set_refresh_delay(Duration::ZERO);
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().refresh_calls, 4);
}
