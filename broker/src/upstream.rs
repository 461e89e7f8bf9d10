//! The therappai API client: login, refresh and revocation over HTTPS.
//!
//! HTTPS only, every call bounded by a timeout. Tokens travel only in JSON bodies, never in a
//! URL; nothing here logs a token, and no error carries one (error details from the server are
//! scrubbed of the secrets that were sent). Retrying is the refresher's decision, not this
//! module's: each method makes exactly one HTTP request.

mod echo;

use crate::config::UpstreamConfig;
use crate::jwt;
use crate::secret::{AccessToken, Password, RefreshToken};
use serde::Deserialize;
use std::time::{Duration, SystemTime};
use zeroize::Zeroize;

/// An access token and when it expires (wall clock).
#[derive(Debug)]
pub struct IssuedAccess {
    pub token: AccessToken,
    pub expires_at: SystemTime,
    /// When the broker received it; with `expires_at` this gives the token's lifetime.
    pub received_at: SystemTime,
}

/// What `/login/` returns.
#[derive(Debug)]
pub struct LoginTokens {
    pub access: IssuedAccess,
    pub refresh: RefreshToken,
}

/// What `/refresh/` returns: a new access token, and a new refresh token when the server
/// rotates them.
#[derive(Debug)]
pub struct Refreshed {
    /// An error when the access token cannot be used (an `exp` no clock can hold). The
    /// rotated token is kept either way: the server has already retired the old one.
    pub access: Result<IssuedAccess, UpstreamError>,
    pub rotated: Option<RefreshToken>,
}

/// What became of a revocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The server accepted the blacklist call.
    Done,
    /// No `revoke_path` is configured.
    NotConfigured,
    /// The call failed; the reason is one line for a human.
    Failed(String),
}

/// Why an upstream call failed. Messages never contain a token or a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Login refused the e-mail/password pair.
    #[error("therappai refused the e-mail and password (invalid credentials)")]
    InvalidCredentials,
    /// The refresh token is invalid, expired or blacklisted: the session needs a new login.
    /// The message is fixed: apps (and status, and WatchSession) never see what the server
    /// wrote; `detail` (scrubbed) is for the broker's own log.
    #[error("{REJECTED_REFRESH_TOKEN}")]
    TokenNotValid { detail: String },
    /// The server answered 4xx for a reason other than the two above; fixed message as above.
    #[error(
        "therappai refused the request: HTTP {status} (therappai's reason is in the broker's log: `journalctl -u therappai-broker`)"
    )]
    Refused { status: u16, detail: String },
    /// Network failure, timeout or 5xx: worth retrying later.
    #[error("therappai is unreachable or failing: {reason}")]
    Unavailable { reason: String },
    /// 429: the server asked to slow down.
    #[error("therappai is rate limiting this broker{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// 200 with a body that is not what the API documents.
    #[error("therappai answered with an unexpected body: {what}")]
    Malformed { what: String },
}

/// What apps, status and WatchSession are told when therappai rejects a refresh token.
pub const REJECTED_REFRESH_TOKEN: &str = "therappai rejected the refresh token as expired, blacklisted or revoked (therappai's own words are in the broker's log: `journalctl -u therappai-broker`)";

impl UpstreamError {
    /// The outcome label of this failure in the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid-credentials",
            Self::TokenNotValid { .. } => "token-not-valid",
            Self::Refused { .. } => "refused",
            Self::Unavailable { .. } => "unavailable",
            Self::RateLimited { .. } => "rate-limited",
            Self::Malformed { .. } => "malformed",
        }
    }

    /// Whether a later attempt could succeed without a new login.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::RateLimited { .. })
    }
}

/// Lifetime assumed for an access token without an `exp` claim: SimpleJWT's default.
const DEFAULT_ACCESS_LIFETIME: Duration = Duration::from_secs(300);

/// Cap on a response body. The largest legitimate answer (a token pair) is a couple of KiB;
/// anything past this is refused while it streams in, never buffered whole.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// HTTP/2 window: what a server may send before we read it (one body cap and some room).
const MAX_BODY_WINDOW: u32 = 2 * 64 * 1024;
/// HTTP/2 response header block cap (hyper's default is 16 MiB).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The HTTPS client for one therappai deployment.
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    base_url: String,
    revoke_path: Option<String>,
    /// Request latency and refresh outcomes.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[derive(Deserialize)]
