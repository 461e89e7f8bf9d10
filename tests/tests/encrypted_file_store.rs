//! The `encrypted-file` store from outside: a `kill -9` in the middle of writes never leaves a
//! torn file, a tampered file is a clear start error that leaves the file as it was, and
//! `--rekey` moves the file to a new key.
//!
//! (Login surviving a restart in this store is in login_restore.rs, with the other stores.)

#![expect(clippy::expect_used, reason = "tests: a failed step is a failed test")]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind};

const PASSWORD: &str = "correct horse battery staple";
const ACCOUNTS: [(&str, &str); 3] = [
    ("default", "alice@example.com"),
    ("bob", "bob@example.com"),
    ("carol", "carol@example.com"),
];

async fn fake() -> FakeTherappai {
    FakeTherappai::start(FakeConfig {
        users: ACCOUNTS
            .iter()
            .map(|(_, email)| ((*email).to_owned(), PASSWORD.to_owned()))
            .collect(),
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai")
}

fn options() -> BrokerOptions {
    let mut options = BrokerOptions::new(StoreKind::EncryptedFile, ACCOUNTS[0].1);
    for (name, email) in &ACCOUNTS[1..] {
        options = options.with_account(name, email);
    }
    // Quieter logs: this test restarts the broker many times.
    options.log_level = "info".to_owned();
    options
}

/// Logs `account` in and out in a loop: each step rewrites the store file.
async fn churn(broker: &Broker, account: &str) {
    loop {
        let login = broker
            .ctl_with_stdin(
                &["login", "--account", account, "--password-stdin"],
                Some(&format!("{PASSWORD}\n")),
            )
            .await;
        let logout = broker.ctl(&["logout", "--account", account]).await;
        if login.code != 0 || logout.code != 0 {
            // The broker was killed under us: the round is over.
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_never_leaves_a_torn_file() {
    let fake = fake().await;
    let mut broker = Broker::start(options(), &fake.base_url(), &fake.ca_pem());
    let names: Vec<&str> = ACCOUNTS.iter().map(|(name, _)| *name).collect();
    const ROUNDS: u64 = 50;
    for round in 0..ROUNDS {
        // Kill at a different moment of the write cycle each round (20 to 118 ms in).
        let kill_after = Duration::from_millis(20 + round * 2);
        tokio::select! {
            _ = async { tokio::join!(churn(&broker, names[0]), churn(&broker, names[1]), churn(&broker, names[2])) } => {
                panic!("round {round}: the churn stopped before the kill: {}", broker.logs());
            }
            () = tokio::time::sleep(kill_after) => {}
        }
        broker.kill();
        // Whatever moment the kill hit: the file is the old or the new one, and decrypts.
        let held = broker.encrypted_file_accounts();
        assert!(
            held.iter().all(|name| names.contains(&name.as_str())),
            "round {round}: the file holds unknown accounts {held:?}"
        );
        broker.start_again();
        // And the broker starts on it, with every account it holds still logged in.
        let status = broker.ctl(&["status", "--json"]).await;
        assert_eq!(status.code, 0, "round {round}: {}", status.stderr);
        let json: serde_json::Value =
            serde_json::from_str(&status.stdout).expect("status --json is JSON");
        for name in &held {
            let account = json["accounts"]
                .as_array()
                .expect("accounts is a list")
                .iter()
                .find(|a| a["name"] == name.as_str())
                .expect("account in status");
            assert_eq!(
                account["refresh_token_stored"], true,
                "round {round}: {name} is in the file, so it is still logged in"
            );
        }
    }
    assert!(
        fake.counters().login_ok >= ROUNDS,
        "the rounds must really have written: {} logins",
        fake.counters().login_ok
    );
    assert!(
        !broker.logs().contains(PASSWORD),
        "the password must never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_a_clear_start_error_and_the_file_stays_as_it_was() {
    let fake = fake().await;
    let mut broker = Broker::start(options(), &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    let status = broker.stop();
    assert!(status.success(), "{status}");

    let file = broker.path("state/tokens.enc");
    let mut bytes = std::fs::read(&file).expect("read the store file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).expect("tamper with the store file");

    let refused = broker.run_daemon_once(&[], None);
    assert_ne!(refused.code, 0, "a tampered store must not start");
    let message = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        message.contains(&file.display().to_string()),
        "the error names the file: {message}"
    );
    assert!(
        message.contains("tampered") || message.contains("damaged"),
        "the error says what is wrong with it: {message}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read the store file"),
        bytes,
        "the broker must not overwrite a store file it could not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_moves_the_store_to_a_new_key_and_the_session_survives() {
    let fake = fake().await;
    let mut broker = Broker::start(options(), &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;

    // While the broker runs, the file is locked: rekey refuses and changes nothing.
    let before = std::fs::read(broker.path("state/tokens.enc")).unwrap();
    let new_key = [7u8; 32];
    let busy = broker.run_daemon_once(&["--rekey", "-"], Some(&new_key));
    assert_ne!(busy.code, 0, "rekey must refuse while the broker runs");
    assert!(
        busy.stderr.contains("unchanged"),
        "the refusal says the file is unchanged: {}",
        busy.stderr
    );
    assert_eq!(
        std::fs::read(broker.path("state/tokens.enc")).unwrap(),
        before
    );

    let status = broker.stop();
    assert!(status.success(), "{status}");
    // The new key on standard input, as the README's systemd-run recipe passes it.
    let done = broker.run_daemon_once(&["--rekey", "-"], Some(&new_key));
    assert_eq!(done.code, 0, "rekey failed: {}", done.stderr);
    assert!(done.stdout.contains("1 account"), "{}", done.stdout);
    assert!(
        done.stdout.contains("next:"),
        "says what to do next: {}",
        done.stdout
    );

    // The old key no longer opens the file; the new one does, and the session is intact.
    let refused = broker.run_daemon_once(&[], None);
    assert_ne!(refused.code, 0, "the old key must no longer open the file");
    assert!(
        refused.stderr.contains("key"),
        "the error is about the key: {}",
        refused.stderr
    );
    let key_file = broker.path("store.key");
    std::fs::write(&key_file, new_key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    broker.start_again();
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    assert_eq!(fake.counters().login_ok, 1, "no new login was needed");
}
