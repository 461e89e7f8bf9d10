//! Admission control on the socket, from outside (issue 11, defect 3): an oversized request
//! message is refused with RESOURCE_EXHAUSTED before it is buffered, one uid holding its
//! connection cap cannot lock another uid out, and a connection that never sends the HTTP/2
//! preface is closed after the handshake timeout. Needs root (other uids via `setpriv`).

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::io::Read;
use std::time::{Duration, Instant};
use therappai_broker_e2e::peer::{AS_NOBODY, require_root};
use therappai_broker_e2e::{
    Broker, BrokerOptions, StoreKind, fake_with_user, wait_until, workspace_bin,
};
use therappai_broker_proto::v1 as pb;

const EMAIL: &str = "judy@example.com";
const PASSWORD: &str = "judys-long-password";

/// A root broker that root and `nobody` may reach and get `default`'s token from, logged in, with
/// `limits` as its `[connection_limits]` table (none when empty: the defaults).
async fn broker_with_limits(limits: &str) -> (fake_therappai::FakeTherappai, Broker) {
    require_root();
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.top_config = "socket_mode = \"0666\"\n".to_owned();
    options.shared_dir = true;
    options.extra_config = "[[allow]]\naccount = \"default\"\nuids = [0, 65534]\n".to_owned();
    if !limits.is_empty() {
        options.extra_config += &format!("\n[connection_limits]\n{limits}");
    }
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    (fake, broker)
}

async fn channel(broker: &Broker) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("unix://{}", broker.socket_path().display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_and_the_broker_keeps_serving() {
    let (fake, broker) = broker_with_limits("").await;
    let mut raw = pb::broker_client::BrokerClient::new(channel(&broker).await);
    let huge = pb::ReportRejectedRequest {
        account: "default".to_owned(),
        access_token: "x".repeat(4 * 1024 * 1024),
        fingerprint: String::new(),
        min_valid_seconds: None,
    };
    let status = raw
        .report_rejected(huge)
        .await
        .expect_err("a 4 MiB message is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("at most 65536 bytes"),
        "says the limit: {status:?}"
    );
    // The same connection and a new one still work.
    let token = raw
        .get_access_token(pb::GetAccessTokenRequest {
            account: "default".to_owned(),
            min_valid_seconds: None,
        })
        .await
        .expect("the connection still serves")
        .into_inner()
        .access_token;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(broker.token("default").await, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_at_its_connection_cap_does_not_lock_out_another() {
    let (fake, broker) = broker_with_limits("connections_per_uid = 4\n").await;
    // Root (this process) takes every connection it may have, and holds them.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(channel(&broker).await);
    }
    let root = broker.ctl(&["token", "--account", "default"]).await;
    assert_ne!(root.code, 0, "a fifth connection of root is refused");
    assert!(root.stdout.is_empty(), "no token: {}", root.stdout);
    assert!(
        root.stderr.contains("uid 0 already has 4 connections open")
            && root.stderr.contains("connections_per_uid"),
        "the CLI says why: {}",
        root.stderr
    );

    // nobody is another uid: served as before.
    let ctl = workspace_bin("therappai-brokerctl");
    let nobody = broker
        .run_ctl(AS_NOBODY, &ctl, &["token", "--account", "default"], None)
        .await;
    assert_eq!(nobody.code, 0, "nobody is served: {}", nobody.stderr);
    assert!(
        fake.issued_tokens()
            .contains(&nobody.stdout.trim().to_owned())
    );
    assert!(
        broker.log_lines_with(&["refused connections", "uid=0", "limit=4"]) >= 1,
        "the refusal is logged with the uid and the limit:\n{}",
        broker.logs()
    );

    // Root's connections close: root is served again.
    drop(held);
    broker
        .token_eventually("default", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_at_its_call_cap_gets_resource_exhausted_and_another_is_served() {
    let (fake, broker) = broker_with_limits("calls_per_uid = 2\n").await;
    let mut raw = pb::broker_client::BrokerClient::new(channel(&broker).await);
    // Two WatchSession streams are two calls in flight for as long as they are open.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = raw
            .watch_session(pb::WatchSessionRequest {
                account: "default".to_owned(),
            })
            .await
            .expect("watch")
            .into_inner();
        stream.message().await.expect("first event").expect("open");
        streams.push(stream);
    }
    let status = raw
        .get_access_token(pb::GetAccessTokenRequest {
            account: "default".to_owned(),
            min_valid_seconds: None,
        })
        .await
        .expect_err("a third call of root is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("calls_per_uid"),
        "names the limit: {status:?}"
    );
    let ctl = workspace_bin("therappai-brokerctl");
    let nobody = broker
        .run_ctl(AS_NOBODY, &ctl, &["token", "--account", "default"], None)
        .await;
    assert_eq!(nobody.code, 0, "nobody is served: {}", nobody.stderr);
    assert!(
        fake.issued_tokens()
            .contains(&nobody.stdout.trim().to_owned())
    );

    // A stream that ends frees its call.
    drop(streams.pop());
    broker
        .token_eventually("default", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_the_preface_is_closed_after_the_handshake_timeout() {
    let (_fake, broker) = broker_with_limits("handshake_timeout_seconds = 1\n").await;
    let mut silent =
        std::os::unix::net::UnixStream::connect(broker.socket_path()).expect("connect");
    // The broker's word, bounded: a read that ends (EOF or reset) means it closed the socket;
    // our own read timeout running out first means it did not.
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let started = Instant::now();
    // The server's own SETTINGS come first; then the end of the stream.
    let mut sink = [0u8; 256];
    let outcome = loop {
        match silent.read(&mut sink) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let waited = started.elapsed();
    outcome.unwrap_or_else(|e| {
        panic!("the broker did not close the silent connection within 15 s: {e}")
    });
    assert!(
        waited >= Duration::from_millis(900),
        "closed after the timeout, not at accept ({waited:?})"
    );
    // It stays up for everyone else.
    broker.token("default").await;
}

/// Clock ticks of CPU time (user + system) the process `pid` has used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start at state (field 3);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_pauses_instead_of_spinning() {
    require_root();
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    // A descriptor limit a hundred idle connections exceed; the per-uid cap is not what stops
    // them here.
    options.launcher = ["prlimit", "--nofile=64:64", "--"]
        .map(str::to_owned)
        .to_vec();
    options.extra_config =
        "[connection_limits]\nconnections_per_uid = 1000\nhandshake_timeout_seconds = 120\n"
            .to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    let token = broker.token("default").await;

    let held: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(broker.socket_path()).expect("connect"))
        .collect();
    wait_until(
        "the broker to run out of file descriptors and say so",
        Duration::from_secs(10),
        || broker.log_lines_with(&["out of file descriptors"]) == 1,
    );
    // A spinning accept loop burns a whole core; a pausing one next to nothing.
    let before = cpu_ticks(broker.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(broker.pid()) - before;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("ticks");
    eprintln!("broker CPU while out of descriptors: {used} ticks in 2 s ({per_second}/s)");
    assert!(
        used < per_second * 2 / 5,
        "{used} ticks of CPU in 2 s (of {per_second}/s): the accept loop spins"
    );
    assert_eq!(
        broker.log_lines_with(&["out of file descriptors"]),
        1,
        "logged once per episode"
    );

    drop(held);
    wait_until(
        "accepting again once descriptors are free",
        Duration::from_secs(10),
        || broker.log_lines_with(&["accepting connections again"]) >= 1,
    );
    assert_eq!(
        broker
            .token_eventually("default", Duration::from_secs(10))
            .await,
        token
    );
}
