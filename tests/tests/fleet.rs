//! A fleet of brokers sharing one therappai account through a real OpenBao (the `vault`
//! store): separate daemon processes with their own sockets and runtime directories, one
//! fake therappai with rotation and blacklisting on, and OpenBao over TLS with an AppRole
//! limited to the fleet's prefix.

#![expect(clippy::expect_used, reason = "tests: a failed step is a failed test")]
use fake_therappai::FakeTherappai;
use std::time::{Duration, Instant};
use therappai_broker_client::{Error as ClientError, SessionState};
use therappai_broker_e2e::openbao::{Access, AppRole, OpenBao, RoleSpec, store_section};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, unique_name};

const EMAIL: &str = "fleet@example.com";
const PASSWORD: &str = "the-fleets-long-password";
/// How often the test brokers look for changes made by the others.
const POLL_SECONDS: u64 = 1;
/// `[upstream] request_timeout_seconds` of the test brokers (a lease must be 2 s longer).
const UPSTREAM_TIMEOUT_SECONDS: u64 = 3;
/// How long a test broker may hold the refresh lease: short, so a takeover costs little.
const LEASE_SECONDS: u64 = 5;
/// The lease while the Raft leader dies: longer than an election under load takes, as in
/// production (the default is 60 s). A holder keeps retrying its write-back within the
/// lease; a lease shorter than an OpenBao outage lets another broker refresh with the
/// rotated-away token, which costs the session.
const HA_LEASE_SECONDS: u64 = 20;

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

/// `n` brokers on one prefix of `bao`, each allowed to serve `default` to this test's uid.
async fn fleet(bao: &OpenBao, fake: &FakeTherappai, n: usize) -> (Vec<Broker>, AppRole, String) {
    fleet_with_lease(bao, fake, n, LEASE_SECONDS).await
}

