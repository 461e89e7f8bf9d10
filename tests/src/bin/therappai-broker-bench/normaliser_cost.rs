//! What the listener's `:authority` normaliser costs per call, in process: header blocks
//! through `AuthorityFix::poll_read` from memory, for the three kinds of connection there
//! are. A connection whose first `:authority` was valid (client-lib, tonic, grpc-js) passes
//! unread; one that sent a socket path (grpcio, grpc-java, older grpcurl) is decoded and
//! re-encoded on every call. grpcio refers to its dynamic table for nearly every field after
//! the first call (recorded from grpcio 1.85: 9-byte blocks); an encoder that sends a
//! per-call value as a Huffman-coded literal (h2's and Netty's do, for `grpc-timeout`) makes
//! the decoder decode Huffman on every call.

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
    let len = block.len().to_be_bytes();
    let mut out = len[len.len() - 3..].to_vec();
    out.extend_from_slice(&[HEADERS, END_HEADERS]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// The first request: every field a literal entered into the dynamic table (62..=67).
fn first_block(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/therappai.broker.v1.Broker/GetAccessToken"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
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

/// The figures, as JSON for the report.
pub fn measure(smoke: bool) -> serde_json::Value {
    let (iterations, repeats) = if smoke { (2_000, 1) } else { (100_000, 7) };
    let path = "/run/therappai-broker/broker.sock";
    serde_json::json!({
        "settled_ns": per_block_ns("localhost", true, iterations, repeats),
        "rewritten_indexed_ns": per_block_ns(path, false, iterations, repeats),
        "rewritten_huffman_ns": per_block_ns(path, true, iterations, repeats),
    })
}
