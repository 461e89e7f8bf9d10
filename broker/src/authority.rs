//! `:authority` normalisation at the edge, so stock gRPC clients work over the Unix socket.
//!
//! grpcio (C-core), grpc-java, older grpcurl and others send the socket path (e.g.
//! `/run/…/broker.sock`, or `run%2F…`) as HTTP/2 `:authority`. The h2 crate under tonic has no
//! option to accept that: it resets the stream with PROTOCOL_ERROR before any handler runs.
//! This module sits between the socket and h2 on the client→server direction of each
//! connection: it walks the HTTP/2 frames, reads header blocks (HPACK, tracking the client's
//! dynamic table) until the connection is settled (below), and when a block carries an
//! `:authority` that h2 would reject, it replaces it with `localhost`. Nothing else changes:
//! the broker never trusts `:authority` (peer identity comes from the kernel), so the value
//! carries no meaning here.
//!
//! Frames other than HEADERS/CONTINUATION (DATA on the hot path) are handed to h2 in place,
//! without copying. Which way a connection goes is settled by its first header block that
//! carries an `:authority`:
//! - valid (`host[:port]`, what client-lib and most stock clients send): that block passes
//!   byte for byte and the rest of the connection passes unread ([`State::Opaque`]), so the
//!   normaliser costs nothing per call. The first block itself is usually judged without
//!   decoding it ([`quick`]). (Decoding every block was the largest share of the broker's
//!   own CPU on the cached path in the 2026-12-03 benchmark.) The trade-off: a client that
//!   later switches to an invalid authority on the same connection gets h2's PROTOCOL_ERROR
//!   for that stream (no stock client does; each keeps one authority per channel).
//! - invalid (a socket path, what grpcio, grpc-java and older grpcurl send): it becomes
//!   `localhost`, and from then on every block of the connection is decoded and re-encoded as
//!   literals that never touch h2's dynamic table (the client's table then differs from h2's,
//!   so no raw block may reach h2 any more).
//!
//! Every block that is decoded has its Huffman strings written out plain first ([`plain`]),
//! because loona-hpack's own Huffman decode is slow.
//!
//! Malformed input or a header block over [`MAX_BLOCK`] ends the connection with an error;
//! nothing here panics or buffers without bound.

mod hpack;
pub(crate) mod plain;
pub(crate) mod quick;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame the client may send: h2's SETTINGS_MAX_FRAME_SIZE, which tonic keeps at the
/// protocol default. Rewritten blocks are split into frames of at most this size.
const MAX_FRAME: usize = 16_384;
/// The HPACK table size h2 allows the client (SETTINGS_HEADER_TABLE_SIZE, kept at the
/// protocol default by tonic): a larger dynamic-table size update is a compression error.
const TABLE_SIZE: usize = 4_096;
/// Bound on one compressed header block (HEADERS plus CONTINUATIONs). gRPC requests carry a
/// few hundred bytes.
pub const MAX_BLOCK: usize = 64 * 1024;
/// Bound on one decoded header list (indexed fields expand).
const MAX_DECODED: usize = 256 * 1024;
/// What replaces an invalid `:authority`.
const REPLACEMENT: &[u8] = b"localhost";

/// Why a connection was closed while its headers were read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// A frame header or header block broke HTTP/2 framing.
    #[error("malformed HTTP/2 framing from the client: {0}")]
    Framing(&'static str),
    /// A header block is larger than the broker accepts.
    #[error("the client sent a header block over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    /// The header block could not be decoded.
    #[error("malformed HPACK header block from the client: {0}")]
    Hpack(String),
}

/// What the scanner makes of the bytes at the front of its input.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Hand these many bytes to h2 unchanged.
    Pass(usize),
    /// These many bytes were taken; hand `bytes` to h2 in their place.
    Emit { consumed: usize, bytes: Vec<u8> },
    /// A complete frame header or header-block frame is not there yet.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the connection preface, this many bytes seen.
    Preface(usize),
    /// Not HTTP/2 with prior knowledge: everything passes, h2 gives its own error.
    Opaque,
    /// At the start of a frame.
    FrameStart,
    /// Inside the payload of a frame that passes unchanged.
    Payload(usize),
    /// A header block began on `stream` and waits for CONTINUATION frames.
    Continuation { stream: u32 },
}

