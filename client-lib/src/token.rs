//! The access token as apps receive it: a secret that prints as a mask.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::SystemTime;

/// A therappai access token. `Debug`/`Display` show only a mask and its fingerprint; the
/// memory is zeroized on drop. Use [`AccessToken::expose_secret`] only to build the
/// `Authorization` header.
pub struct AccessToken {
    secret: SecretString,
    expires_at: SystemTime,
    fingerprint: String,
}

impl AccessToken {
    pub(crate) fn new(token: String, expires_at: SystemTime, fingerprint: String) -> Self {
        Self {
            secret: SecretString::from(token),
            expires_at,
            fingerprint,
        }
    }

    /// The bearer token itself.
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// `Bearer <token>`, for the Authorization header of a therappai API call.
    pub fn bearer_header_value(&self) -> SecretString {
        SecretString::from(format!("Bearer {}", self.expose_secret()))
    }

    /// Wall-clock expiry (the token's JWT `exp`).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// First 8 hex digits of SHA-256 of the token, as the broker logs it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken([redacted] sha256:{})", self.fingerprint)
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_token() {
        let t = AccessToken::new(
            "header.payload-secret.sig".into(),
            SystemTime::now(),
            "abcd1234".into(),
        );
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("payload-secret"), "{shown}");
        assert!(shown.contains("abcd1234"));
    }
}
