//! The listener's `:authority` normaliser (`authority::AuthorityFix`) on any bytes a local
//! client sends after the HTTP/2 preface, read in chunks of any size.
//!
//! Properties: no panic and no unbounded buffering (it reads what any local user sends,
//! before h2 or policy has seen a byte), and the result does not depend on how the socket's
//! reads split the stream: the bytes handed to h2, or the error that closes the connection,
//! are the same read in one piece and in chunks of the size the input's first byte gives.
//! And the quick look that settles most connections without decoding their first block
//! (`authority::quick`) agrees with the full decoder whenever it answers and the block
//! decodes; and the pre-pass that writes Huffman strings out plain for the decoder
//! (`authority::plain`) never changes what a block decodes to, and refuses only blocks the
//! decoder refuses too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use therappai_broker::authority::AuthorityFix;
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, frames)) = data.split_first() else {
        return;
    };
    quick_agrees_with_the_decoder(frames);
    plain_means_the_same(frames);
    let mut wire = PREFACE.to_vec();
    wire.extend_from_slice(frames);
    let whole = normalise(&wire, wire.len());
    let split = normalise(&wire, usize::from(chunk).max(1));
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert!(a == b, "the bytes h2 gets depend on how reads split them"),
        (Err(a), Err(b)) => assert_eq!(a, b, "the error depends on how reads split the stream"),
        _ => panic!("one split is refused, the other not: {whole:?} / {split:?}"),
    }
});

/// `frames` taken as one header block, the first of its connection.
fn quick_agrees_with_the_decoder(block: &[u8]) {
    let Some(valid) = therappai_broker::fuzzing::first_authority_is_valid(block) else {
        return;
    };
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(4096);
    let Ok(fields) = decoder.decode(block) else {
        return;
    };
    let decoded = fields
        .iter()
        .find(|(name, _)| name.as_slice() == b":authority")
        .map(|(_, value)| http::uri::Authority::try_from(value.as_slice()).is_ok());
    assert_eq!(
        decoded,
        Some(valid),
        "the quick look misjudged the :authority"
    );
}

/// `frames` taken as one header block, decoded as sent and with its Huffman strings plain;
/// a block the pre-pass cannot read must be one loona-hpack refuses (the normaliser then
/// closes the connection without decoding it).
fn plain_means_the_same(block: &[u8]) {
    let decode = |block: &[u8]| {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(4096);
        decoder.decode(block).ok()
    };
    match therappai_broker::fuzzing::without_huffman(block) {
        // No Huffman string: the same bytes, nothing to compare.
        Some(plain) if plain == block => {}
        Some(plain) => assert_eq!(
            decode(&plain),
            decode(block),
            "writing Huffman strings out plain changed the block"
        ),
        None => assert!(
            decode(block).is_none(),
            "the pre-pass refused a block loona-hpack decodes"
        ),
    }
}

/// What h2 reads from `wire` delivered `chunk` bytes at a time, or the error.
fn normalise(wire: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
    let mut fix = AuthorityFix::default();
    let mut socket = Chunked { rest: wire, chunk };
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match fix.poll_read(Pin::new(&mut socket), &mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            Poll::Ready(Err(e)) => return Err(e.to_string()),
            Poll::Pending => panic!("a read from memory never waits"),
        }
    }
}

/// A socket whose reads return at most `chunk` bytes.
struct Chunked<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        buf.put_slice(head);
        self.rest = tail;
        Poll::Ready(Ok(()))
    }
}
