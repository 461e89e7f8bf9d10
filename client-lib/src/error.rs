//! The errors apps match on. Each says what happened and what to do next.

use std::path::PathBuf;

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker answers on the socket (not running, wrong path, or no permission on it).
    #[error(
        "the therappai broker is not reachable at {socket}: {reason}. Start it with `systemctl start therappai-broker` (or `systemctl --user start therappai-broker`), or point at it with --socket PATH / THERAPPAI_BROKER_SOCKET"
    )]
    Unreachable { socket: PathBuf, reason: String },
    /// The socket exists but this user may not connect to it: only its owner and its group
    /// may (the system broker's socket is root:therappai 0660).
    #[error(
        "you may not connect to the therappai broker at {socket}: permission denied. Only its owner and members of group `{group}` may: for the system broker, ask an admin to run `usermod -aG {group} $USER` (it takes effect at your next login); a user session's broker serves its own user only"
    )]
    SocketForbidden { socket: PathBuf, group: String },
    /// The process listening on the socket is not the broker: it runs as a uid that is
    /// neither root, the caller's own, nor the broker's system user. Nothing was sent to it.
    #[error(
        "refusing to talk to {socket}: the process listening on it runs as uid {uid}{user}{pid}, which is neither root, you (uid {own_uid}) nor the broker's system user `therappai-broker`, so it is not the therappai broker; nothing was sent to it. If that socket should not be there, remove it (`rm {socket}`) and find out who created it; otherwise check the path, or point at the real broker with --socket PATH / THERAPPAI_BROKER_SOCKET",
        socket = socket.display()
    )]
    NotTheBroker {
        socket: PathBuf,
        uid: u32,
        /// ` (name)` of that uid, or empty.
        user: String,
        /// `, pid N` of the listener, or empty.
        pid: String,
        own_uid: u32,
    },
    /// No socket path was given and no broker socket exists at the default paths.
    #[error(
        "no therappai broker socket found (tried {}). Start the broker: `systemctl --user start therappai-broker.socket` for your session, or `sudo systemctl enable --now therappai-broker.socket` for the system service; or point at it with --socket PATH / THERAPPAI_BROKER_SOCKET",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoBroker { tried: Vec<PathBuf> },
    /// The account is logged out, or its session ended: a login is needed.
    #[error("{message}")]
    NotLoggedIn { account: String, message: String },
    /// The e-mail/password pair was refused at login.
    #[error("{message}")]
    InvalidCredentials { message: String },
    /// The broker's policy does not allow this caller.
    #[error("{message}")]
    PermissionDenied { message: String },
    /// The account is not in the broker's config.
    #[error("{message}")]
    UnknownAccount { message: String },
    /// therappai is unreachable, failing or refused the request.
    #[error("{message}")]
    Upstream { message: String },
    /// Too many failed logins; `retry_at` is when the broker will accept one again (the
    /// message says it too).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_at: Option<std::time::SystemTime>,
    },
    /// The broker's secure store failed.
    #[error("{message}")]
    Store { message: String },
    /// Any other failure reported by the broker.
    #[error("the broker answered {code:?}: {message}")]
    Other { code: tonic::Code, message: String },
}

impl Error {
    pub(crate) fn from_status(
        status: tonic::Status,
        account: &str,
        socket: &std::path::Path,
    ) -> Self {
        let reason = status
            .metadata()
            .get("x-therappai-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let message = status.message().to_owned();
        match (reason.as_str(), status.code()) {
            ("not-logged-in" | "needs-login", _) => Self::NotLoggedIn {
                account: account.to_owned(),
                message,
            },
            ("invalid-credentials", _) => Self::InvalidCredentials { message },
            ("permission-denied", _) | (_, tonic::Code::PermissionDenied) => {
                Self::PermissionDenied { message }
            }
            ("unknown-account", _) => Self::UnknownAccount { message },
            ("upstream-unavailable" | "upstream-refused", _) => Self::Upstream { message },
            ("rate-limited", _) | (_, tonic::Code::ResourceExhausted) => Self::RateLimited {
                retry_at: status
                    .metadata()
                    .get("x-therappai-retry-at")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
                message,
            },
            ("store-failed", _) => Self::Store { message },
            // A transport failure (broker gone mid-call, socket refused) carries no reason.
            ("", tonic::Code::Unavailable | tonic::Code::Unknown) => Self::Unreachable {
                socket: socket.to_owned(),
                reason: message,
            },
            (_, code) => Self::Other { code, message },
        }
    }
}
