//! Hostile answers that a `Full` body cannot express: a body far larger than any real answer,
//! streamed with no `Content-Length`, and one that never ends. A handler marks its reply with
//! a [`Plan`] (a response extension); [`wire_body`] turns the mark into the streamed body.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::handlers::WireBody;

/// How a marked reply's body is streamed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plan {
    /// This many bytes of spaces, 64 KiB per frame, as fast as the client reads.
    Huge(usize),
    /// One byte every 200 ms, forever.
    Trickle,
}

const CHUNK: usize = 64 * 1024;
const TRICKLE_EVERY: Duration = Duration::from_millis(200);

/// A `200` JSON reply whose body [`wire_body`] will stream by `plan`.
pub(crate) fn reply(plan: Plan) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::new()));
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply.extensions_mut().insert(plan);
    reply
}

/// A 3xx with `Location: location` and an empty body.
pub(crate) fn redirect(status: u16, location: &str) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    if let Ok(value) = HeaderValue::from_str(location) {
        reply.headers_mut().insert(header::LOCATION, value);
    }
    reply
}

/// The body that goes on the wire for `reply`: its own, or the one its [`Plan`] streams.
pub(crate) fn wire_body(reply: Response<Full<Bytes>>) -> Response<WireBody> {
    let plan = reply.extensions().get::<Plan>().copied();
    reply.map(|full| match plan {
        None => full.boxed(),
        Some(Plan::Huge(bytes)) => Huge { remaining: bytes }.boxed(),
        Some(Plan::Trickle) => Trickle {
            next: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
        .boxed(),
    })
}

struct Huge {
    remaining: usize,
}

impl Body for Huge {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; n])))))
    }
}

struct Trickle {
    next: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let at = tokio::time::Instant::now() + TRICKLE_EVERY;
        self.next.as_mut().reset(at);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b" ")))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
