//! Unit tests with the in-memory store only; the real backends are exercised end to end.

use super::*;
use serde::Deserialize;
use serde::de::value::{Error as DeError, StrDeserializer};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.refresh-secret-part.sig";

fn token() -> RefreshToken {
    RefreshToken::new(TOKEN.to_owned())
}

#[track_caller]
fn assert_no_secret(text: &str) {
    assert!(
        !text.contains("refresh-secret-part"),
        "secret leaked into: {text}"
    );
}

#[test]
fn memory_store_round_trip() {
    let store = MemoryStore::new();
    assert_eq!(
        store.load("alice").unwrap(),
        None,
        "fresh store has no entry"
    );
    store.save("alice", &token()).unwrap();
    store
        .save("bob", &RefreshToken::new("other".into()))
        .unwrap();
    assert_eq!(store.load("alice").unwrap(), Some(token()));
    assert_eq!(store.accounts().unwrap(), ["alice", "bob"]);
    assert!(store.delete("alice").unwrap(), "an entry existed");
    assert!(!store.delete("alice").unwrap(), "nothing left to delete");
    assert_eq!(store.load("alice").unwrap(), None);
    assert_eq!(store.accounts().unwrap(), ["bob"]);
}

#[test]
fn save_replaces_the_previous_token() {
    let store = MemoryStore::new();
    store
        .save("alice", &RefreshToken::new("old".into()))
        .unwrap();
    store.save("alice", &token()).unwrap();
    assert_eq!(store.load("alice").unwrap(), Some(token()));
    assert_eq!(store.accounts().unwrap(), ["alice"]);
}

#[test]
fn reserved_and_malformed_account_names_are_refused() {
    let store = MemoryStore::new();
    for bad in ["", ".accounts", "a@b", "a\nb"] {
        let err = store.save(bad, &token()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidAccount { .. }),
            "{bad:?} gave {err:?}"
        );
        assert_no_secret(&format!("{err} {err:?}"));
    }
    assert!(store.accounts().unwrap().is_empty(), "nothing was written");
}

#[test]
fn a_failing_store_fails_every_call_and_keeps_its_entries() {
    let store = MemoryStore::pretending(Backend::SecretService);
    store.save("alice", &token()).unwrap();
    store.set_failing(true);
    let err = store.load("alice").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the secret-service store could not load the refresh token of account \"alice\": the test store was told to fail"
    );
    assert!(store.save("alice", &token()).is_err());
    assert!(store.delete("alice").is_err());
    assert!(store.accounts().is_err());
    store.set_failing(false);
    assert_eq!(
        store.load("alice").unwrap(),
        Some(token()),
        "nothing was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_goes_through_the_blocking_pool() {
    let handle = StoreHandle::new(Arc::new(MemoryStore::new()));
    assert_eq!(handle.backend(), Backend::Keyutils);
    assert!(handle.describe().contains("in-memory"));
    handle.save("alice", &token()).await.unwrap();
    assert_eq!(handle.load("alice").await.unwrap(), Some(token()));
    assert_eq!(handle.accounts().await.unwrap(), ["alice"]);
    assert!(handle.delete("alice").await.unwrap());
    assert_eq!(handle.load("alice").await.unwrap(), None);
}

#[test]
fn keyring_errors_never_carry_the_secret() {
    use keyring_core::Error as E;
    let secret = TOKEN.as_bytes().to_vec();
    let platform = || -> keyring_core::error::PlatformError {
        "SS error: result not returned from SS API".into()
    };
    let cases = [
        (Backend::SecretService, E::BadEncoding(secret.clone())),
        (
            Backend::Keyutils,
            E::BadDataFormat(secret.clone(), platform()),
        ),
        (Backend::SecretService, E::NoStorageAccess(platform())),
        (
            Backend::Keyutils,
            E::NoStorageAccess("Access denied".into()),
        ),
        (Backend::SecretService, E::Ambiguous(Vec::new())),
        (Backend::Keyutils, E::PlatformFailure(platform())),
    ];
    for (backend, raw) in cases {
        let err =
            StoreError::from_keyring(backend, "therappai-broker", Op::Load("alice".into()), raw);
        let shown = format!("{err} {err:?}");
        assert_no_secret(&shown);
        assert!(shown.contains("alice"), "the account is named: {shown}");
    }
}

#[test]
fn messages_tell_the_sysadmin_what_to_do() {
    let locked = StoreError::from_keyring(
        Backend::SecretService,
        "therappai-broker",
        Op::Save("alice".into()),
        keyring_core::Error::NoStorageAccess("SS error: result not returned from SS API".into()),
    );
    let text = locked.to_string();
    assert!(
        text.contains("locked or has no default collection"),
        "{text}"
    );
    assert!(text.contains("--unlock"), "{text}");
    assert!(text.contains("account \"alice\""), "{text}");

    let denied = StoreError::from_keyring(
        Backend::Keyutils,
        "therappai-broker",
        Op::Save("alice".into()),
        keyring_core::Error::NoStorageAccess("Access denied".into()),
    );
    assert!(
        denied.to_string().contains("session keyring of its own"),
        "{denied}"
    );
    assert!(denied.to_string().contains("KeyringMode="), "{denied}");

    let no_bus = StoreError::NoSessionBus {
        detail: "DBUS_SESSION_BUS_ADDRESS is not set".into(),
    };
    assert!(
        no_bus.to_string().starts_with(
            "no D-Bus session: run inside a desktop session, or set backend = \"keyutils\" in [store]"
        ),
        "{no_bus}"
    );
}

#[test]
fn backend_names_and_config_values() {
    assert_eq!(Backend::SecretService.to_string(), "secret-service");
    assert_eq!(Backend::Keyutils.to_string(), "keyutils");
    let parse = |s| BackendChoice::deserialize(StrDeserializer::<DeError>::new(s));
    assert_eq!(parse("auto").unwrap(), BackendChoice::Auto);
    assert_eq!(
        parse("secret-service").unwrap(),
        BackendChoice::SecretService
    );
    assert_eq!(parse("keyutils").unwrap(), BackendChoice::Keyutils);
    assert_eq!(Backend::EncryptedFile.to_string(), "encrypted-file");
    assert_eq!(
        parse("encrypted-file").unwrap(),
        BackendChoice::EncryptedFile
    );
    for choice in [
        BackendChoice::Auto,
        BackendChoice::SecretService,
        BackendChoice::Keyutils,
        BackendChoice::EncryptedFile,
    ] {
        assert_eq!(
            parse(choice.as_str()).unwrap(),
            choice,
            "as_str round-trips"
        );
    }
    assert!(parse("memory").is_err(), "the test store is not selectable");
}