struct TokenBody {
    access: Option<String>,
    refresh: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    detail: Option<serde_json::Value>,
    code: Option<String>,
}

impl Upstream {
    /// Builds the client. Fails on an unreadable or invalid `ca_file`.
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        // Tokens go to the configured server only: HTTPS (TLS 1.2 or later, certificates always
        // verified: no option turns that off), no redirect followed (a 3xx is an error, see
        // `redirected`), no proxy but the configured one (reqwest would otherwise honour
        // HTTPS_PROXY/ALL_PROXY from whatever environment started the broker), every call
        // bounded in time, and HTTP/2 flow control no wider than the body cap, so a server
        // cannot make us buffer more than that.
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            // No idle connection keeps a token in its reused read/write buffers (see README).
            .pool_max_idle_per_host(0)
            .http2_initial_stream_window_size(MAX_BODY_WINDOW)
            .http2_initial_connection_window_size(MAX_BODY_WINDOW)
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .user_agent(concat!("therappai-broker/", env!("CARGO_PKG_VERSION")));
        builder =
            match &config.proxy {
                None => builder.no_proxy(),
                Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.expose()).map_err(|e| {
                    format!("[upstream] proxy {} is not usable: {e}", proxy.shown())
                })?),
            };
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read [upstream] ca_file {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                format!(
                    "[upstream] ca_file {} is not a PEM certificate: {e}",
                    path.display()
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTPS client: {e}"))?;
        Ok(Self {
            http,
            base_url: config.base_url.clone(),
            revoke_path: config.revoke_path.clone(),
            metrics: std::sync::Arc::default(),
        })
    }

    /// Records request latency and refresh outcomes in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /login/` with e-mail and password, no Authorization header.
    pub async fn login(
        &self,
        email: &str,
        password: &Password,
    ) -> Result<LoginTokens, UpstreamError> {
        let body = serde_json::json!({ "email": email, "password": password.expose() });
        let (status, mut bytes) = self.post("login", "/login/", body).await?;
        let result = login_answer(status, &bytes, password.expose());
        bytes.zeroize();
        result
    }

    /// `POST /refresh/` with the refresh token in the body.
    pub async fn refresh(&self, refresh: &RefreshToken) -> Result<Refreshed, UpstreamError> {
        let result = self.refresh_once(refresh).await;
        self.metrics.refresh(match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        });
        result
    }

    async fn refresh_once(&self, refresh: &RefreshToken) -> Result<Refreshed, UpstreamError> {
        let body = serde_json::json!({ "refresh": refresh.expose() });
        let (status, mut bytes) = self.post("refresh", "/refresh/", body).await?;
        let result = refresh_answer(status, &bytes, refresh.expose());
        bytes.zeroize();
        result
    }

    /// Blacklists `refresh` through the configured revocation path. Never fails: the outcome
    /// says whether the upstream was told.
    pub async fn revoke(&self, refresh: &RefreshToken) -> Revocation {
        let Some(path) = self.revoke_path.clone() else {
            return Revocation::NotConfigured;
        };
        let body = serde_json::json!({ "refresh": refresh.expose() });
        match self.post("revoke", &path, body).await {
            Ok((status, mut bytes)) => {
                let outcome = revoke_answer(status, &bytes, &path, refresh.expose());
                bytes.zeroize();
                outcome
            }
            Err(err) => Revocation::Failed(err.to_string()),
        }
    }

    /// One POST with a JSON body, timed for the `endpoint` latency histogram.
    async fn post(
        &self,
        endpoint: &'static str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, Vec<u8>), UpstreamError> {
        // Held until the answer is back; the caller parses it in the same poll.
        let _deep = crate::secret::DeepWork::begin();
        let started = std::time::Instant::now();
        let result = self.post_untimed(path, body).await;
        let elapsed = started.elapsed();
        self.metrics.upstream_request(endpoint, elapsed);
        // One line per therappai call (never per cached token): journald gets ENDPOINT,
        // OUTCOME and LATENCY_MS as fields. Never the body, which holds secrets.
        let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok((status, _)) => {
                tracing::info!(endpoint, outcome = %status, latency_ms, "therappai answered");
            }
            Err(e) => {
                tracing::info!(
                    endpoint,
                    outcome = e.outcome(),
                    latency_ms,
                    "therappai call failed"
                );
            }
        }
        result
    }

    /// One POST with a JSON body; returns the status and the raw body.
    async fn post_untimed(
        &self,
        path: &str,
        mut body: serde_json::Value,
    ) -> Result<(u16, Vec<u8>), UpstreamError> {
        let url = format!("{}{}", self.base_url, path);
        let payload = serde_json::to_vec(&body);
        scrub_json(&mut body);
        let payload = payload.map_err(|e| UpstreamError::Malformed {
            what: format!("cannot encode request: {e}"),
        })?;
        // Moved, not cloned: the only copy is the one reqwest frees when the request is
        // sent, and the daemon's allocator wipes every block it frees.
        let sent = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(payload)
            .send()
            .await;
        let response = sent.map_err(|e| transport_error(&url, &e))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            return Err(redirected(&url, status, response.headers()));
        }
        let retry_after = retry_after(response.headers());
        let bytes = read_capped(response, &url).await?;
        if status == 429 {
            return Err(UpstreamError::RateLimited { retry_after });
        }
        if status >= 500 {
            return Err(UpstreamError::Unavailable {
                reason: format!("POST {url} answered HTTP {status}"),
            });
        }
        Ok((status, bytes))
    }
}

