//! Peer identity and policy with real processes and real uids: other users (via `setpriv`),
//! other executables, a test cgroup, admin RPCs, SIGHUP reloads and the audit log. Needs
//! root, as CI runs it.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::time::Duration;
use therappai_broker_e2e::peer::{
    AS_NOBODY, NOBODY_UID, TestCgroup, copy_executable, require_root,
};
use therappai_broker_e2e::{
    Broker, BrokerOptions, CtlOutput, StoreKind, wait_until, workspace_bin,
};

const EMAIL: &str = "alice@example.com";
const PASSWORD: &str = "correct horse battery staple";
/// Exit code of therappai-brokerctl for a policy denial.
const DENIED: i32 = 4;
/// Every field an audit event must carry.
const AUDIT_FIELDS: &[&str] = &[
    "uid=",
    "gid=",
    "pid=",
    "exe=",
    "unit=",
    "account=",
    "rpc=",
    "decision=",
    "rule=",
];

async fn fake() -> FakeTherappai {
    FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}

/// A root broker whose socket `nogroup` (and so `nobody`) can reach, with `rules` and the
/// account `default` logged in by root (the default admin).
async fn broker_with(fake: &FakeTherappai, rules: &str) -> Broker {
    require_root();
    let mut options = BrokerOptions::new(StoreKind::SecretService, EMAIL);
    options.top_config = "socket_group = \"nogroup\"\n".to_owned();
    options.extra_config = rules.to_owned();
    options.shared_dir = true;
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    broker
}

async fn token_as(broker: &Broker, wrapper: &[&str]) -> CtlOutput {
    let ctl = workspace_bin("therappai-brokerctl");
    broker
        .run_ctl(wrapper, &ctl, &["token", "--account", "default"], None)
        .await
}

fn denial_events(broker: &Broker) -> usize {
    broker.log_lines_with(&["audit:", "decision=\"deny\""])
}

