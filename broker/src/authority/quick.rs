//! A quick look at a header block's `:authority`, without decoding the block.
//!
//! Decoding a whole block is work on every new connection, so on every
//! `therappai-brokerctl token` (with loona-hpack alone, 160–220 µs for tonic's first request
//! in the 2026-12-03 benchmark runs, most of it Huffman; [`super::plain`] now takes that
//! part off the full decode). But the one thing the normaliser needs from a connection
//! that will turn out fine is whether its `:authority` is valid, and encoders put the
//! pseudo-headers first, by static-table name. So this walks the representations (RFC 7541
//! §6) up to the first `:authority`, skipping the strings of the fields before it by their
//! length, and decodes only that one value.
//!
//! It answers only for the common shape and says "don't know" for everything else (a
//! reference into the dynamic table, a literal name, a truncated or odd block), and then the
//! caller decodes the block in full as before. A wrong "valid" would only hand h2 a block it
//! refuses itself (h2 parses every block the normaliser passes); nothing here is trusted.

use super::{TABLE_SIZE, hpack};

/// Entries in the HPACK static table (RFC 7541 Appendix A); index 1 is `:authority`.
const STATIC_ENTRIES: u64 = 61;
const AUTHORITY_INDEX: u64 = 1;

/// Whether the first `:authority` in `block` is valid (`Some`), or `None` when this cannot
/// tell without decoding the block.
pub(crate) fn first_authority_is_valid(block: &[u8]) -> Option<bool> {
    let mut rest = block;
    while let Some(&first) = rest.first() {
        if first & 0x80 != 0 {
            // Indexed field (§6.1). Static index 1 is `:authority` with an empty value.
            let index = hpack::integer(&mut rest, 7)?;
            if index == 0 || index > STATIC_ENTRIES || index == AUTHORITY_INDEX {
                return None;
            }
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update (§6.3); h2 judges it when the block passes.
            if hpack::integer(&mut rest, 5)? > TABLE_SIZE as u64 {
                return None;
            }
        } else {
            // Literal field (§6.2.1 with indexing: 6-bit prefix; §6.2.2, §6.2.3: 4-bit).
            let prefix = if first & 0x40 != 0 { 6 } else { 4 };
            let name = hpack::integer(&mut rest, prefix)?;
            if name == 0 || name > STATIC_ENTRIES {
                return None;
            }
            let value = hpack::string(&mut rest)?;
            if name == AUTHORITY_INDEX {
                return is_valid(value);
            }
        }
    }
    None
}

/// Whether the raw string is a valid `host[:port]`; `None` for bad Huffman.
fn is_valid((huffman, bytes): (bool, &[u8])) -> Option<bool> {
    let valid = |value: &[u8]| http::uri::Authority::try_from(value).is_ok();
    if !huffman {
        return Some(valid(bytes));
    }
    Some(valid(&hpack::huffman(bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "www.example.com", Huffman-coded (RFC 7541 C.4.1).
    const HUFFMAN_HOST: [u8; 12] = [
        0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ];

    fn plain(value: &[u8]) -> Vec<u8> {
        let mut out = vec![value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn reads_the_authority_behind_static_fields() {
        // :method POST, :scheme http, :path literal (index 4, with indexing), then
        // :authority as a literal with indexing (name index 1).
        let mut block = vec![0x83, 0x86, 0x44];
        block.extend(plain(b"/therappai.broker.v1.Broker/GetAccessToken"));
        let mut good = block.clone();
        good.push(0x41);
        good.extend(plain(b"localhost"));
        assert_eq!(first_authority_is_valid(&good), Some(true));

        let mut bad = block.clone();
        bad.push(0x01); // without indexing
        bad.extend(plain(b"/run/therappai-broker/broker.sock"));
        assert_eq!(first_authority_is_valid(&bad), Some(false));

        let mut huffman = block;
        huffman.extend([0x11, 0x80 | HUFFMAN_HOST.len() as u8]); // never indexed
        huffman.extend(HUFFMAN_HOST);
        assert_eq!(first_authority_is_valid(&huffman), Some(true));
    }

    #[test]
    fn says_it_does_not_know_rather_than_guess() {
        // No authority at all.
        assert_eq!(first_authority_is_valid(&[0x83, 0x86]), None);
        // A reference into the dynamic table before the authority.
        assert_eq!(
            first_authority_is_valid(&[0x83, 0xbe, 0x41, 0x01, b'a']),
            None
        );
        // A literal name before it.
        let mut literal_name = vec![0x40];
        literal_name.extend(plain(b"x-a"));
        literal_name.extend(plain(b"b"));
        literal_name.extend([0x41, 0x01, b'a']);
        assert_eq!(first_authority_is_valid(&literal_name), None);
        // The indexed empty authority, a truncated value, bad Huffman, an endless integer.
        assert_eq!(first_authority_is_valid(&[0x81]), None);
        assert_eq!(first_authority_is_valid(&[0x41, 0x05, b'a']), None);
        assert_eq!(
            first_authority_is_valid(&[0x41, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(
            first_authority_is_valid(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
        assert_eq!(first_authority_is_valid(&[]), None);
    }

    #[test]
    fn agrees_with_the_full_decoder() {
        let requests: [&[(&[u8], &[u8])]; 3] = [
            &[(b":method", b"POST"), (b":authority", b"localhost:50051")],
            &[(b":path", b"/x"), (b":authority", b"unix:/run/x.sock")],
            &[(b":scheme", b"http"), (b":authority", b"tmp%2Fx.sock")],
        ];
        for fields in requests {
            let block = loona_hpack::Encoder::new().encode(fields.iter().copied());
            let decoded = loona_hpack::Decoder::new().decode(&block).expect("decodes");
            let expected = decoded
                .iter()
                .find(|(name, _)| name.as_slice() == b":authority")
                .map(|(_, value)| http::uri::Authority::try_from(value.as_slice()).is_ok());
            assert_eq!(first_authority_is_valid(&block), expected, "{fields:?}");
        }
    }
}
