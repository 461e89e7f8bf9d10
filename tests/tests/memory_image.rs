//! After `logout`, the broker's memory holds no fragment of that account's tokens or
//! password: not in its live data, and not in freed buffers of the HTTP, TLS and gRPC
//! layers (the daemon's zeroizing allocator wipes every block it frees; upstream
//! connections are not pooled). Checked the strict way, by reading every readable mapping
//! through /proc/PID/mem, and the attacker's way, with a `gcore` image. Before logout, the
//! same scanner finds the live refresh token, only in the secret arena's locked,
//! undumpable pages; and the core-file limit is 0.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::time::Duration;
use therappai_broker_e2e::memory_image::{self, Needles};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};

const EMAIL: &str = "dora@example.com";
const PASSWORD: &str = "doras-memorable-password-9Kq2xZ";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fragment_of_a_logged_out_account_s_tokens_stays_in_memory() {
    // Short-lived access tokens, so the background refresher renews them every couple of
    // seconds once they are in use; every refresh rotates the refresh token.
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(3)).await;
    fake.knobs().set_rotation(true);
    let mut options = BrokerOptions::new(StoreKind::SecretService, EMAIL);
    options.revoke_path = Some("/token/blacklist/".to_owned());
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    let pid = broker.pid();
    assert_core_limit_is_zero(pid);

    broker.login("default", PASSWORD).await;
    let mut client = broker.client().await;
    for _ in 0..3 {
        broker.token("default").await;
        client
            .access_token("default")
            .await
            .expect("a token through client-lib");
        let served = fake.counters().refresh_ok;
        wait_until("a background refresh", WAIT, || {
            fake.counters().refresh_ok > served
        });
    }
    // Then long-lived ones, so the live refresh token stays put while it is looked for.
    fake.knobs().set_access_lifetime(Duration::from_secs(600));
    let before = fake.counters().refresh_ok;
    broker.token("default").await;
    wait_until("a refresh to a long-lived token", WAIT, || {
        fake.counters().refresh_ok > before
    });
    broker.token("default").await;
    client
        .access_token("default")
        .await
        .expect("a cached token through client-lib");
    drop(client);
    wait_for_connections_to_close(&broker).await;

    // Control: the scanner finds the live refresh token, and only in the secret arena.
    let issued = fake.issued_tokens();
    let live_refresh = issued
        .iter()
        .rev()
        .find(|t| memory_image::is_refresh_token(t))
        .expect("a refresh token was issued")
        .clone();
    let mut live = Needles::default();
    for part in memory_image::secret_parts(&live_refresh) {
        live.add("the live refresh token", part);
    }
    let found = live.scan(&memory_image::read_process(pid));
    assert!(
        !found.is_empty(),
        "the scanner must find the live refresh token in /proc/PID/mem (the control failed)"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    for (_, at, region) in &found.hits {
        let (flags, locked_kb) = mapping_flags(&smaps, *at).expect("the hit's mapping");
        assert!(
            flags.split_whitespace().any(|f| f == "dd") && locked_kb > 0,
            "the live refresh token is outside the locked, undumpable secret arena, at {at:#x} in {region} (VmFlags:{flags}, Locked: {locked_kb} kB)"
        );
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    if let Some(image) = memory_image::gcore(pid, scratch.path()) {
        // Memory segments only: a thread's saved vector registers may hold 16 bytes of the
        // token it last copied, which says nothing about MADV_DONTDUMP.
        let memory: Vec<_> = image
            .into_iter()
            .filter(|r| !r.description.contains("notes"))
            .collect();
        let in_core = live.scan(&memory);
        assert!(
            in_core.is_empty(),
            "MADV_DONTDUMP pages must not be in a core image: {}",
            in_core.summary()
        );
    }

    // Logout, and wait until it has finished: the upstream was told, status says so, and
    // the CLI's connection is gone.
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_until("the blacklist call", WAIT, || {
        fake.counters().blacklist_calls >= 1
    });
    let status = broker.ctl(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["accounts"][0]["state"], "logged-out", "{status}");
    wait_for_connections_to_close(&broker).await;

    // Every token the fake issued (and so received back) for this account, and the password.
    let issued = fake.issued_tokens();
    assert!(
        issued.len() >= 10,
        "the flow must have issued and rotated several tokens, got {}",
        issued.len()
    );
    let mut needles = Needles::default();
    for (i, token) in issued.iter().enumerate() {
        let kind = if memory_image::is_refresh_token(token) {
            "refresh"
        } else {
            "access"
        };
        for part in memory_image::secret_parts(token) {
            needles.add(&format!("{kind} token #{i}"), part);
        }
    }
    needles.add("the password", PASSWORD);

    let found = needles.scan(&memory_image::read_process(pid));
    assert!(
        found.is_empty(),
        "/proc/PID/mem after logout holds {}",
        found.summary()
    );
    if let Some(image) = memory_image::gcore(pid, scratch.path()) {
        let in_core = needles.scan(&image);
        assert!(
            in_core.is_empty(),
            "a gcore image after logout holds {}",
            in_core.summary()
        );
    }
}

/// /proc/PID/limits says no core file of any size.
#[track_caller]
fn assert_core_limit_is_zero(pid: i32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core file size line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[4..], ["0", "0", "bytes"], "{line}");
}

/// Waits until the only connection open on the broker's socket is the one asking.
async fn wait_for_connections_to_close(broker: &Broker) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = broker.ctl(&["metrics"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let open = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.split_once(' ')?;
                name.ends_with("open_connections")
                    .then(|| value.trim().to_owned())
            })
            .expect("an open_connections gauge");
        if open == "1" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections still open after {WAIT:?}: {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The VmFlags and Locked (kB) of the smaps mapping that contains `addr`.
fn mapping_flags(smaps: &str, addr: usize) -> Option<(String, u64)> {
    let mut inside = false;
    let mut locked = 0;
    for line in smaps.lines() {
        if let Some(value) = line.strip_prefix("Locked:") {
            if inside {
                locked = value.trim().trim_end_matches("kB").trim().parse().ok()?;
            }
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return Some((flags.to_owned(), locked));
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                }
            }
        }
    }
    None
}
