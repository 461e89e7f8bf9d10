//! The encrypted-file store's key: 32 bytes from the systemd credential `store-key` or from
//! `[store] key_file`.
//!
//! Accepted forms, decided by length so they can never be confused: exactly 32 raw bytes
//! (`head -c 32 /dev/urandom`, also what `systemd-creds` holds), 64 hex digits
//! (`openssl rand -hex 32`) or 44 base64 characters (`openssl rand -base64 32`), the text
//! forms with an optional trailing newline.
//!
//! A key file must give nothing to group or others (0600 or 0400) and belong to the broker's
//! user (or root): whoever can replace the key can make the broker write the tokens under a
//! key they know. Credentials are not checked: systemd creates them, read-only, in a
//! directory only the service can read.
//!
//! The key bytes live in a zeroizing buffer and are never printed; only the key id (a
//! domain-separated SHA-256 of the key, truncated) is shown, to tell keys apart.

use crate::store::StoreError;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Name of the systemd credential holding the key (`LoadCredentialEncrypted=store-key:…`).
pub const CREDENTIAL_NAME: &str = "store-key";

/// Key length in bytes (XChaCha20-Poly1305 takes a 256-bit key).
pub const KEY_LEN: usize = 32;

/// Length of the key id written into the file header.
pub(super) const KEY_ID_LEN: usize = 8;

/// Domain separation for the key id, so it is never a hash of the key used elsewhere.
const KEY_ID_CONTEXT: &[u8] = b"therappai-broker encrypted-file key id v1\0";

/// Longest file worth reading: base64 with CRLF. Anything longer is not a key.
const MAX_KEY_FILE: usize = 64 + 2;

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `$CREDENTIALS_DIRECTORY/store-key`, set up by systemd.
    Credential(PathBuf),
    /// `[store] key_file`, or the new key given to `--rekey`.
    KeyFile(PathBuf),
    /// The new key given to `--rekey -`: standard input, so that a key readable only by root
    /// can reach a rekey run as the broker's user (`systemd-run --pipe … < KEY`).
    Stdin,
}

impl KeySource {
    /// The key configured for the store: `[store] key_file` when set (the config is
    /// explicit), else the systemd credential when `$CREDENTIALS_DIRECTORY/store-key` exists.
    pub fn find(key_file: Option<&Path>) -> Option<Self> {
        if let Some(path) = key_file {
            return Some(Self::KeyFile(path.to_owned()));
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        path.exists().then_some(Self::Credential(path))
    }

    /// The file the key is read from (`-` for standard input).
    pub fn path(&self) -> &Path {
        match self {
            Self::Credential(path) | Self::KeyFile(path) => path,
            Self::Stdin => Path::new("-"),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Credential(path) => write!(
                f,
                "the systemd credential {CREDENTIAL_NAME} ({})",
                path.display()
            ),
            Self::KeyFile(path) => write!(f, "the key file {}", path.display()),
            Self::Stdin => f.write_str("the key on standard input"),
        }
    }
}

/// A 32-byte store key. Zeroized on drop; `Debug` shows the key id only.
pub struct StoreKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id_hex())
            .finish_non_exhaustive()
    }
}

