//! Counting open connections: each accepted connection is wrapped in [`Counted`], whose
//! guard takes it off the `open_connections` gauge when tonic drops it.

use prometheus_client::metrics::gauge::Gauge;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Holds one connection on the `open_connections` gauge until dropped.
#[derive(Debug)]
pub(crate) struct OpenGuard(Gauge);

impl OpenGuard {
    pub(super) fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection counted as open while it lives; everything else passes through unchanged
/// (the peer identity tonic hands to handlers included).
#[derive(Debug)]
pub struct Counted<C> {
    inner: C,
    _open: OpenGuard,
}

impl<C> Counted<C> {
    /// Wraps `inner`, counting it on `metrics`.
    pub fn new(inner: C, metrics: &super::Metrics) -> Self {
        Self {
            inner,
            _open: metrics.connection_opened(),
        }
    }
}

impl<C: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<C> {
    type ConnectInfo = C::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Counted<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counted<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Wraps every connection of `incoming` in [`Counted`].
pub fn count_connections<S, C>(
    incoming: S,
    metrics: std::sync::Arc<super::Metrics>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Counted<C>>>
where
    S: tokio_stream::Stream<Item = std::io::Result<C>>,
{
    use tokio_stream::StreamExt;
    incoming.map(move |accepted| accepted.map(|c| Counted::new(c, &metrics)))
}
