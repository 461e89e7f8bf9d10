//! A fleet of brokers sharing one therappai account through a real OpenBao (the `vault`
//! store): separate daemon processes with their own sockets and runtime directories, one
//! fake therappai with rotation and blacklisting on, and OpenBao over TLS with an AppRole
//! limited to the fleet's prefix.

#![expect(clippy::expect_used, reason = "tests: a failed step is a failed test")]
use fake_therappai::FakeTherappai;
use std::time::{Duration, Instant};
use therappai_broker_client::{Error as ClientError, SessionState};
use therappai_broker_e2e::openbao::{Access, AppRole, OpenBao, RoleSpec};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, unique_name};

const EMAIL: &str = "fleet@example.com";
const PASSWORD: &str = "the-fleets-long-password";
/// How often the test brokers look for changes made by the others.
const POLL_SECONDS: u64 = 1;
/// How long a test broker may hold the refresh lease.
const LEASE_SECONDS: u64 = 5;

/// A fake therappai that rotates and blacklists refresh tokens, as the real one does, and
/// issues access tokens that are already expired (the first request after a login refreshes).
async fn rotating_fake() -> FakeTherappai {
    FakeTherappai::start(fake_therappai::FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        access_lifetime: Duration::ZERO,
        rotate_refresh_tokens: true,
        ..fake_therappai::FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}

/// The `[store.vault]` section for `role` on `bao`, below `prefix`.
fn store_section(bao: &OpenBao, role: &AppRole, prefix: &str) -> String {
    let addresses: Vec<String> = bao.addresses().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "\n[store.vault]\naddress = [{}]\nca_file = \"{}\"\nmount = \"secret\"\nprefix = \"{prefix}\"\nauth = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"\npoll_seconds = {POLL_SECONDS}\nlease_seconds = {LEASE_SECONDS}\nrequest_timeout_seconds = 3\n",
        addresses.join(", "),
        bao.ca_pem().display(),
        role.role_id_file.display(),
        role.secret_id_file.display(),
    )
}

/// `n` brokers on one prefix of `bao`, each allowed to serve `default` to this test's uid.
async fn fleet(bao: &OpenBao, fake: &FakeTherappai, n: usize) -> (Vec<Broker>, AppRole, String) {
    let prefix = format!("therappai-broker/{}", unique_name("fleet"));
    let role = bao.approle(&RoleSpec::new(&prefix)).await;
    let brokers = (0..n)
        .map(|_| {
            let mut options = BrokerOptions::new(StoreKind::Vault, EMAIL);
            options.extra_config = store_section(bao, &role, &prefix);
            Broker::start(options, &fake.base_url(), &fake.ca_pem())
        })
        .collect();
    (brokers, role, prefix)
}

