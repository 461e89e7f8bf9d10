//! Central refresh against the real daemon, a real store and the fake therappai with fault
//! injection: one refresh however many callers ask, bounded retries, a back-off after a
//! failed cycle, no loop on a dead refresh token, crash-safe rotation, and ReportRejected.

use fake_therappai::{Endpoint, FakeTherappai};
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};

const EMAIL: &str = "erin@example.com";
const PASSWORD: &str = "erins-long-password";
/// Exit code of `therappai-brokerctl` for "therappai unreachable or refused".
const EXIT_UPSTREAM: i32 = 6;
/// Exit code for "not logged in, or the session ended".
const EXIT_NEEDS_LOGIN: i32 = 3;

async fn fake() -> FakeTherappai {
    // Login hands out access tokens that are already expired, so the first token request
    // after a login needs a refresh.
    fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await
}

/// A broker logged in to `fake`, whose login token is already expired.
async fn started(fake: &FakeTherappai, options: BrokerOptions) -> Broker {
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    broker
}

/// As [`started`], with therappai issuing 5-minute tokens from now on.
async fn logged_in(fake: &FakeTherappai, options: BrokerOptions) -> Broker {
    let broker = started(fake, options).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_callers_at_expiry_cause_one_refresh_and_share_its_token() {
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::SecretService, EMAIL)).await;
    // A slow refresh keeps the window open while every caller arrives.
    fake.knobs().set_refresh_delay(Duration::from_millis(500));

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        // 50 connections with 10 concurrent calls each.
        let client = broker.client().await;
        for _ in 0..10 {
            let mut client = client.clone();
            calls.spawn(async move {
                client
                    .access_token("default")
                    .await
                    .map(|t| t.expose_secret().to_owned())
            });
        }
    }
    let mut tokens = Vec::new();
    while let Some(result) = calls.join_next().await {
        tokens.push(result.expect("task").expect("every caller gets a token"));
    }
    assert_eq!(tokens.len(), 500);
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every caller gets the same token"
    );
    assert_eq!(fake.counters().refresh_calls, 1, "exactly one /refresh/");
    assert!(fake.issued_tokens().contains(&tokens[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_gives_a_token_after_three_attempts() {
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    fake.knobs().fail_next(Endpoint::Refresh, 2, 503);

    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().refresh_calls, 3);
    assert_eq!(fake.counters().refresh_ok, 1);
    for attempt in ["attempt=1", "attempt=2"] {
        assert_eq!(
            broker.log_lines_with(&["refresh attempt failed; retrying", attempt]),
            1,
            "one retry logged for {attempt}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_429_is_honoured() {
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    fake.knobs()
        .fail_next_with_retry_after(Endpoint::Refresh, 1, 429, Duration::from_secs(1));

    let started = std::time::Instant::now();
    broker.token("default").await;
    assert_eq!(fake.counters().refresh_calls, 2);
    // The test's backoff settings would retry after at most 50 ms; the server asked for 1 s.
    assert_eq!(
        broker.log_lines_with(&["refresh attempt failed; retrying", "delay_ms=1000"]),
        1,
        "{}",
        broker.logs()
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_is_bounded_and_blocks_neither_status_nor_new_callers() {
    let fake = fake().await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.request_timeout_seconds = 1;
    // The pause after a failed cycle starts at `failure_backoff_initial_ms` and is jittered
    // down to half of it: a first step of 30 s keeps the pause checked below at 15 s or
    // more (the default first step, 1 s, could end before the next caller arrives).
    options.refresh_section = "[refresh]\nmax_attempts = 2\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\nfailure_backoff_seconds = 30\nfailure_backoff_initial_ms = 30000\n".to_owned();
    let broker = logged_in(&fake, options).await;
    fake.knobs().set_refresh_delay(Duration::from_secs(3600));

    let waiting = {
        let socket = broker.socket_path().to_owned();
        tokio::spawn(async move {
            let mut client = therappai_broker_client::Client::connect(&socket)
                .await
                .expect("connect");
            client.access_token("default").await
        })
    };
    wait_until(
        "the refresh to reach therappai",
        Duration::from_secs(20),
        || fake.counters().refresh_calls == 1,
    );
    // While the refresh hangs, Status answers.
    let status = broker.ctl(&["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);

    let err = waiting
        .await
        .expect("task")
        .expect_err("a hanging upstream gives no token");
    let message = err.to_string();
    assert!(message.contains("unavailable"), "{message}");
    assert_eq!(
        fake.counters().refresh_calls,
        2,
        "max_attempts bounds the cycle"
    );

    // Back-off after the failed cycle: a new caller does not start another one, and is told
    // when the broker tries again.
    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, EXIT_UPSTREAM, "{}", out.stderr);
    assert!(out.stderr.contains("tries again from"), "{}", out.stderr);
    assert_eq!(
        fake.counters().refresh_calls,
        2,
        "no cycle during the back-off"
    );
    let status = broker.ctl(&["status"]).await;
    assert!(
        status.stdout.contains("the last refresh failed"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_fail_once_with_a_clear_error() {
    let fake = fake().await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    // No back-off, so the second case is not refused before it reaches the upstream.
    options.refresh_section = "[refresh]\nfailure_backoff_seconds = 0\n".to_owned();
    let broker = logged_in(&fake, options).await;

    fake.knobs().set_malformed_refresh(true);
    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, EXIT_UPSTREAM, "{}", out.stderr);
    assert!(out.stderr.contains("unexpected body"), "{}", out.stderr);
    assert_eq!(
        fake.counters().refresh_calls,
        1,
        "not retried: it would not change"
    );

    fake.knobs().set_malformed_refresh(false);
    fake.knobs().set_refresh_missing_access(true);
    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, EXIT_UPSTREAM, "{}", out.stderr);
    assert!(out.stderr.contains("access"), "{}", out.stderr);
    assert_eq!(fake.counters().refresh_calls, 2);

    // The session is intact: once therappai answers properly, tokens flow again.
    fake.knobs().set_refresh_missing_access(false);
    broker.token("default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_therappai_rotated_leaves_a_clean_needs_login_not_a_loop() {
    let fake = fake().await;
    fake.knobs().set_rotation(true);
    let mut broker = logged_in(&fake, BrokerOptions::new(StoreKind::SecretService, EMAIL)).await;
    // therappai rotates (blacklisting the stored token) and then the answer is slow: the
    // broker is killed before it ever sees the new refresh token.
    fake.knobs()
        .set_refresh_reply_delay(Duration::from_secs(3600));
    let pending = {
        let mut client = broker.client().await;
        tokio::spawn(async move { client.access_token("default").await.is_ok() })
    };
    wait_until(
        "therappai to have rotated the refresh token",
        Duration::from_secs(20),
        || fake.counters().refresh_ok == 1,
    );
    broker.kill_and_restart();
    assert!(
        !pending.await.expect("task"),
        "the killed broker served nothing"
    );
    fake.knobs().set_refresh_reply_delay(Duration::ZERO);

    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, EXIT_NEEDS_LOGIN, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("therappai-brokerctl login --account default"),
        "{}",
        out.stderr
    );
    assert!(!broker.store_has_entry("default"), "the dead token is gone");
    let calls = fake.counters().refresh_calls;
    for _ in 0..5 {
        let out = broker.ctl(&["token", "--account", "default"]).await;
        assert_eq!(out.code, EXIT_NEEDS_LOGIN);
    }
    assert_eq!(fake.counters().refresh_calls, calls, "no refresh loop");

    // A new login brings the account back.
    broker.login("default", PASSWORD).await;
    broker.token("default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_rotation_stored_keeps_working() {
    let fake = fake().await;
    fake.knobs().set_rotation(true);
    let mut broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    let before = broker.token("default").await;
    assert_eq!(fake.counters().refresh_ok, 1);
    broker.kill_and_restart();
    let after = broker.token("default").await;
    assert_ne!(before, after, "memory is gone after kill -9: a fresh token");
    assert_eq!(
        fake.counters().refresh_rejected,
        0,
        "the stored token was the live one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reports_of_the_same_token_cause_one_refresh() {
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    let mut client = broker.client().await;
    let rejected = client.access_token("default").await.expect("token");
    assert_eq!(fake.counters().refresh_calls, 1);
    fake.knobs().set_refresh_delay(Duration::from_millis(300));

    let mut reports = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut client = client.clone();
        let fingerprint = rejected.fingerprint().to_owned();
        reports.spawn(async move {
            client
                .report_rejected("default", &fingerprint)
                .await
                .map(|t| t.expose_secret().to_owned())
        });
    }
    let mut replacements = Vec::new();
    while let Some(result) = reports.join_next().await {
        replacements.push(result.expect("task").expect("a replacement token"));
    }
    assert_eq!(
        fake.counters().refresh_calls,
        2,
        "one refresh for 100 reports"
    );
    assert!(replacements.iter().all(|t| *t == replacements[0]));
    assert_ne!(replacements[0], rejected.expose_secret());

    // Reporting the old token again returns the current one without a refresh.
    let current = client
        .report_rejected("default", rejected.fingerprint())
        .await
        .expect("current token");
    assert_eq!(current.expose_secret(), replacements[0]);
    assert_eq!(fake.counters().refresh_calls, 2);

    // Nonsense is refused with a clear error and costs no refresh.
    let err = client
        .report_rejected("default", "not-hex!")
        .await
        .expect_err("bad fingerprint");
    assert!(err.to_string().contains("8 hex digits"), "{err}");
    assert_eq!(fake.counters().refresh_calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_token_refreshes_and_retries_once_on_a_401() {
    use therappai_broker_client::{ApiAnswer, CallError};
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    let mut client = broker.client().await;
    let first = client.access_token("default").await.expect("token");

    // The API refuses the first token it sees, then accepts.
    let refused = first.expose_secret().to_owned();
    let mut seen = Vec::new();
    let answer = client
        .call_with_token("default", |token| {
            seen.push(token.fingerprint().to_owned());
            let refuse = token.expose_secret() == refused;
            async move {
                Ok::<_, std::io::Error>(if refuse {
                    ApiAnswer::Unauthorized
                } else {
                    ApiAnswer::Done("ok")
                })
            }
        })
        .await
        .expect("the retry succeeds");
    assert_eq!(answer, "ok");
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "the retry used the replacement token");
    assert_eq!(fake.counters().refresh_calls, 2);

    // An API that refuses every token: two attempts, one refresh, then a clear stop.
    let err = client
        .call_with_token("default", |_token| async {
            Ok::<ApiAnswer<()>, std::io::Error>(ApiAnswer::Unauthorized)
        })
        .await
        .expect_err("never accepted");
    assert!(
        matches!(err, CallError::StillUnauthorized { attempts: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("therappai-brokerctl login --account default")
    );
    assert_eq!(
        fake.counters().refresh_calls,
        3,
        "bounded: one refresh per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expired_on_arrival_are_never_served_nor_refreshed_again_and_again() {
    // A clock far ahead of therappai's looks like this: every token is already expired.
    let fake = fake().await;
    let broker = started(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    fake.knobs().set_refresh_delay(Duration::from_millis(300));
    let mut callers = tokio::task::JoinSet::new();
    let client = broker.client().await;
    for _ in 0..20 {
        let mut client = client.clone();
        callers.spawn(async move { client.access_token("default").await });
    }
    while let Some(result) = callers.join_next().await {
        let err = result.expect("task").expect_err("no usable token exists");
        assert!(err.to_string().contains("check the clock"), "{err}");
    }
    assert_eq!(
        fake.counters().refresh_calls,
        1,
        "one refresh, then the back-off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_queued_behind_a_refresh_cannot_revive_a_logged_out_session() {
    let fake = fake().await;
    let broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    fake.knobs().set_refresh_delay(Duration::from_millis(500));
    // The first caller's refresh is held at therappai; the second queues behind it.
    let client = broker.client().await;
    let mut first = client.clone();
    let held = tokio::spawn(async move { first.access_token("default").await });
    wait_until(
        "the refresh to reach therappai",
        Duration::from_secs(20),
        || fake.counters().refresh_calls == 1,
    );
    let mut second = client.clone();
    let queued = tokio::spawn(async move { second.access_token("default").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let first = held.await.expect("task");
    let second = queued.await.expect("task");
    assert!(first.is_err(), "the in-flight refresh is dropped");
    assert!(second.is_err(), "the queued caller gets no token");
    assert_eq!(
        fake.counters().refresh_calls,
        1,
        "nothing revived the session"
    );
    assert!(!broker.store_has_entry("default"));
    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(out.code, EXIT_NEEDS_LOGIN, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_refresh_in_flight_at_shutdown_is_finished_and_stored() {
    let fake = fake().await;
    fake.knobs().set_rotation(true);
    let mut broker = logged_in(&fake, BrokerOptions::new(StoreKind::Keyutils, EMAIL)).await;
    // therappai rotates at once (blacklisting the stored token) but answers late.
    fake.knobs()
        .set_refresh_reply_delay(Duration::from_millis(800));
    let mut client = broker.client().await;
    let waiting = tokio::spawn(async move { client.access_token("default").await });
    wait_until(
        "the refresh to reach therappai",
        Duration::from_secs(20),
        || fake.counters().refresh_calls == 1,
    );
    // The caller gives up (so no request holds the server open), then SIGTERM arrives while
    // therappai is rotating: the broker lets the detached cycle store the new token.
    waiting.abort();
    let _ = waiting.await;
    broker.restart();
    fake.knobs().set_refresh_reply_delay(Duration::ZERO);
    broker.token("default").await;
    assert_eq!(
        fake.counters().refresh_rejected,
        0,
        "the rotated token reached the store before the broker stopped"
    );
}
