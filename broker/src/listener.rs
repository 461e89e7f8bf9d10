//! The listener: a Unix socket in a directory only the broker's user (and, with
//! `socket_group`, that group) can enter; every accepted connection carries its peer's
//! identity, captured by `peer` at accept time.
//!
//! Before binding it checks the directory (created 0700, or 0750 with a `socket_group`;
//! refused when owned by another user or writable by group/others), removes a stale socket
//! left by a dead broker, and refuses to take over a socket that a live broker still answers
//! on. The socket is made 0600 (0660 with a `socket_group`, or `socket_mode`).

use crate::config::SocketAccess;
use crate::peer::PeerConnection;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be set up. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The socket path has no parent directory.
    #[error(
        "socket path {0} has no parent directory; set `socket` to a path like /run/user/1000/therappai-broker/broker.sock"
    )]
    NoParent(PathBuf),
    /// The directory could not be created or inspected.
    #[error("cannot prepare socket directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another user owns the directory: they could swap the socket under us.
    #[error(
        "refusing to start: socket directory {path} is owned by uid {owner}, not by the broker's uid {me}; remove it or choose another `socket` path"
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    /// Group or others may write in the directory.
    #[error(
        "refusing to start: socket directory {path} has mode {mode:o}, writable by group or others; run `chmod 0700 {path}` or choose another `socket` path"
    )]
    UnsafeMode { path: PathBuf, mode: u32 },
    /// A broker is already answering on the socket.
    #[error(
        "another broker is already listening on {0}; stop it first (e.g. `systemctl stop therappai-broker`) or choose another `socket` path"
    )]
    InUse(PathBuf),
    /// Something that is not a socket sits at the socket path.
    #[error(
        "refusing to start: {0} exists and is not a socket; move it away or choose another `socket` path"
    )]
    NotASocket(PathBuf),
    /// The socket or its directory could not be given to `socket_group`.
    #[error(
        "cannot give {path} to group \"{group}\" (socket_group): {source}; the broker's user must be a member of that group, or the broker must run as root"
    )]
    Chown {
        path: PathBuf,
        group: String,
        source: std::io::Error,
    },
    /// bind(2) or chmod failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Prepares the directory and binds the socket. Must run inside a tokio runtime.
pub fn bind(path: &Path, access: &SocketAccess) -> Result<UnixListener, ListenerError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| ListenerError::NoParent(path.to_owned()))?;
    prepare_directory(dir)?;
    grant_access(dir, access, access.dir_mode())?;
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    grant_access(path, access, access.mode)?;
    Ok(listener)
}

/// Accepted connections, each with its peer's identity. A connection whose credentials the
/// kernel does not give is dropped here, before any handler sees it.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<PeerConnection>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(|accepted| match accepted
        .map(PeerConnection::accept)
    {
        Ok(Ok(connection)) => Some(Ok(connection)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refused a connection: the kernel gave no peer credentials");
            None
        }
        Err(e) => Some(Err(e)),
    })
}

/// Gives `path` to the socket group (if any), then sets `mode`. The group first: between the
/// two steps the old, narrower mode is still in force.
fn grant_access(path: &Path, access: &SocketAccess, mode: u32) -> Result<(), ListenerError> {
    if let Some(group) = &access.group {
        std::os::unix::fs::chown(path, None, Some(group.gid)).map_err(|source| {
            ListenerError::Chown {
                path: path.to_owned(),
                group: group.name.clone(),
                source,
            }
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ListenerError::Bind {
            path: path.to_owned(),
            source,
        }
    })
}

/// Creates `dir` 0700 if missing, then verifies owner and mode whatever created it. Group
/// and others may at most read and search it (0750/0755), never write: a writer could swap
/// the socket.
fn prepare_directory(dir: &Path) -> Result<(), ListenerError> {
    let dir_err = |source| ListenerError::Directory {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Parent missing too (e.g. no /run/user/UID): create the chain, only the last 0700.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(dir_err)?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(dir_err)?;
        }
        Err(e) => return Err(dir_err(e)),
    }
    // symlink_metadata: a symlink planted in place of the directory is refused, not followed.
    let meta = std::fs::symlink_metadata(dir).map_err(dir_err)?;
    if !meta.is_dir() {
        return Err(dir_err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "exists and is not a directory",
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(ListenerError::ForeignOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ListenerError::UnsafeMode {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A socket file left by a dead broker is removed; one a live broker answers on is not.
fn remove_stale_socket(path: &Path) -> Result<(), ListenerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenerError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(ListenerError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenerError::InUse(path.to_owned())),
        Err(_) => {
            tracing::info!(socket = %path.display(), "removing stale socket left by a broker that is no longer running");
            std::fs::remove_file(path).map_err(|source| ListenerError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
}

/// Removes the socket at shutdown, if it is still ours.
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_private_directory_and_socket() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("run/broker.sock");
        let _listener = bind(&path, &SocketAccess::default()).expect("bind");
        let dir_mode = std::fs::metadata(tmp.path().join("run"))
            .expect("dir")
            .mode()
            & 0o777;
        let sock_mode = std::fs::metadata(&path).expect("sock").mode() & 0o777;
        assert_eq!((dir_mode, sock_mode), (0o700, 0o600));
    }

    #[tokio::test]
    async fn socket_group_opens_socket_and_directory_to_the_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("run/broker.sock");
        // Our own primary group: chown to it needs no privilege.
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let access = SocketAccess {
            group: Some(crate::policy::GroupRef {
                name: "own".into(),
                gid,
            }),
            mode: 0o660,
        };
        let listener = bind(&path, &access).expect("bind");
        let dir = std::fs::metadata(tmp.path().join("run")).expect("dir");
        let sock = std::fs::metadata(&path).expect("sock");
        assert_eq!((dir.mode() & 0o777, dir.gid()), (0o750, gid));
        assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, gid));
        drop(listener);
        // A later start with the default narrows an existing 0750 directory again.
        let _again = bind(&path, &SocketAccess::default()).expect("rebind");
        let dir = std::fs::metadata(tmp.path().join("run")).expect("dir");
        assert_eq!(dir.mode() & 0o777, 0o700);
    }

    #[tokio::test]
    async fn refuses_group_writable_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        let err =
            bind(&dir.join("broker.sock"), &SocketAccess::default()).expect_err("must refuse");
        assert!(matches!(err, ListenerError::UnsafeMode { .. }), "{err}");
    }

    #[tokio::test]
    async fn live_socket_is_not_taken_over_and_stale_one_is_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("run/broker.sock");
        let first = bind(&path, &SocketAccess::default()).expect("bind");
        assert!(matches!(
            bind(&path, &SocketAccess::default()),
            Err(ListenerError::InUse(_))
        ));
        drop(first); // the file stays, nobody answers: stale
        assert!(path.exists());
        let _second = bind(&path, &SocketAccess::default()).expect("stale socket is replaced");
    }

    #[tokio::test]
    async fn refuses_a_regular_file_at_the_socket_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("run")).expect("mkdir");
        std::fs::set_permissions(
            tmp.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        let path = tmp.path().join("run/broker.sock");
        std::fs::write(&path, "x").expect("write");
        assert!(matches!(
            bind(&path, &SocketAccess::default()),
            Err(ListenerError::NotASocket(_))
        ));
    }
}
