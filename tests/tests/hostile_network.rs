//! The network between the broker and therappai is hostile too: a proxy from the environment,
//! a redirect, an untrusted certificate, a body without end, a server that never answers. The
//! token goes to the configured server only, every call is bounded, and the broker stays up.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::Endpoint;
use std::time::Duration;
use therappai_broker_e2e::connect_proxy::ConnectProxy;
use therappai_broker_e2e::{Broker, BrokerOptions, CtlOutput, StoreKind, fake_with_user};

const EMAIL: &str = "erin@example.com";
const PASSWORD: &str = "erins-long-password";

/// A generous bound on one CLI call that ends in an upstream failure (retries included): the
/// test asserts that it ends, not how fast.
const CALL_BOUND: Duration = Duration::from_secs(60);

fn options() -> BrokerOptions {
    BrokerOptions::new(StoreKind::Keyutils, EMAIL)
}

/// `token --account default`, failing the test if it does not end within [`CALL_BOUND`].
async fn token_call(broker: &Broker) -> CtlOutput {
    tokio::time::timeout(CALL_BOUND, broker.ctl(&["token", "--account", "default"]))
        .await
        .expect("the call is bounded by the upstream timeouts")
}

/// A proxy in the daemon's environment (as a login shell or a systemd `Environment=` might
/// leave it) is not used: the token never passes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_from_the_environment_are_ignored() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let proxy = ConnectProxy::start().await;
    let mut options = options();
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
    ] {
        options.env.push((var.to_owned(), proxy.url()));
    }
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    // Login's token is issued already expired, so the token call refreshes too.
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(
        proxy.connections(),
        0,
        "the environment's proxy saw no connection"
    );
}

/// `[upstream] proxy` is the one proxy used: every call is a CONNECT to therappai's host:port
/// through it (TLS stays end to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_proxy_carries_every_call() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let proxy = ConnectProxy::start().await;
    let mut options = options();
    options.upstream_config = format!("proxy = \"{}\"\n", proxy.url());
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    // Login's token is issued already expired, so the token call refreshes too.
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().refresh_calls, 1, "a login and a refresh");
    let target = fake.local_addr().to_string();
    let connects = proxy.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|c| *c == target),
        "every connection is a CONNECT to {target}: {connects:?}"
    );
}

/// A 3xx is refused (here one to `http://` on another host): the message names the status
/// and the target's scheme and host (never its path or query), and says to fix base_url. It is
/// an upstream failure: the session lives, and once the redirect is gone it is served without
/// a new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_refused_and_the_session_survives() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = options();
    options.refresh_section.push_str("max_attempts = 1\n");
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs().redirect_next(
        Endpoint::Refresh,
        1,
        302,
        "http://evil.example/steal?refresh=x",
    );
    let out = token_call(&broker).await;
    assert_ne!(out.code, 0, "a redirect serves no token: {}", out.stdout);
    assert!(
        out.stderr.contains("HTTP 302")
            && out.stderr.contains("a redirect to http://evil.example:80")
            && out.stderr.contains("[upstream] base_url"),
        "the error names status and target and what to fix: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("steal") && !out.stderr.contains("refresh=x"),
        "never the Location's path or query: {}",
        out.stderr
    );
    assert_eq!(
        fake.counters().refresh_calls,
        1,
        "the redirect was not followed"
    );
    let token = broker.token_eventually("default", CALL_BOUND).await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().login_ok, 1, "no new login was needed");
    assert!(broker.store_has_entry("default"), "the session was kept");
    assert!(broker.is_running());
}

/// A server whose certificate the configured `ca_file` does not vouch for is refused, with a
/// message that names the certificate problem and says to check `[upstream] ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_with_what_to_check() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let other = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let broker = Broker::start(options(), &fake.base_url(), &other.ca_pem());
    let out = tokio::time::timeout(
        CALL_BOUND,
        broker.ctl_with_stdin(
            &["login", "--account", "default", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        ),
    )
    .await
    .expect("bounded");
    assert_ne!(out.code, 0, "no login through an untrusted certificate");
    assert!(
        out.stderr.contains("certificate") && out.stderr.contains("[upstream] ca_file"),
        "names the certificate problem and what to check: {}",
        out.stderr
    );
    assert_eq!(
        fake.counters().login_calls,
        0,
        "no request reached the server"
    );
    assert!(!broker.logs().contains(PASSWORD));
}

/// VmHWM (peak resident set) of `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// A 10 MiB body (streamed, no Content-Length) on `/refresh/` is cut off at the cap while it
/// streams: the call answers UNAVAILABLE saying so, the broker stays up and its peak memory
/// grows by far less than the body (a memory bound, not a timing one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_is_cut_off_while_it_streams() {
    const BODY: usize = 10 * 1024 * 1024;
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = options();
    options.refresh_section.push_str("max_attempts = 1\n");
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // The login used the HTTPS client already: its own first-use memory is in the baseline.
    let before = peak_rss_kib(broker.pid());

    fake.knobs().huge_body_next(Endpoint::Refresh, 1, BODY);
    let out = token_call(&broker).await;
    assert_ne!(out.code, 0, "no token from a huge body");
    assert!(
        out.stderr.contains("larger than 64 KiB"),
        "says the body was too large: {}",
        out.stderr
    );
    assert!(broker.is_running(), "the broker stays up");
    let grown = peak_rss_kib(broker.pid()).saturating_sub(before);
    assert!(
        grown < 4 * 1024,
        "peak RSS grew by {grown} KiB for a {} KiB body: the body was buffered",
        BODY / 1024
    );
    fake.knobs().clear_faults();
    let token = broker.token_eventually("default", CALL_BOUND).await;
    assert!(fake.issued_tokens().contains(&token));
}

/// A server that sends its headers and then trickles the body forever is cut off by
/// `request_timeout_seconds`: the call ends with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_bounded_by_the_request_timeout() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = options();
    options.request_timeout_seconds = 2;
    options.refresh_section.push_str("max_attempts = 1\n");
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    fake.knobs().trickle_next(Endpoint::Refresh, 1);
    let out = token_call(&broker).await;
    assert_ne!(out.code, 0, "no token from a body that never ends");
    assert!(
        out.stderr.contains("timed out"),
        "says it timed out: {}",
        out.stderr
    );
    let token = broker.token_eventually("default", CALL_BOUND).await;
    assert!(fake.issued_tokens().contains(&token));
}

/// A server that accepts TCP and never says a word of TLS is cut off by
/// `request_timeout_seconds` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_ends_is_bounded() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("address").port();
    // Accepts and holds every connection, reading and writing nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = options();
    options.request_timeout_seconds = 2;
    let broker = Broker::start(
        options,
        &format!("https://127.0.0.1:{port}/api/v1"),
        &fake.ca_pem(),
    );
    let out = tokio::time::timeout(
        CALL_BOUND,
        broker.ctl_with_stdin(
            &["login", "--account", "default", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        ),
    )
    .await
    .expect("bounded by the request timeout");
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("timed out") || out.stderr.contains("unreachable"),
        "an upstream failure: {}",
        out.stderr
    );
    holder.abort();
}
