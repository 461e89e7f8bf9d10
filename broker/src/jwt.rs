//! Reading the `exp` claim of a therappai JWT.
//!
//! The broker is not the tokens' audience and cannot verify their HS256 signature; it only
//! needs to know when each token expires. It never logs a token or its claims (the `exp`
//! number alone is not a secret).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Latest `exp` the broker accepts: the end of the year 9999, the last time every part of
/// the broker (status, RFC 3339 in messages, Unix seconds on the wire) can represent.
const MAX_EXP_SECONDS: f64 = 253_402_300_799.0;

/// Why a token's claims cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The `exp` claim is a number, but not a time the broker can represent.
    #[error(
        "the token's exp claim ({exp}) is not a time between 1970 and the year 9999; therappai (or whatever answered in its place) issued a malformed token"
    )]
    ExpOutOfRange { exp: f64 },
}

/// Wall-clock expiry from the JWT's `exp` claim: `Ok(None)` when the token is not a JWT or
/// has no numeric `exp`, an error when `exp` is negative, not finite or past the year 9999.
pub fn expiry(token: &str) -> Result<Option<SystemTime>, JwtError> {
    let Some(payload) = token.split('.').nth(1) else {
        return Ok(None);
    };
    let Ok(mut bytes) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return Ok(None);
    };
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_f64));
    zeroize::Zeroize::zeroize(&mut bytes);
    let Some(exp) = exp else {
        return Ok(None);
    };
    // Checked forms throughout: a huge exp must be an error, never a panic (at start-up that
    // would be a crash loop; after a rotation it would lose the rotated token).
    if !(0.0..=MAX_EXP_SECONDS).contains(&exp) {
        return Err(JwtError::ExpOutOfRange { exp });
    }
    Duration::try_from_secs_f64(exp)
        .ok()
        .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch))
        .map(Some)
        .ok_or(JwtError::ExpOutOfRange { exp })
}

/// Unix seconds of a wall-clock time (0 before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(claims.as_bytes())
        )
    }

    #[test]
    fn reads_exp() {
        let t = expiry(&jwt(r#"{"exp":1700000000,"token_type":"access"}"#))
            .expect("a valid exp")
            .expect("exp");
        assert_eq!(unix_seconds(t), 1_700_000_000);
    }

    #[test]
    fn no_exp_or_garbage_is_none() {
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), Ok(None));
        assert_eq!(expiry(&jwt(r#"{"exp":"soon"}"#)), Ok(None));
        assert_eq!(expiry("not-a-jwt"), Ok(None));
        assert_eq!(expiry("a.!!!.c"), Ok(None));
    }

    #[test]
    fn absurd_exp_is_a_clear_error_not_a_panic() {
        for exp in [
            "18446744073709551615", // u64::MAX
            "9223372036854775807",  // i64::MAX: overflows SystemTime
            "1e300",
            "253402300800", // the first second of the year 10000
            "-1",
        ] {
            let err = expiry(&jwt(&format!(r#"{{"exp":{exp}}}"#)))
                .expect_err("an exp no clock can hold is refused");
            assert!(err.to_string().contains("exp claim"), "{err}");
        }
        let last = expiry(&jwt(r#"{"exp":253402300799}"#)).expect("the last second of 9999");
        assert_eq!(last.map(unix_seconds), Some(253_402_300_799));
    }
}
