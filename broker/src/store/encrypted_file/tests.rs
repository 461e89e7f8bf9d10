//! Unit tests of the encrypted-file store on real files in a temporary directory.

use super::format::{CIPHERTEXT_AT, MAGIC, MIN_LEN, NONCE_AT};
use super::*;
use crate::config::StoreConfig;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

const TOKEN_A: &str = "eyJhbGciOiJIUzI1NiJ9.alice-refresh-secret.sig";
const TOKEN_B: &str = "eyJhbGciOiJIUzI1NiJ9.bob-refresh-secret-that-is-longer.sig";

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("state/tokens.enc")
    }

    /// A key file `name` holding `byte` 32 times, mode 0600.
    fn key(&self, name: &str, byte: u8) -> KeySource {
        let path = self.dir.path().join(name);
        std::fs::write(&path, [byte; KEY_LEN]).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        KeySource::KeyFile(path)
    }

    fn open(&self, key: &KeySource) -> Result<EncryptedFileStore, StoreError> {
        EncryptedFileStore::open(&self.file(), key.clone())
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.file()).expect("read store file")
    }

    /// A store file holding alice and bob, under `key`.
    fn filled(&self, key: &KeySource) -> Vec<u8> {
        let store = self.open(key).expect("open");
        store.save("alice", &token(TOKEN_A)).expect("save alice");
        store.save("bob", &token(TOKEN_B)).expect("save bob");
        drop(store);
        self.bytes()
    }
}

fn token(value: &str) -> RefreshToken {
    RefreshToken::new(value.to_owned())
}

