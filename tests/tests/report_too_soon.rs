//! A rejected-token report on a token younger than `[refresh] report_min_age_seconds` is
//! refused with RESOURCE_EXHAUSTED and says when to report again, without a refresh, so an
//! allowed app that reports every token it gets cannot make the broker refresh in a loop;
//! once the token is old enough the same report is acted on, with one refresh.

use std::time::{Duration, SystemTime};
use therappai_broker_client::Error;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, fake_with_user};

const EMAIL: &str = "ida@example.com";
const PASSWORD: &str = "idas-long-password-for-reports";
const MIN_AGE_SECONDS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_on_a_brand_new_token_is_refused_until_it_is_old_enough() {
    let fake = fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, EMAIL);
    options.refresh_section = options.refresh_section.replace(
        "report_min_age_seconds = 0",
        &format!("report_min_age_seconds = {MIN_AGE_SECONDS}"),
    );
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;
    let mut client = broker.client().await;
    let token = client.access_token("default").await.expect("a token");
    let refreshes = fake.counters().refresh_calls;

    // An app reporting the token it has just been given, over and over: no refresh.
    for _ in 0..20 {
        let err = client
            .report_rejected("default", token.fingerprint())
            .await
            .expect_err("a report on a token this new is refused");
        let Error::RateLimited { message, retry_at } = &err else {
            panic!("RESOURCE_EXHAUSTED with a retry time, got {err:?}");
        };
        assert!(
            message.contains("report_min_age_seconds") && message.contains("report again in"),
            "names the setting and when to report again: {message}"
        );
        let retry_at = retry_at.expect("x-therappai-retry-at");
        assert!(
            retry_at <= SystemTime::now() + Duration::from_secs(MIN_AGE_SECONDS + 1),
            "the retry time is within the minimum age"
        );
    }
    assert_eq!(
        fake.counters().refresh_calls,
        refreshes,
        "refused reports refresh nothing"
    );
    let same = client.access_token("default").await.expect("still served");
    assert_eq!(
        same.fingerprint(),
        token.fingerprint(),
        "a refused report leaves the token in place"
    );

    // Once the token is old enough, the report is acted on: one refresh, a new token.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let replaced = loop {
        match client.report_rejected("default", token.fingerprint()).await {
            Ok(replaced) => break replaced,
            Err(Error::RateLimited { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the report is acted on once the token is {MIN_AGE_SECONDS} s old"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert_ne!(replaced.fingerprint(), token.fingerprint());
    assert_eq!(fake.counters().refresh_calls, refreshes + 1);
    assert!(
        fake.issued_tokens()
            .contains(&replaced.expose_secret().to_owned())
    );
}
