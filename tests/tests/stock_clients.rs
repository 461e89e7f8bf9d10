//! Stock gRPC clients against the real daemon, with their default options, as a user would
//! install them: Python's `grpcio` (PyPI, stubs generated from the published .proto). grpcio
//! (C-core) sends the socket path as the HTTP/2 `:authority`, which the broker's h2 would
//! refuse with PROTOCOL_ERROR before any handler ran; the listener normalises it.
//! (grpcurl 1.8.6, which does the same, is in health_reflection_metrics.rs.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, python_venv};

const EMAIL: &str = "grace@example.com";
const PASSWORD: &str = "graces-long-password";
/// The release the report was made with.
const GRPCIO: &str = "1.85.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_default_options_gets_tokens_statuses_and_a_session_stream() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL).with_account("other", EMAIL);
    // The test runs as root: it may have `default`, not `other`.
    options.extra_config = "[[allow]]\naccount = \"default\"\nuids = [0]\n".to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;

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
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_root)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto_root.join("therappai/broker/v1/broker.proto"))
        .status()
        .expect("run grpc_tools.protoc");
    assert!(generated.success(), "generating the Python stubs failed");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stock-clients/python_client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(stubs.path())
        .arg(broker.socket_path())
        .args(["default", "other", "no-such-account"])
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    let line = |step: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no `{step}` line in:\n{stdout}"))
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
    assert_eq!(line("watch "), "watch SESSION_STATE_ACTIVE snapshot");
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
