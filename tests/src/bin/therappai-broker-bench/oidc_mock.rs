//! A small OpenID provider on loopback for the oidc-agent peer: the discovery document and a
//! token endpoint with the password and refresh grants, issuing JWT-shaped access tokens with
//! `exp`. Plain HTTP/1.1, one request per connection: its one client is oidc-agent (libcurl),
//! which accepts `http://` for a loopback issuer. Tokens are not signed (`alg: none`):
//! oidc-agent only reads them.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const ACCESS_LIFETIME_S: u64 = 3600;

/// The one client, user and refresh token the provider accepts. Values are URL-safe (hex), so
/// the form body and the Basic credentials need no percent-decoding to match them.
#[derive(Debug)]
struct Provider {
    issuer: String,
    client_id: String,
    client_secret: String,
    username: String,
    password: String,
    refresh_token: String,
    password_grants: AtomicU64,
    refresh_grants: AtomicU64,
}

#[derive(Debug)]
pub struct MockProvider {
    provider: Arc<Provider>,
    task: tokio::task::JoinHandle<()>,
}

impl MockProvider {
    /// Listens on 127.0.0.1 (a free port) with a fresh random user for this run.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let provider = Arc::new(Provider {
            issuer: format!("http://{}", listener.local_addr()?),
            client_id: "therappai-broker-bench".to_owned(),
            client_secret: random_hex(16)?,
            username: format!("bench-{}", random_hex(4)?),
            password: random_hex(16)?,
            refresh_token: random_hex(24)?,
            password_grants: AtomicU64::new(0),
            refresh_grants: AtomicU64::new(0),
        });
        let shared = Arc::clone(&provider);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let provider = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &provider).await {
                        eprintln!("mock OpenID provider: {e:#}");
                    }
                });
            }
        });
        Ok(Self { provider, task })
    }

    pub fn issuer(&self) -> &str {
        &self.provider.issuer
    }

    /// (client id, client secret), then (username, password).
    pub fn credentials(&self) -> ((&str, &str), (&str, &str)) {
        let p = &self.provider;
        ((&p.client_id, &p.client_secret), (&p.username, &p.password))
    }

    /// Token-endpoint calls so far: (password grants, refresh grants).
    pub fn grants(&self) -> (u64, u64) {
        (
            self.provider.password_grants.load(Ordering::Relaxed),
            self.provider.refresh_grants.load(Ordering::Relaxed),
        )
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, provider: &Provider) -> anyhow::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(request.len() < 65_536, "request head too large");
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed mid-request");
        request.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&request[..head_len])?.to_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name, value.trim()))
        .collect();
    let header = |wanted: &str| {
        headers
            .iter()
            .find_map(|(name, value)| name.eq_ignore_ascii_case(wanted).then_some(*value))
    };
    let length: usize = header("content-length").map_or(Ok(0), str::parse)?;
    while request.len() < head_len + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed mid-body");
        request.extend_from_slice(&chunk[..n]);
    }
    let body = std::str::from_utf8(&request[head_len..head_len + length])?;
    let (status, json) = match (method, path) {
        ("GET", "/.well-known/openid-configuration") => ("200 OK", discovery(&provider.issuer)),
        ("POST", "/token") => token(provider, header("authorization"), body)?,
        _ => ("404 Not Found", serde_json::json!({ "error": "not_found" })),
    };
    let json = json.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(stream.shutdown().await?)
}

fn discovery(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "grant_types_supported": ["password", "refresh_token"],
        "scopes_supported": ["openid", "offline_access"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["none"],
    })
}

fn token(
    provider: &Provider,
    authorization: Option<&str>,
    body: &str,
) -> anyhow::Result<(&'static str, serde_json::Value)> {
    let field = |name: &str| {
        body.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v))
    };
    // client_secret_basic, as oidc-agent sends it, or client_secret_post.
    let basic = STANDARD.encode(format!("{}:{}", provider.client_id, provider.client_secret));
    let client_ok = authorization == Some(format!("Basic {basic}").as_str())
        || (field("client_id") == Some(provider.client_id.as_str())
            && field("client_secret") == Some(provider.client_secret.as_str()));
    if !client_ok {
        return Ok((
            "401 Unauthorized",
            serde_json::json!({ "error": "invalid_client" }),
        ));
    }
    let granted = match field("grant_type") {
        Some("password")
            if field("username") == Some(provider.username.as_str())
                && field("password") == Some(provider.password.as_str()) =>
        {
            &provider.password_grants
        }
        Some("refresh_token")
            if field("refresh_token") == Some(provider.refresh_token.as_str()) =>
        {
            &provider.refresh_grants
        }
        _ => {
            return Ok((
                "400 Bad Request",
                serde_json::json!({ "error": "invalid_grant" }),
            ));
        }
    };
    let jti = granted.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let segment = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let access_token = format!(
        "{}.{}.",
        segment(serde_json::json!({ "alg": "none", "typ": "JWT" })),
        segment(serde_json::json!({
            "iss": provider.issuer, "sub": provider.username, "iat": now,
            "exp": now + ACCESS_LIFETIME_S, "jti": format!("{jti}-{}", random_hex(4)?),
        }))
    );
    Ok((
        "200 OK",
        serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_LIFETIME_S,
            "refresh_token": provider.refresh_token,
            "scope": "openid offline_access",
        }),
    ))
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
