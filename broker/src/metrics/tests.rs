use super::*;
use crate::cache::Cache;
use crate::config::AccountConfig;
use crate::ratelimit::Scope;
use crate::store::Op;

fn accounts() -> Vec<AccountConfig> {
    ["work", "home"]
        .into_iter()
        .map(|name| AccountConfig {
            name: name.to_owned(),
            email: format!("{name}-owner@example.com"),
        })
        .collect()
}

fn metrics_and_cache() -> (Metrics, Cache) {
    let accounts = accounts();
    let names: Vec<String> = accounts.iter().map(|a| a.name.clone()).collect();
    (Metrics::new(&names), Cache::new(&accounts))
}

/// The value of the sample line `series` (name and labels exactly as rendered).
#[track_caller]
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

#[test]
fn token_requests_count_by_configured_account_and_outcome() {
    let (metrics, cache) = metrics_and_cache();
    for _ in 0..3 {
        metrics.token_request("work", TokenOutcome::Cached);
    }
    metrics.token_request("work", TokenOutcome::Refreshed);
    metrics.token_request("home", TokenOutcome::Failed("needs-login"));
    metrics.token_request("home", TokenOutcome::Failed("needs-login"));
    // A name the caller made up is not a label.
    metrics.token_request("x\"} evil", TokenOutcome::Failed("unknown-account"));
    let text = metrics.render(&cache);
    let series = |account: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "therappai_broker_token_requests_total{{account=\"{account}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(series("work", "cached"), 3.0);
    assert_eq!(series("work", "refreshed"), 1.0);
    assert_eq!(series("home", "cached"), 0.0, "pre-registered at start");
    assert_eq!(series("home", "needs-login"), 2.0);
    assert!(!text.contains("evil"), "{text}");
    assert!(!text.contains("unknown-account"), "{text}");
}

#[test]
fn every_family_is_described_in_the_prometheus_text_format() {
    let (metrics, cache) = metrics_and_cache();
    let text = metrics.render(&cache);
    for (name, kind) in [
        ("therappai_broker_token_requests_total", "counter"),
        ("therappai_broker_refreshes_total", "counter"),
        (
            "therappai_broker_upstream_request_duration_seconds",
            "histogram",
        ),
        ("therappai_broker_denials_total", "counter"),
        ("therappai_broker_logins_total", "counter"),
        ("therappai_broker_login_lockouts_total", "counter"),
        ("therappai_broker_open_connections", "gauge"),
        ("therappai_broker_connections_total", "counter"),
        ("therappai_broker_store_errors_total", "counter"),
        ("therappai_broker_store_available", "gauge"),
        ("therappai_broker_sessions", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE line for {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP line for {name}"
        );
    }
    // Prometheus 0.0.4 text, not OpenMetrics: no `# EOF` trailer.
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn sessions_by_state_are_read_from_the_cache_at_render_time() {
    let (metrics, cache) = metrics_and_cache();
    let text = metrics.render(&cache);
    let state = |s: &str| {
        sample(
            &text,
            &format!("therappai_broker_sessions{{state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("logged-out"), 2.0);
    assert_eq!(state("active"), 0.0);
    assert_eq!(state("refreshing"), 0.0);
    assert_eq!(state("needs-login"), 0.0);
    let slot = cache.slot("work").expect("work");
    slot.state()
        .set_session(SessionState::Active, std::time::SystemTime::now(), "");
    let text = metrics.render(&cache);
    let state = |s: &str| {
        sample(
            &text,
            &format!("therappai_broker_sessions{{state=\"{s}\"}}"),
        )
    };
    assert_eq!((state("logged-out"), state("active")), (1.0, 1.0));
}

#[test]
fn refreshes_latency_denials_logins_and_lockouts() {
    let (metrics, cache) = metrics_and_cache();
    metrics.refresh("ok");
    metrics.refresh("ok");
    metrics.refresh("token-not-valid");
    metrics.upstream_request("refresh", Duration::from_millis(30));
    metrics.upstream_request("refresh", Duration::from_secs(3));
    metrics.denial("GetAccessToken");
    metrics.login("ok");
    metrics.login("invalid-credentials");
    metrics.lockout(Scope::Uid(1000));
    metrics.lockout(Scope::Overall);
    let text = metrics.render(&cache);
    assert_eq!(
        sample(&text, "therappai_broker_refreshes_total{outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "therappai_broker_refreshes_total{outcome=\"token-not-valid\"}"
        ),
        1.0
    );
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(
                "therappai_broker_upstream_request_duration_seconds_bucket{{endpoint=\"refresh\",le=\"{le}\"}}"
            ),
        )
    };
    assert_eq!(
        (bucket("0.025"), bucket("0.05"), bucket("5")),
        (0.0, 1.0, 2.0)
    );
    assert_eq!(
        sample(
            &text,
            "therappai_broker_upstream_request_duration_seconds_count{endpoint=\"refresh\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "therappai_broker_denials_total{rpc=\"GetAccessToken\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "therappai_broker_logins_total{outcome=\"invalid-credentials\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "therappai_broker_login_lockouts_total{scope=\"uid\"}"
        ),
        1.0
    );
    assert!(!text.contains("1000"), "no uid in a label:\n{text}");
}

#[test]
fn store_errors_and_availability() {
    let (metrics, cache) = metrics_and_cache();
    let mut up = metrics.store_availability();
    assert!(*up.borrow_and_update(), "available once the store opened");
    metrics.store_failed(&Op::Load("work".into()), false);
    assert!(
        !up.has_changed().expect("open"),
        "a corrupt entry: still up"
    );
    metrics.store_failed(&Op::Save("work".into()), true);
    assert!(!*up.borrow_and_update());
    let text = metrics.render(&cache);
    assert_eq!(sample(&text, "therappai_broker_store_available"), 0.0);
    assert_eq!(
        sample(&text, "therappai_broker_store_errors_total{op=\"save\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "therappai_broker_store_errors_total{op=\"load\"}"),
        1.0
    );
    metrics.store_answered();
    assert!(*up.borrow_and_update());
    assert_eq!(
        sample(&metrics.render(&cache), "therappai_broker_store_available"),
        1.0
    );
}

#[test]
fn open_connections_follow_the_guards() {
    let (metrics, cache) = metrics_and_cache();
    let first = metrics.connection_opened();
    let second = metrics.connection_opened();
    drop(first);
    let text = metrics.render(&cache);
    assert_eq!(sample(&text, "therappai_broker_open_connections"), 1.0);
    assert_eq!(sample(&text, "therappai_broker_connections_total"), 2.0);
    drop(second);
    assert_eq!(
        sample(&metrics.render(&cache), "therappai_broker_open_connections"),
        0.0
    );
}

#[test]
fn no_email_in_the_output() {
    let (metrics, cache) = metrics_and_cache();
    metrics.token_request("work", TokenOutcome::Cached);
    let text = metrics.render(&cache);
    for account in accounts() {
        assert!(!text.contains(&account.email), "{text}");
    }
}
