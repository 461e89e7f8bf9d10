//! A logout or revoke whose caller gives up still ends the session everywhere (issue 11,
//! defect 2): with therappai's revocation endpoint slow, a `Logout` (or `Revoke --all`) sent
//! with a 1 s deadline fails for the client, but the store entry is gone, the revocation still
//! reaches therappai (shutdown waits for it), and a restarted broker serves no token for the
//! account.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use std::time::{Duration, Instant};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user, wait_until};
use therappai_broker_proto::v1 as pb;

const EMAIL: &str = "kim@example.com";
const PASSWORD: &str = "kims-long-password";
/// Exit code of therappai-brokerctl for "not logged in".
const NOT_LOGGED_IN: i32 = 3;

/// Which call ends the session.
#[derive(Debug, Clone, Copy)]
enum End {
    Logout,
    RevokeAll,
}

/// Sends `end` with a 1 s deadline and returns the status it failed with.
async fn end_with_a_short_deadline(
    raw: &mut pb::broker_client::BrokerClient<tonic::transport::Channel>,
    end: End,
) -> tonic::Status {
    let deadline = Duration::from_secs(1);
    match end {
        End::Logout => {
            let mut request = tonic::Request::new(pb::LogoutRequest {
                account: "default".to_owned(),
            });
            request.set_timeout(deadline);
            raw.logout(request).await.map(drop)
        }
        End::RevokeAll => {
            let mut request = tonic::Request::new(pb::RevokeRequest {
                account: String::new(),
                all: true,
            });
            request.set_timeout(deadline);
            raw.revoke(request).await.map(drop)
        }
    }
    .expect_err("the call cannot answer within 1 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_past_its_deadline_still_deletes_the_entry_and_revokes() {
    ended_past_its_deadline(End::Logout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_all_past_its_deadline_still_deletes_the_entry_and_revokes() {
    ended_past_its_deadline(End::RevokeAll).await;
}

async fn ended_past_its_deadline(end: End) {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.revoke_path = Some("/token/blacklist/".to_owned());
    options.request_timeout_seconds = 20;
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    broker.token("default").await;
    assert!(broker.store_has_entry("default"));
    fake.knobs().set_blacklist_delay(Duration::from_secs(4));

    let mut raw = broker.raw_client().await;
    let started = Instant::now();
    let status = end_with_a_short_deadline(&mut raw, end).await;
    // tonic's server ends a call past its grpc-timeout with CANCELLED, a client enforcing the
    // deadline itself reports DEADLINE_EXCEEDED: either way the caller gave up.
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{end:?}: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{end:?}: {status:?}"
    );
    drop(raw);

    wait_until(
        "the store entry to be deleted although the caller gave up",
        Duration::from_secs(10),
        || !broker.store_has_entry("default"),
    );
    assert_eq!(
        fake.counters().blacklist_ok,
        0,
        "therappai's answer is still pending"
    );
    // SIGTERM while the revocation is in flight: the drain lets it finish.
    let exit = broker.stop();
    assert!(exit.success(), "exit {exit}; log:\n{}", broker.logs());
    assert_eq!(
        fake.counters().blacklist_ok,
        1,
        "the revocation reached therappai before the broker exited:\n{}",
        broker.logs()
    );

    broker.start_again();
    let token = broker.ctl(&["token", "--account", "default"]).await;
    assert_eq!(
        token.code, NOT_LOGGED_IN,
        "no token after a logout, even a cancelled one: {}{}",
        token.stdout, token.stderr
    );
    assert_eq!(fake.counters().login_calls, 1);
}
