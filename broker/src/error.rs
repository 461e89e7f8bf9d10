//! The broker's request errors and the one place they become `tonic::Status`.
//!
//! The wire contract can be reviewed here: denial → PERMISSION_DENIED, needs login →
//! UNAUTHENTICATED, upstream down → UNAVAILABLE, rate limit → RESOURCE_EXHAUSTED. Each status
//! also carries a machine-readable reason in the `x-therappai-reason` metadata key, which
//! client-lib turns into its error enum. No message here ever contains a token.

use crate::store::StoreError;
use crate::upstream::UpstreamError;
use tonic::{Code, Status};

/// Metadata key carrying [`BrokerError::reason`] on every error status.
pub const REASON_KEY: &str = "x-therappai-reason";
/// Metadata key carrying, on a rate-limit status and on an UNAVAILABLE that knows when the
/// broker tries therappai again, that time (Unix seconds).
pub const RETRY_AT_KEY: &str = "x-therappai-retry-at";

/// Why a request could not be served. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The request named an account that is not in the config.
    #[error("unknown account \"{account}\": the broker's config defines {}", known_list(.known))]
    UnknownAccount { account: String, known: Vec<String> },
    /// The account has never logged in, or was logged out.
    #[error(
        "account \"{account}\" is not logged in: run `therappai-brokerctl login --account {account}`"
    )]
    NotLoggedIn { account: String },
    /// The upstream rejected the refresh token: only a new login helps.
    #[error(
        "account \"{account}\" needs a new login ({reason}): run `therappai-brokerctl login --account {account}`"
    )]
    NeedsLogin { account: String, reason: String },
    /// Login with a wrong e-mail/password pair.
    #[error(
        "login for account \"{account}\" failed: therappai says the e-mail or password is wrong; nothing was stored"
    )]
    InvalidCredentials { account: String },
    /// Policy refused the caller.
    #[error("{message}")]
    PermissionDenied { message: String },
    /// The upstream is unreachable, failing or rate limiting; a retry later can succeed.
    #[error(
        "therappai is unavailable for account \"{account}\": {reason}; the broker keeps running, try again shortly"
    )]
    UpstreamUnavailable { account: String, reason: String },
    /// A refresh failed on a transient upstream problem, and the broker tries again at
    /// `retry_at` (a caller that needs a new token before then gets this).
    #[error(
        "therappai is unavailable for account \"{account}\": {reason}; the broker keeps running and tries again from {} (in {} s)",
        crate::clock::utc_rfc3339(*.retry_at),
        whole_seconds_up(*.retry_in)
    )]
    UpstreamRetrying {
        account: String,
        reason: String,
        retry_at: std::time::SystemTime,
        retry_in: std::time::Duration,
    },
    /// The upstream answered in a way that will not change on retry.
    #[error("therappai refused the request for account \"{account}\": {reason}")]
    UpstreamRefused { account: String, reason: String },
    /// The secure store failed.
    #[error("secure store failed for account \"{account}\": {source}")]
    Store {
        account: String,
        #[source]
        source: StoreError,
    },
    /// Login's store write did not answer in time: the login failed, and is undone if the
    /// write lands later (see `session/undo.rs`).
    #[error(
        "login for account \"{account}\" did not complete: {source}. Nothing was kept: the broker asked therappai to end the new session and sets the store entry back if the write lands later; run `therappai-brokerctl login --account {account}` again once the store answers"
    )]
    LoginNotStored {
        account: String,
        #[source]
        source: StoreError,
    },
    /// A request field is missing or malformed.
    #[error("{message}")]
    InvalidArgument { message: String },
    /// The caller's uid already has as many calls in flight as `calls_per_uid` allows.
    #[error(
        "the broker is already serving {limit} calls for uid {uid}, its limit ([connection_limits] calls_per_uid); wait for some to finish, or ask the admin to raise the limit"
    )]
    TooManyCalls { uid: u32, limit: usize },
    /// The caller's uid already has as many connections open as `connections_per_uid` allows.
    #[error(
        "uid {uid} already has {limit} connections open to the broker, its limit ([connection_limits] connections_per_uid); close some (a client that opens a connection per call and never closes them leaks), or ask the admin to raise the limit"
    )]
    TooManyConnections { uid: u32, limit: usize },
    /// A request message declared more bytes than the broker accepts.
    #[error(
        "the request message is {len} bytes; the broker accepts at most {limit} bytes per message (every request it serves is far smaller): check what the client sends"
    )]
    MessageTooLarge { len: usize, limit: usize },
    /// A task of the broker failed (a bug); the log has the details, the caller never does.
    #[error(
        "{what} failed inside the broker, which is a bug: the broker's log (`journalctl -u therappai-broker`) has the details; please report them, then run the same command again"
    )]
    Internal { what: &'static str },
    /// A rejected-token report on a token younger than `[refresh] report_min_age_seconds`:
    /// refused, so that an app cannot make the broker refresh in a loop.
    #[error(
        "the access token of account \"{account}\" that was reported rejected is only {} s old, and a report is acted on once the token is {} s old ([refresh] report_min_age_seconds): report again in {} s if it is still refused; a token this new refused points at the app's API host or this machine's clock (`timedatectl status`)",
        .age.as_secs(),
        .min_age.as_secs(),
        whole_seconds_up(*.retry_in)
    )]
    ReportTooSoon {
        account: String,
        age: std::time::Duration,
        min_age: std::time::Duration,
        retry_at: std::time::SystemTime,
        retry_in: std::time::Duration,
    },
    /// Too many failed logins: the caller may try again at `retry_at`.
    #[error(
        "{}: wait until {} (in {} s), then run `therappai-brokerctl login --account {account}` again",
        rate_limit_cause(.scope, *.locked_out),
        crate::clock::utc_rfc3339(*.retry_at),
        whole_seconds_up(*.retry_in)
    )]
    RateLimited {
        account: String,
        scope: crate::ratelimit::Scope,
        locked_out: bool,
        retry_at: std::time::SystemTime,
        retry_in: std::time::Duration,
    },
}

