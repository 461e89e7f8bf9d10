//! One accepted connection: the stream, the peer identity captured at accept time, its
//! admission ticket and deadlines, and the `:authority` fix on its reads. tonic hands the
//! identity and ticket to every handler as the `admission::ConnectedPeer` request extension.
//!
//! Apart from `peer` (who is calling), so that the identity depends on nothing else in the
//! crate: policy and audit use it without pulling in the listener's machinery.

use crate::admission::{ConnectedPeer, ConnectionTicket, Expiry};
use crate::peer::{PeerIdentity, capture};
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// A Unix stream whose peer identity was captured at accept time; tonic hands the
/// identity to every handler through [`tonic::transport::server::Connected`].
#[derive(Debug)]
pub struct PeerConnection {
    stream: UnixStream,
    peer: ConnectedPeer,
    /// Reads pass through `:authority` normalisation (see `authority`).
    authority: crate::authority::AuthorityFix,
    /// Bytes the client has sent so far (up to the HTTP/2 preface is enough to know).
    read_so_far: u64,
    /// Wakes reads at the connection's next handshake or idle deadline.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PeerConnection {
    /// Captures the peer's identity; fails (and the caller drops the connection) when the
    /// kernel gives no credentials.
    pub fn accept(stream: UnixStream) -> io::Result<Self> {
        let identity = capture(stream.as_fd())?;
        Ok(Self {
            stream,
            peer: ConnectedPeer {
                identity: Arc::new(identity),
                connection: None,
            },
            authority: crate::authority::AuthorityFix::default(),
            read_so_far: 0,
            deadline: None,
        })
    }

    pub fn identity(&self) -> &PeerIdentity {
        &self.peer.identity
    }

    /// Attaches the admission ticket: from now on the connection is closed when its
    /// handshake or idle deadline passes, and its calls count against the ticket.
    #[must_use]
    pub fn admitted(mut self, ticket: Arc<ConnectionTicket>) -> Self {
        self.peer.connection = Some(ticket);
        self
    }

    /// An error once the handshake or idle deadline has passed; otherwise arms the timer
    /// that wakes this read at the next deadline.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(ticket) = &self.peer.connection else {
            return Ok(());
        };
        loop {
            let now = tokio::time::Instant::now();
            let due = match ticket.expired(self.read_so_far, now) {
                Ok(due) => due,
                Err(expiry) => {
                    let limits = ticket.limits();
                    let why = match expiry {
                        Expiry::Handshake => {
                            format!("no HTTP/2 preface within {:?}", limits.handshake_timeout)
                        }
                        Expiry::Idle => format!("no call within {:?}", limits.idle_timeout),
                        Expiry::Refused => "over connections_per_uid, refusal sent".to_owned(),
                    };
                    tracing::debug!(uid = ticket.uid(), "closing a connection: {why}");
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                }
            };
            let sleep = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now)));
            match due {
                Some(due) if sleep.deadline() != due => sleep.as_mut().reset(due),
                Some(_) => {}
                // A call in flight: look again within an idle period (the end of a call does
                // not wake reads), keeping a timer that is still ahead.
                None if sleep.deadline() <= now => {
                    sleep.as_mut().reset(now + ticket.limits().idle_timeout);
                }
                None => {}
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
    }
}

impl tonic::transport::server::Connected for PeerConnection {
    type ConnectInfo = ConnectedPeer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_deadline(cx)?;
        let before = buf.filled().len();
        let read = this
            .authority
            .poll_read(Pin::new(&mut this.stream), cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        this.read_so_far = this.read_so_far.saturating_add(got as u64);
        read
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