/// What a `/login/` answer (status and body, after redirects, 429 and 5xx were handled)
/// means. `password` is what was sent: it never reaches an error.
pub(crate) fn login_answer(
    status: u16,
    bytes: &[u8],
    password: &str,
) -> Result<LoginTokens, UpstreamError> {
    match status {
        200 => parse_tokens(bytes).and_then(|t| {
            let access = t.access.ok_or_else(|| missing("access"))?;
            let refresh = t.refresh.ok_or_else(|| missing("refresh"))?;
            let refresh = RefreshToken::new(refresh);
            Ok(LoginTokens {
                access: issued(access)?,
                refresh,
            })
        }),
        401 => Err(UpstreamError::InvalidCredentials),
        _ => Err(error_for(status, bytes, &[password])),
    }
}

/// What a `/refresh/` answer means; `refresh` (the token sent) never reaches an error.
pub(crate) fn refresh_answer(
    status: u16,
    bytes: &[u8],
    refresh: &str,
) -> Result<Refreshed, UpstreamError> {
    match status {
        200 => parse_tokens(bytes).and_then(|t| {
            let access = t.access.ok_or_else(|| missing("access"))?;
            Ok(Refreshed {
                rotated: t.refresh.map(RefreshToken::new),
                access: issued(access),
            })
        }),
        _ => Err(error_for(status, bytes, &[refresh])),
    }
}

/// What an answer to the blacklist call at `path` means; `refresh` never reaches the reason.
pub(crate) fn revoke_answer(status: u16, bytes: &[u8], path: &str, refresh: &str) -> Revocation {
    match status {
        200..=299 => Revocation::Done,
        404 => Revocation::Failed(format!(
            "the revocation path {path} does not exist upstream (HTTP 404)"
        )),
        _ => Revocation::Failed(error_for(status, bytes, &[refresh]).to_string()),
    }
}

/// The access token with its expiry; an `exp` claim no clock can hold is a malformed
/// answer (the token is zeroized when dropped).
fn issued(access: String) -> Result<IssuedAccess, UpstreamError> {
    let received_at = SystemTime::now();
    let token = AccessToken::new(access);
    let expires_at = jwt::expiry(token.expose())
        .map_err(|err| UpstreamError::Malformed {
            what: format!("the access token cannot be used: {err}"),
        })?
        .unwrap_or(received_at + DEFAULT_ACCESS_LIFETIME);
    Ok(IssuedAccess {
        token,
        expires_at,
        received_at,
    })
}

fn parse_tokens(bytes: &[u8]) -> Result<TokenBody, UpstreamError> {
    serde_json::from_slice(bytes).map_err(|_| UpstreamError::Malformed {
        what: "the body is not the JSON object {\"access\", \"refresh\"} the API documents".into(),
    })
}

