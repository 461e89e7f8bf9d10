//! Reading the `exp` claim of a therappai JWT.
//!
//! The broker is not the tokens' audience and cannot verify their HS256 signature; it only
//! needs to know when each token expires. It never logs a token or its claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock expiry from the JWT's `exp` claim, or `None` when the token is not a JWT or has
/// no numeric `exp`.
pub fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let mut bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_f64));
    zeroize::Zeroize::zeroize(&mut bytes);
    let exp = exp?;
    if !exp.is_finite() || exp < 0.0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs_f64(exp))
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
        let t = expiry(&jwt(r#"{"exp":1700000000,"token_type":"access"}"#)).expect("exp");
        assert_eq!(unix_seconds(t), 1_700_000_000);
    }

    #[test]
    fn no_exp_or_garbage_is_none() {
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry("a.!!!.c"), None);
    }
}
