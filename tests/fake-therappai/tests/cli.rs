//! The `fake-therappai` binary: start-up line, CA file, request log without secrets,
//! clean exit on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

#[tokio::test]
async fn binary_serves_logs_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-therappai"))
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca_path)
        .args(["--user", "demo@example.test:hunter2-demo", "--rotate"])
        .env_remove("FAKE_THERAPPAI_USERS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fake-therappai");

    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read listening line");
    let base_url = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("expected `listening URL`, got {line:?}"))
        .to_owned();
    assert!(base_url.starts_with("https://127.0.0.1:") && base_url.ends_with("/api/v1"));

    let ca = std::fs::read(&ca_path).expect("CA file written before the listening line");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
        .build()
        .expect("client");
    let body: Value = client
        .post(format!("{base_url}/login/"))
        .json(&json!({"email": "demo@example.test", "password": "hunter2-demo"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login JSON");
    let refresh = body["refresh"].as_str().expect("refresh").to_owned();
    let access = body["access"].as_str().expect("access").to_owned();
    let status = client
        .post(format!("{base_url}/refresh/"))
        .json(&json!({"refresh": refresh}))
        .send()
        .await
        .expect("refresh")
        .status();
    assert_eq!(status, 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");

    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(stderr.contains("/api/v1/login/"), "request log: {stderr}");
    assert!(stderr.contains("/api/v1/refresh/"), "request log: {stderr}");
    for secret in ["hunter2-demo", refresh.as_str(), access.as_str(), "eyJ"] {
        assert!(!stderr.contains(secret), "stderr leaked a secret: {stderr}");
    }
}
