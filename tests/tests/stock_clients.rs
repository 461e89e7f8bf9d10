//! Stock gRPC clients against the real daemon, with their default options, as a user would
//! install them: Python's `grpcio` (PyPI, stubs generated from the published .proto),
//! Node.js's `@grpc/grpc-js` (npm, the .proto loaded at run time) and `buf curl
//! --unix-socket` (npm's `@bufbuild/buf`, schema by reflection). grpcio (C-core) sends the
//! socket path as the HTTP/2 `:authority`, which the broker's h2 would refuse with
//! PROTOCOL_ERROR before any handler ran; the listener normalises it. grpc-js and buf send
//! `localhost`, which passes through. grpcurl 1.8.6 (PyPI) sends the path too and finds the
//! schema by reflection v1alpha.
//!
//! Each client runs the same scenario: a token for an allowed account, PERMISSION_DENIED for
//! a configured account the caller may not use, NOT_FOUND for an unknown account, and the
//! first event (the snapshot) of a WatchSession stream.

use fake_therappai::FakeTherappai;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use therappai_broker_e2e::{
    Broker, BrokerOptions, StoreKind, fake_with_user, npm_packages, python_venv, wait_until,
};

const EMAIL: &str = "grace@example.com";
const PASSWORD: &str = "graces-long-password";
/// The release the report was made with.
const GRPCIO: &str = "1.85.1";
/// What every scenario asks for: allowed, configured but denied, not configured.
const ACCOUNTS: [&str; 3] = ["default", "other", "no-such-account"];

fn here(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A logged-in broker with `default` (the test, root, may use it) and `other` (it may not).
async fn scenario_broker() -> (FakeTherappai, Broker) {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL).with_account("other", EMAIL);
    options.extra_config = "[[allow]]\naccount = \"default\"\nuids = [0]\n".to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    (fake, broker)
}

