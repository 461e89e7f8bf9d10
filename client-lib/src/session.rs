//! A typed stream of an account's session-state changes (WatchSession).

use crate::{Error, from_unix, proto};
use std::path::PathBuf;
use std::time::SystemTime;

/// Where an account's session stands, as the broker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// No session: never logged in, or logged out (possibly by an admin).
    LoggedOut,
    /// Tokens are served.
    Active,
    /// A refresh is in flight; tokens still valid keep being served.
    Refreshing,
    /// therappai rejected the refresh token: the app should go back to its login screen.
    NeedsLogin,
}

impl SessionState {
    /// Whether an app should stop and ask for a login (`logged-out` or `needs-login`).
    pub fn needs_login(self) -> bool {
        matches!(self, Self::LoggedOut | Self::NeedsLogin)
    }

    /// The name `status` and the logs use: `logged-out`, `active`, `refreshing`, `needs-login`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged-out",
            Self::Active => "active",
            Self::Refreshing => "refreshing",
            Self::NeedsLogin => "needs-login",
        }
    }

    /// The state a wire value (`proto::SessionState` as i32) stands for; `None` for unknown.
    pub fn from_wire(state: i32) -> Option<Self> {
        match proto::SessionState::try_from(state).ok()? {
            proto::SessionState::LoggedOut => Some(Self::LoggedOut),
            proto::SessionState::Active => Some(Self::Active),
            proto::SessionState::Refreshing => Some(Self::Refreshing),
            proto::SessionState::NeedsLogin => Some(Self::NeedsLogin),
            proto::SessionState::Unspecified => None,
        }
    }
}

/// One event of a [`SessionWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub account: String,
    pub state: SessionState,
    /// When the change happened (for a snapshot: when it was taken).
    pub at: SystemTime,
    /// Why, in one line; may be empty.
    pub reason: String,
    /// The state at subscription (or after falling behind), not a change.
    pub snapshot: bool,
}

/// The stream [`crate::Client::watch_session`] returns: first the current state, then every
/// change. Ends (`None`) when the broker shuts down; reconnect and watch again then.
#[derive(Debug)]
pub struct SessionWatch {
    pub(crate) inner: tonic::Streaming<proto::SessionEvent>,
    pub(crate) account: String,
    pub(crate) socket: PathBuf,
}

impl SessionWatch {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<SessionChange, Error>> {
        let event = match self.inner.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(status) => {
                return Some(Err(Error::from_status(status, &self.account, &self.socket)));
            }
        };
        let Some(state) = SessionState::from_wire(event.state) else {
            return Some(Err(Error::Other {
                code: tonic::Code::Internal,
                message: format!(
                    "the broker sent session state {} this client does not know; upgrade therappai-broker-client",
                    event.state
                ),
            }));
        };
        Some(Ok(SessionChange {
            account: event.account,
            state,
            at: from_unix(event.at_unix),
            reason: event.reason,
            snapshot: event.snapshot,
        }))
    }
}
