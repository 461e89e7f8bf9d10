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

/// The encoded `FileDescriptorSet` of `therappai.broker.v1`, for server reflection. The
/// schema is public: reflection reveals nothing the published .proto does not.
#[cfg(feature = "server")]
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("therappai_broker_v1");

/// Environment variable that overrides the socket path for clients.
pub const SOCKET_ENV: &str = "THERAPPAI_BROKER_SOCKET";

/// The socket the daemon listens on when its config names none, and clients dial by default:
/// `$XDG_RUNTIME_DIR/therappai-broker/broker.sock` for an ordinary user,
/// `/run/therappai-broker/broker.sock` for root (the system service).
pub fn default_socket_path() -> Result<std::path::PathBuf, &'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return Ok("/run/therappai-broker/broker.sock".into());
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => {
            Ok(std::path::Path::new(&dir).join("therappai-broker/broker.sock"))
        }
        _ => Err(
            "XDG_RUNTIME_DIR is not set, so there is no default socket path: \
                  set `socket = \"/path/broker.sock\"` in the config (daemon) or pass --socket / \
                  THERAPPAI_BROKER_SOCKET (clients)",
        ),
    }
}
