//! Secret types: every token and password the broker touches lives in one of these from the
//! moment it is parsed until it is written to the wire.
//!
//! They keep their bytes in the secret arena ([`arena`]: pages locked in RAM and excluded
//! from core dumps), are wiped on drop, print only a mask or a short fingerprint in
//! `Debug`/`Display`, and are not `Clone`: copying a secret is a decision made with
//! `duplicate()`, visible in review. This module never logs a secret (the arena logs, once,
//! a kernel refusing to lock or exclude its pages).

mod arena;
mod idle_wipe;

use arena::SecretBytes;
use sha2::{Digest, Sha256};
use std::fmt;

pub use idle_wipe::{DeepWork, deep_work_then_wipe, wipe_idle_thread};

/// First 8 hex digits of SHA-256 of a secret: enough to correlate log lines, useless to an
/// attacker.
pub fn fingerprint_of(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    hex::encode(&digest[..4])
}

macro_rules! secret_newtype {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        pub struct $name(SecretBytes);

        impl $name {
            /// Takes a value: its bytes move into the secret arena and the `String` is wiped.
            pub fn new(value: String) -> Self {
                Self(SecretBytes::new(value))
            }

            /// The secret itself, for writing to the wire or the store. Keep the borrow short.
            pub fn expose(&self) -> &str {
                self.0.as_str()
            }

            /// Short, non-reversible identifier for logs and status.
            pub fn fingerprint(&self) -> String {
                fingerprint_of(self.expose())
            }

            /// An explicit copy, for the rare place that must hold two (e.g. memory and store).
            pub fn duplicate(&self) -> Self {
                Self::new(self.expose().to_owned())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "([redacted] sha256:{})"), self.fingerprint())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                // Not constant-time: comparisons are between tokens the broker already holds.
                self.expose() == other.expose()
            }
        }
    };
}

secret_newtype!(
    /// A therappai access token (a short-lived JWT for `Authorization: Bearer`).
    AccessToken,
    "AccessToken"
);
secret_newtype!(
    /// A therappai refresh token: lives only in the secure store and in broker memory.
    RefreshToken,
    "RefreshToken"
);
secret_newtype!(
    /// An account password, held only for the duration of one login call.
    Password,
    "Password"
);
secret_newtype!(
    /// An OpenBao (Vault) client token, or an AppRole secret_id: what lets the broker read
    /// the fleet's entries.
    VaultCredential,
    "VaultCredential"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let token = RefreshToken::new("eyJhbGciOi.secret-part.sig".to_owned());
        let shown = format!("{token:?} {token} {:#?}", token);
        assert!(!shown.contains("secret-part"), "leaked: {shown}");
        assert!(shown.contains(&token.fingerprint()));
    }

    #[test]
    fn fingerprint_is_eight_hex_digits_and_stable() {
        let a = fingerprint_of("abc");
        assert_eq!(a, "ba7816bf", "sha256(abc) starts with ba7816bf");
        assert_eq!(Password::new("abc".into()).fingerprint(), a);
    }
}