/// Checks what a client printed for the scenario (`token FP`, `denied CODE | details`,
/// `unknown CODE | details`, `watch STATE snapshot`), then logs the account out.
async fn assert_scenario(
    client: &str,
    out: &std::process::Output,
    fake: &FakeTherappai,
    broker: &Broker,
) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {client} client failed:\n{stdout}\n{stderr}"
    );
    let line = |step: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no `{step}` line from the {client} client in:\n{stdout}"))
            .to_owned()
    };
    assert!(
        line("token ").len() > "token ".len(),
        "a token with its fingerprint"
    );
    assert!(
        line("denied ").starts_with("denied PERMISSION_DENIED"),
        "{stdout}"
    );
    assert!(
        line("unknown ").starts_with("unknown NOT_FOUND"),
        "{stdout}"
    );
    assert!(
        line("unknown ").contains("no-such-account"),
        "the status names the account: {stdout}"
    );
    assert_eq!(
        line("watch ").trim_end(),
        "watch SESSION_STATE_ACTIVE snapshot"
    );
    // An unknown account is refused before the policy runs (issue 11, defect 4): nothing
    // about it reaches the audit log.
    assert_eq!(
        broker.log_lines_with(&["no-such-account"]),
        0,
        "an unconfigured account name must not be audited: {}",
        broker.logs()
    );
    for token in fake.issued_tokens() {
        assert!(!stdout.contains(&token) && !stderr.contains(&token));
    }
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_default_options_gets_tokens_statuses_and_a_session_stream() {
    let (fake, broker) = scenario_broker().await;
    let venv = python_venv::venv(
        "grpcio-venv",
        &[
            &format!("grpcio=={GRPCIO}"),
            &format!("grpcio-tools=={GRPCIO}"),
        ],
        &["python", "-c", "import grpc, grpc_tools"],
    );
    let python = venv.join("bin/python");
    let stubs = tempfile::tempdir().expect("tempdir");
    let proto_root = here("../proto/proto");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_root)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto_root.join("therappai/broker/v1/broker.proto"))
        .status()
        .expect("run grpc_tools.protoc");
    assert!(generated.success(), "generating the Python stubs failed");

    let out = Command::new(&python)
        .arg(here("stock-clients/python_client.py"))
        .arg(stubs.path())
        .arg(broker.socket_path())
        .args(ACCOUNTS)
        .output()
        .expect("run the Python client");
    assert_scenario("Python grpcio", &out, &fake, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_grpc_js_with_default_options_gets_tokens_statuses_and_a_session_stream() {
    let (fake, broker) = scenario_broker().await;
    let packages = npm_packages::install(
        "grpc-js-client",
        &here("stock-clients/node"),
        &[
            "node",
            "-e",
            "require('@grpc/grpc-js'); require('@grpc/proto-loader')",
        ],
    );
    // The script runs from the directory that holds its node_modules, as an app's would.
    std::fs::copy(
        here("stock-clients/node/node_client.js"),
        packages.join("node_client.js"),
    )
    .expect("copy node_client.js");
    let out = Command::new("node")
        .arg(packages.join("node_client.js"))
        .arg(here("../proto/proto"))
        .arg(broker.socket_path())
        .args(ACCOUNTS)
        .output()
        .expect("run the Node.js client");
    assert_scenario("Node.js @grpc/grpc-js", &out, &fake, &broker).await;
}

/// `buf curl --unix-socket SOCKET --protocol grpc --http2-prior-knowledge` on one Broker
/// method, the schema read by reflection; `buf` as npm ships it.
fn buf_curl(buf: &Path, socket: &Path, method: &str, data: &str) -> Command {
    let mut command = Command::new(buf);
    command
        .arg("curl")
        .arg("--unix-socket")
        .arg(socket)
        .args([
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--timeout",
            "20s",
        ])
        .args(["--data", data])
        .arg(format!(
            "http://localhost/therappai.broker.v1.Broker/{method}"
        ));
    command
}

/// buf curl prints a failed call's status to stderr as JSON: `{"code": "…", "message": "…"}`.
fn buf_status(out: &std::process::Output) -> (String, String) {
    assert!(!out.status.success(), "expected buf curl to fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: serde_json::Value = serde_json::from_str(&stderr)
        .unwrap_or_else(|e| panic!("buf curl's error is not JSON ({e}):\n{stderr}"));
    let text = |key: &str| error[key].as_str().unwrap_or_default().to_owned();
    (text("code"), text("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_over_the_unix_socket_gets_tokens_statuses_and_a_session_stream() {
    let (fake, broker) = scenario_broker().await;
    let packages = npm_packages::install(
        "buf-curl",
        &here("stock-clients/buf"),
        &["node_modules/.bin/buf", "--version"],
    );
    let buf = packages.join("node_modules/.bin/buf");
    let socket = broker.socket_path();
    let [allowed, denied, unknown] = ACCOUNTS.map(|a| format!("{{\"account\":\"{a}\"}}"));

    let out = buf_curl(&buf, socket, "GetAccessToken", &allowed)
        .output()
        .expect("run buf curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "buf curl GetAccessToken failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("buf curl prints JSON");
    let token = answer["accessToken"].as_str().unwrap_or_default();
    assert!(
        fake.issued_tokens().iter().any(|t| t == token),
        "buf curl got a token the fake issued"
    );
    assert_eq!(answer["fingerprint"].as_str().map(str::len), Some(8));

    let out = buf_curl(&buf, socket, "GetAccessToken", &denied)
        .output()
        .expect("run buf curl");
    assert_eq!(buf_status(&out).0, "permission_denied");
    let out = buf_curl(&buf, socket, "GetAccessToken", &unknown)
        .output()
        .expect("run buf curl");
    let (code, message) = buf_status(&out);
    assert_eq!(code, "not_found");
    assert!(message.contains("no-such-account"), "{message}");

    // A server stream: buf curl prints each message as it comes; the first is the snapshot.
    // buf is a Node.js wrapper around the Go binary, so both are stopped as a process group.
    let mut watch = buf_curl(&buf, socket, "WatchSession", &allowed);
    std::os::unix::process::CommandExt::process_group(&mut watch, 0);
    let mut child = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run buf curl WatchSession");
    let stdout = child.stdout.take().expect("stdout");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Messages are printed as indented JSON objects, each ending with a line `}`.
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            if line == "}" {
                let _ = first_tx.send(text);
                return;
            }
        }
    });
    let mut first = None;
    wait_until(
        "buf curl to print the WatchSession snapshot",
        Duration::from_secs(20),
        || {
            first = first_rx.try_recv().ok();
            first.is_some()
        },
    );
    let pgid = i32::try_from(child.id()).expect("pid fits i32");
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    child.wait().expect("reap buf curl");
    let event: serde_json::Value =
        serde_json::from_str(&first.expect("first message")).expect("a JSON message");
    assert_eq!(event["state"], "SESSION_STATE_ACTIVE", "{event}");
    assert_eq!(event["snapshot"], true, "{event}");
    assert_eq!(event["account"], "default", "{event}");

    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_stock_options_gets_tokens_statuses_and_a_session_stream() {
    use therappai_broker_e2e::grpcurl::{run_grpcurl, run_grpcurl_with};
    let (fake, broker) = scenario_broker().await;
    let socket = broker.socket_path();
    let [allowed, denied, unknown] = ACCOUNTS.map(|a| format!("{{\"account\":\"{a}\"}}"));
    let method = |name: &str| format!("therappai.broker.v1.Broker/{name}");

    let (ok, out, err) = run_grpcurl(socket, Some(&allowed), &[&method("GetAccessToken")]);
    assert!(ok, "grpcurl GetAccessToken failed: {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("grpcurl prints JSON");
    let token = answer["accessToken"].as_str().unwrap_or_default();
    assert!(
        fake.issued_tokens().iter().any(|t| t == token),
        "grpcurl got a token the fake issued"
    );

    let (ok, _, err) = run_grpcurl(socket, Some(&denied), &[&method("GetAccessToken")]);
    assert!(!ok && err.contains("Code: PermissionDenied"), "{err}");
    let (ok, _, err) = run_grpcurl(socket, Some(&unknown), &[&method("GetAccessToken")]);
    assert!(!ok && err.contains("Code: NotFound"), "{err}");
    assert!(
        err.contains("no-such-account"),
        "the status names the account: {err}"
    );

    // A server stream: grpcurl prints each message as it arrives; -max-time ends the call
    // (with DeadlineExceeded) after the snapshot was printed.
    let (_, out, err) = run_grpcurl_with(
        socket,
        Some(&allowed),
        &["-max-time", "2"],
        &[&method("WatchSession")],
    );
    let first = out.split_inclusive("\n}\n").next().unwrap_or_default();
    let event: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("no WatchSession message ({e}):\n{out}\n{err}"));
    assert_eq!(event["state"], "SESSION_STATE_ACTIVE", "{event}");
    assert_eq!(event["snapshot"], true, "{event}");
    for token in fake.issued_tokens() {
        assert!(!err.contains(&token));
    }
    let out = broker.ctl(&["logout", "--account", "default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}