/// The sans-IO part: frames in, frames out.
pub struct Scanner {
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    /// Set once a block was rewritten: from then on every block is re-encoded.
    reencode: bool,
    /// Raw frames of the block being collected.
    raw: Vec<u8>,
    /// Its header block fragments, padding removed.
    fragment: Vec<u8>,
    /// Flags (END_STREAM, PRIORITY) and priority fields of its HEADERS frame.
    first_flags: u8,
    priority: Option<[u8; 5]>,
    stream: u32,
    /// The first invalid authority this connection sent, for one log line.
    pub replaced: Option<String>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("state", &self.state)
            .field("reencode", &self.reencode)
            .finish_non_exhaustive()
    }
}

impl Default for Scanner {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface(0),
            decoder,
            reencode: false,
            raw: Vec::new(),
            fragment: Vec::new(),
            first_flags: 0,
            priority: None,
            stream: 0,
            replaced: None,
        }
    }
}

impl Scanner {
    fn next(&mut self, data: &[u8]) -> Result<Step, AuthorityError> {
        if data.is_empty() {
            return Ok(Step::NeedMore);
        }
        match self.state {
            State::Opaque => Ok(Step::Pass(data.len())),
            State::Preface(seen) => {
                let n = (PREFACE.len() - seen).min(data.len());
                if data[..n] != PREFACE[seen..seen + n] {
                    self.state = State::Opaque;
                    return Ok(Step::Pass(data.len()));
                }
                self.state = if seen + n == PREFACE.len() {
                    State::FrameStart
                } else {
                    State::Preface(seen + n)
                };
                Ok(Step::Pass(n))
            }
            State::Payload(remaining) => {
                let n = remaining.min(data.len());
                self.state = if n == remaining {
                    State::FrameStart
                } else {
                    State::Payload(remaining - n)
                };
                Ok(Step::Pass(n))
            }
            State::FrameStart | State::Continuation { .. } => self.frame(data),
        }
    }

    fn frame(&mut self, data: &[u8]) -> Result<Step, AuthorityError> {
        let Some(header) = data.get(..FRAME_HEADER) else {
            return Ok(Step::NeedMore);
        };
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let kind = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let State::Continuation { stream: expected } = self.state {
            if kind != CONTINUATION || stream != expected {
                return Err(AuthorityError::Framing(
                    "a header block was interrupted by another frame",
                ));
            }
        } else if kind != HEADERS {
            // CONTINUATION outside a block, or any other frame: h2 judges it.
            self.state = if len == 0 {
                State::FrameStart
            } else {
                State::Payload(len)
            };
            return Ok(Step::Pass(FRAME_HEADER));
        }
        if len > MAX_FRAME || self.raw.len() + FRAME_HEADER + len > MAX_BLOCK {
            return Err(AuthorityError::BlockTooLarge);
        }
        let Some(frame) = data.get(..FRAME_HEADER + len) else {
            return Ok(Step::NeedMore);
        };
        let payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            let (fragment, priority) = headers_fragment(flags, payload)?;
            self.raw.clear();
            self.fragment.clear();
            self.fragment.extend_from_slice(fragment);
            self.first_flags = flags;
            self.priority = priority;
            self.stream = stream;
        } else {
            self.fragment.extend_from_slice(payload);
        }
        self.raw.extend_from_slice(frame);
        let consumed = frame.len();
        if flags & END_HEADERS == 0 {
            self.state = State::Continuation { stream };
            return Ok(Step::Emit {
                consumed,
                bytes: Vec::new(),
            });
        }
        self.state = State::FrameStart;
        let bytes = self.finish_block()?;
        Ok(Step::Emit { consumed, bytes })
    }

    /// Decodes the collected block; returns it raw, or re-encoded with a valid authority.
    fn finish_block(&mut self) -> Result<Vec<u8>, AuthorityError> {
        if !self.reencode && quick::first_authority_is_valid(&self.fragment) == Some(true) {
            // The usual first request: settled without decoding the block (see `quick`).
            self.state = State::Opaque;
            return Ok(std::mem::take(&mut self.raw));
        }
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        let mut invalid = false;
        // Huffman strings written out plain first: loona-hpack's own Huffman decode builds a
        // code table per string. A block the pre-pass cannot read, loona-hpack refuses too
        // (the fuzz target checks it), so it ends here, before that slow decode.
        let block = plain::without_huffman(&self.fragment).ok_or_else(|| {
            AuthorityError::Hpack(
                "a field is cut short, has an over-long integer or a badly Huffman-coded string"
                    .to_owned(),
            )
        })?;
        self.decoder
            .decode_with_cb(&block, |name, value| {
                total = total.saturating_add(name.len() + value.len() + 32);
                if total <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| AuthorityError::Hpack(e.to_string()))?;
        if total > MAX_DECODED {
            return Err(AuthorityError::BlockTooLarge);
        }
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                if self.replaced.is_none() {
                    self.replaced = Some(String::from_utf8_lossy(value).into_owned());
                }
                *value = REPLACEMENT.to_vec();
                invalid = true;
            }
        }
        self.reencode |= invalid;
        if !self.reencode {
            if fields
                .iter()
                .any(|(name, _)| name.as_slice() == b":authority")
            {
                // A valid authority before any rewrite: this client is one that sends
                // `host[:port]` (client-lib, tonic, grpc-go, grpc-js, newer grpcurl), and
                // clients keep one authority per connection. Stop reading its headers: the
                // cached path then pays nothing here. A client that switched to an invalid
                // authority later would get h2's PROTOCOL_ERROR on that stream only.
                self.state = State::Opaque;
            }
            return Ok(std::mem::take(&mut self.raw));
        }
        self.raw.clear();
        let mut block = Vec::with_capacity(self.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(name, value, &mut block);
        }
        Ok(frames(
            self.stream,
            self.first_flags & END_STREAM,
            self.priority,
            &block,
        ))
    }
}