fn missing(field: &str) -> UpstreamError {
    UpstreamError::Malformed {
        what: format!("the JSON body has no \"{field}\" field"),
    }
}

/// Overwrites every string in a JSON value, so the request body does not linger in memory.
fn scrub_json(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        for v in map.values_mut() {
            if let serde_json::Value::String(s) = v {
                s.zeroize();
            }
        }
    }
}

/// The error for a non-2xx, non-5xx, non-429 answer.
fn error_for(status: u16, bytes: &[u8], sent_secrets: &[&str]) -> UpstreamError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_default();
    // A server could echo what it was sent; no piece of a secret may reach a log or an error.
    // Checked on the whole body, before anything is cut or quoted from it.
    let mut detail = if echo::echoes_secret(bytes, sent_secrets) {
        "[detail withheld: it echoed a secret]".to_owned()
    } else {
        match &body.detail {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::from_utf8_lossy(bytes).chars().take(200).collect(),
        }
    };
    // Cut by characters, not bytes: an error page may be non-ASCII.
    if detail.chars().count() > 200 {
        detail = detail.chars().take(200).collect();
    }
    let token_not_valid = body.code.as_deref() == Some("token_not_valid");
    // The server's words go to the admin's log only (scrubbed above); errors carry fixed text.
    tracing::warn!(status, detail = %detail, "therappai's reason for refusing the request");
    match status {
        401 | 400 if token_not_valid => UpstreamError::TokenNotValid { detail },
        // Only therappai's own verdict ends a session (issue 11, defect 6): a 401 without its
        // code comes from something in between and says nothing about the refresh token.
        401 => UpstreamError::Unavailable {
            reason: "HTTP 401 without therappai's token_not_valid code, so not a verdict on the refresh token (a proxy or firewall in between, or [upstream] base_url pointing at another service?)"
                .to_owned(),
        },
        _ => UpstreamError::Refused { status, detail },
    }
}

/// A 3xx answer. Redirects are never followed: one to `http://` or to another host would send
/// the token there, and the configured `base_url` is the only server tokens may go to. The
/// message names the target's scheme and host only: its path or query could carry anything.
/// An upstream failure (retried with back-off), not a dead session.
fn redirected(url: &str, status: u16, headers: &reqwest::header::HeaderMap) -> UpstreamError {
    let target = match headers.get(reqwest::header::LOCATION) {
        None => "no Location".to_owned(),
        Some(location) => location
            .to_str()
            .ok()
            .and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok())
            .and_then(|l| {
                let host = l.host_str()?.to_owned();
                let port = l
                    .port_or_known_default()
                    .map_or_else(String::new, |p| format!(":{p}"));
                Some(format!("a redirect to {}://{host}{port}", l.scheme()))
            })
            .unwrap_or_else(|| "an unusable Location".to_owned()),
    };
    UpstreamError::Unavailable {
        reason: format!(
            "POST {url} answered HTTP {status} with {target}; the broker never follows redirects (tokens go only to the configured server): set [upstream] base_url to the URL the therappai API answers at itself"
        ),
    }
}

/// The body, read chunk by chunk and refused as soon as it passes [`MAX_RESPONSE_BODY`].
async fn read_capped(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, UpstreamError> {
    let too_large = || UpstreamError::Unavailable {
        reason: format!(
            "POST {url} answered with a body larger than {} KiB (a real answer is a couple of KiB); check that [upstream] base_url points at the therappai API",
            MAX_RESPONSE_BODY / 1024
        ),
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_RESPONSE_BODY as u64 {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0).max(4096));
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(e) => {
                body.zeroize();
                return Err(transport_error(url, &e));
            }
        };
        if body.len() + chunk.len() > MAX_RESPONSE_BODY {
            body.zeroize();
            return Err(too_large());
        }
        append_wiping(&mut body, &chunk);
    }
}

