//! Admission control: what a process that can open the socket can make the broker hold before
//! the policy has even run.
//!
//! - **Per uid**: at most `connections_per_uid` open connections (checked at accept, from the
//!   SO_PEERCRED uid) and `calls_per_uid` calls in flight (a streaming call counts until its
//!   stream ends). Beyond either, the connection is closed at once or the call answered
//!   RESOURCE_EXHAUSTED, and other uids are served as before.
//! - **Per connection**: the HTTP/2 client preface must arrive within `handshake_timeout`, and a
//!   connection with no call in flight for `idle_timeout` is closed (clients reconnect on their
//!   next call). Both are enforced by [`ConnectionTicket::expired`], polled from the
//!   connection's reads (see `peer.rs`).
//! - **Per message**: a request message over [`MAX_MESSAGE_BYTES`] is refused with
//!   RESOURCE_EXHAUSTED as soon as its length prefix arrives, before it is buffered.
//!
//! The HTTP/2 settings that bound a connection (streams, windows, keep-alive) are constants
//! here, applied where the server is built (`lib.rs`). Never logs a request body.

mod body;

pub use body::AdmissionLayer;

use crate::config::ConnectionLimits;
use crate::error::BrokerError;
use crate::peer::PeerIdentity;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The largest request message accepted (gRPC length prefix). The largest legitimate request is
/// `ReportRejected`, which carries one access token (a JWT: under 2 KiB from therappai, under
/// 16 KiB even with many claims), or a `Login` (an account name of at most 64 bytes and a
/// password); 64 KiB leaves room for both and is 1/64 of tonic's default.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest response message the broker sends (a `Status` or `GetMetrics` text for many
/// accounts is a few KiB): bounds what a bug could make the broker buffer.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Concurrent streams (calls) per HTTP/2 connection. A client multiplexes its calls on one
/// connection; 32 covers a busy app with a few WatchSession streams.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// HTTP/2 flow-control windows: what a client can make the broker buffer before it reads.
/// The stream window holds one largest message; the connection window a few.
pub const STREAM_WINDOW_BYTES: u32 = 128 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;

/// Request headers per call (hyper's default too, stated here so it is reviewed).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/2 keep-alive: a ping after this long without frames, and the connection is closed
/// when the ping is not answered within [`KEEPALIVE_TIMEOUT`] (a stopped or wedged client).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 client preface (RFC 9113, 3.4): what a connection must send first.
pub(crate) const CLIENT_PREFACE_LEN: u64 = 24;

/// Connections over a uid's cap that are still answered, for [`REFUSAL_LIFETIME`], with a
/// RESOURCE_EXHAUSTED saying why (so the user reads the reason, not "broker not reachable");
/// beyond this many at once they are closed without a word, which keeps a flood's hold on
/// descriptors bounded.
const MAX_EXPLAINED_REFUSALS: usize = 16;
const REFUSAL_LIFETIME: Duration = Duration::from_secs(2);

/// After one logged refusal for a uid, the next is logged no sooner than this (with the count
/// of those in between), so a flooding peer cannot flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What one uid holds open right now. Only uids with something open have an entry, so the
/// map is bounded by the open connections.
#[derive(Debug, Default)]
struct UidLoad {
    connections: usize,
    calls: usize,
    /// Refusals not logged yet, and when the last one was.
    unlogged_refusals: u64,
    last_logged: Option<Instant>,
}

/// The per-uid bookkeeping, shared by the listener (connections) and the server (calls).
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    uids: Mutex<HashMap<u32, UidLoad>>,
    /// Refused connections open to explain their refusal.
    explaining: AtomicUsize,
}

