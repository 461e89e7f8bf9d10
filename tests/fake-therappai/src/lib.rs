//! An HTTPS fake of the therappai API (Django REST framework + SimpleJWT) for tests and the
//! demo: `POST /login/`, `POST /refresh/`, `POST /token/blacklist/` and `GET /me/` under
//! `/api/v1`, on 127.0.0.1 with a CA generated at start-up.
//!
//! Tests start it in-process, point the broker at [`FakeTherappai::base_url`] with
//! [`FakeTherappai::ca_pem`] as the only extra trust anchor, turn [`Knobs`] to script
//! failures, and read [`Counters`] to check what the broker did. It never logs a token, a
//! password or a query string.

mod echo;
mod handlers;
mod jwt;
mod server;
mod state;
mod streamed;
mod tls;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use echo::EchoShape;
pub use handlers::{BASE_PATH, BLACKLIST_PATH};
pub use state::{Counters, Endpoint, Knobs};

use state::Shared;

/// File name used by [`FakeTherappai::write_ca_file`].
pub const CA_FILE_NAME: &str = "fake-therappai-ca.pem";

/// How the fake starts. The lifetimes and rotation seed [`Knobs`], which can change them
/// later.
#[derive(Clone)]
pub struct FakeConfig {
    /// Accounts as (e-mail, password). User ids are 1-based positions in this list.
    pub users: Vec<(String, String)>,
    /// Lifetime of access tokens (SimpleJWT default: 5 minutes).
    pub access_lifetime: Duration,
    /// Lifetime of refresh tokens (SimpleJWT default: 1 day).
    pub refresh_lifetime: Duration,
    /// `ROTATE_REFRESH_TOKENS` + `BLACKLIST_AFTER_ROTATION`.
    pub rotate_refresh_tokens: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            access_lifetime: Duration::from_secs(300),
            refresh_lifetime: Duration::from_secs(24 * 60 * 60),
            rotate_refresh_tokens: false,
        }
    }
}

impl FakeConfig {
    /// Adds an account.
    #[must_use]
    pub fn with_user(mut self, email: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((email.into(), password.into()));
        self
    }
}

impl fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let emails: Vec<&str> = self.users.iter().map(|(e, _)| e.as_str()).collect();
        f.debug_struct("FakeConfig")
            .field("users", &emails)
            .field("access_lifetime", &self.access_lifetime)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .finish_non_exhaustive()
    }
}

/// A running fake. Stops when dropped (open connections are cut), or call
/// [`FakeTherappai::shutdown`] to wait until it has stopped.
#[derive(Debug)]
pub struct FakeTherappai {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    accept_task: Option<JoinHandle<()>>,
}

impl FakeTherappai {
    /// Starts on an ephemeral port of 127.0.0.1. Must be called inside a tokio runtime;
    /// the server's tasks run on it.
    pub async fn start(config: FakeConfig) -> anyhow::Result<Self> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts on `addr` (port 0 picks a free port). The certificate only names 127.0.0.1
    /// and localhost.
    pub async fn start_on(config: FakeConfig, addr: SocketAddr) -> anyhow::Result<Self> {
        let pki = tls::generate().context("generate test PKI")?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr().context("local address")?;
        let knobs = Knobs::new(
            config.access_lifetime,
            config.refresh_lifetime,
            config.rotate_refresh_tokens,
        );
        let shared = Arc::new(Shared::new(config.users, knobs));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept_task = tokio::spawn(server::accept_loop(
            listener,
            TlsAcceptor::from(pki.server_config),
            Arc::clone(&shared),
            cancel.clone(),
            tracker.clone(),
        ));
        Ok(Self {
            addr,
            ca_pem: pki.ca_pem,
            shared,
            cancel,
            tracker,
            accept_task: Some(accept_task),
        })
    }

    /// The socket address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT/api/v1` (no trailing slash; paths start with `/`).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "https://{}{BASE_PATH}",
            SocketAddr::new(ip, self.addr.port())
        )
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Writes [`FakeTherappai::ca_pem`] to `dir/fake-therappai-ca.pem` and returns the path.
    pub fn write_ca_file(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(CA_FILE_NAME);
        std::fs::write(&path, &self.ca_pem)
            .with_context(|| format!("write CA certificate {}", path.display()))?;
        Ok(path)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// A handle to change behaviour while running.
    pub fn knobs(&self) -> Knobs {
        self.shared.knobs.clone()
    }

    /// Every access and refresh token issued so far, oldest first (for scanning logs and
    /// files for leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.issued_tokens()
    }

    /// Blacklists every refresh token issued so far, as if the session had been killed on
    /// the server. Tokens issued later (by a new login) work.
    pub fn revoke_all_refresh_tokens(&self) {
        self.shared.revoke_all_refresh_tokens();
    }

    /// True if `refresh` was issued by this fake and has been blacklisted (by rotation,
    /// the blacklist endpoint or [`FakeTherappai::revoke_all_refresh_tokens`]).
    pub fn is_refresh_blacklisted(&self, refresh: &str) -> bool {
        self.shared.is_refresh_blacklisted(refresh)
    }

    /// Stops accepting, cuts open connections and waits until every task has ended.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tracker.close();
        if let Some(task) = self.accept_task.take() {
            // A panic in the accept loop has already been reported by the runtime.
            let _ = task.await;
        }
        self.tracker.wait().await;
    }
}

impl Drop for FakeTherappai {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}
