//! SIGTERM while a refresh-token rotation is in flight and a connection that never speaks
//! HTTP/2 holds the server open: the server is given up after `shutdown_grace_seconds`, and
//! the drain still lets the rotation finish and reach the store (issue 11, defect 5). After a
//! restart the rotated token works: no new login.

use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};

const EMAIL: &str = "ivan@example.com";
const PASSWORD: &str = "ivans-long-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_in_flight_reaches_the_store_although_an_idle_connection_holds_the_server() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::ZERO).await;
    fake.knobs().set_rotation(true);
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    // The upstream call must outlive the grace (3 s in the harness) but not its own timeout.
    options.request_timeout_seconds = 20;
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    fake.knobs().set_access_lifetime(Duration::from_secs(300));
    // therappai rotates at once (the stored token is blacklisted from then on) but its answer
    // arrives only after the grace has run out.
    fake.knobs().set_refresh_reply_delay(Duration::from_secs(5));

    // A caller starts the refresh and hangs up: the cycle goes on without it.
    let mut caller =
        std::process::Command::new(therappai_broker_e2e::workspace_bin("therappai-brokerctl"))
            .arg("--socket")
            .arg(broker.socket_path())
            .args(["token", "--account", "default"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn brokerctl token");
    wait_until(
        "therappai to rotate the refresh token",
        Duration::from_secs(10),
        || fake.counters().refresh_ok == 1,
    );
    caller.kill().expect("kill the caller");
    caller.wait().expect("reap the caller");

    // Connected, and silent: no HTTP/2 preface, ever. The broker's own SETTINGS frame says it
    // has accepted the connection (one still in the backlog at SIGTERM would hold nothing).
    let mut idle = std::os::unix::net::UnixStream::connect(broker.socket_path()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut settings = [0u8; 9];
    std::io::Read::read_exact(&mut idle, &mut settings).expect("the broker's SETTINGS frame");
    let status = broker.stop();
    assert!(status.success(), "exit {status}; log:\n{}", broker.logs());
    drop(idle);
    fake.knobs().set_refresh_reply_delay(Duration::ZERO);
    assert_eq!(
        broker.log_lines_with(&["did not finish within the grace period"]),
        1,
        "the idle connection held the server until the grace ran out:\n{}",
        broker.logs()
    );

    broker.start_again();
    let token = broker.token("default").await;
    assert!(fake.issued_tokens().contains(&token));
    let counters = fake.counters();
    assert_eq!(
        (counters.login_calls, counters.refresh_rejected),
        (1, 0),
        "the restarted broker refreshed with the rotated token, without a new login:\n{}",
        broker.logs()
    );
}
