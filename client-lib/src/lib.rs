//! Client library for therappai-broker: ask the local broker for a therappai access token.
//!
//! ```no_run
//! # async fn demo() -> Result<(), therappai_broker_client::Error> {
//! let mut broker = therappai_broker_client::Client::connect_default().await?;
//! let token = broker.access_token("default").await?;
//! // use token.expose_secret() in `Authorization: Bearer …`; never log it.
//! # Ok(()) }
//! ```
//!
//! The broker decides from the kernel's peer credentials whether this process may have the
//! token; there is nothing to authenticate here.

mod call;
mod error;
mod peer_check;
mod session;
mod token;

pub use call::{ApiAnswer, CallError, MAX_CALL_ATTEMPTS};
pub use error::Error;
pub use peer_check::BROKER_USER;
pub use session::{SessionChange, SessionState, SessionWatch};
pub use therappai_broker_proto::v1 as proto;
pub use token::AccessToken;

use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use therappai_broker_proto::v1::broker_client::BrokerClient;
use tonic::transport::{Channel, Endpoint};

pub use therappai_broker_proto::SOCKET_ENV;

/// A connection to the broker. Cheap to clone; calls may run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    inner: BrokerClient<Channel>,
    socket: PathBuf,
}

/// The socket clients dial: `THERAPPAI_BROKER_SOCKET`, else the user session's broker
/// (`$XDG_RUNTIME_DIR/therappai-broker/broker.sock`) when its socket exists, else the system
/// service's (`/run/therappai-broker/broker.sock`). The error names every path tried.
pub fn default_socket() -> Result<PathBuf, Error> {
    match std::env::var_os(SOCKET_ENV) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => therappai_broker_proto::discover_socket().map_err(|tried| Error::NoBroker { tried }),
    }
}

/// The name of the group that owns `socket` (from /etc/group; its number when the group is
/// not listed there), for the advice on how to get access.
fn socket_group(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(gid) = std::fs::metadata(socket).map(|m| m.gid()) else {
        return "therappai".to_owned();
    };
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|groups| {
            groups.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == gid.to_string()).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| gid.to_string())
}

impl Client {
    /// Connects to [`default_socket`].
    pub async fn connect_default() -> Result<Self, Error> {
        Self::connect(default_socket()?).await
    }

    /// Connects to the broker listening on `socket`. Before anything is sent, the process
    /// listening there must run as root, as this process's own user, or as the system user
    /// [`BROKER_USER`]; anyone else gets [`Error::NotTheBroker`] (a planted socket never sees
    /// a request, let alone a password).
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, Error> {
        Self::connect_checked(socket.as_ref(), None).await
    }

    /// [`Client::connect`], also trusting a broker that runs as `broker_uid` (a broker started
    /// under a service user of another name).
    pub async fn connect_expecting_uid(
        socket: impl AsRef<Path>,
        broker_uid: u32,
    ) -> Result<Self, Error> {
        Self::connect_checked(socket.as_ref(), Some(broker_uid)).await
    }

