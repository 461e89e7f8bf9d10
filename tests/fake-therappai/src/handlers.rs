//! The HTTP surface: routing under `/api/v1`, SimpleJWT-shaped answers, and the knobs
//! applied in order (token-in-URL check, down, per-endpoint faults, then the real logic).
//!
//! Logs method, path and status only: never a query string, a body, a header value, a
//! token or a password.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::state::{Endpoint, Fault, Issued, RefreshRefused, Shared};

/// Every route lives under this prefix.
pub const BASE_PATH: &str = "/api/v1";
/// Path of the revocation endpoint, relative to [`BASE_PATH`].
pub const BLACKLIST_PATH: &str = "/token/blacklist/";

const MAX_BODY: usize = 64 * 1024;
const DJANGO_404: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n";
const INVALID_TOKEN: &str = "Token is invalid or expired";

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
pub(crate) struct InjectedDisconnect;

impl fmt::Display for InjectedDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("injected disconnect")
    }
}

impl std::error::Error for InjectedDisconnect {}

type Reply = Response<Full<Bytes>>;
type Outcome = Result<Reply, InjectedDisconnect>;
/// What goes on the wire: a reply's full body, or one streamed by a knob.
pub(crate) type WireBody = BoxBody<Bytes, std::convert::Infallible>;

/// Entry point for every request on every connection.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<WireBody>, InjectedDisconnect> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let outcome = route(&shared, req).await;
    match &outcome {
        Ok(reply) => tracing::info!(%method, %path, status = reply.status().as_u16(), "request"),
        Err(_) => tracing::info!(%method, %path, "request dropped (injected disconnect)"),
    }
    outcome.map(crate::streamed::wire_body)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Outcome {
    shared.count(|c| c.total_requests += 1);

    if uri_carries_token(req.uri()) {
        shared.count(|c| c.requests_with_token_in_url += 1);
        return Ok(json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"detail": "Tokens must not be sent in the URL."}),
        ));
    }

    let target = req
        .uri()
        .path()
        .strip_prefix(BASE_PATH)
        .and_then(|rest| match rest {
            "/login/" => Some((Endpoint::Login, Method::POST)),
            "/refresh/" => Some((Endpoint::Refresh, Method::POST)),
            BLACKLIST_PATH => Some((Endpoint::Blacklist, Method::POST)),
            "/me/" => Some((Endpoint::Me, Method::GET)),
            _ => None,
        });
    if let Some((endpoint, _)) = target {
        shared.count(|c| match endpoint {
            Endpoint::Login => c.login_calls += 1,
            Endpoint::Refresh => c.refresh_calls += 1,
            Endpoint::Blacklist => c.blacklist_calls += 1,
            Endpoint::Me => c.me_calls += 1,
        });
    }

    if shared.knobs.state().down {
        shared.count(|c| c.faults_injected += 1);
        return Ok(fault_reply(503, Some(Duration::from_secs(1))));
    }

    let Some((endpoint, allowed)) = target else {
        return Ok(not_found());
    };
    if req.method() != allowed {
        let mut reply = json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": format!("Method \"{}\" not allowed.", req.method())}),
        );
        if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
            reply.headers_mut().insert(header::ALLOW, value);
        }
        return Ok(reply);
    }

    match endpoint {
        Endpoint::Login => login(shared, req).await,
        Endpoint::Refresh => refresh(shared, req).await,
        Endpoint::Blacklist => blacklist(shared, req).await,
        Endpoint::Me => me(shared, &req),
    }
}

/// Scripted fault for `endpoint`, if one is queued (and counted).
fn injected(shared: &Shared, endpoint: Endpoint) -> Option<Outcome> {
    let fault = shared.knobs.take_fault(endpoint)?;
    shared.count(|c| c.faults_injected += 1);
    Some(match fault {
        Fault::Status {
            status,
            retry_after,
        } => Ok(fault_reply(status, retry_after)),
        Fault::Disconnect => Err(InjectedDisconnect),
        Fault::Redirect { status, location } => Ok(crate::streamed::redirect(status, &location)),
        Fault::HugeBody { bytes } => Ok(crate::streamed::reply(crate::streamed::Plan::Huge(bytes))),
        Fault::Trickle => Ok(crate::streamed::reply(crate::streamed::Plan::Trickle)),
    })
}

/// A scripted answer echoing `secret` (what the request carried) for `endpoint`, if queued.
fn echoed(shared: &Shared, endpoint: Endpoint, secret: &str) -> Option<Reply> {
    let (status, shape) = shared.knobs.take_echo(endpoint)?;
    shared.count(|c| c.faults_injected += 1);
    Some(crate::echo::reply(status, shape, secret))
}

