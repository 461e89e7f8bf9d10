//! Harness for the end-to-end tests: the real `therappai-broker` and `therappai-brokerctl`
//! binaries, the HTTPS fake of therappai, and real secure stores (gnome-keyring's Secret
//! Service on a private D-Bus session, and the kernel keyring).
//!
//! The binaries are built by `cargo xtask test` (or `cargo build --workspace`) before the
//! tests run; the harness finds them next to the test executable.

#![expect(
    clippy::expect_used,
    reason = "test harness: a failed setup step panics with its reason"
)]

pub mod broker;
pub mod connect_proxy;
pub mod grpcurl;
pub mod hostile;
pub mod keyring;
pub mod leak_scan;
pub mod memory_image;
pub mod npm_packages;
pub mod openbao;
pub mod peer;
pub mod python_venv;
pub mod systemd_box;

pub use broker::{Broker, BrokerOptions, CtlOutput, StoreKind, broker_refuses};
pub use keyring::SecretServiceSession;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Path of a binary of this workspace, built into the same target directory as the tests.
#[track_caller]
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // A test lives in target/<profile>/deps/, a binary (the benchmark) in target/<profile>/.
    let mut dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name no other test (or earlier run) uses, for keyring services and accounts.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Asserts that none of `secrets` occurs in `haystack` (named `what` in the failure).
#[track_caller]
pub fn assert_no_secret(what: &str, haystack: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            secret.len() >= 8,
            "a secret to scan for must be long enough to be meaningful"
        );
        assert!(
            !haystack.contains(secret.as_str()),
            "{what} contains a secret (sha prefix of the secret omitted on purpose); search it for the token the fake issued"
        );
    }
}

/// The fake therappai with one user, issuing access tokens that live `access_lifetime`
/// (`Duration::ZERO`: already expired, so the first token request after a login refreshes).
pub async fn fake_with_user(
    email: &str,
    password: &str,
    access_lifetime: Duration,
) -> fake_therappai::FakeTherappai {
    fake_therappai::FakeTherappai::start(fake_therappai::FakeConfig {
        users: vec![(email.to_owned(), password.to_owned())],
        access_lifetime,
        ..fake_therappai::FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}
