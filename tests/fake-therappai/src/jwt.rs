//! HS256 JSON Web Tokens shaped like SimpleJWT's: `token_type`, `exp`, `iat`, `jti`,
//! `user_id`. The signing key is random per run, so tokens from one run never verify in
//! another.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Which of SimpleJWT's two token classes a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TokenType {
    Access,
    Refresh,
}

/// The payload of every token this fake issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) token_type: TokenType,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) jti: String,
    pub(crate) user_id: u64,
}

/// Why a token did not verify. Callers answer all of them the same way (token_not_valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyError {
    Malformed,
    BadSignature,
    WrongType,
    Expired,
}

/// Signs and verifies tokens with one random HS256 key.
pub(crate) struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

/// Seconds since the Unix epoch, by the wall clock (JWT `exp` is wall time).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    pub(crate) fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts any key length"),
        }
    }

    /// Mints a token of `token_type` for `user_id`, valid for `lifetime` from now.
    /// Returns the compact token and its claims.
    pub(crate) fn mint(
        &self,
        token_type: TokenType,
        user_id: u64,
        lifetime: Duration,
    ) -> (String, Claims) {
        let iat = now_secs();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = Claims {
            token_type,
            exp: iat.saturating_add(lifetime.as_secs()),
            iat,
            jti: hex::encode(jti),
            user_id,
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        // Serialising a struct of strings and integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{signing_input}.{signature}"), claims)
    }

    /// Checks signature, type and expiry (against the wall clock now).
    pub(crate) fn verify(&self, token: &str, expected: TokenType) -> Result<Claims, VerifyError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| VerifyError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| VerifyError::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed)?;
        if claims.token_type != expected {
            return Err(VerifyError::WrongType);
        }
        if now_secs() >= claims.exp {
            return Err(VerifyError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let signer = Signer::random();
        let (token, claims) = signer.mint(TokenType::Access, 7, Duration::from_secs(60));
        let back = signer.verify(&token, TokenType::Access).unwrap();
        assert_eq!(back.jti, claims.jti);
        assert_eq!(back.user_id, 7);
        assert_eq!(back.exp, back.iat + 60);
    }

    #[test]
    fn rejects_wrong_type_expired_and_foreign_key() {
        let signer = Signer::random();
        let (access, _) = signer.mint(TokenType::Access, 1, Duration::from_secs(60));
        assert_eq!(
            signer.verify(&access, TokenType::Refresh).unwrap_err(),
            VerifyError::WrongType
        );
        let (expired, _) = signer.mint(TokenType::Access, 1, Duration::ZERO);
        assert_eq!(
            signer.verify(&expired, TokenType::Access).unwrap_err(),
            VerifyError::Expired
        );
        let other = Signer::random();
        assert_eq!(
            other.verify(&access, TokenType::Access).unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(
            signer.verify("abc", TokenType::Access).unwrap_err(),
            VerifyError::Malformed
        );
    }

    #[test]
    fn jti_is_unique() {
        let signer = Signer::random();
        let (_, a) = signer.mint(TokenType::Refresh, 1, Duration::from_secs(60));
        let (_, b) = signer.mint(TokenType::Refresh, 1, Duration::from_secs(60));
        assert_ne!(a.jti, b.jti);
    }
}
