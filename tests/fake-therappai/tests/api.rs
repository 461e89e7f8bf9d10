//! The fake, driven over real HTTPS with reqwest trusting only its CA.
#![expect(
    clippy::expect_used,
    reason = "test helpers report a failed step by panicking"
)]

use std::time::Duration;

use fake_therappai::{Endpoint, FakeConfig, FakeTherappai};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EMAIL: &str = "ada@example.test";
const PASSWORD: &str = "correct horse";

async fn start(rotate: bool) -> FakeTherappai {
    let mut config = FakeConfig::default().with_user(EMAIL, PASSWORD);
    config.rotate_refresh_tokens = rotate;
    FakeTherappai::start(config).await.expect("start fake")
}

fn client(fake: &FakeTherappai) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(fake.ca_pem().as_bytes()).expect("parse CA");
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("build client")
}

async fn post(fake: &FakeTherappai, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = client(fake)
        .post(format!("{}{path}", fake.base_url()))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[track_caller]
fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("expected string field {name:?} in {body}"))
}

async fn login(fake: &FakeTherappai) -> (String, String) {
    let (status, body) = post(
        fake,
        "/login/",
        json!({"email": EMAIL, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "login answered {body}");
    (
        field(&body, "access").to_owned(),
        field(&body, "refresh").to_owned(),
    )
}

async fn me(fake: &FakeTherappai, access: &str) -> (StatusCode, Value) {
    let resp = client(fake)
        .get(format!("{}/me/", fake.base_url()))
        .bearer_auth(access)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn login_ok_returns_two_working_tokens() {
    let fake = start(false).await;
    assert!(fake.base_url().starts_with("https://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/api/v1"));
    let (access, refresh) = login(&fake).await;
    assert_ne!(access, refresh);
    let (status, body) = me(&fake, &access).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"email": EMAIL}));
    assert_eq!(fake.issued_tokens(), vec![refresh, access]);
    let c = fake.counters();
    assert_eq!((c.login_calls, c.login_ok, c.me_ok), (1, 1, 1));
}

#[tokio::test]
async fn login_with_wrong_password_is_401() {
    let fake = start(false).await;
    let (status, body) = post(
        &fake,
        "/login/",
        json!({"email": EMAIL, "password": "nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"detail": "No active account found with the given credentials"})
    );
    assert_eq!(fake.counters().login_failed, 1);
    assert!(fake.issued_tokens().is_empty());
}

#[tokio::test]
async fn login_with_missing_field_is_400_per_field() {
    let fake = start(false).await;
    let (status, body) = post(&fake, "/login/", json!({"email": EMAIL})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"password": ["This field is required."]}));
    assert_eq!(fake.counters().bad_requests, 1);
}

#[tokio::test]
async fn login_with_authorization_header_is_refused_and_counted() {
    let fake = start(false).await;
    let resp = client(&fake)
        .post(format!("{}/login/", fake.base_url()))
        .bearer_auth("something")
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.counters().login_with_authorization_header, 1);
    assert_eq!(fake.counters().login_ok, 0);
}

#[tokio::test]
async fn refresh_without_rotation_returns_access_only() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    for _ in 0..2 {
        let (status, body) = post(&fake, "/refresh/", json!({"refresh": refresh})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.get("refresh").is_none(),
            "no rotation expected: {body}"
        );
        let (status, _) = me(&fake, field(&body, "access")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(fake.counters().refresh_ok, 2);
}

#[tokio::test]
async fn rotation_blacklists_the_submitted_refresh_token() {
    let fake = start(true).await;
    let (_, old) = login(&fake).await;
    let (status, body) = post(&fake, "/refresh/", json!({"refresh": old})).await;
    assert_eq!(status, StatusCode::OK);
    let new = field(&body, "refresh").to_owned();
    assert_ne!(new, old);
    assert!(fake.is_refresh_blacklisted(&old));

    let (status, body) = post(&fake, "/refresh/", json!({"refresh": old})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "token_not_valid");

    let (status, _) = post(&fake, "/refresh/", json!({"refresh": new})).await;
    assert_eq!(status, StatusCode::OK);
    let c = fake.counters();
    assert_eq!(
        (c.refresh_calls, c.refresh_ok, c.refresh_rejected),
        (3, 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refresh_with_rotation_has_one_winner() {
    let fake = start(true).await;
    let (_, refresh) = login(&fake).await;
    let client = client(&fake);
    let url = format!("{}/refresh/", fake.base_url());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = client.post(&url).json(&json!({"refresh": refresh}));
        set.spawn(async move { request.send().await.expect("send").status() });
    }
    let statuses = set.join_all().await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "exactly one refresh may win: {statuses:?}");
    assert_eq!(fake.counters().refresh_rejected, 7);
}

#[tokio::test]
async fn invalid_refresh_has_token_not_valid_shape() {
    let fake = start(false).await;
    let (access, _) = login(&fake).await;
    for token in ["garbage", access.as_str()] {
        let (status, body) = post(&fake, "/refresh/", json!({"refresh": token})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({"detail": "Token is invalid or expired", "code": "token_not_valid"})
        );
    }
    let (status, body) = post(&fake, "/refresh/", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"refresh": ["This field is required."]}));
}

#[tokio::test]
async fn expired_access_is_rejected_by_me() {
    let fake = start(false).await;
    fake.knobs().set_access_lifetime(Duration::ZERO);
    let (access, _) = login(&fake).await;
    let (status, body) = me(&fake, &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "token_not_valid");
    assert_eq!(fake.counters().me_rejected, 1);
}

