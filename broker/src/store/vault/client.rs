//! The OpenBao (Vault) HTTP API, the handful of endpoints the broker needs: AppRole login,
//! token renewal, and KV version 2 read, check-and-set write, metadata and list.
//!
//! Every call goes to the node that answered last and moves on to the next configured
//! address when a node cannot be reached, is sealed or has no leader, so a fleet pointed at
//! every node of a Raft cluster rides out the loss of one. OpenBao's answers become sentences an
//! operator can act on ([`StoreError::Vault`]); its tokens and the AppRole secret_id live in
//! [`VaultCredential`] and only ever appear in a request header or body.

use super::config::{VaultAuth, VaultConfig};
use crate::secret::VaultCredential;
use crate::store::{Op, StoreError};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often a 403 may make the broker log in again (see `forced_login_at`).
const FORCED_LOGIN_EVERY: Duration = Duration::from_secs(30);
/// A renewal that grants less than this means the token is near its max TTL: log in again
/// at the next renewal time instead of renewing on every call.
const SHORTEST_RENEWAL: u64 = 3;

/// No legitimate OpenBao answer to the broker is larger (an entry holds two tokens).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The broker's OpenBao token and when to renew it.
#[derive(Debug)]
struct Held {
    token: VaultCredential,
    /// Renew (or, for a token file, re-read) from this instant on.
    renew_at: Option<Instant>,
    renewable: bool,
}

/// One answer from OpenBao. Its body may hold tokens: `Debug` shows the status only.
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Answer(HTTP {}, [body redacted])", self.status.as_u16())
    }
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self, op: &Op) -> Result<T, StoreError> {
        serde_json::from_slice(&self.body).map_err(|e| StoreError::Vault {
            op: op.clone(),
            problem: format!(
                "OpenBao answered HTTP {} with a body the broker cannot read ({e}); is [store.vault] address an OpenBao or Vault server?",
                self.status.as_u16()
            ),
            unavailable: true,
        })
    }

    /// OpenBao's `errors` list, joined (it names no secret: the broker never sends one in a
    /// path).
    pub fn errors(&self) -> String {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        serde_json::from_slice::<Errors>(&self.body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect()
    }
}

/// `Deserialize` only: it holds the OpenBao token in the clear until `held_from` moves it.
#[derive(Deserialize)]
struct AuthAnswer {
    auth: AuthBlock,
}

#[derive(Deserialize)]
struct AuthBlock {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Debug)]
pub(super) struct VaultClient {
    http: reqwest::Client,
    pub config: VaultConfig,
    /// Index into `config.addresses` of the node to try first.
    current: AtomicUsize,
    token: tokio::sync::Mutex<Option<Held>>,
    /// When the broker last logged in because OpenBao answered 403: a path the policy
    /// forbids answers 403 too, and must not cost a login (and a secret_id use) every time.
    forced_login_at: std::sync::Mutex<Option<Instant>>,
    /// The newest `X-Vault-Index` seen: sent back (with `X-Vault-Inconsistent:
    /// forward-active-node`) so a standby that has not caught up with this broker's last write
    /// forwards the request to the active node instead of answering with an older version.
    /// Without it a broker could read, and present, a refresh token the fleet already rotated.
    index: std::sync::Mutex<Option<String>>,
    /// When the broker last asked which node is active (`None`: ask before the next call).
    active_checked: std::sync::Mutex<Option<Instant>>,
}

/// How often the broker re-asks which node is active. OpenBao 2.7's standbys answer reads
/// from their own copy, which may lag behind another broker's write (a rotation, a logout):
/// the broker talks to the active node whenever one answers.
const ACTIVE_RECHECK: Duration = Duration::from_secs(5);

