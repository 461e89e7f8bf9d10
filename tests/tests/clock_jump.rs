//! Suspend/resume: the monotonic clock stops while a laptop sleeps, the wall clock (and JWT
//! `exp`) does not. Here the daemon runs in-process with a wall clock the test moves, the real
//! kernel keyring as its store and the fake therappai over HTTPS; after a jump past the
//! access token's expiry the broker must not hand out that token, and refreshes at once.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use secrecy::SecretString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use therappai_broker::clock::Clock;
use therappai_broker::config::Config;
use therappai_broker::{Daemon, store};
use therappai_broker_client::Client;
use therappai_broker_e2e::fake_with_user;
use tokio_util::sync::CancellationToken;

const EMAIL: &str = "frank@example.com";
const PASSWORD: &str = "franks-long-password";

/// A wall clock that runs with the real one, plus an offset the test adds to.
#[derive(Debug, Default)]
struct JumpingClock {
    offset: Mutex<Duration>,
}

impl JumpingClock {
    fn jump(&self, by: Duration) {
        *self.offset.lock().expect("clock lock") += by;
    }
}

impl Clock for JumpingClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.offset.lock().expect("clock lock")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_wall_clock_jump_past_expiry_no_expired_token_is_served() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = fake.write_ca_file(dir.path()).expect("CA file");
    let socket = dir.path().join("run/broker.sock");
    let service = format!("therappai-broker-clock-test-{}", std::process::id());
    let text = format!(
        "socket = \"{}\"\n[store]\nbackend = \"keyutils\"\nservice = \"{service}\"\n[upstream]\nbase_url = \"{}\"\nca_file = \"{}\"\n[[account]]\nname = \"default\"\nemail = \"{EMAIL}\"\n",
        socket.display(),
        fake.base_url(),
        ca.display()
    );
    let config_path = dir.path().join("broker.toml");
    let config = Config::parse(&text, &config_path).expect("config");
    let keyring = store::open(&config.store).expect("keyutils store");
    let clock = Arc::new(JumpingClock::default());
    let daemon = Daemon::start_with(config, store::StoreHandle::new(keyring), clock.clone())
        .await
        .expect("daemon starts");
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(daemon.serve(shutdown.clone()));

    let mut client = Client::connect(&socket).await.expect("connect");
    client
        .login("default", &SecretString::from(PASSWORD))
        .await
        .expect("login");
    let before = client.access_token("default").await.expect("token");
    let calls_before = fake.counters().refresh_calls;

    // The laptop sleeps for longer than the token lives. New tokens from therappai must be
    // valid at the jumped time too, so they live longer than the jump.
    fake.knobs().set_access_lifetime(Duration::from_secs(3600));
    clock.jump(Duration::from_secs(301));

    let after = client
        .access_token("default")
        .await
        .expect("token after resume");
    assert_ne!(
        after.expose_secret(),
        before.expose_secret(),
        "the token that expired during the sleep is not served"
    );
    let now = clock.now().duration_since(UNIX_EPOCH).expect("after epoch");
    let expires = after
        .expires_at()
        .duration_since(UNIX_EPOCH)
        .expect("after epoch");
    assert!(
        expires > now,
        "the served token is valid at the (jumped) wall-clock time"
    );
    assert_eq!(
        fake.counters().refresh_calls,
        calls_before + 1,
        "one refresh at once"
    );

    client
        .logout("default")
        .await
        .expect("logout cleans the keyring");
    shutdown.cancel();
    serving.await.expect("task").expect("clean shutdown");
}