    async fn connect_checked(socket: &Path, expected_uid: Option<u32>) -> Result<Self, Error> {
        let socket = socket.to_owned();
        let unreachable = |reason: String| Error::Unreachable {
            socket: socket.clone(),
            reason,
        };
        if !socket.exists() {
            return Err(unreachable("no socket at that path".to_owned()));
        }
        let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        let connector = peer_check::CheckedConnector::new(&socket, expected_uid);
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                let mut reason = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    if let Some(listener) = c.downcast_ref::<peer_check::UntrustedListener>() {
                        return Error::NotTheBroker {
                            socket: listener.socket.clone(),
                            uid: listener.uid,
                            user: peer_check::user_name(listener.uid)
                                .map_or_else(String::new, |name| format!(" ({name})")),
                            pid: listener
                                .pid
                                .map_or_else(String::new, |pid| format!(", pid {pid}")),
                            own_uid: peer_check::own_uid(),
                        };
                    }
                    if c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                    {
                        return Error::SocketForbidden {
                            group: socket_group(&socket),
                            socket: socket.clone(),
                        };
                    }
                    reason = c.to_string();
                    cause = c.source();
                }
                unreachable(reason)
            })?;
        Ok(Self {
            inner: BrokerClient::new(channel),
            socket,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// An access token for `account`, valid for at least 30 seconds.
    pub async fn access_token(&mut self, account: &str) -> Result<AccessToken, Error> {
        self.request_token(account, None).await
    }

    /// An access token for `account`, valid for at least `min_valid` (capped by the broker at
    /// half the token lifetime therappai issues).
    pub async fn access_token_valid_for(
        &mut self,
        account: &str,
        min_valid: Duration,
    ) -> Result<AccessToken, Error> {
        let seconds = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
        self.request_token(account, Some(seconds)).await
    }

    async fn request_token(
        &mut self,
        account: &str,
        min_valid_seconds: Option<u32>,
    ) -> Result<AccessToken, Error> {
        let request = proto::GetAccessTokenRequest {
            account: account.to_owned(),
            min_valid_seconds,
        };
        let response = self
            .inner
            .get_access_token(request)
            .await
            .map_err(|s| Error::from_status(s, account, &self.socket))?
            .into_inner();
        Ok(token_from(response))
    }

    /// Reports that therappai refused the token with `fingerprint` (see
    /// [`AccessToken::fingerprint`]) and returns the token to use now: a new one if the
    /// reported one was current (the broker refreshes once, however many apps report it),
    /// else the current one. Prefer [`Client::call_with_token`], which does this for you.
    pub async fn report_rejected(
        &mut self,
        account: &str,
        fingerprint: &str,
    ) -> Result<AccessToken, Error> {
        let request = proto::ReportRejectedRequest {
            account: account.to_owned(),
            access_token: String::new(),
            fingerprint: fingerprint.to_owned(),
            min_valid_seconds: None,
        };
        let response = self
            .inner
            .report_rejected(request)
            .await
            .map_err(|s| Error::from_status(s, account, &self.socket))?
            .into_inner();
        Ok(token_from(response))
    }

    /// A stream of `account`'s session state: first the current state, then every change,
    /// so an app can go back to its login screen when an admin logs it out or the session
    /// ends.
    pub async fn watch_session(&mut self, account: &str) -> Result<SessionWatch, Error> {
        let request = proto::WatchSessionRequest {
            account: account.to_owned(),
        };
        let inner = self
            .inner
            .watch_session(request)
            .await
            .map_err(|s| Error::from_status(s, account, &self.socket))?
            .into_inner();
        Ok(SessionWatch {
            inner,
            account: account.to_owned(),
            socket: self.socket.clone(),
        })
    }

    /// Admin: logs `account` in with `password`. Returns the new access token's expiry.
    pub async fn login(
        &mut self,
        account: &str,
        password: &SecretString,
    ) -> Result<SystemTime, Error> {
        let request = proto::LoginRequest {
            account: account.to_owned(),
            password: password.expose_secret().to_owned(),
        };
        let response = self
            .inner
            .login(request)
            .await
            .map_err(|s| Error::from_status(s, account, &self.socket))?
            .into_inner();
        Ok(from_unix(response.access_expires_at_unix))
    }

    /// Admin: logs `account` out and reports each step.
    pub async fn logout(&mut self, account: &str) -> Result<proto::LogoutResponse, Error> {
        let request = proto::LogoutRequest {
            account: account.to_owned(),
        };
        self.inner
            .logout(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::from_status(s, account, &self.socket))
    }

    /// Admin: device-level logout: every configured account, plus the store entries left by
    /// accounts no longer in the broker's config. Each account's outcome is in the answer;
    /// one failing account does not stop the others.
    pub async fn logout_device(&mut self) -> Result<proto::LogoutDeviceResponse, Error> {
        self.inner
            .logout_device(proto::LogoutDeviceRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::from_status(s, "", &self.socket))
    }

    /// Admin: compromise handling for `account`: revokes its session upstream and wipes it
    /// locally. The local wipe always happens; check `complete` in the answer: `false` means
    /// therappai may still honour the refresh token, and each account's `error` says what to do.
    pub async fn revoke(&mut self, account: &str) -> Result<proto::RevokeResponse, Error> {
        self.revoke_request(proto::RevokeRequest {
            account: account.to_owned(),
            all: false,
        })
        .await
    }

    /// Admin: [`Client::revoke`] for every account and every leftover store entry.
    pub async fn revoke_all(&mut self) -> Result<proto::RevokeResponse, Error> {
        self.revoke_request(proto::RevokeRequest {
            account: String::new(),
            all: true,
        })
        .await
    }

    async fn revoke_request(
        &mut self,
        request: proto::RevokeRequest,
    ) -> Result<proto::RevokeResponse, Error> {
        let account = request.account.clone();
        self.inner
            .revoke(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::from_status(s, &account, &self.socket))
    }

    /// Admin: the broker's metrics, Prometheus text exposition format 0.0.4. Carries no
    /// token, password or e-mail.
    pub async fn metrics(&mut self) -> Result<String, Error> {
        self.inner
            .get_metrics(proto::GetMetricsRequest {})
            .await
            .map(|r| r.into_inner().text)
            .map_err(|s| Error::from_status(s, "", &self.socket))
    }

    /// The state of every account the caller may see. Carries no token.
    pub async fn status(&mut self) -> Result<proto::StatusResponse, Error> {
        self.inner
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::from_status(s, "", &self.socket))
    }
}

/// Moves the token out of the wire message into the secret type.
fn token_from(mut response: proto::GetAccessTokenResponse) -> AccessToken {
    AccessToken::new(
        std::mem::take(&mut response.access_token),
        from_unix(response.expires_at_unix),
        std::mem::take(&mut response.fingerprint),
    )
}

fn from_unix(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