/// Which limit refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Connections,
    Calls,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            uids: Mutex::new(HashMap::new()),
            explaining: AtomicUsize::new(0),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn uids(&self) -> MutexGuard<'_, HashMap<u32, UidLoad>> {
        self.uids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for a new connection of `uid`. When the uid already has `connections_per_uid`
    /// open, the ticket is a refusal (every call on it is answered RESOURCE_EXHAUSTED, and it
    /// closes after [`REFUSAL_LIFETIME`]), or `None` (the caller closes the connection at once)
    /// when [`MAX_EXPLAINED_REFUSALS`] are already open.
    pub fn admit_connection(self: &Arc<Self>, uid: u32) -> Option<Arc<ConnectionTicket>> {
        let mut uids = self.uids();
        let load = uids.entry(uid).or_default();
        let refused = load.connections >= self.limits.connections_per_uid;
        if refused {
            self.refused(uid, load, Refused::Connections);
            let explaining = self.explaining.fetch_add(1, Ordering::AcqRel);
            if explaining >= MAX_EXPLAINED_REFUSALS {
                self.explaining.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        } else {
            load.connections += 1;
        }
        let now = Instant::now();
        Some(Arc::new(ConnectionTicket {
            admission: Arc::clone(self),
            uid,
            refused,
            accepted_at: now,
            calls: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
        }))
    }

    /// Logs a refusal, at most once per [`REFUSAL_LOG_INTERVAL`] per uid, with the count of
    /// the ones left out.
    fn refused(&self, uid: u32, load: &mut UidLoad, what: Refused) {
        load.unlogged_refusals += 1;
        let now = Instant::now();
        if load
            .last_logged
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let refused = std::mem::take(&mut load.unlogged_refusals);
        load.last_logged = Some(now);
        match what {
            Refused::Connections => tracing::warn!(
                uid,
                limit = self.limits.connections_per_uid,
                refused,
                "refused connections: this uid already has as many open as [connection_limits] connections_per_uid allows; a client that leaks connections, or a flood"
            ),
            Refused::Calls => tracing::warn!(
                uid,
                limit = self.limits.calls_per_uid,
                refused,
                "refused calls: this uid already has as many in flight as [connection_limits] calls_per_uid allows"
            ),
        }
    }
}

/// The request extension tonic attaches to every call of a connection.
#[derive(Debug, Clone)]
pub struct ConnectedPeer {
    pub identity: Arc<PeerIdentity>,
    /// The connection's admission ticket: what its calls are counted against.
    pub(crate) connection: Option<Arc<ConnectionTicket>>,
}

impl ConnectedPeer {
    /// The identity captured when `request`'s connection was accepted; `None` for a
    /// request that did not come through the broker's listener.
    pub fn identity_of<T>(request: &tonic::Request<T>) -> Option<Arc<PeerIdentity>> {
        request
            .extensions()
            .get::<Self>()
            .map(|peer| Arc::clone(&peer.identity))
    }
}

/// One admitted connection; while it lives the uid's connection count includes it.
#[derive(Debug)]
pub struct ConnectionTicket {
    admission: Arc<Admission>,
    uid: u32,
    /// Over the uid's connection cap: open only to say so.
    refused: bool,
    accepted_at: Instant,
    /// Calls of this connection in flight.
    calls: AtomicUsize,
    /// When the last call of this connection ended (or it was accepted).
    idle_since: Mutex<Instant>,
}

/// Why a connection is closed by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The HTTP/2 preface did not arrive within the handshake timeout.
    Handshake,
    /// No call in flight for the idle timeout.
    Idle,
    /// A refused connection's time to explain itself is over.
    Refused,
}

impl ConnectionTicket {
    /// Whether the connection has expired now, and else its next deadline (`None` while a
    /// call is in flight: look again within an idle period). `preface_read` is how many bytes
    /// the client has sent so far.
    pub fn expired(&self, preface_read: u64, now: Instant) -> Result<Option<Instant>, Expiry> {
        let limits = &self.admission.limits;
        if self.refused {
            let due = self.accepted_at + REFUSAL_LIFETIME;
            return if now >= due {
                Err(Expiry::Refused)
            } else {
                Ok(Some(due))
            };
        }
        if preface_read < CLIENT_PREFACE_LEN {
            let due = self.accepted_at + limits.handshake_timeout;
            return if now >= due {
                Err(Expiry::Handshake)
            } else {
                Ok(Some(due))
            };
        }
        if self.calls.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let due = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            + limits.idle_timeout;
        if now >= due {
            Err(Expiry::Idle)
        } else {
            Ok(Some(due))
        }
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.admission.limits
    }

