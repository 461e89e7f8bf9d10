//! What the listener's `:authority` normaliser costs per call, in process: header blocks
//! through `AuthorityFix::poll_read` from memory, for the three kinds of connection there
//! are. A connection whose first `:authority` was valid (client-lib, tonic, grpc-js) passes
//! unread; one that sent a socket path (grpcio, grpc-java, older grpcurl) is decoded and
//! re-encoded on every call. grpcio refers to its dynamic table for nearly every field after
//! the first call (recorded from grpcio 1.85: 9-byte blocks); an encoder that sends a
//! per-call value as a Huffman-coded literal (h2's and Netty's do, for `grpc-timeout`) makes
//! the decoder decode Huffman on every call. And a connection's first request, as tonic
//! (client-lib's transport) really sends it, captured from a listener of the benchmark's own:
//! judged by the quick look, against decoding it in full with loona-hpack (what every new
//! connection, so every `therappai-brokerctl token`, paid before).

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use therappai_broker::authority::AuthorityFix;
use tokio::io::ReadBuf;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// "www.example.com", Huffman-coded (RFC 7541 C.4.1).
const HUFFMAN_VALUE: [u8; 12] = [
    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
];

fn literal_with_indexing(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x40);
    for s in [name, value] {
        out.push(u8::try_from(s.len()).unwrap_or(u8::MAX) & 0x7f);
        out.extend_from_slice(s);
    }
}

fn headers_frame(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + block.len());
    crate::raw_client::frame_header(block.len(), HEADERS, END_HEADERS, stream, &mut out);
    out.extend_from_slice(block);
    out
}

/// The first request: every field a literal entered into the dynamic table (62..=67).
fn first_block(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in crate::raw_client::request_fields(authority) {
        literal_with_indexing(name.as_bytes(), value.as_bytes(), &mut block);
    }
    block
}

/// A later request: the six fields by reference, and with `huffman`, one more field as a
/// literal without indexing whose value is Huffman-coded.
fn later_block(huffman: bool) -> Vec<u8> {
    let mut block: Vec<u8> = (62u8..=67).rev().map(|index| 0x80 | index).collect();
    if huffman {
        block.push(0x00);
        block.push(12);
        block.extend_from_slice(b"x-per-call-v");
        block.push(0x80 | HUFFMAN_VALUE.len() as u8);
        block.extend_from_slice(&HUFFMAN_VALUE);
    }
    block
}

/// Hands `wire` to the normaliser and reads everything it passes on; returns the byte count.
fn read_through(fix: &mut AuthorityFix, mut wire: &[u8], out: &mut [u8]) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        let mut buf = ReadBuf::new(out);
        match fix.poll_read(Pin::new(&mut wire), &mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return total,
            Poll::Ready(Ok(())) => total += buf.filled().len(),
            // From memory a read never waits; an error is a broken fixture.
            Poll::Ready(Err(_)) | Poll::Pending => return 0,
        }
    }
}

/// Median nanoseconds per later block on one connection that began with `authority`.
fn per_block_ns(authority: &str, huffman: bool, iterations: u32, repeats: usize) -> f64 {
    let mut fix = AuthorityFix::default();
    let mut out = vec![0u8; 16 * 1024];
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&headers_frame(1, &first_block(authority)));
    assert!(
        read_through(&mut fix, &hello, &mut out) > 0,
        "first block refused"
    );
    let block = later_block(huffman);
    let frames: Vec<Vec<u8>> = (1..=iterations)
        .map(|i| headers_frame(2 * i + 1, &block))
        .collect();
    let mut runs = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        for frame in &frames {
            let passed = read_through(&mut fix, black_box(frame), &mut out);
            assert!(passed > 0, "the normaliser refused a later block");
        }
        runs.push(started.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    crate::load::median(runs)
}

/// What client-lib sends on a new connection up to the end of its first header block.
pub async fn capture_first_request() -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("capture.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let caller = tokio::spawn(async move {
        let mut client = therappai_broker_client::Client::connect(&socket).await?;
        client.access_token("default").await
    });
    let (mut stream, _) = listener.accept().await?;
    let mut wire = Vec::new();
    let captured = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some((_, end)) = captured_block(&wire) {
                wire.truncate(end);
                return anyhow::Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "client-lib closed before sending a request");
            wire.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    caller.abort();
    captured.map_err(|_| anyhow::anyhow!("client-lib sent no request within 10 s"))??;
    Ok(wire)
}

/// Where the payload of the first complete HEADERS frame (END_HEADERS set) after the
/// preface starts and ends (tonic sends it unpadded, without priority).
fn captured_block(wire: &[u8]) -> Option<(usize, usize)> {
    let mut at = wire.strip_prefix(PREFACE).map(|_| PREFACE.len())?;
    loop {
        let header = wire.get(at..at + 9)?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let end = at + 9 + len;
        if end > wire.len() {
            return None;
        }
        if header[3] == HEADERS && header[4] & END_HEADERS != 0 {
            return Some((at + 9, end));
        }
        at = end;
    }
}

/// Median nanoseconds for a new connection's normaliser to pass `wire` (preface to first
/// block), and for loona-hpack to decode that block alone.
fn first_request_ns(wire: &[u8], iterations: u32, repeats: usize) -> (f64, f64) {
    let mut out = vec![0u8; 16 * 1024];
    let block = captured_block(wire).map_or(&wire[0..0], |(start, end)| &wire[start..end]);
    let (mut quick, mut full) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let started = Instant::now();
        for _ in 0..iterations {
            let mut fix = AuthorityFix::default();
            let passed = read_through(&mut fix, black_box(wire), &mut out);
            assert_eq!(
                passed,
                wire.len(),
                "the first request did not pass unchanged"
            );
        }
        quick.push(started.elapsed().as_nanos() as f64 / f64::from(iterations));
        let started = Instant::now();
        for _ in 0..iterations / 10 {
            let mut decoder = loona_hpack::Decoder::new();
            assert!(
                decoder.decode(black_box(block)).is_ok(),
                "loona refused tonic's block"
            );
        }
        full.push(started.elapsed().as_nanos() as f64 / f64::from(iterations / 10));
    }
    (crate::load::median(quick), crate::load::median(full))
}

/// The figures, as JSON for the report; `first_request` from [`capture_first_request`].
pub fn measure(smoke: bool, first_request: &[u8]) -> serde_json::Value {
    let (iterations, repeats) = if smoke { (2_000, 1) } else { (100_000, 7) };
    let path = "/run/therappai-broker/broker.sock";
    let (first_quick, first_full) = first_request_ns(first_request, iterations / 10, repeats);
    serde_json::json!({
        "first_request_bytes": first_request.len(),
        "first_request_ns": first_quick,
        "first_request_full_decode_ns": first_full,
        "settled_ns": per_block_ns("localhost", true, iterations, repeats),
        "rewritten_indexed_ns": per_block_ns(path, false, iterations, repeats),
        "rewritten_huffman_ns": per_block_ns(path, true, iterations, repeats),
    })
}
