//! The listener: a Unix socket in a directory only the broker's user (and, with
//! `socket_group`, that group) can enter; every accepted connection carries its peer's
//! identity, captured by `peer` at accept time.
//!
//! Before binding it checks the directory (created 0700, or 0750 with a `socket_group`;
//! refused when owned by another user or writable by group/others), removes a stale socket
//! left by a dead broker, and refuses to take over a socket that a live broker still answers
//! on. The socket is made 0600 (0660 with a `socket_group`, or `socket_mode`).

use crate::admission::Admission;
use crate::config::SocketAccess;
use crate::connection::PeerConnection;
use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
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
    /// An existing directory the broker did not create would have to be opened to the group.
    #[error(
        "refusing to start: socket directory {path} was not created by the broker, so it will not change its mode, and group \"{group}\" (socket_group) cannot enter it; put the socket in a directory of its own (e.g. `socket = \"{path}/therappai-broker/broker.sock\"`, which the broker creates) or grant the group search permission on {path} yourself"
    )]
    ForeignDirectory { path: PathBuf, group: String },
    /// The socket systemd passed cannot be used.
    #[error("cannot use the socket passed by systemd: {0}")]
    Inherited(std::io::Error),
    /// bind(2) or chmod failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the listening socket came from: decides who may remove the socket file at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Bound by the broker itself: it removes the file at shutdown, but only while the path
    /// still names the socket it bound (device and inode saved at bind). A broker started
    /// during this one's drain has replaced the file by then, and its socket must stay.
    Bound { dev: u64, ino: u64 },
    /// Passed in by systemd (socket activation): the socket unit owns the file, which must
    /// outlive this process so the next connection activates the service again.
    Systemd,
}

/// A listening socket, ready to serve, and where it came from.
#[derive(Debug)]
pub struct Listening {
    pub listener: UnixListener,
    pub path: PathBuf,
    pub origin: Origin,
}

/// The listening socket systemd passed (socket activation), if any; must run before any
/// thread starts (it reads and then clears `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, so
/// that no child process inherits them).
///
/// Exactly one descriptor is accepted, and it must be a listening Unix stream socket: a
/// unit that passes a TCP port or a datagram socket is a configuration mistake worth a clear
/// start error, not a broker that silently binds elsewhere.
pub fn take_systemd_socket() -> Result<Option<std::os::unix::net::UnixListener>, ListenerError> {
    // SAFETY: called from `main` before the runtime (or any other thread) exists, which is
    // what removing environment variables requires.
    let fds: Vec<(std::os::fd::RawFd, String)> =
        unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .map_err(ListenerError::Inherited)?
            .collect();
    let (fd, name) = match fds.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => {
            let names: Vec<&str> = many.iter().map(|(_, name)| name.as_str()).collect();
            return Err(ListenerError::Inherited(std::io::Error::other(format!(
                "systemd passed {} sockets ({}); the broker listens on exactly one: give therappai-broker.socket a single ListenStream=",
                many.len(),
                names.join(", ")
            ))));
        }
    };
    check_inherited(fd).map_err(|reason| {
        ListenerError::Inherited(std::io::Error::other(format!(
            "the socket systemd passed (fd {fd}, name \"{name}\") is {reason}; therappai-broker.socket must use ListenStream=/path/broker.sock (a Unix stream socket) with Accept=no"
        )))
    })?;
    // SAFETY: systemd handed this descriptor to us and nothing else in the process owns it
    // (the environment that named it is cleared above, so this runs once).
    let listener =
        unsafe { <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(Some(listener))
}

/// Why an inherited descriptor is not a listening Unix stream socket, if it is not.
fn check_inherited(fd: std::os::fd::RawFd) -> Result<(), String> {
    let option = |name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(format!(
                "not a socket ({})",
                std::io::Error::last_os_error()
            ))
        }
    };
    if option(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err("not a Unix socket (a TCP or other network socket)".to_owned());
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket (datagram or seqpacket)".to_owned());
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening (Accept=yes passes connections, not the socket)".to_owned());
    }
    Ok(())
}

/// Serves on the socket systemd passed. Must run inside a tokio runtime.
pub fn adopt(listener: std::os::unix::net::UnixListener) -> Result<Listening, ListenerError> {
    let bind_err = |source| ListenerError::Bind {
        path: PathBuf::from("(socket passed by systemd)"),
        source,
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    let path = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("(unnamed socket passed by systemd)"));
    let listener = UnixListener::from_std(listener).map_err(bind_err)?;
    Ok(Listening {
        listener,
        path,
        origin: Origin::Systemd,
    })
}