/// The header block fragment and priority fields of a HEADERS payload, padding removed.
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<(&[u8], Option<[u8; 5]>), AuthorityError> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&p, tail) = rest.split_first().ok_or(AuthorityError::Framing(
            "PADDED HEADERS frame without a pad length",
        ))?;
        pad = usize::from(p);
        rest = tail;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (fields, tail) = rest
            .split_first_chunk::<5>()
            .ok_or(AuthorityError::Framing("PRIORITY HEADERS frame too short"))?;
        priority = Some(*fields);
        rest = tail;
    }
    let end = rest.len().checked_sub(pad).ok_or(AuthorityError::Framing(
        "padding longer than the HEADERS payload",
    ))?;
    Ok((&rest[..end], priority))
}

/// A literal header field never indexed, with a literal name (RFC 7541 §6.2.3): touches no
/// dynamic table on either side, and keeps sensitive fields out of any later one.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x10);
    encode_string(name, out);
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// RFC 7541 §5.1 integer with an `prefix_bits`-bit prefix, `first` holding the high bits.
fn encode_integer(mut value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HEADERS (+ CONTINUATION) frames carrying `block`, each at most [`MAX_FRAME`].
fn frames(stream: u32, end_stream: u8, priority: Option<[u8; 5]>, block: &[u8]) -> Vec<u8> {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first_room = MAX_FRAME - prio_len;
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut out = Vec::with_capacity(block.len() + 32);
    let mut flags = end_stream | if priority.is_some() { PRIORITY } else { 0 };
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(prio_len + first.len(), HEADERS, flags, stream, &mut out);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, stream, &mut out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
    out
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = len.to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// The read half of a connection's normalisation: wraps reads from the socket.
#[derive(Debug, Default)]
pub struct AuthorityFix {
    scanner: Scanner,
    /// Bytes read but not yet judged (a partial frame header or header block).
    held: Vec<u8>,
    /// Judged bytes waiting for h2.
    ready: Vec<u8>,
    ready_pos: usize,
    logged: bool,
}

impl AuthorityFix {
    /// Reads from `inner` into `buf`, normalising header blocks on the way.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        mut inner: Pin<&mut R>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.ready_pos < self.ready.len() {
                let n = buf.remaining().min(self.ready.len() - self.ready_pos);
                buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
                self.ready_pos += n;
                if self.ready_pos == self.ready.len() {
                    self.ready.clear();
                    self.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !self.held.is_empty() {
                match self.judge_held() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return Poll::Ready(Err(self.fail(e))),
                }
                // A frame is incomplete: read more behind it.
                let mut chunk = [0u8; 4096];
                let mut more = ReadBuf::new(&mut chunk);
                ready!(inner.as_mut().poll_read(cx, &mut more))?;
                if more.filled().is_empty() {
                    return Poll::Ready(Ok(())); // EOF inside a frame: h2 sees it end
                }
                self.held.extend_from_slice(more.filled());
                continue;
            }
            // Hot path: read straight into h2's buffer and keep what passes there.
            let start = buf.filled().len();
            ready!(inner.as_mut().poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                return Poll::Ready(Ok(()));
            }
            let mut at = start;
            while at < end {
                match self.scanner.next(&buf.filled()[at..end]) {
                    Ok(Step::Pass(n)) => at += n,
                    Ok(Step::Emit { consumed, bytes }) => {
                        self.held
                            .extend_from_slice(&buf.filled()[at + consumed..end]);
                        self.ready = bytes;
                        self.log_replacement();
                        buf.set_filled(at);
                        break;
                    }
                    Ok(Step::NeedMore) => {
                        self.held.extend_from_slice(&buf.filled()[at..end]);
                        buf.set_filled(at);
                        break;
                    }
                    Err(e) => return Poll::Ready(Err(self.fail(e))),
                }
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Judges held bytes into `ready`; `false` when more input is needed.
    fn judge_held(&mut self) -> Result<bool, AuthorityError> {
        let mut at = 0;
        while at < self.held.len() {
            match self.scanner.next(&self.held[at..])? {
                Step::Pass(n) => {
                    self.ready.extend_from_slice(&self.held[at..at + n]);
                    at += n;
                }
                Step::Emit { consumed, bytes } => {
                    self.ready.extend_from_slice(&bytes);
                    at += consumed;
                    self.log_replacement();
                }
                Step::NeedMore => break,
            }
        }
        self.held.drain(..at);
        Ok(!self.ready.is_empty() || self.held.is_empty())
    }

    fn log_replacement(&mut self) {
        if !self.logged {
            if let Some(authority) = &self.scanner.replaced {
                self.logged = true;
                tracing::debug!(%authority, "the client sent an :authority that is not host[:port] (usual for gRPC clients dialling unix:PATH); serving it as \"localhost\"");
            }
        }
    }

    fn fail(&mut self, error: AuthorityError) -> io::Error {
        tracing::warn!(%error, "closed a connection: its HTTP/2 headers could not be read");
        self.held.clear();
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through a fresh scanner in chunks of `chunk` bytes; returns what h2 gets.
    fn through(input: &[u8], chunk: usize) -> Result<Vec<u8>, AuthorityError> {
        let mut scanner = Scanner::default();
        let mut out = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        for piece in input.chunks(chunk) {
            held.extend_from_slice(piece);
            let mut at = 0;
            loop {
                match scanner.next(&held[at..])? {
                    Step::Pass(n) => {
                        out.extend_from_slice(&held[at..at + n]);
                        at += n;
                    }
                    Step::Emit { consumed, bytes } => {
                        out.extend_from_slice(&bytes);
                        at += consumed;
                    }
                    Step::NeedMore => break,
                }
            }
            held.drain(..at);
        }
        assert!(held.is_empty(), "input ended inside a frame");
        Ok(out)
    }

    fn headers_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), HEADERS, flags, stream, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), 0x0, END_STREAM, stream, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/therappai.broker.v1.Broker/GetAccessToken"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// What h2 would decode from `wire` (after the preface): (stream, END_STREAM, fields)
    /// of each header block, and DATA payloads, in order.
    /// (stream id, end of stream, header fields) per request, as h2 decodes them.
    type Seen = Vec<(u32, bool, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn h2_view(wire: &[u8]) -> Seen {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = wire.strip_prefix(PREFACE.as_slice()).expect("preface");
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        let mut first = (0, false);
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + len];
            match kind {
                HEADERS => {
                    let (frag, _) = headers_fragment(flags, payload).expect("headers");
                    block = frag.to_vec();
                    first = (stream, flags & END_STREAM != 0);
                }
                CONTINUATION => block.extend_from_slice(payload),
                _ => {}
            }
            if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                blocks.push((
                    first.0,
                    first.1,
                    decoder.decode(&block).expect("h2 decodes"),
                ));
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = PREFACE.to_vec();
        for f in frames {
            wire.extend_from_slice(f);
        }
        wire
    }

    #[test]
    fn valid_authority_passes_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(request("localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        let wire = with_preface(&[
            headers_frame(1, END_HEADERS, &block),
            data_frame(1, b"\0\0\0\0\x05hello"),
        ]);
        for chunk in [1, 7, 4096] {
            assert_eq!(through(&wire, chunk).expect("valid"), wire, "chunk {chunk}");
        }
    }

    #[test]
    fn a_valid_first_authority_settles_the_connection_and_later_blocks_pass_unread() {
        let mut enc = loona_hpack::Encoder::new();
        let first = enc.encode(request("localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        let second = enc.encode(request("/run/x.sock").iter().map(|(n, v)| (&n[..], &v[..])));
        let wire = with_preface(&[
            headers_frame(1, END_HEADERS, &first),
            data_frame(1, b"\0\0\0\0\0"),
            headers_frame(3, END_HEADERS, &second),
            // Not even HPACK: nobody reads it any more, h2 judges it.
            headers_frame(5, END_HEADERS, &[0xff, 0x00]),
        ]);
        for chunk in [1, 9, 4096] {
            assert_eq!(
                through(&wire, chunk).expect("passes"),
                wire,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_block_without_authority_does_not_settle_the_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let mut no_authority = request("unused");
        no_authority.remove(3);
        let first = enc.encode(no_authority.iter().map(|(n, v)| (&n[..], &v[..])));
        let second = enc.encode(request("/run/x.sock").iter().map(|(n, v)| (&n[..], &v[..])));
        let wire = with_preface(&[
            headers_frame(1, END_HEADERS, &first),
            headers_frame(3, END_HEADERS, &second),
        ]);
        let blocks = h2_view(&through(&wire, 7).expect("rewritten"));
        assert_eq!(
            blocks,
            vec![(1, false, no_authority), (3, false, request("localhost"))]
        );
    }

    #[test]
    fn socket_path_authority_becomes_localhost_across_many_requests() {
        // The client's encoder indexes fields (huffman too): later requests refer to the
        // dynamic table, which only the scanner's decoder still knows after a rewrite.
        let mut enc = loona_hpack::Encoder::new();
        let mut frames = Vec::new();
        for i in 0..50u32 {
            let authority = if i % 2 == 0 {
                "/run/user/1000/broker.sock"
            } else {
                "tmp%2Fbroker.sock"
            };
            let mut fields = request(authority);
            fields.push((b"x-request".to_vec(), format!("n{i}").into_bytes()));
            let block = enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
            frames.push(headers_frame(2 * i + 1, END_HEADERS, &block));
            frames.push(data_frame(2 * i + 1, b"\0\0\0\0\0"));
        }
        let wire = with_preface(&frames);
        let out = through(&wire, 13).expect("rewritten");
        let blocks = h2_view(&out);
        assert_eq!(blocks.len(), 50);
        for (i, (stream, end_stream, fields)) in blocks.iter().enumerate() {
            assert_eq!(*stream, 2 * i as u32 + 1);
            assert!(!end_stream);
            let mut expected = request("localhost");
            expected.push((b"x-request".to_vec(), format!("n{i}").into_bytes()));
            assert_eq!(fields, &expected, "request {i}");
        }
    }

    #[test]
    fn huffman_and_size_updates_are_decoded() {
        // Hand-made block: size update to 0 then to 256, `:method POST` indexed (3),
        // `:authority` (name index 1) with incremental indexing and a huffman value
        // "www.example.com" (RFC 7541 C.4.1), then a reference to that new entry (62).
        let mut block = vec![0x20, 0x3f, 0xe1, 0x01, 0x83, 0x41, 0x8c];
        block.extend_from_slice(&[
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        let wire = with_preface(&[headers_frame(1, END_HEADERS, &block)]);
        assert_eq!(
            through(&wire, 5).expect("valid"),
            wire,
            "valid authority passes"
        );

        // The same with a socket path as the (huffman-free) value, then a second request
        // that refers to the indexed entry: both come out as localhost.
        let path = b"/run/broker.sock";
        let mut bad = vec![0x20, 0x3f, 0xe1, 0x01, 0x83, 0x41, path.len() as u8];
        bad.extend_from_slice(path);
        let wire = with_preface(&[
            headers_frame(1, END_HEADERS | END_STREAM, &bad),
            headers_frame(3, END_HEADERS, &[0x83, 0xbe]),
        ]);
        let blocks = h2_view(&through(&wire, 3).expect("rewritten"));
        let localhost = (b":authority".to_vec(), b"localhost".to_vec());
        let method = (b":method".to_vec(), b"POST".to_vec());
        assert_eq!(
            blocks[0],
            (1, true, vec![method.clone(), localhost.clone()])
        );
        assert_eq!(blocks[1], (3, false, vec![method, localhost]));
    }

    #[test]
    fn size_update_above_what_h2_allows_closes_the_connection() {
        // 0x3f 0xe1 0x1f = 4096 + ... : a size update to 4096+32+... (over TABLE_SIZE).
        let wire = with_preface(&[headers_frame(1, END_HEADERS, &[0x3f, 0xe2, 0x1f, 0x83])]);
        assert!(matches!(through(&wire, 64), Err(AuthorityError::Hpack(_))));
    }

    #[test]
    fn padding_priority_and_continuation_are_understood() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(request("/run/x.sock").iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 15]); // priority: exclusive, dep 1, weight
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut cont = Vec::new();
        frame_header(b.len(), CONTINUATION, END_HEADERS, 5, &mut cont);
        cont.extend_from_slice(b);
        let wire = with_preface(&[
            headers_frame(5, PADDED | PRIORITY | END_STREAM, &payload),
            cont,
        ]);
        let out = through(&wire, 2).expect("rewritten");
        let blocks = h2_view(&out);
        assert_eq!(blocks, vec![(5, true, request("localhost"))]);
        // Priority fields are kept, padding is dropped.
        assert_eq!(out[PREFACE.len() + 4], PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(
            &out[PREFACE.len() + 9..PREFACE.len() + 14],
            &[0x80, 0, 0, 1, 15]
        );
    }

    #[test]
    fn a_large_rewritten_block_is_split_into_continuations() {
        let mut fields = request("/run/x.sock");
        fields.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let mut block = Vec::new();
        for (n, v) in &fields {
            encode_literal(n, v, &mut block);
        }
        let mut frames_in = Vec::new();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            let flags = if last { END_HEADERS } else { 0 };
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let mut f = Vec::new();
            frame_header(chunk.len(), kind, flags, 1, &mut f);
            f.extend_from_slice(chunk);
            frames_in.push(f);
        }
        let out = through(&with_preface(&frames_in), 1000).expect("rewritten");
        let mut expected = fields.clone();
        expected[3].1 = b"localhost".to_vec();
        assert_eq!(h2_view(&out), vec![(1, false, expected)]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        // Interrupted block.
        let wire = with_preface(&[headers_frame(1, 0, &[0x83]), data_frame(1, b"x")]);
        assert!(matches!(
            through(&wire, 64),
            Err(AuthorityError::Framing(_))
        ));
        // Padding longer than the payload.
        let wire = with_preface(&[headers_frame(1, END_HEADERS | PADDED, &[9, 0x83])]);
        assert!(matches!(
            through(&wire, 64),
            Err(AuthorityError::Framing(_))
        ));
        // An index that is not in any table.
        let wire = with_preface(&[headers_frame(1, END_HEADERS, &[0xff, 0x00])]);
        assert!(matches!(through(&wire, 64), Err(AuthorityError::Hpack(_))));
        // A block growing past the bound through CONTINUATIONs.
        let mut frames = vec![headers_frame(1, 0, &[0x83])];
        for _ in 0..5 {
            let mut f = Vec::new();
            frame_header(MAX_FRAME, CONTINUATION, 0, 1, &mut f);
            f.extend_from_slice(&[0x83; MAX_FRAME]);
            frames.push(f);
        }
        assert!(matches!(
            through(&with_preface(&frames), 4096),
            Err(AuthorityError::BlockTooLarge)
        ));
        // Not HTTP/2: passes, h2 answers it.
        assert_eq!(
            through(b"GET / HTTP/1.1\r\n\r\n", 4).expect("opaque"),
            b"GET / HTTP/1.1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn the_reader_hands_h2_the_rewritten_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(request("/run/x.sock").iter().map(|(n, v)| (&n[..], &v[..])));
        let wire = with_preface(&[
            headers_frame(1, END_HEADERS, &block),
            data_frame(1, &[7u8; 10_000]),
        ]);
        let (mut client, server) = tokio::io::duplex(512);
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.expect("write");
        });
        let mut reader = Reader {
            inner: server,
            fix: AuthorityFix::default(),
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(h2_view(&out), vec![(1, false, request("localhost"))]);
        assert!(out.ends_with(&[7u8; 10_000]));
    }

    struct Reader {
        inner: tokio::io::DuplexStream,
        fix: AuthorityFix,
    }

    impl AsyncRead for Reader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            this.fix.poll_read(Pin::new(&mut this.inner), cx, buf)
        }
    }
}
