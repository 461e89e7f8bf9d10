//! A header block with its Huffman-coded strings written out plain, for loona-hpack.
//!
//! On a rewritten connection every block is decoded in full, and loona-hpack builds its
//! Huffman code table anew for each Huffman-coded string (about 29 µs a string in release,
//! against a 5 µs budget per call; grpc-go's encoder, in older grpcurl, Huffman-codes any
//! string that gets shorter, per-call values included). Huffman coding is only how a string
//! travels (RFC 7541 §5.2):
//! the same block with each such string as a plain literal of the same octets means the same
//! fields and the same dynamic-table entries. So this walks the representations (§6), decodes
//! each Huffman string with [`hpack::huffman`] and copies everything else as it is, and
//! loona-hpack then decodes the result without touching its Huffman code.
//!
//! It answers `None` for a field cut short, an integer longer than loona-hpack and h2 take,
//! or a badly coded Huffman string; loona-hpack refuses all of these too (the `authority`
//! fuzz target checks both directions), so the caller ends the connection without decoding.
//! Indexes and table size updates are copied as they are, for loona-hpack to judge.

use super::hpack;
use std::borrow::Cow;

/// `block` with every Huffman-coded string as a plain one; borrowed when there is none.
pub(crate) fn without_huffman(block: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut out = Rewrite {
        block,
        copied: 0,
        owned: None,
    };
    let mut rest = block;
    while let Some(&first) = rest.first() {
        if first & 0x80 != 0 {
            // Indexed field (§6.1): no string.
            hpack::integer(&mut rest, 7)?;
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update (§6.3): no string.
            hpack::integer(&mut rest, 5)?;
        } else {
            // Literal field (§6.2): a name index, the name itself when that is 0, the value.
            let prefix = if first & 0x40 != 0 { 6 } else { 4 };
            if hpack::integer(&mut rest, prefix)? == 0 {
                out.string(&mut rest)?;
            }
            out.string(&mut rest)?;
        }
    }
    Some(match out.owned {
        None => Cow::Borrowed(block),
        Some(mut owned) => {
            owned.extend_from_slice(&block[out.copied..]);
            Cow::Owned(owned)
        }
    })
}

/// The block being rewritten: bytes up to `copied` are in `owned` already (once there is one).
struct Rewrite<'a> {
    block: &'a [u8],
    copied: usize,
    owned: Option<Vec<u8>>,
}

impl Rewrite<'_> {
    /// Reads the string at the front of `rest`; a Huffman one is written out plain.
    fn string(&mut self, rest: &mut &[u8]) -> Option<()> {
        let start = self.block.len() - rest.len();
        let (huffman, bytes) = hpack::string(rest)?;
        if !huffman {
            return Some(());
        }
        let octets = hpack::huffman(bytes)?;
        let owned = self
            .owned
            .get_or_insert_with(|| Vec::with_capacity(self.block.len() * 2));
        owned.extend_from_slice(&self.block[self.copied..start]);
        super::encode_string(&octets, owned);
        self.copied = self.block.len() - rest.len();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        loona_hpack::Decoder::new().decode(block).expect("decodes")
    }

    #[test]
    fn the_rfc_examples_decode_to_the_same_fields_plain() {
        // RFC 7541 C.4.1 (a request with Huffman-coded `www.example.com`), C.6.1 (a
        // response with Huffman-coded values, among them a date and a URL) and C.4.3 without
        // its reference to the earlier requests' table (a Huffman-coded name and value).
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x48, 0x82, 0x64, 0x02, 0x58, 0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b, 0x61, 0x96, 0xd0,
                0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81,
                0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff, 0x6e, 0x91, 0x9d, 0x29, 0xad, 0x17, 0x18,
                0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae, 0x43, 0xd3,
            ],
            &[
                0x82, 0x87, 0x85, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
                0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        for block in blocks {
            let plain = without_huffman(block).expect("reads the block");
            assert!(matches!(plain, Cow::Owned(_)), "it had Huffman strings");
            assert_eq!(decode(&plain), decode(block));
            assert!(
                hpack_strings_are_plain(&plain),
                "loona must not need its Huffman code"
            );
        }
    }

    /// Every string in `block` has the H bit clear (checked by walking it again).
    fn hpack_strings_are_plain(block: &[u8]) -> bool {
        matches!(without_huffman(block), Some(Cow::Borrowed(_)))
    }

    #[test]
    fn a_block_without_huffman_is_borrowed_as_it_is() {
        let block = loona_hpack::Encoder::new().encode([(&b":path"[..], &b"/x"[..])]);
        assert!(matches!(without_huffman(&block), Some(Cow::Borrowed(b)) if b == block));
        assert!(matches!(without_huffman(&[]), Some(Cow::Borrowed(b)) if b.is_empty()));
    }

    #[test]
    fn what_it_cannot_read_the_decoder_refuses_too() {
        // A truncated value, a Huffman value with zero padding, a literal name cut short.
        let mut cases: Vec<Vec<u8>> = vec![
            vec![0x41, 0x05, b'a'],
            vec![0x41, 0x81, 0x00],
            vec![0x40, 0x03, b'x'],
        ];
        // `:path` as 127 Huffman-coded `&` (code 0xf8), its length with five continuation
        // bytes: one more than loona-hpack takes. Written out plain, the length would be
        // encoded anew and the block accepted.
        let mut over_long = vec![0x04, 0xff, 0x80, 0x80, 0x80, 0x80, 0x00];
        over_long.extend([0xf8; 127]);
        cases.push(over_long);
        for block in cases {
            assert_eq!(without_huffman(&block), None, "{block:02x?}");
            assert!(
                loona_hpack::Decoder::new().decode(&block).is_err(),
                "{block:02x?}"
            );
        }
    }
}
