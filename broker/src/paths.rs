//! Every path and name the broker uses, in one place.

use std::path::PathBuf;

/// Keyring service name the refresh tokens are filed under (one entry per account).
pub const KEYRING_SERVICE: &str = "therappai-broker";

/// Directory name under the runtime directory that holds the socket.
pub const RUNTIME_SUBDIR: &str = "therappai-broker";

/// File name of the gRPC socket.
pub const SOCKET_FILE: &str = "broker.sock";

/// `$XDG_RUNTIME_DIR/therappai-broker/broker.sock`, or `/run/therappai-broker/broker.sock`
/// for root (a system service).
pub fn default_socket_path() -> Result<PathBuf, &'static str> {
    therappai_broker_proto::default_socket_path()
}
