//! The call timeout and the per-account lanes of [`StoreHandle`], with a store whose calls for
//! one account block until the test lets them go (a stopped gnome-keyring, in miniature).

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Every call for `alice` blocks until [`Gated::open`]; other accounts answer at once.
#[derive(Debug, Default)]
struct Gated {
    open: Mutex<bool>,
    opened: Condvar,
    /// How many calls for `alice` reached the store (each on a blocking thread of its own).
    alice_calls: AtomicUsize,
}

impl Gated {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn pass(&self, account: &str) {
        if account == "alice" {
            self.alice_calls.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
    }
}

impl Store for Arc<Gated> {
    fn backend(&self) -> Backend {
        Backend::SecretService
    }
    fn describe(&self) -> String {
        "gated test store".to_owned()
    }
    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        self.pass(account);
        Ok(None)
    }
    fn save(&self, account: &str, _token: &RefreshToken) -> Result<(), StoreError> {
        self.pass(account);
        Ok(())
    }
    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        self.pass(account);
        Ok(false)
    }
    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_times_out_and_later_calls_wait_behind_it_without_a_thread() {
    let gated = Arc::new(Gated::default());
    let handle =
        StoreHandle::new(Arc::new(Arc::clone(&gated))).with_call_timeout(Duration::from_secs(1));

    let token = RefreshToken::new("eyJ.secret-part.sig".to_owned());
    let (first, second, third) = tokio::join!(
        handle.save("alice", &token),
        handle.load("alice"),
        handle.delete("alice"),
    );
    for err in [first.unwrap_err(), second.unwrap_err(), third.unwrap_err()] {
        assert!(err.is_call_timeout(), "{err:?}");
        assert!(err.is_unavailable(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("the secret-service store did not answer within 1 s while trying to"),
            "{text}"
        );
        assert!(text.contains("account \"alice\""), "{text}");
        assert!(
            text.contains("systemctl --user status gnome-keyring-daemon"),
            "{text}"
        );
        assert!(!text.contains("secret-part"), "{text}");
    }
    assert_eq!(
        gated.alice_calls.load(Ordering::SeqCst),
        1,
        "only one call for the account reached the store; the others waited in its lane"
    );

    // Another account is not held up by alice's lane.
    assert_eq!(handle.load("bob").await.unwrap(), None);
    assert!(handle.accounts().await.unwrap().is_empty());

    // Once the store answers, the hung call returns and the account works again.
    gated.open();
    handle.settled("alice").await;
    assert_eq!(handle.load("alice").await.unwrap(), None);
    assert_eq!(gated.alice_calls.load(Ordering::SeqCst), 2);
}

#[test]
fn each_backend_says_what_to_check() {
    for (backend, hint) in [
        (Backend::SecretService, "gnome-keyring-daemon"),
        (Backend::Keyutils, "journalctl -k"),
        (Backend::EncryptedFile, "[store] file"),
        (Backend::Vault, "bao status"),
    ] {
        let err = StoreError::CallTimeout {
            backend,
            op: Op::Load("alice".into()),
            seconds: 10,
        };
        let text = err.to_string();
        assert!(text.contains("did not answer within 10 s"), "{text}");
        assert!(text.contains(hint), "{text}");
        assert!(text.contains("call_timeout_seconds"), "{text}");
    }
}