#[tokio::test]
async fn blacklist_endpoint_kills_a_refresh_token() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    let (status, body) = post(&fake, "/token/blacklist/", json!({"refresh": refresh})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, _) = post(&fake, "/refresh/", json!({"refresh": refresh})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = post(&fake, "/token/blacklist/", json!({"refresh": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "token_not_valid");
    let c = fake.counters();
    assert_eq!((c.blacklist_calls, c.blacklist_ok), (2, 1));
}

#[tokio::test]
async fn disabled_revoke_path_is_404() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    fake.knobs().set_revoke_path_enabled(false);
    let (status, _) = post(&fake, "/token/blacklist/", json!({"refresh": refresh})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!fake.is_refresh_blacklisted(&refresh));
}

#[tokio::test]
async fn revoke_all_kills_existing_sessions_only() {
    let fake = start(false).await;
    let (_, old) = login(&fake).await;
    fake.revoke_all_refresh_tokens();
    let (status, _) = post(&fake, "/refresh/", json!({"refresh": old})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, new) = login(&fake).await;
    let (status, _) = post(&fake, "/refresh/", json!({"refresh": new})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn fail_next_with_retry_after_then_recovers() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    fake.knobs()
        .fail_next_with_retry_after(Endpoint::Refresh, 2, 429, Duration::from_millis(1500));
    for _ in 0..2 {
        let resp = client(&fake)
            .post(format!("{}/refresh/", fake.base_url()))
            .json(&json!({"refresh": refresh}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
    }
    let (status, _) = post(&fake, "/refresh/", json!({"refresh": refresh})).await;
    assert_eq!(status, StatusCode::OK);
    let c = fake.counters();
    assert_eq!(
        (c.refresh_calls, c.faults_injected, c.refresh_ok),
        (3, 2, 1)
    );
    // Faults are per endpoint: login was never affected.
    assert_eq!(c.login_ok, 1);
}

#[tokio::test]
async fn down_answers_503_everywhere() {
    let fake = start(false).await;
    fake.knobs().set_down(true);
    let (status, _) = post(
        &fake,
        "/login/",
        json!({"email": EMAIL, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let c = fake.counters();
    assert_eq!((c.login_calls, c.faults_injected), (1, 1));
    fake.knobs().set_down(false);
    login(&fake).await;
}

#[tokio::test]
async fn disconnect_is_a_transport_error() {
    let fake = start(false).await;
    fake.knobs().disconnect_next(Endpoint::Login, 1);
    let err = client(&fake)
        .post(format!("{}/login/", fake.base_url()))
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await;
    assert!(err.is_err(), "expected a transport error, got {err:?}");
    login(&fake).await;
}

#[tokio::test]
async fn malformed_and_empty_refresh_answers() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    fake.knobs().set_malformed_refresh(true);
    let resp = client(&fake)
        .post(format!("{}/refresh/", fake.base_url()))
        .json(&json!({"refresh": refresh}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.json::<Value>().await.is_err(), "body must not be JSON");
    fake.knobs().set_malformed_refresh(false);
    fake.knobs().set_refresh_missing_access(true);
    let (status, body) = post(&fake, "/refresh/", json!({"refresh": refresh})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_eq!(fake.counters().refresh_ok, 0);
}

#[tokio::test]
async fn refresh_delay_holds_the_answer_but_counts_on_arrival() {
    let fake = start(false).await;
    let (_, refresh) = login(&fake).await;
    fake.knobs().set_refresh_delay(Duration::from_secs(30));
    let slow = client(&fake)
        .post(format!("{}/refresh/", fake.base_url()))
        .json(&json!({"refresh": refresh}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(slow.is_err_and(|e| e.is_timeout()));
    assert_eq!(fake.counters().refresh_calls, 1);
    assert_eq!(fake.counters().refresh_ok, 0);
    // Login is not held.
    login(&fake).await;
}

#[tokio::test]
async fn token_in_url_is_refused_and_counted() {
    let fake = start(false).await;
    let (access, _) = login(&fake).await;
    for url in [
        format!("{}/me/?access_token=abc", fake.base_url()),
        format!("{}/me/?x={access}", fake.base_url()),
    ] {
        let status = client(&fake).get(url).send().await.expect("send").status();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(fake.counters().requests_with_token_in_url, 2);
    assert_eq!(fake.counters().me_ok, 0);
}

#[tokio::test]
async fn localhost_name_verifies_and_ca_file_is_written() {
    let fake = start(false).await;
    let url = fake.base_url().replace("127.0.0.1", "localhost");
    let resp = client(&fake)
        .post(format!("{url}/login/"))
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .expect("TLS to localhost");
    assert_eq!(resp.status(), StatusCode::OK);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = fake.write_ca_file(dir.path()).expect("write CA");
    let pem = std::fs::read_to_string(path).expect("read CA");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let fake = start(false).await;
    let client = client(&fake);
    let url = format!("{}/me/", fake.base_url());
    client.get(&url).send().await.expect("up");
    fake.shutdown().await;
    assert!(client.get(&url).send().await.is_err());
}

#[tokio::test]
async fn unknown_path_and_wrong_method() {
    let fake = start(false).await;
    let c = client(&fake);
    let status = c
        .get(format!("{}/nope/", fake.base_url()))
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = c
        .get(format!("{}/login/", fake.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
}
