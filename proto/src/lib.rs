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

    impl std::fmt::Debug for ReportRejectedRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // The refused token is still a live bearer token until the broker drops it.
            f.debug_struct("ReportRejectedRequest")
                .field("account", &self.account)
                .field("access_token", &"[redacted]")
                .field("fingerprint", &self.fingerprint)
                .field("min_valid_seconds", &self.min_valid_seconds)
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

/// The system service's socket (the `therappai-broker.socket` unit).
pub const SYSTEM_SOCKET: &str = "/run/therappai-broker/broker.sock";

/// The user session's socket, `$XDG_RUNTIME_DIR/therappai-broker/broker.sock` (the user
/// unit's `%t/therappai-broker/broker.sock`), when XDG_RUNTIME_DIR is set.
pub fn user_socket_path() -> Option<std::path::PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => {
            Some(std::path::Path::new(&dir).join("therappai-broker/broker.sock"))
        }
        _ => None,
    }
}

/// The socket the daemon listens on when its config names none: `$RUNTIME_DIRECTORY/broker.sock`
/// when systemd made the service a runtime directory, `/run/therappai-broker/broker.sock` for
/// root, else `$XDG_RUNTIME_DIR/therappai-broker/broker.sock`.
pub fn default_socket_path() -> Result<std::path::PathBuf, &'static str> {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // RuntimeDirectory= may list several, separated by ':'; the first is ours.
        let first = std::path::PathBuf::from(dir)
            .to_str()
            .and_then(|d| d.split(':').next().map(std::path::PathBuf::from));
        if let Some(first) = first {
            return Ok(first.join("broker.sock"));
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return Ok(SYSTEM_SOCKET.into());
    }
    user_socket_path().ok_or(
        "XDG_RUNTIME_DIR is not set, so there is no default socket path: \
         set `socket = \"/path/broker.sock\"` in the config (daemon) or pass --socket / \
         THERAPPAI_BROKER_SOCKET (clients)",
    )
}

/// The socket a client dials when nothing names one: the user session's broker when its
/// socket exists, else the system service's when that exists. `Err` lists the paths tried,
/// in order.
pub fn discover_socket() -> Result<std::path::PathBuf, Vec<std::path::PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let candidates: Vec<std::path::PathBuf> = user_socket_path()
        .into_iter()
        .chain(std::iter::once(std::path::PathBuf::from(SYSTEM_SOCKET)))
        .collect();
    let is_socket = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
    };
    match candidates.iter().find(|path| is_socket(path)) {
        Some(found) => Ok(found.clone()),
        None => Err(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{GetAccessTokenResponse, LoginRequest, ReportRejectedRequest};

    const SECRET: &str = "eyJsecret-token-or-password";

    /// Every message that carries a secret prints without it (issue 11, defect 9).
    #[test]
    fn secret_carrying_messages_debug_masked() {
        let printed = [
            format!(
                "{:?}",
                LoginRequest {
                    account: "a".into(),
                    password: SECRET.into(),
                }
            ),
            format!(
                "{:?}",
                GetAccessTokenResponse {
                    access_token: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ReportRejectedRequest {
                    account: "a".into(),
                    access_token: SECRET.into(),
                    fingerprint: "0123abcd".into(),
                    min_valid_seconds: Some(5),
                }
            ),
        ];
        for text in &printed {
            assert!(!text.contains(SECRET), "secret printed: {text}");
            assert!(text.contains("[redacted]"), "no mask marker: {text}");
        }
        assert!(
            printed[2].contains("0123abcd"),
            "fingerprint kept: {}",
            printed[2]
        );
    }
}