/// Rounded up, and at least 1: "in 0 s" would invite an immediate, refused retry.
fn whole_seconds_up(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn rate_limit_cause(scope: &crate::ratelimit::Scope, locked_out: bool) -> String {
    match (locked_out, scope) {
        (true, crate::ratelimit::Scope::Overall) => {
            "login is locked for every caller after too many failed logins on this broker"
                .to_owned()
        }
        (true, scope) => format!(
            "login is locked for {} after too many failed logins",
            scope.describe()
        ),
        (false, scope) => format!(
            "other login attempts of {} are still in flight and use up what is left of its allowance",
            scope.describe()
        ),
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no accounts; add an [[account]] section".to_owned()
    } else {
        known
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl BrokerError {
    /// Turns an upstream failure on `account` into the request error users see.
    pub fn from_upstream(account: &str, err: UpstreamError) -> Self {
        let account = account.to_owned();
        match err {
            UpstreamError::InvalidCredentials => Self::InvalidCredentials { account },
            UpstreamError::TokenNotValid { detail } => Self::NeedsLogin {
                account,
                reason: format!("therappai rejected the refresh token: {detail}"),
            },
            e if e.is_transient() => Self::UpstreamUnavailable {
                account,
                reason: e.to_string(),
            },
            e => Self::UpstreamRefused {
                account,
                reason: e.to_string(),
            },
        }
    }

    /// Stable machine-readable reason, sent as `x-therappai-reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownAccount { .. } => "unknown-account",
            Self::NotLoggedIn { .. } => "not-logged-in",
            Self::NeedsLogin { .. } => "needs-login",
            Self::InvalidCredentials { .. } => "invalid-credentials",
            Self::PermissionDenied { .. } => "permission-denied",
            Self::UpstreamUnavailable { .. } | Self::UpstreamRetrying { .. } => {
                "upstream-unavailable"
            }
            Self::UpstreamRefused { .. } => "upstream-refused",
            Self::Store { .. } | Self::LoginNotStored { .. } => "store-failed",
            Self::InvalidArgument { .. } => "invalid-argument",
            Self::RateLimited { .. } => "rate-limited",
            Self::ReportTooSoon { .. } => "report-too-soon",
            Self::Internal { .. } => "internal",
            Self::TooManyCalls { .. } => "too-many-calls",
            Self::TooManyConnections { .. } => "too-many-connections",
            Self::MessageTooLarge { .. } => "message-too-large",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::UnknownAccount { .. } => Code::NotFound,
            Self::NotLoggedIn { .. } | Self::NeedsLogin { .. } => Code::Unauthenticated,
            Self::InvalidCredentials { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::UpstreamUnavailable { .. } | Self::UpstreamRetrying { .. } => Code::Unavailable,
            Self::UpstreamRefused { .. } => Code::FailedPrecondition,
            // A store that did not answer may answer later: like an upstream that is down.
            Self::Store { source, .. } if source.is_call_timeout() => Code::Unavailable,
            Self::Store { .. } => Code::Internal,
            Self::LoginNotStored { .. } => Code::Unavailable,
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::RateLimited { .. } | Self::ReportTooSoon { .. } => Code::ResourceExhausted,
            Self::Internal { .. } => Code::Internal,
            Self::TooManyCalls { .. }
            | Self::TooManyConnections { .. }
            | Self::MessageTooLarge { .. } => Code::ResourceExhausted,
        }
    }
}

impl From<BrokerError> for Status {
    fn from(err: BrokerError) -> Self {
        // `{:#}`-style: the store error's own sentence is already in the Display.
        let mut status = Status::new(err.code(), err.to_string());
        if let Ok(value) = err.reason().parse() {
            status.metadata_mut().insert(REASON_KEY, value);
        }
        if let BrokerError::RateLimited { retry_at, .. }
        | BrokerError::UpstreamRetrying { retry_at, .. }
        | BrokerError::ReportTooSoon { retry_at, .. } = &err
        {
            let unix = crate::jwt::unix_seconds(*retry_at);
            if let Ok(value) = unix.to_string().parse() {
                status.metadata_mut().insert(RETRY_AT_KEY, value);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_login_is_unauthenticated_and_names_the_command() {
        let status = Status::from(BrokerError::NeedsLogin {
            account: "work".into(),
            reason: "expired".into(),
        });
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(
            status
                .message()
                .contains("therappai-brokerctl login --account work")
        );
        assert_eq!(
            status
                .metadata()
                .get(REASON_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("needs-login")
        );
    }

    #[test]
    fn a_store_that_did_not_answer_is_unavailable() {
        let timeout = || crate::store::StoreError::CallTimeout {
            backend: crate::store::Backend::SecretService,
            op: crate::store::Op::Save("work".into()),
            seconds: 2,
        };
        for err in [
            BrokerError::Store {
                account: "work".into(),
                source: timeout(),
            },
            BrokerError::LoginNotStored {
                account: "work".into(),
                source: timeout(),
            },
        ] {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
            assert!(
                status.message().contains("did not answer within 2 s"),
                "{}",
                status.message()
            );
            assert_eq!(
                status
                    .metadata()
                    .get(REASON_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some("store-failed")
            );
        }
    }

    #[test]
    fn rate_limit_is_resource_exhausted_with_the_retry_time() {
        let retry_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        let status = Status::from(BrokerError::RateLimited {
            account: "work".into(),
            scope: crate::ratelimit::Scope::Uid(1000),
            locked_out: true,
            retry_at,
            retry_in: std::time::Duration::from_secs(60),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("2024-02-29T12:34:56Z"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("uid 1000"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AT_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("1709210096")
        );
    }

    #[test]
    fn a_failed_refresh_says_when_the_broker_tries_again() {
        let retry_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        let status = Status::from(BrokerError::UpstreamRetrying {
            account: "work".into(),
            reason: "therappai answered 503".into(),
            retry_at,
            retry_in: std::time::Duration::from_millis(1200),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .ends_with("tries again from 2024-02-29T12:34:56Z (in 2 s)"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AT_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("1709210096")
        );
        assert_eq!(
            status
                .metadata()
                .get(REASON_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("upstream-unavailable")
        );
    }

    #[test]
    fn transient_upstream_errors_are_unavailable() {
        let err = BrokerError::from_upstream(
            "a",
            UpstreamError::Unavailable {
                reason: "down".into(),
            },
        );
        assert_eq!(Status::from(err).code(), Code::Unavailable);
    }
}