async fn login(shared: &Shared, req: Request<Incoming>) -> Outcome {
    if req.headers().contains_key(header::AUTHORIZATION) {
        shared.count(|c| c.login_with_authorization_header += 1);
        return Ok(json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"detail": "Login must not carry an Authorization header."}),
        ));
    }
    if let Some(outcome) = injected(shared, Endpoint::Login) {
        return outcome;
    }
    let fields = match read_fields(shared, req, &["email", "password"]).await {
        Ok(fields) => fields,
        Err(reply) => return Ok(reply),
    };
    if let Some(reply) = echoed(shared, Endpoint::Login, &fields[1]) {
        return Ok(reply);
    }
    let [email, password] = [&fields[0], &fields[1]];
    let Some(user_id) = shared.authenticate(email, password) else {
        shared.count(|c| c.login_failed += 1);
        return Ok(unauthorized(
            json!({"detail": "No active account found with the given credentials"}),
        ));
    };
    let issued = shared.login(user_id);
    shared.count(|c| c.login_ok += 1);
    Ok(issued_reply(issued))
}

async fn refresh(shared: &Shared, req: Request<Incoming>) -> Outcome {
    let delay = shared.knobs.state().refresh_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(outcome) = injected(shared, Endpoint::Refresh) {
        return outcome;
    }
    let (malformed, missing_access) = {
        let knobs = shared.knobs.state();
        (knobs.malformed_refresh, knobs.refresh_missing_access)
    };
    if malformed {
        shared.count(|c| c.faults_injected += 1);
        let mut reply = Response::new(Full::new(Bytes::from_static(b"<html>upstream hiccup")));
        reply.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(reply);
    }
    if missing_access {
        shared.count(|c| c.faults_injected += 1);
        return Ok(json_reply(StatusCode::OK, &json!({})));
    }
    let fields = match read_fields(shared, req, &["refresh"]).await {
        Ok(fields) => fields,
        Err(reply) => return Ok(reply),
    };
    if let Some(reply) = echoed(shared, Endpoint::Refresh, &fields[0]) {
        return Ok(reply);
    }
    match shared.refresh(&fields[0]) {
        Ok(issued) => {
            shared.count(|c| c.refresh_ok += 1);
            let reply_delay = shared.knobs.state().refresh_reply_delay;
            if !reply_delay.is_zero() {
                tokio::time::sleep(reply_delay).await;
            }
            Ok(issued_reply(issued))
        }
        Err(refused) => {
            shared.count(|c| c.refresh_rejected += 1);
            Ok(token_not_valid(refused))
        }
    }
}

async fn blacklist(shared: &Shared, req: Request<Incoming>) -> Outcome {
    if !shared.knobs.state().revoke_path_enabled {
        return Ok(not_found());
    }
    let _in_flight = BlacklistInFlight::enter(shared);
    let delay = shared.knobs.state().blacklist_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(outcome) = injected(shared, Endpoint::Blacklist) {
        return outcome;
    }
    let fields = match read_fields(shared, req, &["refresh"]).await {
        Ok(fields) => fields,
        Err(reply) => return Ok(reply),
    };
    if let Some(reply) = echoed(shared, Endpoint::Blacklist, &fields[0]) {
        return Ok(reply);
    }
    match shared.blacklist(&fields[0]) {
        Ok(()) => {
            shared.count(|c| c.blacklist_ok += 1);
            Ok(json_reply(StatusCode::OK, &json!({})))
        }
        Err(refused) => Ok(token_not_valid(refused)),
    }
}

/// Counts a blacklist call as in flight until it is answered (or its connection drops).
struct BlacklistInFlight<'a>(&'a Shared);

impl<'a> BlacklistInFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.count(|c| {
            c.blacklist_in_flight += 1;
            c.blacklist_max_in_flight = c.blacklist_max_in_flight.max(c.blacklist_in_flight);
        });
        Self(shared)
    }
}

impl Drop for BlacklistInFlight<'_> {
    fn drop(&mut self) {
        self.0.count(|c| c.blacklist_in_flight -= 1);
    }
}

