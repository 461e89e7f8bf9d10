//! The server layer of admission control: counts every call against its uid (refusing it
//! over `calls_per_uid`), keeps counting a streaming call until its response stream ends, and
//! refuses a request message over [`MAX_MESSAGE_BYTES`] from its length prefix, before the
//! message is buffered.

use super::{CallTicket, ConnectedPeer, MAX_MESSAGE_BYTES};
use crate::error::BrokerError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

/// Wraps the server's routes (`Server::builder().layer(AdmissionLayer)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmissionLayer;

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted { inner }
    }
}

/// The routes behind admission control.
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Admitted<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Every connection is admitted by the listener, so it carries a ticket.
        let ticket = request
            .extensions()
            .get::<ConnectedPeer>()
            .and_then(|peer| peer.connection.clone());
        let call = match ticket.map(|ticket| ticket.begin_call()).transpose() {
            Ok(call) => call,
            Err(refused) => {
                let status = Status::from(refused);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        // The service that was made ready is the one that is called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let request = request.map(|body| Body::new(LimitedRequest::new(body)));
        let response = inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(CountedResponse { body, _call: call })))
        })
    }
}

/// A response body that holds its call's ticket until the body (a stream, for WatchSession)
/// ends or is dropped.
#[derive(Debug)]
struct CountedResponse {
    body: Body,
    _call: Option<CallTicket>,
}

impl http_body::Body for CountedResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body read through the gRPC framing (a compressed-flag byte and a 4-byte
/// big-endian length before each message): a declared length over [`MAX_MESSAGE_BYTES`] ends
/// the call with RESOURCE_EXHAUSTED there and then.
#[derive(Debug)]
struct LimitedRequest {
    body: Body,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    refused: bool,
}

impl LimitedRequest {
    fn new(body: Body) -> Self {
        Self {
            body,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            refused: false,
        }
    }

    /// Follows the framing through `data`; the first message declared too large is an error.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.prefix.len() - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == self.prefix.len() {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > MAX_MESSAGE_BYTES {
                    return Err(BrokerError::MessageTooLarge {
                        len,
                        limit: MAX_MESSAGE_BYTES,
                    }
                    .into());
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for LimitedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.refused {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                if let Err(status) = self.scan(&data) {
                    self.refused = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes
    }

    #[test]
    fn a_message_at_the_limit_passes_and_one_over_is_refused_from_its_prefix() {
        let limit = u32::try_from(MAX_MESSAGE_BYTES).expect("fits");
        let mut body = LimitedRequest::new(Body::empty());
        let mut at_limit = framed(limit);
        at_limit.resize(at_limit.len() + MAX_MESSAGE_BYTES, 7);
        body.scan(&at_limit).expect("a message at the limit");
        // The prefix of the next one arrives split across two frames.
        let over = framed(limit + 1);
        body.scan(&over[..2])
            .expect("half a prefix says nothing yet");
        let status = body.scan(&over[2..]).expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("at most 65536 bytes"),
            "{status:?}"
        );
    }

    #[test]
    fn several_small_messages_in_one_frame_pass() {
        let mut data = Vec::new();
        for _ in 0..3 {
            data.extend(framed(3));
            data.extend([1, 2, 3]);
        }
        LimitedRequest::new(Body::empty())
            .scan(&data)
            .expect("three small messages");
    }
}