/// Prepares the directory and binds the socket. Must run inside a tokio runtime.
pub fn bind(path: &Path, access: &SocketAccess) -> Result<Listening, ListenerError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| ListenerError::NoParent(path.to_owned()))?;
    let created = prepare_directory(dir)?;
    if created || is_dedicated(dir) {
        grant_access(dir, access, access.dir_mode())?;
    } else {
        check_foreign_directory(dir, access)?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    grant_access(path, access, access.mode)?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| ListenerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    Ok(Listening {
        listener,
        path: path.to_owned(),
        origin: Origin::Bound {
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}

/// A directory the broker may treat as its own: named after it (the default
/// `…/therappai-broker/` under the runtime directory). Its mode follows the config; any other
/// existing directory (`/run`, `/run/user/1000`, …) belongs to someone else and is never
/// changed, only checked.
fn is_dedicated(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|name| name == crate::paths::RUNTIME_SUBDIR)
}

/// An existing directory the broker did not create: its mode is left alone. With a
/// `socket_group`, the group must already be able to enter it, or the socket's group mode
/// would be a promise the directory breaks.
fn check_foreign_directory(dir: &Path, access: &SocketAccess) -> Result<(), ListenerError> {
    let Some(group) = &access.group else {
        return Ok(());
    };
    let meta = std::fs::metadata(dir).map_err(|source| ListenerError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let group_may_enter = (meta.gid() == group.gid && mode & 0o010 != 0) || mode & 0o001 != 0;
    if group_may_enter {
        Ok(())
    } else {
        Err(ListenerError::ForeignDirectory {
            path: dir.to_owned(),
            group: group.name.clone(),
        })
    }
}

/// Accepted connections, each with its peer's identity and admission ticket. A connection
/// whose credentials the kernel does not give is closed here, before any handler sees it; so
/// is one whose uid already has `connections_per_uid` open, unless `admission` keeps it a
/// moment to tell the client why. When the process
/// runs out of file descriptors, accepting pauses (the pending connections wait in the
/// backlog) instead of spinning on the error.
pub fn incoming(
    listener: UnixListener,
    admission: Arc<Admission>,
) -> impl tokio_stream::Stream<Item = std::io::Result<PeerConnection>> {
    Accepting {
        listener,
        admission,
        pause: None,
        out_of_fds: false,
    }
}

/// How long accepting pauses after running out of file descriptors.
const OUT_OF_FDS_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

struct Accepting {
    listener: UnixListener,
    admission: Arc<Admission>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// In an episode of running out of descriptors (logged once per episode).
    out_of_fds: bool,
}

impl tokio_stream::Stream for Accepting {
    type Item = std::io::Result<PeerConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            let stream = match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => stream,
                Err(e) if out_of_descriptors(&e) => {
                    if !this.out_of_fds {
                        this.out_of_fds = true;
                        tracing::error!(error = %e, "cannot accept connections: the broker is out of file descriptors, so store, HTTPS and /proc opens fail too; accepting pauses until some close. Raise the limit (LimitNOFILE= in the unit, `ulimit -n`) or lower [connection_limits] connections_per_uid");
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(OUT_OF_FDS_PAUSE)));
                    continue;
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if std::mem::take(&mut this.out_of_fds) {
                tracing::info!("accepting connections again: file descriptors are available");
            }
            let connection = match PeerConnection::accept(stream) {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!(error = %e, "refused a connection: the kernel gave no peer credentials");
                    continue;
                }
            };
            // No ticket (over the uid's cap, and enough refusals are being explained already):
            // dropped, which closes it. `admission` logs refusals, rate limited.
            if let Some(ticket) = this.admission.admit_connection(connection.identity().uid) {
                return Poll::Ready(Some(Ok(connection.admitted(ticket))));
            }
        }
    }
}

/// EMFILE/ENFILE (and the kernel's out-of-memory answers): retrying at once cannot succeed.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
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
/// the socket. Returns whether this call created it.
fn prepare_directory(dir: &Path) -> Result<bool, ListenerError> {
    let dir_err = |source| ListenerError::Directory {
        path: dir.to_owned(),
        source,
    };
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Parent missing too (e.g. no /run/user/UID): create the chain, only the last 0700.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(dir_err)?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(dir_err)?;
            true
        }
        Err(e) => return Err(dir_err(e)),
    };
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
    Ok(created)
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

