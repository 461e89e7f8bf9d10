//! The encrypted-file store's file format, version 1:
//!
//! ```text
//! header (authenticated, not secret)       nonce          ciphertext ‖ tag
//! "TPBSTORE" | version u16 BE | key id 8B | 24 random B  | XChaCha20-Poly1305(payload) | 16 B
//! ```
//!
//! The whole header is the AEAD's associated data, so a changed version or key id fails
//! authentication too; it is read first only to give a precise message (not our file, a
//! newer format, another key). The payload lists the entries sorted by account:
//! `count u32`, then per entry `name_len u16 | name | token_len u32 | token`, big-endian.
//!
//! Plaintext only ever lives in zeroizing buffers sized up front, so no reallocation leaves
//! a copy of a token behind.

use super::key::{KEY_ID_LEN, StoreKey};
use crate::secret::RefreshToken;
use crate::store::check_account;
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

/// First bytes of every store file.
pub(super) const MAGIC: &[u8; 8] = b"TPBSTORE";
/// The format this code writes and reads.
pub(super) const VERSION: u16 = 1;
const HEADER_LEN: usize = MAGIC.len() + 2 + KEY_ID_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Offsets of each part, for readers of the format (and the tamper tests).
pub(super) const NONCE_AT: usize = HEADER_LEN;
pub(super) const CIPHERTEXT_AT: usize = NONCE_AT + NONCE_LEN;
/// The shortest valid file: an empty payload is still 4 bytes (the count).
pub(super) const MIN_LEN: usize = CIPHERTEXT_AT + 4 + TAG_LEN;

/// The entries a file holds: account name → refresh token.
pub type Entries = BTreeMap<String, RefreshToken>;

/// Why bytes are not a store readable with this key. Each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileProblem {
    /// The file does not start with the format's magic.
    NotAStoreFile,
    /// Shorter than any valid file.
    Truncated {
        /// The file's length.
        len: usize,
    },
    /// Written in a format this broker does not know.
    UnknownVersion {
        /// The version in the header.
        version: u16,
    },
    /// Encrypted under another key than the one configured.
    WrongKey {
        /// Key id in the file's header.
        file_key: String,
        /// Id of the key the broker has.
        our_key: String,
    },
    /// Authentication failed: bytes were changed, cut or added.
    Damaged,
    /// Decrypted, but the content is not a list of entries (never written by a broker).
    Malformed,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MOVE: &str =
            "or move it away (keep it: it may be recovered later) and log the accounts in again";
        match self {
            Self::NotAStoreFile => write!(
                f,
                "is not a therappai-broker store file (it does not start with {:?}): check [store] file, {MOVE}",
                String::from_utf8_lossy(MAGIC)
            ),
            Self::Truncated { len } => write!(
                f,
                "is truncated ({len} bytes; the smallest valid file has {MIN_LEN}): restore it from a backup, {MOVE}"
            ),
            Self::UnknownVersion { version } => write!(
                f,
                "is in format version {version}, which this broker does not read (it reads version {VERSION}): run the broker version that wrote it, {MOVE}"
            ),
            Self::WrongKey { file_key, our_key } => write!(
                f,
                "was encrypted with another key (key id {file_key}; the configured key has id {our_key}): restore the credential or key file that belongs to it, {MOVE}"
            ),
            Self::Damaged => write!(
                f,
                "failed authentication: it was damaged or altered (a changed, missing or added byte): restore it from a backup, {MOVE}"
            ),
            Self::Malformed => write!(
                f,
                "decrypted, but its content is not a list of accounts: restore it from a backup, {MOVE}"
            ),
        }
    }
}

/// Why sealing failed (the OS gave no randomness for the nonce).
#[derive(Debug)]
pub(super) struct SealError(pub(super) String);