impl VaultClient {
    pub fn new(config: VaultConfig) -> Result<Self, StoreError> {
        let open_error = |problem: String| StoreError::Vault {
            op: Op::Open,
            problem,
            unavailable: false,
        };
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .no_proxy()
            .user_agent(concat!("therappai-broker/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                open_error(format!(
                    "cannot read [store.vault] ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                open_error(format!(
                    "[store.vault] ca_file {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| open_error(format!("cannot set up the HTTPS client: {e}")))?;
        Ok(Self {
            http,
            config,
            current: AtomicUsize::new(0),
            token: tokio::sync::Mutex::new(None),
            forced_login_at: std::sync::Mutex::new(None),
            index: std::sync::Mutex::new(None),
            active_checked: std::sync::Mutex::new(None),
        })
    }

    /// `METHOD /v1/{path}` with the broker's token; logs in again once when OpenBao says
    /// the token is no good (expired, revoked).
    pub async fn call(
        &self,
        op: &Op,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, StoreError> {
        let token = self.token(op, false).await?;
        let answer = self
            .send(op, &method, path, body.as_ref(), Some(&token))
            .await?;
        if answer.status != StatusCode::FORBIDDEN {
            return Ok(answer);
        }
        // A policy refusal and a dead token both answer 403: a fresh login tells them apart,
        // at most once per FORCED_LOGIN_EVERY.
        {
            let mut at = self
                .forced_login_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if at.is_some_and(|t| t.elapsed() < FORCED_LOGIN_EVERY) {
                return Ok(answer);
            }
            *at = Some(Instant::now());
        }
        let token = self.token(op, true).await?;
        self.send(op, &method, path, body.as_ref(), Some(&token))
            .await
    }

    /// A usable token: the held one, renewed when due; a new login when there is none, when
    /// renewal is refused, or when `fresh` asks for one.
    async fn token(&self, op: &Op, fresh: bool) -> Result<VaultCredential, StoreError> {
        let mut held = self.token.lock().await;
        let now = Instant::now();
        if let Some(h) = held.as_ref().filter(|_| !fresh) {
            match h.renew_at {
                Some(at) if at <= now => {}
                _ => return Ok(h.token.duplicate()),
            }
            if h.renewable
                && let Ok(renewed) = self.renew(op, &h.token).await
            {
                let token = renewed.token.duplicate();
                *held = Some(renewed);
                return Ok(token);
            }
            tracing::info!("the OpenBao token could not be renewed; logging in again");
        }
        let fresh = self.login(op).await?;
        let token = fresh.token.duplicate();
        *held = Some(fresh);
        Ok(token)
    }

    async fn login(&self, op: &Op) -> Result<Held, StoreError> {
        match &self.config.auth {
            VaultAuth::TokenFile { token_file } => {
                let token = read_secret_file(op, "token_file", token_file)?;
                // The file's owner (OpenBao Agent) renews it; the broker re-reads it now and then.
                Ok(Held {
                    token,
                    renew_at: Some(Instant::now() + Duration::from_secs(30)),
                    renewable: false,
                })
            }
            VaultAuth::AppRole {
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_secret_file(op, "role_id_file", role_id_file)?;
                let secret_id = read_secret_file(op, "secret_id_file", secret_id_file)?;
                let body = serde_json::json!({
                    "role_id": role_id.expose(),
                    "secret_id": secret_id.expose(),
                });
                let answer = self
                    .send(op, &Method::POST, "auth/approle/login", Some(&body), None)
                    .await?;
                if !answer.status.is_success() {
                    return Err(StoreError::Vault {
                        op: op.clone(),
                        problem: format!(
                            "OpenBao refused the AppRole login (HTTP {}: {}): check that {} and {} hold this broker's role_id and a secret_id that has not expired or been used up (`bao write -f auth/approle/role/ROLE/secret-id` makes a new one)",
                            answer.status.as_u16(),
                            answer.errors(),
                            role_id_file.display(),
                            secret_id_file.display()
                        ),
                        unavailable: answer.status.is_server_error(),
                    });
                }
                let auth: AuthAnswer = answer.json(op)?;
                tracing::info!(
                    ttl_s = auth.auth.lease_duration,
                    renewable = auth.auth.renewable,
                    "logged in to OpenBao with AppRole"
                );
                Ok(held_from(auth.auth))
            }
        }
    }

    async fn renew(&self, op: &Op, token: &VaultCredential) -> Result<Held, StoreError> {
        let body = serde_json::json!({});
        let answer = self
            .send(
                op,
                &Method::POST,
                "auth/token/renew-self",
                Some(&body),
                Some(token),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(StoreError::Vault {
                op: op.clone(),
                problem: format!("token renewal refused: {}", answer.errors()),
                unavailable: false,
            });
        }
        let auth: AuthAnswer = answer.json(op)?;
        tracing::debug!(
            ttl_s = auth.auth.lease_duration,
            "renewed the OpenBao token"
        );
        Ok(held_from(auth.auth))
    }

    /// Sends one request, trying each configured node from the one that answered last, and
    /// moving on when a node is unreachable, sealed, or a standby without a leader.
    async fn send(
        &self,
        op: &Op,
        method: &Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&VaultCredential>,
    ) -> Result<Answer, StoreError> {
        // Held until the answer is read; the caller parses it in the same poll.
        let _deep = crate::secret::DeepWork::begin();
        let addresses = &self.config.addresses;
        self.prefer_active().await;
        let first = self.current.load(Ordering::Relaxed);
        let mut problems = Vec::new();
        for i in 0..addresses.len() {
            let index = (first + i) % addresses.len();
            let address = &addresses[index];
            let mut request = self
                .http
                .request(method.clone(), format!("{address}/v1/{path}"));
            if let Some(token) = token {
                // Marked sensitive so no HTTP layer ever prints it (nor HPACK-indexes it).
                if let Ok(mut value) = reqwest::header::HeaderValue::from_str(token.expose()) {
                    value.set_sensitive(true);
                    request = request.header("X-Vault-Token", value);
                }
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(index) = self.last_index() {
                request = request
                    .header("X-Vault-Index", index)
                    .header("X-Vault-Inconsistent", "forward-active-node");
            }
            let answer = match request.send().await {
                Ok(response) => {
                    self.remember_index(&response);
                    read_answer(op, response).await?
                }
                Err(e) => {
                    problems.push(format!("{address}: {}", describe_send_error(&e)));
                    continue;
                }
            };
            match node_problem(&answer) {
                Some(NodeProblem::Sealed) => {
                    problems.push(format!(
                        "{address} is sealed (unseal it: `bao operator unseal`)"
                    ));
                }
                Some(NodeProblem::NoLeader(errors)) => {
                    problems.push(format!("{address} has no active leader ({errors})"));
                }
                None => {
                    if index != first {
                        // Moved off a failing node: find the active one again next time.
                        *self
                            .active_checked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
            }
        }
        *self
            .active_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Err(StoreError::Vault {
            op: op.clone(),
            problem: format!(
                "no OpenBao node answered: {}. The broker keeps serving cached access tokens until they expire and tries again at the next request",
                problems.join("; ")
            ),
            unavailable: true,
        })
    }
}

impl VaultClient {
    /// Points `current` at the node whose `/v1/sys/health` answers 200 (the active node;
    /// standbys answer 429, sealed nodes 503), at most every [`ACTIVE_RECHECK`]. With one
    /// address (a load balancer) there is nothing to choose.
    async fn prefer_active(&self) {
        let addresses = &self.config.addresses;
        if addresses.len() < 2 {
            return;
        }
        {
            let mut checked = self
                .active_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|at| at.elapsed() < ACTIVE_RECHECK) {
                return;
            }
            *checked = Some(Instant::now());
        }
        let first = self.current.load(Ordering::Relaxed);
        for i in 0..addresses.len() {
            let index = (first + i) % addresses.len();
            let health = self
                .http
                .get(format!("{}/v1/sys/health", addresses[index]))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                if index != first {
                    tracing::info!(node = %addresses[index], "talking to OpenBao's active node");
                }
                self.current.store(index, Ordering::Relaxed);
                return;
            }
        }
    }

    fn last_index(&self) -> Option<String> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remember_index(&self, response: &reqwest::Response) {
        if let Some(index) = response
            .headers()
            .get("X-Vault-Index")
            .and_then(|v| v.to_str().ok())
        {
            let mut held = self.index.lock().unwrap_or_else(|p| p.into_inner());
            // Answers to concurrent calls arrive in any order: keep the newest index, or a
            // standby could answer from before this broker's own last write.
            let newer = match held.as_deref() {
                Some(old) => match (raft_index(old), raft_index(index)) {
                    (Some(old), Some(new)) => new >= old,
                    _ => true,
                },
                None => true,
            };
            if newer {
                *held = Some(index.to_owned());
            }
        }
    }
}

/// The Raft index in an `X-Vault-Index` value (base64 of `{"cluster":…,"value":"N"}` in
/// OpenBao 2.7), to tell which of two is newer.
fn raft_index(header: &str) -> Option<u64> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct State {
        value: String,
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(header)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(header))
        .ok()?;
    serde_json::from_slice::<State>(&json)
        .ok()?
        .value
        .parse()
        .ok()
}

fn held_from(auth: AuthBlock) -> Held {
    // Renew at two thirds of the TTL; a token without a TTL (lease_duration 0) never expires.
    let renew_at = (auth.lease_duration > 0)
        .then(|| Instant::now() + Duration::from_secs(auth.lease_duration * 2 / 3));
    Held {
        token: VaultCredential::new(auth.client_token),
        renew_at,
        renewable: auth.renewable && auth.lease_duration >= SHORTEST_RENEWAL,
    }
}

enum NodeProblem {
    Sealed,
    NoLeader(String),
}

/// Whether this node cannot serve the fleet now (another node may).
fn node_problem(answer: &Answer) -> Option<NodeProblem> {
    // A standby that lost its leader redirects writes to the dead leader's address; the
    // broker never follows redirects.
    if answer.status.is_redirection() {
        return Some(NodeProblem::NoLeader(format!(
            "HTTP {}: a standby without a reachable active node",
            answer.status.as_u16()
        )));
    }
    // A standby that is behind this broker's last write, when it could not forward.
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        return Some(NodeProblem::NoLeader(
            "HTTP 429: a standby behind this broker's last write".to_owned(),
        ));
    }
    if answer.status != StatusCode::SERVICE_UNAVAILABLE
        && answer.status != StatusCode::INTERNAL_SERVER_ERROR
        && answer.status != StatusCode::BAD_GATEWAY
    {
        return None;
    }
    let errors = answer.errors();
    if errors.contains("sealed") {
        Some(NodeProblem::Sealed)
    } else {
        Some(NodeProblem::NoLeader(if errors.is_empty() {
            format!("HTTP {}", answer.status.as_u16())
        } else {
            errors
        }))
    }
}

async fn read_answer(op: &Op, mut response: reqwest::Response) -> Result<Answer, StoreError> {
    let status = response.status();
    let too_big = || StoreError::Vault {
        op: op.clone(),
        problem: format!(
            "OpenBao's answer is larger than {MAX_RESPONSE_BYTES} bytes, which no entry of the broker's can be; is [store.vault] address right?"
        ),
        unavailable: true,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(StoreError::Vault {
                    op: op.clone(),
                    problem: format!("OpenBao's answer broke off: {}", describe_send_error(&e)),
                    unavailable: true,
                });
            }
        }
    }
    Ok(Answer { status, body })
}

/// reqwest's error with its causes (the top level alone says only "error sending request").
/// It names the URL, which holds no secret.
fn describe_send_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a credential file (role_id, secret_id, token): one line, mode not open to others.
fn read_secret_file(
    op: &Op,
    key: &str,
    path: &std::path::Path,
) -> Result<VaultCredential, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let problem = |problem: String| StoreError::Vault {
        op: op.clone(),
        problem,
        unavailable: false,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        problem(format!(
            "cannot read [store.vault] {key} {}: {e}",
            path.display()
        ))
    })?;
    if meta.mode() & 0o007 != 0 {
        return Err(problem(format!(
            "[store.vault] {key} {} is readable or writable by every user; `chmod o-rwx {}`",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        problem(format!(
            "cannot read [store.vault] {key} {}: {e}",
            path.display()
        ))
    })?;
    let value = VaultCredential::new(text);
    let trimmed = value.expose().trim();
    if trimmed.is_empty() {
        return Err(problem(format!(
            "[store.vault] {key} {} is empty",
            path.display()
        )));
    }
    Ok(VaultCredential::new(trimmed.to_owned()))
}