async fn fleet_with_lease(
    bao: &OpenBao,
    fake: &FakeTherappai,
    n: usize,
    lease_seconds: u64,
) -> (Vec<Broker>, AppRole, String) {
    let prefix = format!("therappai-broker/{}", unique_name("fleet"));
    let role = bao.approle(&RoleSpec::new(&prefix)).await;
    let brokers = (0..n)
        .map(|_| {
            let mut options = BrokerOptions::new(StoreKind::Vault, EMAIL);
            // The lease must outlast one upstream call plus the write-back (checked at start).
            options.request_timeout_seconds = UPSTREAM_TIMEOUT_SECONDS;
            options.extra_config = store_section(bao, &role, &prefix, POLL_SECONDS, lease_seconds);
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
    let bao = OpenBao::cluster(3).await;
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
    let bao = OpenBao::cluster(3).await;
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
    // Every other broker refuses tokens within the same bound (each polls on its own).
    for broker in &brokers[1..] {
        let mut client = broker.client().await;
        let err = loop {
            match client.access_token("default").await {
                Ok(_) => {
                    assert!(
                        logged_out_at.elapsed() < bound,
                        "a broker still serves tokens {bound:?} after a logout elsewhere"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => break err,
            }
        };
        assert!(matches!(err, ClientError::NotLoggedIn { .. }), "{err}");
    }
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
        "socket = \"{{dir}}/broker.sock\"\n[store]\nbackend = \"vault\"\n[upstream]\nbase_url = \"{}\"\nca_file = \"{}\"\nrequest_timeout_seconds = {UPSTREAM_TIMEOUT_SECONDS}\n[[account]]\nname = \"default\"\nemail = \"{EMAIL}\"\n{}",
        fake.base_url(),
        ca.display(),
        store_section(&bao, &role, &prefix, POLL_SECONDS, LEASE_SECONDS)
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
async fn a_sealed_openbao_keeps_cached_tokens_served_then_says_unavailable_and_loses_nothing() {
    let mut bao = OpenBao::cluster(3).await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet(&bao, &fake, 3).await;
    brokers[0].login("default", PASSWORD).await;
    // Long enough to outlast sealing the cluster (a standby is sealed by a restart).
    fake.knobs().set_access_lifetime(Duration::from_secs(12));
    let token = brokers[0].token("default").await;
    for broker in &brokers[1..] {
        assert_eq!(
            served_eventually(broker, Duration::from_secs(10)).await,
            token
        );
    }
    let refreshes = fake.counters().refresh_calls;

    bao.seal_all().await;
    for broker in &brokers {
        assert_eq!(
            broker.token("default").await,
            token,
            "the cached token is still served with OpenBao sealed"
        );
    }
    // The health service follows OpenBao (the watcher's rounds tell it).
    health_becomes(&brokers[0], "NOT_SERVING", Duration::from_secs(15));
    // Once it expires, the fleet cannot refresh (it would need the entry): a clear error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        let mut client = brokers[1].client().await;
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
        text.contains("no OpenBao node answered") && text.contains("sealed"),
        "the error says OpenBao is sealed: {text}"
    );
    assert_eq!(
        fake.counters().refresh_calls,
        refreshes,
        "no refresh without the entry"
    );

    // Nothing was deleted: unsealed, the fleet refreshes with the stored token.
    for node in 0..3 {
        bao.unseal(node).await;
    }
    let fresh = served_eventually(&brokers[2], Duration::from_secs(30)).await;
    health_becomes(&brokers[0], "\"SERVING\"", Duration::from_secs(15));
    assert_ne!(fresh, token, "a new token after the old one expired");
    assert_eq!(fake.counters().refresh_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_openbao_is_unavailable_with_the_address_named() {
    let mut bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet(&bao, &fake, 1).await;
    brokers[0].login("default", PASSWORD).await;
    bao.kill(0);
    // The login's access token is already expired: the request needs the entry.
    let mut client = brokers[0].client().await;
    let err = client
        .access_token("default")
        .await
        .expect_err("no entry, no refresh");
    let text = err.to_string();
    assert!(
        text.contains("no OpenBao node answered") && text.contains(&bao.address()),
        "the error names the node that did not answer: {text}"
    );
}

/// The refresh token the fleet's entry of `default` below `prefix` holds (read as root).
async fn stored_refresh(bao: &OpenBao, prefix: &str) -> String {
    let reply = bao.read_kv(&format!("{prefix}/default")).await;
    reply.body["data"]["data"]["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until grpcurl's health check of `broker` prints `status`.
fn health_becomes(broker: &Broker, status: &str, timeout: Duration) {
    use therappai_broker_e2e::grpcurl::run_grpcurl;
    let deadline = Instant::now() + timeout;
    loop {
        let (_, out, err) =
            run_grpcurl(broker.socket_path(), None, &["grpc.health.v1.Health/Check"]);
        if out.contains(status) {
            return;
        }
        let last = format!("{out}{err}");
        assert!(
            Instant::now() < deadline,
            "health did not become {status} within {timeout:?}; last answer: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until therappai has answered a refresh beyond the `before` count of successful ones
/// (with rotation on, it has rotated and blacklisted the old token by then).
async fn rotated_at_therappai(fake: &FakeTherappai, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.counters().refresh_ok == before {
        assert!(
            Instant::now() < deadline,
            "the holder's refresh never reached therappai"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until therappai has seen `n` refresh calls in all.
async fn refresh_calls_reach(fake: &FakeTherappai, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while fake.counters().refresh_calls < n {
        assert!(
            Instant::now() < deadline,
            "therappai saw {} refresh calls, not {n}, within {timeout:?}",
            fake.counters().refresh_calls
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_refresh_is_taken_over_once_its_lease_runs_out() {
    let bao = OpenBao::cluster(3).await;
    // Without rotation the refresh token the holder took to therappai stays good, so the
    // takeover must end in a served token, whatever therappai did with the dead call.
    let fake = FakeTherappai::start(fake_therappai::FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        access_lifetime: Duration::ZERO,
        ..fake_therappai::FakeConfig::default()
    })
    .await
    .expect("start fake therappai");
    let (mut brokers, _role, _prefix) = fleet(&bao, &fake, 2).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs().set_refresh_delay(Duration::from_secs(30));
    let before = fake.counters().refresh_calls;
    let mut holder = brokers[0].client().await;
    let stuck = tokio::spawn(async move { holder.access_token("default").await });
    refresh_calls_reach(&fake, before + 1, Duration::from_secs(10)).await;
    brokers[0].kill();
    let _ = stuck.await;
    fake.knobs().set_refresh_delay(Duration::ZERO);

    let started = Instant::now();
    let mut client = brokers[1].client().await;
    let token = client
        .access_token("default")
        .await
        .expect("broker B takes over the dead holder's refresh");
    let waited = started.elapsed();
    assert!(
        fake.issued_tokens()
            .contains(&token.expose_secret().to_owned())
    );
    assert_eq!(
        fake.counters().refresh_calls,
        before + 2,
        "one refresh by the dead holder, one by the broker that took over: no loop"
    );
    assert!(
        waited >= Duration::from_secs(LEASE_SECONDS - 1),
        "broker B respected the dead holder's lease ({LEASE_SECONDS} s): it took over after {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(LEASE_SECONDS + 5),
        "the takeover waited for the lease ({LEASE_SECONDS} s), not longer: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_after_therappai_rotated_costs_the_session_once_and_never_loops() {
    let bao = OpenBao::cluster(3).await;
    let fake = rotating_fake().await;
    let (mut brokers, _role, _prefix) = fleet(&bao, &fake, 2).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // therappai rotates (and blacklists the old token) at once but answers late: the holder
    // dies holding the only copy of the new refresh token. Nobody can recover that session.
    fake.knobs()
        .set_refresh_reply_delay(Duration::from_secs(30));
    let before = fake.counters();
    let mut holder = brokers[0].client().await;
    let stuck = tokio::spawn(async move { holder.access_token("default").await });
    rotated_at_therappai(&fake, before.refresh_ok).await;
    brokers[0].kill();
    let _ = stuck.await;
    fake.knobs().set_refresh_reply_delay(Duration::ZERO);

    let mut client = brokers[1].client().await;
    let err = client
        .access_token("default")
        .await
        .expect_err("the blacklisted token cannot be refreshed");
    assert!(matches!(err, ClientError::NotLoggedIn { .. }), "{err}");
    assert!(
        err.to_string().contains("log"),
        "the error says to log in: {err}"
    );
    // Asking again makes no upstream call: the session is marked ended for the fleet.
    let calls = fake.counters().refresh_calls;
    for _ in 0..5 {
        client
            .access_token("default")
            .await
            .expect_err("still ended");
    }
    assert_eq!(
        fake.counters().refresh_calls,
        calls,
        "no loop on a dead token"
    );
    assert_eq!(
        fake.counters().refresh_rejected - before.refresh_rejected,
        1,
        "exactly one rejected refresh: the takeover's"
    );
    // A new login on any broker revives the fleet.
    brokers[1].login("default", PASSWORD).await;
    brokers[1].token("default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_leader_killed_during_a_stampede_loses_no_rotated_token() {
    let mut bao = OpenBao::cluster(3).await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet_with_lease(&bao, &fake, 3, HA_LEASE_SECONDS).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // The first refresh keeps the lease long enough for the leader to die under it.
    fake.knobs().set_refresh_delay(Duration::from_millis(1500));
    let before = fake.counters();

    let mut calls = tokio::task::JoinSet::new();
    for broker in &brokers {
        for _ in 0..20 {
            let mut client = broker.client().await;
            calls.spawn(async move {
                // An app retries UNAVAILABLE; the bound keeps a broken fleet from passing.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match client.access_token("default").await {
                        Ok(token) => {
                            return Ok((
                                token.expose_secret().to_owned(),
                                token.fingerprint().to_owned(),
                            ));
                        }
                        Err(err)
                            if Instant::now() < deadline && err.to_string().contains("OpenBao") =>
                        {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Err(err) => return Err(err.to_string()),
                    }
                }
            });
        }
    }
    refresh_calls_reach(&fake, before.refresh_calls + 1, Duration::from_secs(10)).await;
    let leader = bao.leader().await.expect("a leader");
    bao.kill(leader);
    let new_leader = bao
        .wait_for_new_leader(leader, Duration::from_secs(30))
        .await;
    assert_ne!(new_leader, leader);

    let mut tokens = Vec::new();
    while let Some(result) = calls.join_next().await {
        tokens.push(
            result
                .expect("task")
                .expect("every caller is served in the end"),
        );
    }
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "one token for the fleet"
    );
    let after = fake.counters();
    assert_eq!(
        after.refresh_rejected, before.refresh_rejected,
        "no rotated token was lost"
    );
    assert_eq!(
        after.refresh_ok - before.refresh_ok,
        1,
        "one refresh for the fleet"
    );
    // The rotated token reached the new leader: once the access token expires, the next
    // refresh succeeds.
    fake.knobs().set_refresh_delay(Duration::ZERO);
    let mut client = brokers[2].client().await;
    client
        .report_rejected("default", &tokens[0].1)
        .await
        .expect("a refresh on the new leader succeeds with the rotated token");
    assert_eq!(fake.counters().refresh_rejected, before.refresh_rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openbao_token_is_renewed_and_replaced_by_a_new_login_past_its_max_ttl() {
    let bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let prefix = format!("therappai-broker/{}", unique_name("renew"));
    let mut spec = RoleSpec::new(&prefix);
    spec.token_ttl = Duration::from_secs(3);
    spec.token_max_ttl = Duration::from_secs(6);
    let role = bao.approle(&spec).await;
    let mut options = BrokerOptions::new(StoreKind::Vault, EMAIL);
    options.request_timeout_seconds = UPSTREAM_TIMEOUT_SECONDS;
    options.extra_config = store_section(&bao, &role, &prefix, POLL_SECONDS, LEASE_SECONDS);
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    // The watcher talks to OpenBao every second: the token is renewed at two thirds of its
    // TTL, and once renewal can no longer extend it past max_ttl, the broker logs in again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&broker.log_path).expect("log");
        let logins = log.matches("logged in to OpenBao with AppRole").count();
        if logins >= 2
            && log.contains("renewed the OpenBao token")
            && log.contains("could not be renewed; logging in again")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal and second login within 30 s ({logins} logins)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still working after its first token died: a token, and a logout that reaches OpenBao.
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    broker.token("default").await;
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stored = bao.read_kv(&format!("{prefix}/default")).await;
    let data = &stored.body["data"]["data"];
    assert!(
        data["ended_by"].is_string() && data["refresh_token"].is_null(),
        "OpenBao holds the logout record and no token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_could_not_be_written_is_kept_unserved_and_written_once_openbao_is_back() {
    let mut bao = OpenBao::cluster(3).await;
    let fake = rotating_fake().await;
    let (brokers, _role, _prefix) = fleet_with_lease(&bao, &fake, 2, 12).await;
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // therappai rotates at once and answers late (within the upstream timeout); every
    // OpenBao node dies in between, so the write-back cannot land within the lease.
    fake.knobs().set_refresh_reply_delay(Duration::from_secs(2));
    let before = fake.counters();
    let mut holder = brokers[0].client().await;
    let first = tokio::spawn(async move { holder.access_token("default").await });
    rotated_at_therappai(&fake, before.refresh_ok).await;
    for node in 0..3 {
        bao.kill(node);
    }
    fake.knobs().set_refresh_reply_delay(Duration::ZERO);
    let err = first
        .await
        .expect("task")
        .expect_err("an access token OpenBao could not record is not served");
    assert!(
        err.to_string()
            .contains("could not be stored in the fleet's OpenBao"),
        "{err}"
    );

    for node in 0..3 {
        bao.restart(node).await;
    }
    // The rotated token reaches the entry: the other broker serves without a dead token ever
    // being presented to therappai.
    served_eventually(&brokers[1], Duration::from_secs(40)).await;
    served_eventually(&brokers[0], Duration::from_secs(10)).await;
    assert_eq!(
        fake.counters().refresh_rejected,
        before.refresh_rejected,
        "the rotated token was not lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_by_a_broker_that_missed_a_rotation_revokes_the_fleets_newer_token_too() {
    let bao = OpenBao::dev().await;
    let fake = rotating_fake().await;
    let prefix = format!("therappai-broker/{}", unique_name("stale"));
    let role = bao.approle(&RoleSpec::new(&prefix)).await;
    // Broker B looks at the entry only once a minute: it will miss A's rotation.
    let brokers: Vec<Broker> = [POLL_SECONDS, 60]
        .into_iter()
        .map(|poll| {
            let mut options = BrokerOptions::new(StoreKind::Vault, EMAIL);
            options.request_timeout_seconds = UPSTREAM_TIMEOUT_SECONDS;
            options.revoke_path = Some("/token/blacklist/".to_owned());
            options.extra_config = store_section(&bao, &role, &prefix, poll, LEASE_SECONDS);
            Broker::start(options, &fake.base_url(), &fake.ca_pem())
        })
        .collect();
    brokers[0].login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let first = brokers[1].token("default").await;
    let r1 = stored_refresh(&bao, &prefix).await;
    // A is told the token was rejected: it refreshes, therappai rotates R1 into R2.
    let mut a = brokers[0].client().await;
    let fingerprint = {
        let mut b = brokers[1].client().await;
        b.access_token("default")
            .await
            .expect("token")
            .fingerprint()
            .to_owned()
    };
    assert_eq!(brokers[1].token("default").await, first);
    a.report_rejected("default", &fingerprint)
        .await
        .expect("a fresh token");
    let r2 = stored_refresh(&bao, &prefix).await;
    assert_ne!(r1, r2, "A rotated the fleet's refresh token");

    let out = brokers[1].ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(fake.is_refresh_blacklisted(&r1));
    assert!(
        fake.is_refresh_blacklisted(&r2),
        "the fleet's newer token, which broker B never held, is revoked at therappai"
    );
}