/// Serialises and encrypts `entries` under `key` with a fresh random nonce.
pub(super) fn seal(key: &StoreKey, entries: &Entries) -> Result<Vec<u8>, SealError> {
    let nonce = XNonce::try_generate().map_err(|e| SealError(e.to_string()))?;
    let payload_len = 4 + entries
        .iter()
        .map(|(name, token)| 2 + name.len() + 4 + token.expose().len())
        .sum::<usize>();
    // Plaintext is written straight into the output buffer and encrypted in place there; the
    // buffer is zeroizing in case anything fails between the two.
    let mut out = Zeroizing::new(Vec::with_capacity(CIPHERTEXT_AT + payload_len + TAG_LEN));
    out.extend_from_slice(&header(key));
    out.extend_from_slice(&nonce);
    push_len(&mut out, entries.len(), 4);
    for (name, token) in entries {
        push_len(&mut out, name.len(), 2);
        out.extend_from_slice(name.as_bytes());
        push_len(&mut out, token.expose().len(), 4);
        out.extend_from_slice(token.expose().as_bytes());
    }
    let cipher = cipher(key);
    let (head, payload) = out.split_at_mut(CIPHERTEXT_AT);
    let tag = cipher
        .encrypt_inout_detached(&nonce, &head[..HEADER_LEN], payload.into())
        // Only fails for a payload beyond 256 GiB.
        .map_err(|_| SealError("the payload is too long to encrypt".to_owned()))?;
    out.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *out))
}

/// Checks, decrypts and parses a whole file. `bytes` is decrypted in place (so it is
/// zeroizing).
pub(super) fn open(key: &StoreKey, bytes: &mut Zeroizing<Vec<u8>>) -> Result<Entries, FileProblem> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // Even a cut file starts with the magic; anything else is not ours at all.
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(FileProblem::Truncated { len: bytes.len() });
        }
        return Err(FileProblem::NotAStoreFile);
    }
    if bytes.len() >= MAGIC.len() + 2 {
        let version = u16::from_be_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if version != VERSION {
            return Err(FileProblem::UnknownVersion { version });
        }
    }
    if bytes.len() < MIN_LEN {
        return Err(FileProblem::Truncated { len: bytes.len() });
    }
    let file_key = &bytes[MAGIC.len() + 2..HEADER_LEN];
    if file_key != key.id() {
        return Err(FileProblem::WrongKey {
            file_key: hex::encode(file_key),
            our_key: key.id_hex(),
        });
    }
    let tag_at = bytes.len() - TAG_LEN;
    let (head, rest) = bytes.split_at_mut(CIPHERTEXT_AT);
    let (payload, tag) = rest.split_at_mut(tag_at - CIPHERTEXT_AT);
    let nonce = XNonce::try_from(&head[NONCE_AT..]).map_err(|_| FileProblem::Damaged)?;
    let tag = Tag::try_from(&*tag).map_err(|_| FileProblem::Damaged)?;
    cipher(key)
        .decrypt_inout_detached(&nonce, &head[..HEADER_LEN], payload.into(), &tag)
        .map_err(|_| FileProblem::Damaged)?;
    parse_payload(payload).ok_or(FileProblem::Malformed)
}

fn header(key: &StoreKey) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&VERSION.to_be_bytes());
    header[MAGIC.len() + 2..].copy_from_slice(&key.id());
    header
}

fn cipher(key: &StoreKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.expose().into())
}

/// Appends `len` as a big-endian integer of `width` bytes (2 or 4). Lengths are bounded by
/// the account-name rule and by what a JWT can be, far below either limit.
fn push_len(out: &mut Vec<u8>, len: usize, width: usize) {
    let bytes = (len as u64).to_be_bytes();
    out.extend_from_slice(&bytes[8 - width..]);
}

/// The entries in a decrypted payload, or `None` if it is not one.
fn parse_payload(payload: &[u8]) -> Option<Entries> {
    let mut reader = Reader(payload);
    let count = reader.len(4)?;
    let mut entries = Entries::new();
    for _ in 0..count {
        let name_len = reader.len(2)?;
        let name = std::str::from_utf8(reader.take(name_len)?).ok()?;
        check_account(name).ok()?;
        let token_len = reader.len(4)?;
        // `to_owned` allocates exactly the token's length: no spare capacity to shed (and so
        // no unzeroized copy) when the secret type boxes it.
        let token = std::str::from_utf8(reader.take(token_len)?)
            .ok()?
            .to_owned();
        if entries
            .insert(name.to_owned(), RefreshToken::new(token))
            .is_some()
        {
            return None;
        }
    }
    reader.0.is_empty().then_some(entries)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn len(&mut self, width: usize) -> Option<usize> {
        let bytes = self.take(width)?;
        let mut buf = [0u8; 8];
        buf[8 - width..].copy_from_slice(bytes);
        usize::try_from(u64::from_be_bytes(buf)).ok()
    }
}