    /// Counts a new call of this connection, or refuses it when the uid has `calls_per_uid`
    /// in flight.
    fn begin_call(self: &Arc<Self>) -> Result<CallTicket, BrokerError> {
        let admission = &self.admission;
        if self.refused {
            return Err(BrokerError::TooManyConnections {
                uid: self.uid,
                limit: admission.limits.connections_per_uid,
            });
        }
        let mut uids = admission.uids();
        let load = uids.entry(self.uid).or_default();
        if load.calls >= admission.limits.calls_per_uid {
            admission.refused(self.uid, load, Refused::Calls);
            return Err(BrokerError::TooManyCalls {
                uid: self.uid,
                limit: admission.limits.calls_per_uid,
            });
        }
        load.calls += 1;
        self.calls.fetch_add(1, Ordering::AcqRel);
        Ok(CallTicket(Arc::clone(self)))
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        if self.refused {
            self.admission.explaining.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut uids = self.admission.uids();
        if let Some(load) = uids.get_mut(&self.uid) {
            load.connections = load.connections.saturating_sub(1);
            if load.connections == 0 && load.calls == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

/// One call in flight; counted against its uid and connection until dropped.
#[derive(Debug)]
struct CallTicket(Arc<ConnectionTicket>);

impl Drop for CallTicket {
    fn drop(&mut self) {
        let connection = &self.0;
        if connection.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            *connection
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
        let mut uids = connection.admission.uids();
        if let Some(load) = uids.get_mut(&connection.uid) {
            load.calls = load.calls.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, calls: usize) -> ConnectionLimits {
        ConnectionLimits {
            connections_per_uid: connections,
            calls_per_uid: calls,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn connections_are_capped_per_uid_and_freed_on_drop() {
        let admission = Admission::new(limits(2, 10));
        let a = admission.admit_connection(1000).expect("first");
        let _b = admission.admit_connection(1000).expect("second");
        let third = admission
            .admit_connection(1000)
            .expect("a refusal that explains");
        let refused = third.begin_call().expect_err("every call refused");
        assert!(
            refused.to_string().contains("connections_per_uid"),
            "{refused}"
        );
        assert_eq!(
            third.expired(0, third.accepted_at + REFUSAL_LIFETIME),
            Err(Expiry::Refused)
        );
        let another = admission.admit_connection(1001).expect("another uid");
        assert!(another.begin_call().is_ok());
        drop(a);
        let fourth = admission.admit_connection(1000).expect("freed");
        assert!(fourth.begin_call().is_ok(), "a real connection again");
    }

    #[test]
    fn explained_refusals_are_bounded_then_connections_are_closed_at_once() {
        let admission = Admission::new(limits(1, 10));
        let _one = admission.admit_connection(5).expect("admitted");
        let explained: Vec<_> = (0..MAX_EXPLAINED_REFUSALS)
            .map(|_| admission.admit_connection(5).expect("explained"))
            .collect();
        assert!(admission.admit_connection(5).is_none(), "closed at once");
        drop(explained);
        assert!(admission.admit_connection(5).is_some(), "explaining again");
    }

    #[test]
    fn calls_are_capped_per_uid_across_connections() {
        let admission = Admission::new(limits(10, 2));
        let one = admission.admit_connection(7).expect("one");
        let two = admission.admit_connection(7).expect("two");
        let c1 = one.begin_call().expect("c1");
        let _c2 = two.begin_call().expect("c2");
        let refused = one.begin_call().expect_err("over the cap");
        assert!(refused.to_string().contains("calls_per_uid"), "{refused}");
        drop(c1);
        two.begin_call().expect("freed");
    }

    #[test]
    fn the_map_forgets_a_uid_with_nothing_open() {
        let admission = Admission::new(limits(10, 10));
        let conn = admission.admit_connection(42).expect("conn");
        let call = conn.begin_call().expect("call");
        drop(call);
        drop(conn);
        assert!(admission.uids().is_empty());
    }

    #[test]
    fn handshake_then_idle_deadlines() {
        let admission = Admission::new(limits(10, 10));
        let conn = admission.admit_connection(1).expect("conn");
        let start = conn.accepted_at;
        let secs = Duration::from_secs;
        assert_eq!(conn.expired(0, start), Ok(Some(start + secs(2))));
        assert_eq!(
            conn.expired(23, start + secs(2)),
            Err(Expiry::Handshake),
            "23 of the 24 preface bytes are not a handshake"
        );
        // Preface complete, idle since accept: due 5 s after it.
        assert_eq!(conn.expired(24, start + secs(3)), Ok(Some(start + secs(5))));
        let call = conn.begin_call().expect("call");
        assert_eq!(
            conn.expired(24, start + secs(60)),
            Ok(None),
            "a call in flight is not idle"
        );
        drop(call);
        let ended = Instant::now();
        assert!(
            conn.expired(24, ended).is_ok(),
            "idle from the end of the call"
        );
        assert_eq!(conn.expired(24, ended + secs(6)), Err(Expiry::Idle));
    }
}
