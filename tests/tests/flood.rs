//! The flood test (issue 11): while `nobody` opens 2,000 connections (most over its per-uid
//! cap: counted, not asserted one by one), sends the HTTP/2 preface a byte at a time or junk in
//! its place, sends oversized messages and account names of every length and byte value over
//! real gRPC requests, root keeps asking for its cached token. Asserted: every one of root's
//! calls succeeded with the cached token, the broker stayed up, answers afterwards, and its
//! descriptor count went back down. Root's latency, quiet and under the flood, is printed for
//! information only. The broker runs with 1,024 descriptors, so that without the per-uid cap
//! the flood would exhaust them. Needs root (`setpriv`).
//!
//! The hostile side is this same test binary, re-executed as `nobody` with
//! [`CHILD_ENV`] set: its test `flood_hostile_child` does nothing otherwise.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use therappai_broker_e2e::hostile::{Tally, channel, connection_flood, junk_calls};
use therappai_broker_e2e::peer::{AS_NOBODY, require_root};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};
use therappai_broker_proto::v1 as pb;

const EMAIL: &str = "victor@example.com";
const PASSWORD: &str = "victors-long-password";
/// Set (to the socket's path) in the re-executed hostile child.
const CHILD_ENV: &str = "THERAPPAI_E2E_FLOOD_SOCKET";
const CONNECTIONS: usize = 2_000;
/// How long the flood holds its connections: longer than root's per-call bound
/// ([`CALL_BOUND`]), so that a flood that locked root out (no per-uid cap: no descriptor left to
/// accept root's new connections) fails the test instead of only slowing it.
const HOLD: Duration = Duration::from_secs(25);
/// Liveness bound of one of root's calls (not a latency target).
const CALL_BOUND: Duration = Duration::from_secs(20);

/// The hostile side: runs only when re-executed by the flood test, as another uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_hostile_child() {
    let Ok(socket) = std::env::var(CHILD_ENV) else {
        return;
    };
    let socket = PathBuf::from(socket);
    // gRPC channels first: admitted before the flood takes the rest of the cap.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.extend(channel(&socket).await);
    }
    assert!(
        !channels.is_empty(),
        "the hostile child could not connect at all"
    );
    let mut flood = Tally::default();
    let mut junk = Tally::default();
    tokio::join!(
        connection_flood(&socket, CONNECTIONS, HOLD, &mut flood),
        async {
            // Twice: once while the flood connects, once while it holds.
            junk_calls(&channels, &mut junk).await;
            junk_calls(&channels, &mut junk).await;
        }
    );
    let tally = Tally {
        calls: junk.calls,
        outcomes: junk.outcomes,
        ..flood
    };
    println!("{}", tally.line());
}

/// Root's client: one long-lived connection, and every tenth call a new one (a flood that
/// exhausts descriptors or the accept loop shows there first).
struct Victim {
    socket: PathBuf,
    client: pb::broker_client::BrokerClient<tonic::transport::Channel>,
    token: String,
    calls: usize,
}

impl Victim {
    async fn connect(socket: PathBuf, token: String) -> Self {
        let client = Self::client(&socket).await;
        Self {
            socket,
            client,
            token,
            calls: 0,
        }
    }

