//! Who is calling: the kernel's word on the process at the other end of the socket.
//!
//! Credentials are read once per connection at accept time (SO_PEERCRED, through tonic's
//! `UdsConnectInfo`), never from anything the client says. A connection without credentials is
//! refused.

use crate::error::BrokerError;
use tonic::transport::server::UdsConnectInfo;

/// The peer process as the kernel reported it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl PeerIdentity {
    /// Reads the identity tonic attached to this request's connection.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, BrokerError> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| BrokerError::PermissionDenied {
                message: "the broker could not read the caller's credentials from the kernel; \
                          connect over the broker's Unix socket"
                    .to_owned(),
            })?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }

    /// `uid=1000 gid=1000 pid=4242 exe=/usr/bin/x`, for messages and audit events.
    pub fn describe(&self) -> String {
        let exe = self
            .pid
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        match self.pid {
            Some(pid) => format!("uid={} gid={} pid={pid} exe={exe}", self.uid, self.gid),
            None => format!("uid={} gid={}", self.uid, self.gid),
        }
    }
}