/// Waits (with a deadline) until `broker` serves a token for `default`.
async fn served_eventually(broker: &Broker, timeout: Duration) -> String {
    broker.token_eventually("default", timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_share_one_login_and_three_hundred_callers_cause_one_refresh() {
    let bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet(&bao, &fake, 3).await;
    // One login for the whole fleet.
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // A slow refresh keeps the window open while every caller, on every broker, arrives.
    fake.knobs().set_refresh_delay(Duration::from_millis(800));
    let before = fake.counters().refresh_calls;

    let mut calls = tokio::task::JoinSet::new();
    for broker in &brokers {
        for _ in 0..10 {
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
    }
    let mut tokens = Vec::new();
    while let Some(result) = calls.join_next().await {
        tokens.push(result.expect("task").expect("every caller gets a token"));
    }
    assert_eq!(tokens.len(), 300);
    assert_eq!(
        fake.counters().refresh_calls - before,
        1,
        "the fleet made exactly one upstream refresh"
    );
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every caller on every broker got the same token"
    );
    assert!(
        fake.issued_tokens().contains(&tokens[0]),
        "the token is one therappai issued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_broker_reaches_the_others_and_their_watchers() {
    let bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet(&bao, &fake, 3).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let token = served_eventually(&brokers[1], Duration::from_secs(10)).await;
    assert_eq!(
        served_eventually(&brokers[2], Duration::from_secs(10)).await,
        token,
        "the other brokers serve the fleet's token instead of refreshing their own"
    );
    let mut watcher = brokers[2].client().await;
    let mut watch = watcher.watch_session("default").await.expect("watch");
    let first = watch.next().await.expect("snapshot").expect("event");
    assert_eq!(first.state, SessionState::Active);

    let out = brokers[0].ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let logged_out_at = Instant::now();
    // The bound: poll_seconds plus a read, well inside the 10 s the README promises.
    let bound = Duration::from_secs(POLL_SECONDS + 4);
    let event = tokio::time::timeout(bound, async {
        loop {
            let event = watch.next().await.expect("stream open").expect("event");
            if event.state == SessionState::LoggedOut {
                return event;
            }
        }
    })
    .await
    .expect("broker C's watcher hears of the logout made on broker A within the bound");
    assert!(
        event.reason.contains("ended by broker"),
        "the reason says where the logout came from: {}",
        event.reason
    );
    for broker in &brokers[1..] {
        let mut client = broker.client().await;
        let err = client
            .access_token("default")
            .await
            .expect_err("a logged-out fleet serves no token");
        assert!(matches!(err, ClientError::NotLoggedIn { .. }), "{err}");
    }
    assert!(logged_out_at.elapsed() < Duration::from_secs(10));
    let log = std::fs::read_to_string(&brokers[1].log_path).expect("broker B's log");
    assert!(
        log.contains("session ended by another broker of the fleet"),
        "broker B has an audit event for the fleet logout"
    );
    // Nothing of the session is left in any broker's log.
    let issued = fake.issued_tokens();
    for broker in &brokers {
        let log = std::fs::read_to_string(&broker.log_path).expect("log");
        therappai_broker_e2e::assert_no_secret("a fleet broker's log", &log, &issued);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_forbids_the_prefix_is_a_start_error_naming_path_and_capability() {
    let bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let prefix = format!("therappai-broker/{}", unique_name("denied"));
    let mut spec = RoleSpec::new(&prefix);
    spec.access = Access::ReadOnly;
    let role = bao.approle(&spec).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = fake.write_ca_file(dir.path()).expect("write the fake's CA");
    let config = format!(
        "socket = \"{{dir}}/broker.sock\"\n[store]\nbackend = \"vault\"\n[upstream]\nbase_url = \"{}\"\nca_file = \"{}\"\n[[account]]\nname = \"default\"\nemail = \"{EMAIL}\"\n{}",
        fake.base_url(),
        ca.display(),
        store_section(&bao, &role, &prefix)
    );
    let out = therappai_broker_e2e::broker_refuses(&config);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("\"create\"")
            && out.stderr.contains(&format!("secret/data/{prefix}/*")),
        "the error names the missing capability and the path: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_openbao_keeps_cached_tokens_served_then_says_unavailable() {
    let mut bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet(&bao, &fake, 1).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(4));
    let token = brokers[0].token("default").await;
    let refreshes = fake.counters().refresh_calls;

    bao.kill(0);
    assert_eq!(
        brokers[0].token("default").await,
        token,
        "the cached token is still served with OpenBao gone"
    );
    // Once it expires, the fleet cannot refresh (it would need the entry): a clear error.
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let mut client = brokers[0].client().await;
        match client.access_token("default").await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "still served after its expiry");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => break err,
        }
    };
    let text = err.to_string();
    assert!(
        text.contains("OpenBao") && text.contains("no OpenBao node answered"),
        "the error says OpenBao is down: {text}"
    );
    assert_eq!(
        fake.counters().refresh_calls,
        refreshes,
        "no refresh without the fleet's entry"
    );
}