    async fn client(
        socket: &std::path::Path,
    ) -> pb::broker_client::BrokerClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
                .expect("endpoint")
                .connect()
                .await
                .expect("root connects to the broker");
        pb::broker_client::BrokerClient::new(channel)
    }

    /// One GetAccessToken, asserted to succeed with the cached token; returns its latency.
    async fn call(&mut self, phase: &str) -> Duration {
        self.calls += 1;
        let started = Instant::now();
        let fresh = self.calls % 10 == 0;
        let answer = tokio::time::timeout(CALL_BOUND, async {
            let mut client = if fresh {
                Self::client(&self.socket).await
            } else {
                self.client.clone()
            };
            client
                .get_access_token(pb::GetAccessTokenRequest {
                    account: "default".to_owned(),
                    min_valid_seconds: None,
                })
                .await
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "root's call #{} ({phase}) got no answer within {CALL_BOUND:?}",
                self.calls
            )
        });
        let elapsed = started.elapsed();
        let answer = answer.unwrap_or_else(|status| {
            panic!(
                "root's call #{} ({phase}, fresh connection: {fresh}) failed: {status:?}",
                self.calls
            )
        });
        assert!(
            answer.get_ref().access_token == self.token,
            "root's call #{} ({phase}) was not answered with the cached token",
            self.calls
        );
        elapsed
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the broker's /proc/PID/fd")
        .count()
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_uid_does_not_stop_another_from_getting_its_cached_token() {
    require_root();
    let started = Instant::now();
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(600)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.top_config = "socket_mode = \"0666\"\n".to_owned();
    options.shared_dir = true;
    // The widest rule: any account name from nobody gets as far as the broker lets it.
    options.extra_config = "[[allow]]\naccount = \"*\"\nuids = [0, 65534]\n".to_owned();
    options.launcher = ["prlimit", "--nofile=1024:1024", "--"]
        .map(str::to_owned)
        .to_vec();
    options.log_level = "info".to_owned();
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    let token = broker.token("default").await;
    let mut victim = Victim::connect(broker.socket_path().to_owned(), token).await;

    let mut quiet = Vec::new();
    for _ in 0..300 {
        quiet.push(victim.call("quiet").await);
    }
    let fds_quiet = fd_count(broker.pid());

    let mut child = tokio::process::Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "flood_hostile_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, broker.socket_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the hostile child as nobody");
    let flood_started = Instant::now();
    let mut flooded = Vec::new();
    let mut fds_peak = fds_quiet;
    loop {
        flooded.push(victim.call("under the flood").await);
        if flooded.len() % 20 == 0 {
            fds_peak = fds_peak.max(fd_count(broker.pid()));
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(
                flood_started.elapsed() < Duration::from_secs(90),
                "the hostile child did not finish within 90 s"
            );
        }
    }
    let flood_time = flood_started.elapsed();
    let output = child
        .wait_with_output()
        .await
        .expect("the hostile child's output");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the hostile child failed ({}): {report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |key: &str| {
        Tally::field(&report, key)
            .unwrap_or_else(|| panic!("no {key} in the child's report: {report}"))
    };
    assert_eq!(field("connections_tried"), CONNECTIONS as u64, "{report}");
    assert!(field("calls") > 600, "the junk calls ran: {report}");

    // The broker stayed up, answers, and lets go of the flood's descriptors.
    assert!(broker.is_running(), "the broker stayed up");
    victim.call("after the flood").await;
    let pid = broker.pid();
    let mut fds_after = 0;
    wait_until(
        "the broker's descriptor count to go back down",
        Duration::from_secs(20),
        || {
            fds_after = fd_count(pid);
            fds_after <= fds_quiet + 4
        },
    );
    victim.call("after the flood").await;

    let (quiet_p50, quiet_p99) = percentiles(&mut quiet);
    let (flood_p50, flood_p99) = percentiles(&mut flooded);
    println!(
        "flood: root's cached GetAccessToken: quiet p50 {quiet_p50:.2} ms p99 {quiet_p99:.2} ms \
         ({} calls); under the flood p50 {flood_p50:.2} ms p99 {flood_p99:.2} ms ({} calls in \
         {:.1} s, all served); nobody: {}; broker fds quiet {fds_quiet}, peak {fds_peak}, after \
         {fds_after}; test {:.1} s",
        quiet.len(),
        flooded.len(),
        flood_time.as_secs_f64(),
        report
            .lines()
            .find_map(|l| l.split_once("FLOOD "))
            .map_or("", |(_, tally)| tally),
        started.elapsed().as_secs_f64()
    );
    let status = broker.stop();
    assert!(
        status.success(),
        "the broker exits cleanly after the flood: {status}"
    );
}
