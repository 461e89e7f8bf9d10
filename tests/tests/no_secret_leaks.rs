//! The whole flow at trace level: no access token, refresh token or password may appear in
//! the broker's output or in anything the CLI printed other than `token`'s own stdout. The
//! flow includes logout, revoke (confirmed and failing) and device-level logout.

use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, assert_no_secret, fake_with_user};

const EMAIL: &str = "erin@example.com";
const PASSWORD: &str = "erins-very-secret-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_password_in_logs_or_cli_output() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut options = BrokerOptions::new(StoreKind::SecretService, EMAIL);
    options.log_level = "trace".to_owned();
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());

    let mut printed = String::new();
    let mut record = |out: therappai_broker_e2e::CtlOutput, stdout_is_token: bool| {
        printed.push_str(&out.stderr);
        if !stdout_is_token {
            printed.push_str(&out.stdout);
        }
        out
    };

    // Wrong password, then right one.
    record(
        broker
            .ctl_with_stdin(
                &["login", "--account", "default", "--password-stdin"],
                Some("not-the-password-at-all\n"),
            )
            .await,
        false,
    );
    record(
        broker
            .ctl_with_stdin(
                &["login", "--account", "default", "--password-stdin"],
                Some(&format!("{PASSWORD}\n")),
            )
            .await,
        false,
    );
    // Refresh with rotation, a cached token, status, an upstream failure, a restart.
    record(broker.ctl(&["token", "--account", "default"]).await, true);
    record(
        broker
            .ctl(&["token", "--account", "default", "--min-valid", "0"])
            .await,
        true,
    );
    record(broker.ctl(&["status"]).await, false);
    record(broker.ctl(&["status", "--json"]).await, false);
    fake.knobs().set_down(true);
    record(broker.ctl(&["token", "--account", "default"]).await, false);
    fake.knobs().set_down(false);
    broker.restart();
    record(broker.ctl(&["token", "--account", "default"]).await, true);
    // A rejected refresh token, then a logout with revocation.
    fake.revoke_all_refresh_tokens();
    fake.knobs().set_access_lifetime(Duration::ZERO);
    record(broker.ctl(&["token", "--account", "default"]).await, false);
    record(
        broker
            .ctl_with_stdin(
                &["login", "--account", "default", "--password-stdin"],
                Some(&format!("{PASSWORD}\n")),
            )
            .await,
        false,
    );
    record(broker.ctl(&["logout", "--account", "default"]).await, false);
    // Revoke (once confirmed, once with the upstream down) and device logout.
    record(login(&broker).await, false);
    record(broker.ctl(&["revoke", "--account", "default"]).await, false);
    record(login(&broker).await, false);
    fake.knobs().set_down(true);
    record(broker.ctl(&["revoke", "--all"]).await, false);
    fake.knobs().set_down(false);
    record(login(&broker).await, false);
    record(broker.ctl(&["logout", "--all"]).await, false);
    broker.stop();

    let mut secrets = fake.issued_tokens();
    assert!(
        secrets.len() >= 6,
        "the flow must have issued tokens to scan for, got {}",
        secrets.len()
    );
    secrets.push(PASSWORD.to_owned());
    let logs = broker.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the broker must have logged verbosely"
    );
    assert_no_secret("the broker's log", &logs, &secrets);
    assert_no_secret("the CLI's output", &printed, &secrets);
    // The JWT payloads are secret too: no part of any token (header excepted) may leak.
    let parts: Vec<String> = fake
        .issued_tokens()
        .iter()
        .flat_map(|t| t.split('.').skip(1).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_no_secret("the broker's log (token parts)", &logs, &parts);
}

async fn login(broker: &Broker) -> therappai_broker_e2e::CtlOutput {
    broker
        .ctl_with_stdin(
            &["login", "--account", "default", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        )
        .await
}

/// ReportRejected carries a token into the broker (whole, or misplaced in the fingerprint
/// field) and WatchSession streams out of it: neither may leak one into a log or an output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_rejected_and_watch_leak_nothing() {
    use therappai_broker_proto::v1 as pb;
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.log_level = "trace".to_owned();
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    let watcher =
        tokio::process::Command::new(therappai_broker_e2e::workspace_bin("therappai-brokerctl"))
            .arg("--socket")
            .arg(broker.socket_path())
            .args(["watch", "--account", "default"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start brokerctl watch");
    login(&broker).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let token = broker.token("default").await;

    let mut raw = broker.raw_client().await;
    let report = |access_token: String, fingerprint: String| pb::ReportRejectedRequest {
        account: "default".to_owned(),
        access_token,
        fingerprint,
        min_valid_seconds: None,
    };
    // The whole token: replaced.
    let replaced = raw
        .report_rejected(report(token.clone(), String::new()))
        .await
        .expect("the current token is replaced")
        .into_inner();
    assert_ne!(replaced.access_token, token);
    // The token where its fingerprint belongs: refused without being echoed.
    let misplaced = raw
        .report_rejected(report(String::new(), replaced.access_token.clone()))
        .await
        .expect_err("not a fingerprint");
    assert!(
        misplaced.message().contains("8 hex digits"),
        "{}",
        misplaced.message()
    );
    let mut printed = misplaced.message().to_owned();
    broker.stop();
    let watched = watcher.wait_with_output().await.expect("watch output");
    let shown = String::from_utf8_lossy(&watched.stdout);
    assert!(shown.contains("default changed: active"), "{shown}");
    printed.push_str(&shown);
    printed.push_str(&String::from_utf8_lossy(&watched.stderr));

    let mut secrets = fake.issued_tokens();
    secrets.push(PASSWORD.to_owned());
    assert_no_secret("the broker's log", &broker.logs(), &secrets);
    assert_no_secret("the CLI's and the RPC errors' output", &printed, &secrets);
}