#[track_caller]
fn assert_denied(out: &CtlOutput, who: &str) {
    assert_eq!(
        out.code, DENIED,
        "{who} must be denied; stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "a denial prints no token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_uid_is_denied_with_one_audit_event_per_denial() {
    let fake = fake().await;
    let broker = broker_with(&fake, "").await;

    // Default policy of a root broker: root only.
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));

    let mut denials = 0;
    for _ in 0..2 {
        let out = token_as(&broker, AS_NOBODY).await;
        assert_denied(&out, "nobody");
        denials += 1;
        let message = &out.stderr;
        let ctl = workspace_bin("therappai-brokerctl");
        assert!(message.contains("uid=65534"), "names the caller: {message}");
        assert!(
            message.contains(&ctl.display().to_string()),
            "names the exe: {message}"
        );
        assert!(
            message.contains("[[allow]]") && message.contains("uids = [65534]"),
            "says what rule to add: {message}"
        );
        for state in ["logged in", "active", "needs-login", "expire"] {
            assert!(
                !message.contains(state),
                "reveals no session state ({state}): {message}"
            );
        }
    }
    let status = broker
        .run_ctl(
            AS_NOBODY,
            &workspace_bin("therappai-brokerctl"),
            &["status"],
            None,
        )
        .await;
    assert_denied(&status, "nobody's status (it may use no account)");
    denials += 1;

    wait_until("every denial to be logged", Duration::from_secs(5), || {
        denial_events(&broker) == denials
    });
    let logs = broker.logs();
    let events: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("audit:") && l.contains("decision=\"deny\""))
        .collect();
    assert_eq!(
        events.len(),
        denials,
        "exactly one audit event per denial:\n{logs}"
    );
    for event in events {
        for field in AUDIT_FIELDS {
            assert!(event.contains(field), "audit event lacks {field}: {event}");
        }
        assert!(event.contains("uid=65534"), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_from_a_non_admin_are_denied_and_status_shows_only_usable_accounts() {
    let fake = fake().await;
    require_root();
    let mut options = BrokerOptions::new(StoreKind::SecretService, EMAIL);
    options
        .accounts
        .push(("other".to_owned(), "bob@example.com".to_owned()));
    options.top_config = "socket_group = \"nogroup\"\n".to_owned();
    options.extra_config = format!(
        "[[allow]]\naccount = \"default\"\nuids = [0, {NOBODY_UID}]\n[[allow]]\naccount = \"other\"\nuids = [0]\n"
    );
    options.shared_dir = true;
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    let ctl = workspace_bin("therappai-brokerctl");

    let token = token_as(&broker, AS_NOBODY).await;
    assert_eq!(token.code, 0, "nobody is allowed a token: {}", token.stderr);
    assert!(
        fake.issued_tokens()
            .contains(&token.stdout.trim().to_owned())
    );

    let before = denial_events(&broker);
    let logout = broker
        .run_ctl(AS_NOBODY, &ctl, &["logout", "--account", "default"], None)
        .await;
    assert_denied(&logout, "nobody's logout");
    assert!(logout.stderr.contains("[admin]"), "{}", logout.stderr);
    let login = broker
        .run_ctl(
            AS_NOBODY,
            &ctl,
            &["login", "--account", "default", "--password-stdin"],
            Some("guess\n"),
        )
        .await;
    assert_denied(&login, "nobody's login");
    wait_until("both denials to be logged", Duration::from_secs(5), || {
        denial_events(&broker) == before + 2
    });
    assert_eq!(fake.counters().login_ok, 1, "no login reached therappai");
    assert!(broker.store_has_entry("default"), "nothing was logged out");

    let status = broker
        .run_ctl(AS_NOBODY, &ctl, &["status", "--json"], None)
        .await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let names: Vec<&str> = json["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["default"],
        "nobody sees only the account it may use"
    );
    let all = broker.ctl(&["status", "--json"]).await;
    assert!(
        all.stdout.contains("\"other\""),
        "root (admin) sees every account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rule_allows_members_only() {
    let fake = fake().await;
    // `users` (gid 100) exists on Debian; nobody is not a member unless we say so.
    let broker = broker_with(&fake, "[[allow]]\naccount = \"*\"\ngroups = [\"users\"]\n").await;

    let outsider = token_as(&broker, AS_NOBODY).await;
    assert_denied(&outsider, "nobody outside `users`");

    let supplementary = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--groups=100",
        "--",
    ];
    let member = token_as(&broker, &supplementary).await;
    assert_eq!(
        member.code, 0,
        "a supplementary member gets a token: {}",
        member.stderr
    );

    // Primary group `users`; nogroup as supplementary so the socket stays reachable.
    let primary = [
        "setpriv",
        "--reuid=65534",
        "--regid=100",
        "--groups=65534",
        "--",
    ];
    let member = token_as(&broker, &primary).await;
    assert_eq!(
        member.code, 0,
        "a primary member gets a token: {}",
        member.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executable_rule_tells_two_binaries_apart() {
    let fake = fake().await;
    let rules =
        "[[allow]]\naccount = \"default\"\nuids = [0]\nexecutables = [\"{dir}/allowed-ctl\"]\n";
    let broker = broker_with(&fake, rules).await;
    let original = workspace_bin("therappai-brokerctl");
    let allowed = copy_executable(&original, broker.dir.path(), "allowed-ctl");
    let other = copy_executable(&original, broker.dir.path(), "other-ctl");
    let args = ["token", "--account", "default"];

    let out = broker.run_ctl(&[], &allowed, &args, None).await;
    assert_eq!(
        out.code, 0,
        "the allowed binary gets a token: {}",
        out.stderr
    );
    let out = broker.run_ctl(&[], &other, &args, None).await;
    assert_denied(&out, "the same code at another path");
    assert!(
        out.stderr.contains(&other.display().to_string()),
        "{}",
        out.stderr
    );
    let out = broker.ctl(&args).await;
    assert_denied(&out, "root's own CLI: rules replace the default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_rule_allows_only_processes_of_that_cgroup() {
    let fake = fake().await;
    require_root();
    let cgroup = TestCgroup::create();
    let rules = format!(
        "[[allow]]\naccount = \"default\"\nuids = [0]\nunits = [\"{}\"]\n",
        cgroup.unit
    );
    let broker = broker_with(&fake, &rules).await;
    let ctl = workspace_bin("therappai-brokerctl");

    let outside = broker.ctl(&["token", "--account", "default"]).await;
    assert_denied(&outside, "a root process outside the unit");
    assert!(outside.stderr.contains("unit=none"), "{}", outside.stderr);

    // The shell joins the cgroup, then becomes the CLI (same pid) before it connects.
    let script = format!(
        "echo $$ > '{}' && exec '{}' \"$@\"",
        cgroup.procs().display(),
        ctl.display()
    );
    // `sh -c SCRIPT $0 ARGS…`: run_ctl puts its `ctl` argument where `$0` goes.
    let inside = broker
        .run_ctl(
            &["sh", "-c", &script],
            std::path::Path::new("sh"),
            &["token", "--account", "default"],
            None,
        )
        .await;
    assert_eq!(
        inside.code, 0,
        "the process in {} gets a token: {}",
        cgroup.unit, inside.stderr
    );
    let event = broker.log_lines_with(&[
        "audit:",
        "decision=\"allow\"",
        &format!("unit=\"{}\"", cgroup.unit),
    ]);
    assert_eq!(event, 1, "the grant names the unit:\n{}", broker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_rules_and_a_broken_file_keeps_the_old_ones() {
    let fake = fake().await;
    let mut broker = broker_with(&fake, "").await;
    assert_denied(
        &token_as(&broker, AS_NOBODY).await,
        "nobody under the default policy",
    );

    broker.rewrite_extra_config(&format!(
        "[[allow]]\naccount = \"default\"\nuids = [{NOBODY_UID}]\n"
    ));
    broker.signal(libc::SIGHUP);
    wait_until("the reload to be logged", Duration::from_secs(5), || {
        broker.log_lines_with(&["config reloaded"]) == 1
    });
    let out = token_as(&broker, AS_NOBODY).await;
    assert_eq!(out.code, 0, "the new rule applies: {}", out.stderr);

    std::fs::write(&broker.config_path, "this is [not toml").expect("break the config");
    broker.signal(libc::SIGHUP);
    wait_until(
        "the refused reload to be logged",
        Duration::from_secs(5),
        || broker.log_lines_with(&["config reload refused"]) == 1,
    );
    let out = token_as(&broker, AS_NOBODY).await;
    assert_eq!(out.code, 0, "the old rules stay in force: {}", out.stderr);
    assert!(
        broker.is_running(),
        "a broken file does not stop the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_takes_the_right_away_ends_an_open_watch_stream() {
    let fake = fake().await;
    let rule = format!("[[allow]]\naccount = \"default\"\nuids = [{NOBODY_UID}]\n");
    let broker = broker_with(&fake, &rule).await;
    let ctl = workspace_bin("therappai-brokerctl");
    let watching = broker.run_ctl(AS_NOBODY, &ctl, &["watch", "--account", "default"], None);
    let reload = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while broker.log_lines_with(&["audit:", "rpc=\"WatchSession\"", "decision=\"allow\""]) == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the watch never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let config = std::fs::read_to_string(&broker.config_path).expect("read config");
        std::fs::write(&broker.config_path, config.replace(&rule, "")).expect("drop the rule");
        broker.signal(libc::SIGHUP);
    };
    // No session event happens: only the reload can end the stream.
    let (out, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(watching, reload)
    })
    .await
    .expect("the stream ends at the reload, not at the next state change");
    assert_eq!(out.code, DENIED, "{}", out.stderr);
    assert!(out.stderr.contains("no longer lets"), "{}", out.stderr);
    assert!(out.stdout.contains("default now: active"), "{}", out.stdout);
}