fn me(shared: &Shared, req: &Request<Incoming>) -> Outcome {
    if let Some(outcome) = injected(shared, Endpoint::Me) {
        return outcome;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        shared.count(|c| c.me_rejected += 1);
        return Ok(unauthorized(
            json!({"detail": "Authentication credentials were not provided."}),
        ));
    };
    let email = shared
        .check_access(token.trim())
        .and_then(|user_id| shared.email_of(user_id));
    let Some(email) = email else {
        shared.count(|c| c.me_rejected += 1);
        return Ok(unauthorized(json!({
            "detail": "Given token not valid for any token type",
            "code": "token_not_valid",
            "messages": [{
                "token_class": "AccessToken",
                "token_type": "access",
                "message": INVALID_TOKEN,
            }],
        })));
    };
    shared.count(|c| c.me_ok += 1);
    Ok(json_reply(StatusCode::OK, &json!({"email": email})))
}

/// Reads a JSON object body and pulls out the named string fields, answering like DRF
/// (415 for a non-JSON content type, 400 with per-field messages otherwise).
async fn read_fields(
    shared: &Shared,
    req: Request<Incoming>,
    names: &[&str],
) -> Result<Vec<String>, Reply> {
    let result = parse_fields(req, names).await;
    if result.is_err() {
        shared.count(|c| c.bad_requests += 1);
    }
    result
}

async fn parse_fields(req: Request<Incoming>, names: &[&str]) -> Result<Vec<String>, Reply> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("application/json") {
        return Err(json_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &json!({"detail": format!("Unsupported media type \"{content_type}\" in request.")}),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"detail": "Could not read the request body."}),
            ));
        }
    };
    let object: Map<String, Value> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "list",
                Value::String(_) => "str",
                Value::Number(_) => "int",
                Value::Bool(_) => "bool",
                _ => "NoneType",
            };
            return Err(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {kind}.")]}),
            ));
        }
        Err(e) => {
            return Err(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"detail": format!("JSON parse error - {e}")}),
            ));
        }
    };
    let mut values = Vec::with_capacity(names.len());
    let mut errors = Map::new();
    for name in names {
        let message = match object.get(*name) {
            None => "This field is required.",
            Some(Value::Null) => "This field may not be null.",
            Some(Value::String(s)) if s.trim().is_empty() => "This field may not be blank.",
            Some(Value::String(s)) => {
                values.push(s.clone());
                continue;
            }
            Some(_) => "Not a valid string.",
        };
        errors.insert((*name).to_owned(), json!([message]));
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(json_reply(StatusCode::BAD_REQUEST, &Value::Object(errors)))
    }
}

/// True when the URL (path or query) carries something that looks like a token: a JWT
/// (`eyJ…`) anywhere, or a query parameter named like one.
fn uri_carries_token(uri: &hyper::Uri) -> bool {
    const NAMES: &[&str] = &[
        "access",
        "refresh",
        "token",
        "access_token",
        "refresh_token",
        "jwt",
    ];
    if uri.path().contains("eyJ") {
        return true;
    }
    let Some(query) = uri.query() else {
        return false;
    };
    query.contains("eyJ")
        || query.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            NAMES.iter().any(|n| key.eq_ignore_ascii_case(n))
        })
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

/// A 401 with SimpleJWT's `WWW-Authenticate` header.
fn unauthorized(body: Value) -> Reply {
    let mut reply = json_reply(StatusCode::UNAUTHORIZED, &body);
    reply.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"api\""),
    );
    reply
}

fn token_not_valid(refused: RefreshRefused) -> Reply {
    let detail = match refused {
        RefreshRefused::Invalid => INVALID_TOKEN,
        RefreshRefused::Blacklisted => "Token is blacklisted",
    };
    unauthorized(json!({"detail": detail, "code": "token_not_valid"}))
}

fn issued_reply(issued: Issued) -> Reply {
    let body = match issued.refresh {
        Some(refresh) => json!({"access": issued.access, "refresh": refresh}),
        None => json!({"access": issued.access}),
    };
    json_reply(StatusCode::OK, &body)
}

fn not_found() -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(DJANGO_404.as_bytes())));
    *reply.status_mut() = StatusCode::NOT_FOUND;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    reply
}

fn fault_reply(status: u16, retry_after: Option<Duration>) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let detail = match (status, retry_after) {
        (StatusCode::TOO_MANY_REQUESTS, Some(after)) => format!(
            "Request was throttled. Expected available in {} seconds.",
            whole_seconds(after)
        ),
        (StatusCode::TOO_MANY_REQUESTS, None) => "Request was throttled.".to_owned(),
        (StatusCode::SERVICE_UNAVAILABLE, _) => "Service temporarily unavailable.".to_owned(),
        _ => format!("Injected fault ({}).", status.as_u16()),
    };
    let mut reply = json_reply(status, &json!({ "detail": detail }));
    if let Some(after) = retry_after {
        reply
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(after)));
    }
    reply
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
