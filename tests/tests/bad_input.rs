//! Bad input gets a clear error, a distinct exit code, and loses nothing.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::os::unix::fs::PermissionsExt;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, broker_refuses};

const EMAIL: &str = "bob@example.com";
const PASSWORD: &str = "s3cret-password-for-bob";

async fn setup() -> (FakeTherappai, Broker) {
    let fake = FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai");
    let broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    (fake, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_stores_nothing_and_says_so() {
    let (fake, broker) = setup().await;
    let out = broker
        .ctl_with_stdin(
            &["login", "--account", "default", "--password-stdin"],
            Some("wrong-password\n"),
        )
        .await;
    assert_eq!(
        out.code, 7,
        "exit code 7 = invalid credentials; stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("e-mail or password is wrong"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was stored"), "{}", out.stderr);
    assert!(
        !broker.store_has_entry("default"),
        "a failed login must store nothing"
    );
    assert_eq!(fake.counters().login_failed, 1);

    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(token.code, 3, "not logged in; stderr: {}", token.stderr);
    assert!(
        token
            .stderr
            .contains("therappai-brokerctl login --account default"),
        "the error must give the exact command: {}",
        token.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_account_names_the_known_ones() {
    let (_fake, broker) = setup().await;
    let out = broker.ctl(&["token", "--account", "nosuch"]).await;
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown account \"nosuch\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\"default\""),
        "lists the configured accounts: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_clear_error_and_the_broker_stays_up() {
    let (fake, mut broker) = setup().await;
    broker.login("default", PASSWORD).await;
    // Take the upstream down, then restart so the next token needs a refresh.
    fake.knobs().set_down(true);
    broker.restart();
    let out = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(
        out.code, 6,
        "exit code 6 = upstream failure; stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("therappai is unavailable"),
        "{}",
        out.stderr
    );
    assert!(
        broker.is_running(),
        "the broker must survive an upstream outage"
    );
    assert!(
        broker.store_has_entry("default"),
        "an outage must not cost the stored session"
    );

    let status = broker.ctl(&["status"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);

    fake.knobs().set_down(false);
    // The broker waits `failure_backoff_seconds` (1 s in tests) before a new refresh cycle.
    let token = broker
        .token_eventually("default", std::time::Duration::from_secs(20))
        .await;
    assert!(fake.issued_tokens().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_not_running_says_how_to_start_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nothing.sock");
    let out =
        std::process::Command::new(therappai_broker_e2e::workspace_bin("therappai-brokerctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["token", "--account", "default"])
            .output()
            .expect("run brokerctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("not reachable"), "{stderr}");
    assert!(
        stderr.contains("systemctl"),
        "says how to start it: {stderr}"
    );
}

const VALID: &str = r#"
socket = "{dir}/run/broker.sock"
[store]
backend = "keyutils"
[upstream]
base_url = "https://127.0.0.1:9/api/v1"
[[account]]
name = "default"
email = "a@example.com"
"#;

#[test]
fn http_base_url_is_refused_at_start() {
    let out = broker_refuses(&VALID.replace("https://", "http://"));
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("base_url must start with https://"),
        "{}",
        out.stderr
    );
}

#[test]
fn malformed_config_names_the_key_and_the_file() {
    let out = broker_refuses(&VALID.replace("[store]", "[store]\nbakend = \"auto\""));
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("bakend"),
        "names the key: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("broker.toml"),
        "names the file: {}",
        out.stderr
    );

    let out = broker_refuses(&VALID.replace("email = \"a@example.com\"", "email = 42"));
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(out.stderr.contains("email"), "{}", out.stderr);
}

#[test]
fn unsafe_socket_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("shared");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = VALID.replace(
        "{dir}/run/broker.sock",
        &format!("{}/broker.sock", run.display()),
    );
    let out = broker_refuses(&config);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("writable by group or others"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("chmod 0700"),
        "says how to fix it: {}",
        out.stderr
    );
    assert!(
        !run.join("broker.sock").exists(),
        "no socket may be created there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_revoke_need_exactly_one_target_and_a_known_account() {
    let (fake, broker) = setup().await;
    broker.login("default", PASSWORD).await;
    for args in [
        &["logout"][..],
        &["revoke"],
        &["revoke", "--account", "default", "--all"],
        &["logout", "--account", "default", "--all"],
    ] {
        let out = broker.ctl(args).await;
        assert_eq!(out.code, 2, "{args:?} is a usage error: {}", out.stderr);
    }
    let out = broker.ctl(&["revoke", "--account", "nope"]).await;
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(out.stderr.contains("\"default\""), "{}", out.stderr);
    assert!(
        broker.store_has_entry("default"),
        "a refused revoke wipes nothing"
    );
    assert_eq!(fake.counters().blacklist_calls, 0);
}

/// Issue 11, defect 4: names are checked before policy and audit. A junk name gets a clear
/// error and never appears in the log; an unknown (well-formed) name is not logged as
/// "granted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_unknown_account_names_are_not_audited_as_granted() {
    let (_fake, broker) = setup().await;
    let junk = "j".repeat(300);
    let out = broker.ctl(&["token", "--account", &junk]).await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("account name is not valid"),
        "{}",
        out.stderr
    );
    let out = broker.ctl(&["token", "--account", "nosuch"]).await;
    assert_eq!(out.code, 8, "{}", out.stderr);
    // The admin calls check the name first too: a junk name is refused, not echoed back in
    // a NOT_FOUND (found while writing the request_validation fuzz target).
    for rpc in ["logout", "revoke"] {
        let out = broker.ctl(&[rpc, "--account", &junk]).await;
        assert_ne!(out.code, 0, "{rpc}: {}", out.stderr);
        assert!(
            out.stderr.contains("account name is not valid"),
            "{rpc}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(&junk),
            "{rpc} echoes the junk name: {}",
            out.stderr
        );
    }
    let logs = broker.logs();
    assert!(!logs.contains(&junk), "junk name logged: {logs}");
    assert_eq!(
        broker.log_lines_with(&["granted", "nosuch"]),
        0,
        "an unknown account was audited as granted: {logs}"
    );
}
