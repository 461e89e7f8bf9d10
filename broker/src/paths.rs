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

/// Directory name under the state directory that holds the encrypted-file store.
pub const STATE_SUBDIR: &str = "therappai-broker";

/// File name of the encrypted-file store.
pub const STORE_FILE: &str = "tokens.enc";

/// Where the encrypted-file store lives when `[store] file` is not set:
/// `$STATE_DIRECTORY/tokens.enc` when systemd set one (`StateDirectory=therappai-broker` gives
/// `/var/lib/therappai-broker`), else `/var/lib/therappai-broker/tokens.enc` for root, else
/// `$XDG_STATE_HOME/therappai-broker/tokens.enc` (default `~/.local/state`).
pub fn default_store_file() -> Result<PathBuf, &'static str> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    // systemd joins several StateDirectory= entries with ':'; the first is ours.
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
        if let Some(dir) = first.filter(|p| p.is_absolute()) {
            return Ok(dir.join(STORE_FILE));
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib")
            .join(STATE_SUBDIR)
            .join(STORE_FILE));
    }
    let state = absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local/state")))
        .ok_or("neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set to an absolute path: set [store] file")?;
    Ok(state.join(STATE_SUBDIR).join(STORE_FILE))
}