/// Opening must fail with `problem`, say what to do, and leave the file as it was.
#[track_caller]
fn assert_refused(world: &World, key: &KeySource, problem: impl Fn(&FileProblem) -> bool) {
    let before = world.bytes();
    let err = world.open(key).expect_err("a bad file must not open");
    match &err {
        StoreError::File { path, problem: p } => {
            assert_eq!(path, &world.file());
            assert!(problem(p), "unexpected problem {p:?}");
        }
        other => panic!("expected a file problem, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&world.file().display().to_string()), "{text}");
    assert!(text.contains("move it away"), "{text}");
    assert!(text.contains("did not change the file"), "{text}");
    assert!(!text.contains("secret"), "no token in {text}");
    assert_eq!(
        world.bytes(),
        before,
        "the file is byte-identical after a refused open"
    );
}

#[test]
fn entries_survive_a_reopen() {
    let world = World::new();
    let key = world.key("key", 1);
    world.filled(&key);
    let store = world.open(&key).expect("reopen");
    assert_eq!(store.load("alice").expect("load"), Some(token(TOKEN_A)));
    assert_eq!(store.load("bob").expect("load"), Some(token(TOKEN_B)));
    assert_eq!(store.load("carol").expect("load"), None);
    assert_eq!(store.accounts().expect("list"), ["alice", "bob"]);
    assert_eq!(store.backend(), Backend::EncryptedFile);
}

#[test]
fn the_first_open_writes_an_empty_private_file_in_a_private_directory() {
    use std::os::unix::fs::MetadataExt;
    let world = World::new();
    let store = world.open(&world.key("key", 1)).expect("open");
    assert!(store.accounts().expect("list").is_empty());
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
    assert_eq!(mode(&world.file()), 0o600);
    assert_eq!(mode(world.file().parent().expect("dir")), 0o700);
    assert_eq!(world.bytes().len(), MIN_LEN);
}

#[test]
fn the_index_follows_save_and_delete() {
    let world = World::new();
    let key = world.key("key", 1);
    world.filled(&key);
    let store = world.open(&key).expect("open");
    store
        .save("alice", &token("replaced-token-value"))
        .expect("replace");
    assert_eq!(store.accounts().expect("list"), ["alice", "bob"]);
    assert!(store.delete("alice").expect("delete"), "alice existed");
    let before = world.bytes();
    assert!(
        !store.delete("alice").expect("delete again"),
        "nothing left"
    );
    assert_eq!(world.bytes(), before, "deleting nothing writes nothing");
    drop(store);
    let store = world.open(&key).expect("reopen");
    assert_eq!(store.accounts().expect("list"), ["bob"]);
    assert_eq!(store.load("alice").expect("load"), None);
    assert!(store.delete("bob").expect("delete bob"));
    drop(store);
    assert!(
        world
            .open(&key)
            .expect("reopen")
            .accounts()
            .expect("list")
            .is_empty()
    );
}

#[test]
fn no_token_or_account_name_is_in_the_file_in_plaintext() {
    let world = World::new();
    let key = world.key("key", 1);
    let bytes = world.filled(&key);
    let text = String::from_utf8_lossy(&bytes);
    for needle in ["alice-refresh-secret", "bob-refresh-secret", "alice", "bob"] {
        assert!(!text.contains(needle), "{needle} is readable in the file");
    }
    let noncey = world.filled(&key);
    assert_ne!(bytes, noncey, "every write uses a fresh nonce");
}

#[test]
fn a_wrong_key_is_refused_with_both_key_ids() {
    let world = World::new();
    world.filled(&world.key("key", 1));
    let other = world.key("other", 2);
    assert_refused(&world, &other, |p| {
        matches!(p, FileProblem::WrongKey { .. })
    });
    let err = world.open(&other).expect_err("wrong key").to_string();
    assert!(err.contains("another key"), "{err}");
    assert!(err.contains("restore the credential or key file"), "{err}");
}

#[test]
fn a_changed_byte_anywhere_is_refused_and_the_file_kept() {
    let world = World::new();
    let key = world.key("key", 1);
    let good = world.filled(&key);
    let tag_at = good.len() - 16;
    let mut parts = BTreeSet::new();
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(world.file(), &bad).expect("tamper");
        // Each part of the file has its own message; all of them refuse.
        let expected = |p: &FileProblem| match at {
            _ if at < MAGIC.len() => *p == FileProblem::NotAStoreFile,
            _ if at < MAGIC.len() + 2 => matches!(p, FileProblem::UnknownVersion { .. }),
            _ if at < NONCE_AT => matches!(p, FileProblem::WrongKey { .. }),
            // nonce, ciphertext, tag
            _ => *p == FileProblem::Damaged,
        };
        assert_refused(&world, &key, expected);
        parts.insert(match at {
            _ if at < NONCE_AT => "header",
            _ if at < CIPHERTEXT_AT => "nonce",
            _ if at < tag_at => "ciphertext",
            _ => "tag",
        });
    }
    assert_eq!(parts.len(), 4, "every part of the file was tampered with");
    std::fs::write(world.file(), &good).expect("restore");
    assert_eq!(
        world
            .open(&key)
            .expect("the restored file opens")
            .accounts()
            .expect("list"),
        ["alice", "bob"]
    );
}

#[test]
fn a_truncated_or_extended_file_is_refused() {
    let world = World::new();
    let key = world.key("key", 1);
    let good = world.filled(&key);
    for len in 0..good.len() {
        std::fs::write(world.file(), &good[..len]).expect("truncate");
        assert_refused(&world, &key, |p| {
            matches!(p, FileProblem::Truncated { .. } | FileProblem::Damaged)
        });
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(world.file(), &longer).expect("extend");
    assert_refused(&world, &key, |p| *p == FileProblem::Damaged);
    let err = {
        std::fs::write(world.file(), &good[..10]).expect("truncate");
        world.open(&key).expect_err("cut").to_string()
    };
    assert!(err.contains("is truncated (10 bytes"), "{err}");
}

#[test]
fn an_unknown_format_version_is_refused() {
    let world = World::new();
    let key = world.key("key", 1);
    let mut bytes = world.filled(&key);
    bytes[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&2u16.to_be_bytes());
    std::fs::write(world.file(), &bytes).expect("write");
    assert_refused(&world, &key, |p| {
        *p == FileProblem::UnknownVersion { version: 2 }
    });
    let err = world.open(&key).expect_err("v2").to_string();
    assert!(err.contains("format version 2"), "{err}");
}

#[test]
fn some_other_file_is_not_taken_for_a_store() {
    let world = World::new();
    let key = world.key("key", 1);
    world.filled(&key);
    std::fs::write(world.file(), "[store]\nbackend = \"auto\"\n").expect("write");
    assert_refused(&world, &key, |p| *p == FileProblem::NotAStoreFile);
}

#[test]
fn a_second_broker_on_the_same_file_is_refused() {
    let world = World::new();
    let key = world.key("key", 1);
    let first = world.open(&key).expect("first");
    let err = world.open(&key).expect_err("second");
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("systemctl stop"), "{err}");
    drop(first);
    world.open(&key).expect("free after the first closed");
}

#[test]
fn a_failed_write_changes_neither_memory_nor_disk() {
    let world = World::new();
    let key = world.key("key", 1);
    world.filled(&key);
    let store = world.open(&key).expect("open");
    let before = world.bytes();
    // A directory in the way of the temporary file makes every write fail.
    std::fs::create_dir(world.file().with_file_name("tokens.enc.tmp")).expect("block");
    let err = store
        .save("alice", &token("new-token-value"))
        .expect_err("blocked");
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("account \"alice\""), "{err}");
    assert!(store.save("carol", &token("carol-token")).is_err());
    assert!(store.delete("bob").is_err());
    assert_eq!(store.load("alice").expect("load"), Some(token(TOKEN_A)));
    assert_eq!(store.accounts().expect("list"), ["alice", "bob"]);
    assert_eq!(world.bytes(), before);
}

