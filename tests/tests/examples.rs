//! The copyable apps in `examples/` (Python, Node.js) against the real daemon and the HTTPS
//! fake of therappai: each gets a token, calls `GET /me/` with it, and on the 401 the fake is
//! told to answer once reports the token with ReportRejected and retries once with the fresh
//! one; then it watches the session and returns to its login prompt when an admin logs the
//! account out. Python runs in a venv the test makes, Node.js after `npm ci` in a directory
//! the test owns, both under `target/`.

#![expect(clippy::expect_used, reason = "tests: a failed step is a failed test")]

use fake_therappai::Endpoint;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use therappai_broker_e2e::{
    Broker, BrokerOptions, StoreKind, fake_with_user, npm_packages, python_venv, wait_until,
};

const EMAIL: &str = "ada@example.com";
const PASSWORD: &str = "adas-long-password";

fn here(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A child's stdout, line by line, as it comes.
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn of(child: &mut std::process::Child) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Self(lines)
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }

    /// Waits (bounded) for a line starting with `prefix`, and returns it.
    #[track_caller]
    fn wait_for(&self, prefix: &str, child: &mut std::process::Child) -> String {
        let mut found = None;
        wait_until(
            &format!("the example to print `{prefix}`"),
            Duration::from_secs(30),
            || {
                found = self.all().into_iter().find(|l| l.starts_with(prefix));
                if found.is_none()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "the example exited ({status}) without printing `{prefix}`; it printed:\n{}",
                        self.all().join("\n")
                    );
                }
                found.is_some()
            },
        );
        found.expect("found")
    }
}

/// Runs `example` (its environment set here) through the whole scenario and checks each step.
async fn run_example(mut example: Command) {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.extra_config = "[[allow]]\naccount = \"default\"\nuids = [0]\n".to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    // therappai refuses the first API call, as it would a token revoked on the server.
    fake.knobs().fail_next(Endpoint::Me, 1, 401);
    let before = fake.counters();

    let mut child = example
        .env("THERAPPAI_BROKER_SOCKET", broker.socket_path())
        .env("THERAPPAI_CA_FILE", broker.path("ca.pem"))
        .env_remove("THERAPPAI_API_URL")
        .env_remove("THERAPPAI_ACCOUNT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let lines = Lines::of(&mut child);
    lines.wait_for("session SESSION_STATE_ACTIVE", &mut child);
    let printed = lines.all();
    let tokens: Vec<&String> = printed.iter().filter(|l| l.starts_with("token ")).collect();
    assert_eq!(tokens.len(), 2, "a token, then the fresh one: {printed:?}");
    assert_ne!(tokens[0], tokens[1], "the retry used a fresh token");
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("therappai answered 401: reported to the broker")),
        "{printed:?}"
    );
    assert!(
        printed.contains(&format!("signed in as {EMAIL}")),
        "the API call with the fresh token succeeded: {printed:?}"
    );
    let after = fake.counters();
    assert_eq!(after.me_calls - before.me_calls, 2, "one call, one retry");
    assert_eq!(after.me_ok - before.me_ok, 1, "the retry was accepted");
    assert_eq!(
        after.refresh_ok - before.refresh_ok,
        1,
        "ReportRejected made the broker refresh once"
    );

    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    lines.wait_for("session SESSION_STATE_LOGGED_OUT", &mut child);
    let prompt = lines.wait_for("login prompt", &mut child);
    assert!(
        prompt.contains("therappai-brokerctl login --account default"),
        "{prompt}"
    );
    let mut status = None;
    wait_until(
        "the example to exit at its login prompt",
        Duration::from_secs(10),
        || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        },
    );
    let stderr = child
        .stderr
        .take()
        .map(|mut e| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).expect("read stderr");
            text
        })
        .unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the example failed: {stderr}"
    );
    let printed = lines.all().join("\n");
    for token in fake.issued_tokens() {
        assert!(!printed.contains(&token) && !stderr.contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_retries_after_a_401_and_returns_to_the_login_prompt() {
    let requirements = std::fs::read_to_string(here("../examples/python/requirements.txt"))
        .expect("read examples/python/requirements.txt");
    let packages: Vec<&str> = requirements
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let venv = python_venv::venv(
        "example-python-venv",
        &packages,
        &["python", "-c", "import grpc, grpc_tools"],
    );
    let mut example = Command::new(venv.join("bin/python"));
    example.arg(here("../examples/python/client.py"));
    run_example(example).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_example_retries_after_a_401_and_returns_to_the_login_prompt() {
    let packages = npm_packages::install(
        "example-node",
        &here("../examples/node"),
        &[
            "node",
            "-e",
            "require('@grpc/grpc-js'); require('@grpc/proto-loader')",
        ],
    );
    // The app runs next to its node_modules, as a copy of the example would.
    std::fs::copy(
        here("../examples/node/client.js"),
        packages.join("client.js"),
    )
    .expect("copy client.js");
    let mut example = Command::new("node");
    example
        .arg(packages.join("client.js"))
        .env("THERAPPAI_BROKER_PROTO", here("../proto/proto"));
    run_example(example).await;
}
