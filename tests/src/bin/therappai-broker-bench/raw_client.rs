//! A minimal HTTP/2 gRPC client that chooses its own `:authority`, to measure the listener's
//! authority normaliser: tonic (like h2, hyper and every Rust client) cannot send an
//! authority that is not `host[:port]`, but grpcio, grpc-java and older grpcurl send the
//! socket path, which the broker rewrites to `localhost` before h2 sees it.
//!
//! One connection, one call at a time: HEADERS (HPACK literals, never indexed, the way a
//! client that keeps no dynamic table writes them) and one DATA frame, then frames are read
//! until the trailers end the stream. It answers SETTINGS and PING, and gives back the
//! connection's flow-control window with the next request. Response headers are not decoded
//! (HPACK state is not needed to find frame boundaries and END_STREAM); the answer's
//! protobuf is checked to carry a non-empty `access_token`.

use anyhow::{Context as _, bail, ensure};
use std::path::Path;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The header fields of a GetAccessToken request, in the order gRPC clients send them.
pub fn request_fields(authority: &str) -> [(&'static str, &str); 6] {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/therappai.broker.v1.Broker/GetAccessToken"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
}

#[derive(Debug)]
pub struct RawClient {
    stream: BufReader<UnixStream>,
    /// The request's HEADERS payload (the same for every call) and its DATA payload.
    header_block: Vec<u8>,
    message: Vec<u8>,
    next_stream: u32,
    /// Connection-level DATA bytes received and not yet given back by WINDOW_UPDATE.
    unacknowledged: u32,
    out: Vec<u8>,
}

impl RawClient {
    /// Connects to `socket` and sends GetAccessToken for `account` with `authority`.
    pub async fn connect(socket: &Path, authority: &str, account: &str) -> anyhow::Result<Self> {
        let mut stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect {}", socket.display()))?;
        let mut hello = PREFACE.to_vec();
        frame_header(0, SETTINGS, 0, 0, &mut hello);
        stream.write_all(&hello).await?;
        let mut header_block = Vec::new();
        for (name, value) in request_fields(authority) {
            // Literal header field never indexed, new name (RFC 7541 §6.2.3).
            header_block.push(0x10);
            hpack_string(name.as_bytes(), &mut header_block);
            hpack_string(value.as_bytes(), &mut header_block);
        }
        // GetAccessTokenRequest { account = 1 }, in a gRPC length-prefixed message.
        let mut request = vec![0x0a, u8::try_from(account.len())?];
        request.extend_from_slice(account.as_bytes());
        let mut message = vec![0];
        message.extend_from_slice(&u32::try_from(request.len())?.to_be_bytes());
        message.extend_from_slice(&request);
        Ok(Self {
            stream: BufReader::new(stream),
            header_block,
            message,
            next_stream: 1,
            unacknowledged: 0,
            out: Vec::new(),
        })
    }

    /// One GetAccessToken; fails unless the answer carries a token.
    pub async fn call(&mut self) -> anyhow::Result<()> {
        let id = self.next_stream;
        self.next_stream += 2;
        if self.unacknowledged > 0 {
            frame_header(4, WINDOW_UPDATE, 0, 0, &mut self.out);
            self.out
                .extend_from_slice(&self.unacknowledged.to_be_bytes());
            self.unacknowledged = 0;
        }
        frame_header(
            self.header_block.len(),
            HEADERS,
            END_HEADERS,
            id,
            &mut self.out,
        );
        self.out.extend_from_slice(&self.header_block);
        frame_header(self.message.len(), DATA, END_STREAM, id, &mut self.out);
        self.out.extend_from_slice(&self.message);
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();

        let mut answer = Vec::new();
        loop {
            let mut header = [0u8; 9];
            self.stream.read_exact(&mut header).await?;
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await?;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let mut ack = Vec::new();
                    frame_header(0, SETTINGS, ACK, 0, &mut ack);
                    self.stream.get_mut().write_all(&ack).await?;
                }
                PING if flags & ACK == 0 => {
                    let mut pong = Vec::new();
                    frame_header(8, PING, ACK, 0, &mut pong);
                    pong.extend_from_slice(&payload);
                    self.stream.get_mut().write_all(&pong).await?;
                }
                GOAWAY => bail!("the server closed the connection (GOAWAY)"),
                RST_STREAM if stream == id => bail!("the server reset the call (RST_STREAM)"),
                DATA if stream == id => {
                    self.unacknowledged += u32::try_from(len)?;
                    answer.extend_from_slice(&payload);
                }
                HEADERS if stream == id && flags & END_STREAM != 0 => break,
                _ => {}
            }
        }
        // A length-prefixed GetAccessTokenResponse whose first field is access_token (1).
        ensure!(
            answer.len() > 7 && answer[5] == 0x0a && answer[6] != 0,
            "the answer carries no token ({} bytes)",
            answer.len()
        );
        Ok(())
    }
}

pub fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2), length as a 7-bit-prefix
/// integer (§5.1).
fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    let mut len = s.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len % 0x80) as u8 | 0x80);
            len /= 0x80;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}
