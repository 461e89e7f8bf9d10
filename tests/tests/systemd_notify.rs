//! Under systemd's protocols without a systemd: the real daemon started by
//! `systemd-socket-activate` (LISTEN_FDS, the socket bound by the launcher) with a test
//! `NOTIFY_SOCKET` listener and a watchdog. The broker must serve on the inherited socket,
//! say READY=1 with a STATUS= summary, keep STATUS current, ping the watchdog, wrap a SIGHUP
//! reload in RELOADING=1 (with MONOTONIC_USEC) … READY=1, say STOPPING=1 at SIGTERM, and
//! leave the socket file (systemd's, not its own) in place.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, wait_until};

const EMAIL: &str = "nora@example.com";
const PASSWORD: &str = "noras-long-password";

/// Every datagram the broker sent to NOTIFY_SOCKET, in order.
fn listen(socket: UnixDatagram) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            // sd_notify ends every assignment with a newline; compare without the last one.
            let message = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
            sink.lock().expect("lock").push(message);
        }
    });
    seen
}

fn messages(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    seen.lock().expect("lock").clone()
}

#[track_caller]
fn wait_for(seen: &Arc<Mutex<Vec<String>>>, what: &str, matches: impl Fn(&str) -> bool) {
    wait_until(what, Duration::from_secs(20), || {
        messages(seen).iter().any(|m| matches(m))
    });
}

#[tokio::test]
async fn socket_activation_readiness_status_watchdog_reload_and_stop() {
    let fake = FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai");
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify.sock");
    let seen = listen(UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET"));

    // The launcher binds the socket where the harness expects it and starts the broker on
    // the first connection, as a socket unit does.
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.launcher = vec![
        "systemd-socket-activate".to_owned(),
        "-l".to_owned(),
        "{dir}/run/broker.sock".to_owned(),
        "-E".to_owned(),
        format!("NOTIFY_SOCKET={}", notify_path.display()),
        "-E".to_owned(),
        "WATCHDOG_USEC=200000".to_owned(),
    ];
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());

    broker.login("default", PASSWORD).await;
    assert!(!broker.token("default").await.is_empty());
    assert!(
        broker.log_lines_with(&["serving", "from=Systemd"]) == 1,
        "serves on the inherited socket: {}",
        broker.logs()
    );
    let all = messages(&seen);
    let ready = all
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1 sent");
    assert!(
        ready.contains("STATUS=1 account: default logged-out; store keyutils"),
        "READY comes with the summary: {ready}"
    );
    wait_for(&seen, "STATUS after login", |m| {
        m == "STATUS=1 account: default active; store keyutils"
    });
    wait_until("two watchdog pings", Duration::from_secs(20), || {
        messages(&seen)
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
            >= 2
    });

    let before_reload = messages(&seen).len();
    broker.signal(libc::SIGHUP);
    wait_until("RELOADING=1 then READY=1", Duration::from_secs(20), || {
        let after: Vec<String> = messages(&seen).split_off(before_reload);
        let reloading = after
            .iter()
            .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
        let ready = after.iter().rposition(|m| m.starts_with("READY=1"));
        matches!((reloading, ready), (Some(r), Some(d)) if r < d)
    });

    let socket = broker.socket_path().to_owned();
    broker.signal(libc::SIGTERM);
    wait_for(&seen, "STOPPING=1", |m| m.starts_with("STOPPING=1"));
    let status = broker.stop();
    assert!(status.success(), "clean stop: {status}");
    assert!(
        socket.exists(),
        "the socket belongs to the socket unit and outlives the service"
    );
}