#[test]
fn rekey_moves_the_file_to_the_new_key_atomically() {
    let world = World::new();
    let old = world.key("old", 1);
    let new = world.key("new", 2);
    world.filled(&old);
    let held = world.open(&old).expect("a running broker");
    let err = rekey(&world.file(), old.clone(), &new).expect_err("locked");
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    drop(held);

    let same = rekey(&world.file(), old.clone(), &old).expect_err("same key");
    assert!(same.to_string().contains("already uses"), "{same}");

    let done = rekey(&world.file(), old.clone(), &new).expect("rekey");
    assert_eq!(done.accounts, 2);
    assert_ne!(done.old_key_id, done.new_key_id);
    assert_refused(&world, &old, |p| matches!(p, FileProblem::WrongKey { .. }));
    let store = world.open(&new).expect("opens with the new key");
    assert_eq!(store.load("bob").expect("load"), Some(token(TOKEN_B)));
}

#[test]
fn read_file_reads_without_the_lock_and_without_writing() {
    let world = World::new();
    let key_source = world.key("key", 1);
    world.filled(&key_source);
    let _running = world.open(&key_source).expect("a running broker");
    let key = StoreKey::load(&key_source).expect("key");
    let entries = read_file(&world.file(), &key)
        .expect("readable")
        .expect("exists");
    assert_eq!(entries.get("alice"), Some(&token(TOKEN_A)));
    assert_eq!(
        read_file(&world.dir.path().join("none"), &key).expect("ok"),
        None
    );
}

#[test]
fn describe_names_the_file_the_key_and_why() {
    let world = World::new();
    let key = world.key("key", 1);
    let config = StoreConfig {
        backend: crate::store::BackendChoice::EncryptedFile,
        service: "therappai-broker".to_owned(),
        file: Some(world.file()),
        key_file: Some(key.path().to_owned()),
        vault: None,
        call_timeout: crate::config::DEFAULT_STORE_CALL_TIMEOUT,
    };
    let store = crate::store::open(&config).expect("open");
    let text = store.describe();
    assert!(
        text.starts_with(&format!("encrypted file {}", world.file().display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("the key file {}", key.path().display())),
        "{text}"
    );
    assert!(
        text.ends_with("set by [store] backend = \"encrypted-file\""),
        "{text}"
    );
    assert_eq!(store.backend().to_string(), "encrypted-file");
}

#[test]
fn no_key_at_all_says_how_to_make_one() {
    let config = StoreConfig {
        backend: crate::store::BackendChoice::EncryptedFile,
        service: "therappai-broker".to_owned(),
        file: Some("/nonexistent/tokens.enc".into()),
        key_file: None,
        vault: None,
        call_timeout: crate::config::DEFAULT_STORE_CALL_TIMEOUT,
    };
    // Only meaningful where no credential directory is set (not under systemd).
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        let err = crate::store::open(&config).expect_err("no key");
        let text = err.to_string();
        assert!(
            text.contains("LoadCredentialEncrypted=store-key:"),
            "{text}"
        );
        assert!(
            text.contains("systemd-creds encrypt --name=store-key --with-key=host"),
            "{text}"
        );
        assert!(text.contains("key_file"), "{text}");
    }
}
