//! The wire contract of therappai-broker: package `therappai.broker.v1`.
//!
//! One source of truth for both sides: the broker enables the `server` feature, client-lib the
//! `client` feature. Messages that carry a secret have a masking `Debug`.


#[allow(missing_debug_implementations)] // generated service types
pub mod v1 {
    tonic::include_proto!("therappai.broker.v1");

    impl std::fmt::Debug for LoginRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LoginRequest")
                .field("account", &self.account)
                .field("password", &"[redacted]")
                .finish()
        }
    }

    impl std::fmt::Debug for GetAccessTokenResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GetAccessTokenResponse")
                .field("access_token", &"[redacted]")
                .field("expires_at_unix", &self.expires_at_unix)
                .field("fingerprint", &self.fingerprint)
                .finish()
        }
    }
}
