//! What each RPC checks in its request before it acts: one function per RPC, run first
//! (before policy, audit, the rate limiter or any lookup), so a junk field gets
//! INVALID_ARGUMENT without being echoed, logged or kept (issue 11, defect 4).
//!
//! Pure functions of the wire message: the fuzz target `request_validation` runs exactly
//! these on arbitrary decoded messages.

use crate::error::BrokerError;
use crate::secret::AccessToken;
use std::time::Duration;
use therappai_broker_proto::v1 as pb;

/// Validity asked for when a request does not say.
const DEFAULT_MIN_VALID: Duration = Duration::from_secs(30);
/// Longest validity a caller may ask for.
pub(crate) const MAX_MIN_VALID_SECONDS: u32 = 86_400;

/// A checked GetAccessToken request.
#[derive(Debug)]
pub struct TokenRequest {
    pub min_valid: Duration,
}

/// A checked ReportRejected request: the rejected token is already reduced to its fingerprint.
#[derive(Debug)]
pub struct RejectedReport {
    pub min_valid: Duration,
    pub fingerprint: String,
}

pub fn get_access_token(request: &pb::GetAccessTokenRequest) -> Result<TokenRequest, BrokerError> {
    account(&request.account)?;
    Ok(TokenRequest {
        min_valid: min_valid(request.min_valid_seconds)?,
    })
}

/// Takes the reported token out of the request (it goes straight into a secret type and is
/// wiped once its fingerprint is known).
pub fn report_rejected(
    request: &mut pb::ReportRejectedRequest,
) -> Result<RejectedReport, BrokerError> {
    account(&request.account)?;
    let min_valid = min_valid(request.min_valid_seconds)?;
    let reported = AccessToken::new(std::mem::take(&mut request.access_token));
    let fingerprint = match (reported.expose().is_empty(), request.fingerprint.as_str()) {
        (false, _) => reported.fingerprint(),
        (true, f) if is_fingerprint(f) => f.to_ascii_lowercase(),
        (true, "") => {
            return Err(invalid(
                "ReportRejected needs the rejected access_token or its fingerprint".to_owned(),
            ));
        }
        // Not echoed: an app that put the token itself here must not get it in logs.
        (true, f) => {
            return Err(invalid(format!(
                "the fingerprint is not the 8 hex digits GetAccessToken returns (got {} characters); pass that fingerprint, or the token itself in access_token",
                f.chars().count()
            )));
        }
    };
    Ok(RejectedReport {
        min_valid,
        fingerprint,
    })
}

pub fn watch_session(request: &pb::WatchSessionRequest) -> Result<(), BrokerError> {
    account(&request.account)
}

/// The password is only checked for presence; it is never part of an error.
pub fn login(request: &pb::LoginRequest) -> Result<(), BrokerError> {
    account(&request.account)?;
    if request.password.is_empty() {
        return Err(invalid("the password is empty".to_owned()));
    }
    Ok(())
}

pub fn logout(request: &pb::LogoutRequest) -> Result<(), BrokerError> {
    account(&request.account)
}

/// `all` wins over a named account (the CLI refuses both at once).
pub fn revoke(request: &pb::RevokeRequest) -> Result<(), BrokerError> {
    if request.all {
        return Ok(());
    }
    account(&request.account)
}

/// An account field: present and a name the config could hold. The name is never echoed
/// when it is not valid (it can be any length and any byte).
pub fn account(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() {
        return Err(invalid(
            "the request names no account; pass --account NAME".to_owned(),
        ));
    }
    crate::config::validate_account_name(name).map_err(|_| {
        invalid(
            "the account name is not valid (1-64 letters, digits, '-', '_' or '.'); pass a name \
             from the broker's config"
                .to_owned(),
        )
    })
}

fn min_valid(requested: Option<u32>) -> Result<Duration, BrokerError> {
    match requested {
        None => Ok(DEFAULT_MIN_VALID),
        Some(s) if s <= MAX_MIN_VALID_SECONDS => Ok(Duration::from_secs(u64::from(s))),
        Some(s) => Err(invalid(format!(
            "min_valid_seconds {s} is more than the maximum {MAX_MIN_VALID_SECONDS}"
        ))),
    }
}

fn is_fingerprint(value: &str) -> bool {
    value.len() == 8 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn invalid(message: String) -> BrokerError {
    BrokerError::InvalidArgument { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while writing the `request_validation` fuzz target: Login, Logout and Revoke
    /// looked the account up without checking the name, so a junk name (any length) came
    /// back whole in the NOT_FOUND message, and Login logged it raw in its rate-limit audit.
    #[test]
    fn admin_rpcs_refuse_junk_names_without_echoing_them() {
        let junk = format!("{}\u{0}\u{1b}[31m", "j".repeat(300));
        let checks = [
            login(&pb::LoginRequest {
                account: junk.clone(),
                password: "pw".into(),
            }),
            logout(&pb::LogoutRequest {
                account: junk.clone(),
            }),
            revoke(&pb::RevokeRequest {
                account: junk.clone(),
                all: false,
            }),
        ];
        for check in checks {
            let err = check.expect_err("a junk name is refused");
            assert!(matches!(err, BrokerError::InvalidArgument { .. }), "{err}");
            assert!(!err.to_string().contains("jjjj"), "{err}");
        }
        assert!(
            revoke(&pb::RevokeRequest {
                account: junk,
                all: true
            })
            .is_ok()
        );
    }

    #[test]
    fn a_token_in_the_fingerprint_field_is_not_echoed() {
        let mut request = pb::ReportRejectedRequest {
            account: "default".into(),
            fingerprint: "eyJhbGciOiJIUzI1NiJ9.secret.sig".into(),
            ..Default::default()
        };
        let err = report_rejected(&mut request).expect_err("not a fingerprint");
        assert!(!err.to_string().contains("secret"), "{err}");
        request.fingerprint = "DEADBEEF".into();
        let report = report_rejected(&mut request).expect("a fingerprint");
        assert_eq!(report.fingerprint, "deadbeef");
    }

    #[test]
    fn min_valid_is_bounded() {
        let asks = |s| {
            get_access_token(&pb::GetAccessTokenRequest {
                account: "a".into(),
                min_valid_seconds: Some(s),
            })
        };
        assert_eq!(
            asks(MAX_MIN_VALID_SECONDS).map(|r| r.min_valid).ok(),
            Some(Duration::from_secs(86_400))
        );
        assert!(asks(u32::MAX).is_err());
    }
}