/// Appends `chunk`; when `body` must grow, the old allocation is wiped, not just freed (a
/// body may hold a token).
fn append_wiping(body: &mut Vec<u8>, chunk: &[u8]) {
    let needed = body.len() + chunk.len();
    if needed > body.capacity() {
        let mut grown = Vec::with_capacity(needed.max(body.capacity() * 2));
        grown.extend_from_slice(body);
        body.zeroize();
        *body = grown;
    }
    body.extend_from_slice(chunk);
}

fn transport_error(url: &str, e: &reqwest::Error) -> UpstreamError {
    // reqwest's Display includes the URL, which never carries a secret here.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        source = c.to_string();
        cause = c.source();
    }
    // rustls says "invalid peer certificate: UnknownIssuer" and the like; say what to check.
    let advice = if source.to_ascii_lowercase().contains("certificate") {
        "; the server's TLS certificate was refused: check [upstream] ca_file (it must hold the CA that signed the certificate of [upstream] base_url's host) and that base_url names the host the certificate is for"
    } else {
        ""
    };
    UpstreamError::Unavailable {
        reason: if source.is_empty() {
            format!("POST {url}: {kind}{advice}")
        } else {
            format!("POST {url}: {kind}: {source}{advice}")
        },
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_not_valid_is_final_and_scrubbed() {
        let body = br#"{"detail":"bad token abc.def.ghi","code":"token_not_valid"}"#;
        let err = error_for(401, body, &["abc.def.ghi"]);
        assert!(matches!(err, UpstreamError::TokenNotValid { .. }));
        assert!(!err.to_string().contains("abc.def.ghi"), "{err}");
    }

    #[test]
    fn a_401_without_token_not_valid_is_an_upstream_failure() {
        let err = error_for(401, br#"{"detail":"Authentication required"}"#, &[]);
        assert!(err.is_transient(), "not a dead session: {err:?}");
        assert!(err.to_string().contains("token_not_valid code"), "{err}");
    }

    #[test]
    fn long_non_ascii_error_bodies_are_cut_safely() {
        let body = "é".repeat(500);
        let err = error_for(418, body.as_bytes(), &[]);
        assert!(err.to_string().chars().count() < 300);
    }

    #[test]
    fn a_redirect_names_scheme_and_host_only() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::LOCATION,
            reqwest::header::HeaderValue::from_static("http://evil.example/steal?refresh=abc"),
        );
        let err = redirected("https://api.example/api/v1/refresh/", 302, &headers);
        let message = err.to_string();
        assert!(err.is_transient(), "a redirect is not a dead session");
        assert!(
            message.contains("HTTP 302 with a redirect to http://evil.example:80"),
            "{message}"
        );
        assert!(
            !message.contains("steal") && !message.contains("abc"),
            "{message}"
        );
        assert!(message.contains("[upstream] base_url"), "{message}");
        headers.insert(
            reqwest::header::LOCATION,
            reqwest::header::HeaderValue::from_static("/elsewhere/"),
        );
        let message = redirected("https://api.example/x/", 301, &headers).to_string();
        assert!(message.contains("https://api.example:443;"), "{message}");
    }

    #[test]
    fn growing_a_body_keeps_its_bytes() {
        let mut body = Vec::with_capacity(2);
        for chunk in [&b"ab"[..], b"cde", b"", b"fghij"] {
            append_wiping(&mut body, chunk);
        }
        assert_eq!(body, b"abcdefghij");
    }

    /// Issue 11, defect 6: what the server wrote reached apps (GetAccessToken errors, status,
    /// WatchSession reasons); now only the broker's log has it.
    #[test]
    fn apps_get_a_fixed_message_whatever_the_body_says() {
        for status in [400, 401, 403, 418] {
            for body in [
                &br#"{"detail":"Call +1-555-0100 for account 4711","code":"token_not_valid"}"#[..],
                br#"{"detail":"Call +1-555-0100 for account 4711"}"#,
                b"<html>Call +1-555-0100 for account 4711</html>",
            ] {
                let message = error_for(status, body, &[]).to_string();
                assert!(
                    !message.contains("555") && !message.contains("4711"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn other_400_is_refused_not_final() {
        let err = error_for(400, br#"{"refresh":["This field is required."]}"#, &[]);
        assert!(matches!(err, UpstreamError::Refused { status: 400, .. }));
        assert!(!err.is_transient());
    }
}
