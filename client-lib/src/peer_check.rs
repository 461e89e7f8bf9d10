//! Who is listening on the socket, checked before a single byte is sent to it.
//!
//! A socket path can be planted: another local user creates a listener where the broker's
//! socket should be (a stale `THERAPPAI_BROKER_SOCKET`, a broker that is not running yet) and
//! waits for a `login` to send it a password. So the connector reads the kernel's credentials
//! of the listening process (`SO_PEERCRED`) right after `connect` and before tonic writes the
//! HTTP/2 preface, and accepts only root (with systemd socket activation the listener is PID
//! 1), the caller's own uid (a user session's broker), the system user `therappai-broker`,
//! or a uid the app named. One `getsockopt` on the common path; the user database is read
//! only when the listener is none of the first two.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The system user the packaged broker runs as.
pub const BROKER_USER: &str = "therappai-broker";

/// The listener on the socket is not one the client trusts (carried through tonic's error
/// chain to [`crate::Client::connect`], which turns it into [`crate::Error::NotTheBroker`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the process listening on {} runs as uid {uid}", socket.display())]
pub(crate) struct UntrustedListener {
    pub(crate) socket: PathBuf,
    pub(crate) uid: u32,
    pub(crate) pid: Option<i32>,
}

/// A tonic connector for the Unix socket at `socket` that refuses untrusted listeners.
#[derive(Debug, Clone)]
pub(crate) struct CheckedConnector {
    socket: PathBuf,
    /// A uid the app says the broker runs as, besides the defaults.
    expected_uid: Option<u32>,
}

impl CheckedConnector {
    pub(crate) fn new(socket: &Path, expected_uid: Option<u32>) -> Self {
        Self {
            socket: socket.to_owned(),
            expected_uid,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<UnixStream>, BoxError>> + Send>>;

impl tower::Service<tonic::transport::Uri> for CheckedConnector {
    type Response = TokioIo<UnixStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let socket = self.socket.clone();
        let expected_uid = self.expected_uid;
        Box::pin(async move {
            let stream = UnixStream::connect(&socket).await?;
            let cred = stream.peer_cred()?;
            if !trusted(cred.uid(), expected_uid) {
                // Dropping the stream closes it: the listener got a connection, no bytes.
                return Err(Box::new(UntrustedListener {
                    socket,
                    uid: cred.uid(),
                    pid: cred.pid(),
                }) as BoxError);
            }
            Ok(TokioIo::new(stream))
        })
    }
}

/// Whether a listener running as `uid` may be the broker.
fn trusted(uid: u32, expected_uid: Option<u32>) -> bool {
    uid == 0 || uid == own_uid() || Some(uid) == expected_uid || uid_of(BROKER_USER) == Some(uid)
}

/// The caller's effective uid, for messages.
pub(crate) fn own_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of user `name` (NSS: /etc/passwd, LDAP, systemd-userdb), if it exists.
fn uid_of(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids); it is read
        // only after getpwnam_r reports success.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `c_name` is NUL-terminated; `pw`, `result` and `buf` (for `buf.len()`
        // bytes) are writable and outlive the call; only the uid is read afterwards.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return None,
            0 => return Some(pw.pw_uid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return None,
        }
    }
}

/// The name of `uid`, for messages (`None` when it has none).
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: as in `uid_of`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as in `uid_of`; `pw_name` points into `buf`, which outlives its read below.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() || pw.pw_name.is_null() => return None,
            0 => {
                // SAFETY: getpwuid_r succeeded: `pw_name` is a NUL-terminated string in `buf`.
                let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
                return Some(name.to_string_lossy().into_owned());
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_self_are_trusted_others_only_when_named() {
        assert!(trusted(0, None));
        assert!(trusted(own_uid(), None));
        let stranger = 4_000_000_000;
        assert!(!trusted(stranger, None));
        assert!(trusted(stranger, Some(stranger)));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(uid_of("root"), Some(0));
    }
}
