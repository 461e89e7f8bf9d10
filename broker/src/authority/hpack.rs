//! HPACK's wire primitives (RFC 7541 §5), read without a decoder: integers, string literals
//! and a strict Huffman decode. The quick look ([`super::quick`]) and the Huffman pre-pass
//! ([`super::plain`]) walk blocks with these; every function answers `None` on input it
//! cannot read, and the caller then leaves the block to loona-hpack, which judges it.

/// An integer with a `prefix_bits` prefix (§5.1), taken off the front of `rest`.
pub(super) fn integer(rest: &mut &[u8], prefix_bits: u32) -> Option<u64> {
    let (&first, mut tail) = rest.split_first()?;
    let max = (1u64 << prefix_bits) - 1;
    let mut value = u64::from(first) & max;
    if value == max {
        let mut shift = 0u32;
        loop {
            let (&byte, next) = tail.split_first()?;
            tail = next;
            // At most four continuation bytes (five octets in all): loona-hpack and h2 refuse
            // a longer integer, so it must not be read here either (a Huffman string's length
            // is written anew by `plain`, which would hide the over-long original).
            if shift > 21 {
                return None;
            }
            value += u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *rest = tail;
    Some(value)
}

/// A string literal (§5.2): whether it is Huffman-coded, and its bytes as sent.
pub(super) fn string<'a>(rest: &mut &'a [u8]) -> Option<(bool, &'a [u8])> {
    let huffman = rest.first()? & 0x80 != 0;
    let len = usize::try_from(integer(rest, 7)?).ok()?;
    if len > rest.len() {
        return None;
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Some((huffman, bytes))
}

/// A Huffman-coded string's octets, or `None` when it breaks §5.2.
///
/// httlib-huffman decodes with precomputed tables (loona-hpack builds its code table anew for
/// every string, about 29 µs each), but it accepts padding that is not all ones, which §5.2
/// forbids. A valid coding is the only one there is for its octets (a prefix code, padded
/// with ones to the next octet), so re-encoding the result and comparing makes the check exact.
pub(super) fn huffman(coded: &[u8]) -> Option<Vec<u8>> {
    let mut octets = Vec::with_capacity(coded.len() * 8 / 5 + 1);
    httlib_huffman::decode(coded, &mut octets, httlib_huffman::DecoderSpeed::FourBits).ok()?;
    let mut again = Vec::with_capacity(coded.len());
    httlib_huffman::encode(&octets, &mut again).ok()?;
    (again == coded).then_some(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "www.example.com", Huffman-coded (RFC 7541 C.4.1).
    const HUFFMAN_HOST: [u8; 12] = [
        0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ];

    #[test]
    fn huffman_decodes_a_valid_coding() {
        assert_eq!(
            huffman(&HUFFMAN_HOST).as_deref(),
            Some(&b"www.example.com"[..])
        );
        assert_eq!(huffman(&[]).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn huffman_refuses_padding_that_is_not_all_ones() {
        // The same octets with the seven padding bits cleared: httlib-huffman alone takes
        // this, loona-hpack and h2 refuse it, and so must this.
        let mut zero_padded = HUFFMAN_HOST;
        zero_padded[11] = 0x80;
        let mut lenient = Vec::new();
        let decoded = httlib_huffman::decode(
            &zero_padded,
            &mut lenient,
            httlib_huffman::DecoderSpeed::FourBits,
        );
        assert!(decoded.is_ok(), "the case this check exists for");
        assert_eq!(huffman(&zero_padded), None);
        // Eight bits of padding (a whole extra octet of ones).
        let mut long_padding = HUFFMAN_HOST.to_vec();
        long_padding.push(0xff);
        assert_eq!(huffman(&long_padding), None);
    }

    #[test]
    fn integers_follow_the_prefix_and_continuation_rules() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut rest: &[u8] = &[0x1f, 0x9a, 0x0a, 0x55];
        assert_eq!(integer(&mut rest, 5), Some(1337));
        assert_eq!(rest, &[0x55]);
        // Four continuation bytes is the most loona-hpack and h2 take; a fifth is refused,
        // as is a continuation that never ends.
        let mut four: &[u8] = &[0x7f, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(integer(&mut four, 7), Some(127));
        assert_eq!(
            integer(&mut &[0x7f, 0x80, 0x80, 0x80, 0x80, 0x00][..], 7),
            None
        );
        assert_eq!(integer(&mut &[0x1f, 0x80][..], 5), None);
    }

    #[test]
    fn a_string_longer_than_the_block_is_refused() {
        assert_eq!(string(&mut &[0x05, b'a'][..]), None);
        let mut rest: &[u8] = &[0x81, 0xaa, 0x00];
        assert_eq!(string(&mut rest), Some((true, &[0xaa][..])));
        assert_eq!(rest, &[0x00]);
    }
}