/// Removes the socket at shutdown, if the broker bound it (systemd's stays for the next
/// activation) and the path still names that socket (a newer broker's stays).
pub fn remove_socket(path: &Path, origin: Origin) {
    let Origin::Bound { dev, ino } = origin else {
        return;
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.dev() == dev && meta.ino() == ino => {}
        Ok(_) => {
            tracing::info!(socket = %path.display(), "leaving the socket in place: another broker has bound it since");
            return;
        }
        Err(_) => return,
    }
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
        let dir = tmp.path().join(crate::paths::RUNTIME_SUBDIR);
        let path = dir.join("broker.sock");
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
        let meta = std::fs::metadata(&dir).expect("dir");
        let sock = std::fs::metadata(&path).expect("sock");
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o750, gid));
        assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, gid));
        drop(listener);
        // A later start with the default narrows the broker's own directory again.
        let _again = bind(&path, &SocketAccess::default()).expect("rebind");
        let meta = std::fs::metadata(&dir).expect("dir");
        assert_eq!(meta.mode() & 0o777, 0o700);
    }

    /// Defect: `socket = "/run/broker.sock"` as root used to turn `/run` into 0700.
    #[tokio::test]
    async fn never_changes_the_mode_of_a_directory_it_did_not_create() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let _listener = bind(&dir.join("broker.sock"), &SocketAccess::default()).expect("bind");
        let mode = std::fs::metadata(&dir).expect("dir").mode() & 0o777;
        assert_eq!(mode, 0o755, "someone else's directory keeps its mode");
    }

    /// Defect: with `socket_group`, `/run/user/1000/broker.sock` used to open the user's
    /// runtime directory to the group. Now it is refused and the directory is untouched.
    #[tokio::test]
    async fn socket_group_refuses_a_foreign_directory_the_group_cannot_enter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("user-1000");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let access = SocketAccess {
            group: Some(crate::policy::GroupRef {
                name: "own".into(),
                gid,
            }),
            mode: 0o660,
        };
        let err = bind(&dir.join("broker.sock"), &access).expect_err("must refuse");
        assert!(
            matches!(err, ListenerError::ForeignDirectory { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("therappai-broker/broker.sock"),
            "{err}"
        );
        let mode = std::fs::metadata(&dir).expect("dir").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!dir.join("broker.sock").exists());
    }

    /// Defect (issue 11, 9): the socket was unlinked at shutdown even when a broker started
    /// during the drain had replaced it, leaving the new broker unreachable.
    #[tokio::test]
    async fn shutdown_removes_only_the_socket_it_bound() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp
            .path()
            .join(crate::paths::RUNTIME_SUBDIR)
            .join("broker.sock");
        let old = bind(&path, &SocketAccess::default()).expect("bind old");
        // The new broker takes over the path (as remove_stale_socket + bind would).
        std::fs::remove_file(&path).expect("unlink");
        let new = bind(&path, &SocketAccess::default()).expect("bind new");
        remove_socket(&old.path, old.origin);
        assert!(path.exists(), "the newer broker's socket must stay");
        remove_socket(&new.path, new.origin);
        assert!(!path.exists(), "our own socket is removed");
    }

    #[test]
    fn an_inherited_descriptor_that_is_not_a_unix_stream_listener_is_refused() {
        use std::os::fd::AsRawFd;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let reason = check_inherited(tcp.as_raw_fd()).expect_err("tcp");
        assert!(reason.contains("not a Unix socket"), "{reason}");
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
        let reason = check_inherited(a.as_raw_fd()).expect_err("dgram");
        assert!(reason.contains("not a stream socket"), "{reason}");
        let (c, _d) = std::os::unix::net::UnixStream::pair().expect("pair");
        let reason = check_inherited(c.as_raw_fd()).expect_err("connected");
        assert!(reason.contains("not listening"), "{reason}");
        let file = std::fs::File::open("/dev/null").expect("null");
        assert!(check_inherited(file.as_raw_fd()).is_err());
        let tmp = tempfile::tempdir().expect("tempdir");
        let good = std::os::unix::net::UnixListener::bind(tmp.path().join("s")).expect("uds");
        check_inherited(good.as_raw_fd()).expect("a listening Unix stream socket");
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