impl StoreKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_CONTEXT);
        hasher.update(bytes.as_slice());
        let digest = hasher.finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self { bytes, id }
    }

    /// Reads the key from `source`, checking a key file's owner and mode first.
    pub fn load(source: &KeySource) -> Result<Self, StoreError> {
        let path = source.path();
        let problem = |problem: String| StoreError::Key {
            key: source.to_string(),
            problem,
        };
        if matches!(source, KeySource::Stdin) {
            return Self::read(&mut std::io::stdin().lock(), path).map_err(problem);
        }
        // O_NOFOLLOW is not used: a symlinked key file is common, and the checks below look
        // at the file actually opened (fstat), not at the link.
        let mut file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                problem(match e.kind() {
                    std::io::ErrorKind::NotFound => format!(
                        "it does not exist; create it with `(umask 077; head -c 32 /dev/urandom > {})`",
                        path.display()
                    ),
                    _ => format!("cannot read it: {e}"),
                })
            })?;
        let meta = file
            .metadata()
            .map_err(|e| problem(format!("cannot stat it: {e}")))?;
        if !meta.is_file() {
            return Err(problem("it is not a regular file".to_owned()));
        }
        if matches!(source, KeySource::KeyFile(_)) {
            check_key_file(path, &meta).map_err(problem)?;
        }
        Self::read(&mut file, path).map_err(problem)
    }

    /// Reads and parses a key from `input`; `path` names it in the advice.
    fn read(input: &mut impl Read, path: &Path) -> Result<Self, String> {
        let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE + 1));
        // `take` bounds the read and, with the capacity above, keeps the buffer from ever
        // reallocating (a reallocation would leave an unzeroized copy behind).
        input
            .take(MAX_KEY_FILE as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read it: {e}"))?;
        let bytes = parse(&text).map_err(|len| {
            format!(
                "it holds {len} bytes, which is not a key: a key is exactly 32 random bytes (create one with `(umask 077; head -c 32 /dev/urandom > {})`), or 64 hex digits, or 44 base64 characters",
                path.display()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The raw key, for the cipher. Keep the borrow short.
    pub(super) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key id as stored in the file header.
    pub(super) fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// The key id in hex, for messages and `status`.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// The broker's effective uid.
pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Mode 0600/0400 and owned by us (or root): nobody else can read or replace the key.
fn check_key_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "it has mode {mode:04o}, so other users can read it; it must be readable by the broker's user only: run `chmod 0600 {}`",
            path.display()
        ));
    }
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "it is owned by uid {}, not by the broker's user (uid {me}); run `chown {me} {}`",
            meta.uid(),
            path.display()
        ));
    }
    Ok(())
}

/// The key in `text` (raw, hex or base64), or the length that fits no form.
fn parse(text: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, usize> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if text.len() == KEY_LEN {
        key.copy_from_slice(text);
        return Ok(key);
    }
    let trimmed = text
        .strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .unwrap_or(text);
    match trimmed.len() {
        64 if hex::decode_to_slice(trimmed, key.as_mut_slice()).is_ok() => Ok(key),
        44 => {
            // Base64 decoding needs room for its estimate (33 bytes for 44 characters).
            let mut decoded = Zeroizing::new([0u8; KEY_LEN + 3]);
            match base64::engine::general_purpose::STANDARD
                .decode_slice(trimmed, decoded.as_mut_slice())
            {
                Ok(KEY_LEN) => {
                    key.copy_from_slice(&decoded[..KEY_LEN]);
                    Ok(key)
                }
                _ => Err(text.len()),
            }
        }
        _ => Err(text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_hex_and_base64_keys_give_the_same_key() {
        let raw: Vec<u8> = (0u8..32).collect();
        let hex_text = format!("{}\n", hex::encode(&raw));
        let b64 = format!(
            "{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        for text in [&raw[..], hex_text.as_bytes(), b64.as_bytes()] {
            let key = parse(text).expect("a key");
            assert_eq!(key.as_slice(), &raw[..]);
        }
    }

    #[test]
    fn anything_else_is_not_a_key() {
        for bad in [
            &b""[..],
            &[7u8; 31][..],
            &[7u8; 33][..],
            &[b'z'; 64][..],
            &[b'!'; 44][..],
        ] {
            assert_eq!(parse(bad).err(), Some(bad.len()));
        }
    }

    #[test]
    fn debug_shows_the_id_never_the_key() {
        let key = StoreKey::from_bytes(Zeroizing::new([0xab; KEY_LEN]));
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.id_hex()), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
        let other = StoreKey::from_bytes(Zeroizing::new([0xac; KEY_LEN]));
        assert_ne!(key.id(), other.id(), "different keys, different ids");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, [1u8; KEY_LEN]).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = StoreKey::load(&KeySource::KeyFile(path.clone())).expect_err("0644 refused");
        let text = err.to_string();
        assert!(text.contains("mode 0644"), "{text}");
        assert!(
            text.contains(&format!("chmod 0600 {}", path.display())),
            "{text}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        StoreKey::load(&KeySource::KeyFile(path)).expect("0400 accepted");
    }

    #[test]
    fn a_missing_key_file_says_how_to_create_one() {
        let err = StoreKey::load(&KeySource::KeyFile("/nonexistent/store.key".into()))
            .expect_err("missing");
        assert!(err.to_string().contains("head -c 32 /dev/urandom"), "{err}");
    }
}
