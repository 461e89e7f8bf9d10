//! The broker's metrics, in the Prometheus text exposition format (0.0.4), served to admins
//! through the `GetMetrics` RPC (`therappai-brokerctl metrics`, scraped by node_exporter's
//! textfile collector from a systemd timer).
//!
//! Counting sits on the hot path (every GetAccessToken), so it must cost next to nothing:
//! every counter is an atomic, and the per-account counters of the cached path are created
//! once at start ([`Metrics::new`] takes the configured account names) and looked up by name
//! in a map that never changes, so a cached call takes no lock and allocates nothing here.
//! (A `Family` lookup would take a read lock and need an owned label set per call.)
//!
//! Labels carry only values the broker chose or the admin configured: outcome names, rpc
//! names, store operations, session states and configured account *names*. Never a token, a
//! fingerprint, a password or an account e-mail, and never a name a caller sent (an unknown
//! account is not counted per name: its label would be the caller's choice).

mod connection;

pub use connection::{Counted, count_connections};

use crate::cache::{Cache, SessionState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Upper bounds (seconds) of the upstream latency buckets: a healthy therappai answers in
/// tens of milliseconds; the top buckets catch timeouts (default request timeout 10 s).
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Outcomes of a request to `/refresh/` ([`crate::upstream::UpstreamError::outcome`]).
const REFRESH_OUTCOMES: [&str; 6] = [
    "ok",
    "token-not-valid",
    "unavailable",
    "rate-limited",
    "refused",
    "malformed",
];

/// The broker's RPCs that policy can refuse.
const RPCS: [&str; 9] = [
    "GetAccessToken",
    "ReportRejected",
    "WatchSession",
    "Login",
    "Logout",
    "LogoutDevice",
    "Revoke",
    "Status",
    "GetMetrics",
];

/// How a GetAccessToken call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// Answered from memory.
    Cached,
    /// Went through the refresher (its own refresh, or one in flight it waited for).
    Refreshed,
    /// Failed with this reason (`x-therappai-reason`, e.g. `needs-login`).
    Failed(&'static str),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountOutcome {
    account: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The cached-path counters of one configured account, created at start.
#[derive(Debug)]
struct AccountCounters {
    cached: Counter,
    refreshed: Counter,
}

type HistogramFamily = Family<EndpointLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric family of the broker, and the store's availability (which the health
/// service reports too).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    token_requests: Family<AccountOutcome, Counter>,
    accounts: HashMap<String, AccountCounters>,
    refreshes: Family<OutcomeLabel, Counter>,
    upstream_latency: HistogramFamily,
    denials: Family<RpcLabel, Counter>,
    logins: Family<OutcomeLabel, Counter>,
    lockouts: Family<ScopeLabel, Counter>,
    open_connections: Gauge,
    connections: Counter,
    store_errors: Family<OpLabel, Counter>,
    store_available: Gauge,
    sessions: Family<StateLabel, Gauge>,
    /// `true` while the last store call answered; starts `true` (the store opened).
    store_up: watch::Sender<bool>,
    /// Rendering sets the session gauges first: one render at a time.
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// All families, with the cached-path counters of each of `accounts` created up front.
    pub fn new(accounts: &[String]) -> Self {
        let mut registry = Registry::with_prefix("therappai_broker");
        let token_requests = Family::<AccountOutcome, Counter>::default();
        registry.register(
            "token_requests",
            "GetAccessToken calls by configured account and outcome: cached (answered from memory), refreshed (waited for a refresh), or the error reason",
            token_requests.clone(),
        );
        let accounts = accounts
            .iter()
            .map(|name| {
                let counter = |outcome| {
                    token_requests.get_or_create_owned(&AccountOutcome {
                        account: name.clone(),
                        outcome,
                    })
                };
                let counters = AccountCounters {
                    cached: counter("cached"),
                    refreshed: counter("refreshed"),
                };
                (name.clone(), counters)
            })
            .collect();
        let refreshes: Family<OutcomeLabel, Counter> = Family::default();
        registry.register(
            "refreshes",
            "Requests to therappai's /refresh/ by outcome: ok, token-not-valid (the session needs a login), unavailable, rate-limited, refused, malformed",
            Family::clone(&refreshes),
        );
        let upstream_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request to therappai to having its whole answer (or failing), by endpoint: login, refresh, revoke",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        let denials: Family<RpcLabel, Counter> = Family::default();
        registry.register(
            "denials",
            "Calls the policy refused (PERMISSION_DENIED), by rpc",
            Family::clone(&denials),
        );
        let logins: Family<OutcomeLabel, Counter> = Family::default();
        registry.register(
            "logins",
            "Login calls by outcome: ok, invalid-credentials, rate-limited (refused by the login limits), or another error reason",
            Family::clone(&logins),
        );
        let lockouts: Family<ScopeLabel, Counter> = Family::default();
        registry.register(
            "login_lockouts",
            "Login lockouts that began after too many failed logins, by scope: uid (one caller) or overall (every caller)",
            Family::clone(&lockouts),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open on the broker's socket",
            open_connections.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "connections",
            "Client connections accepted on the broker's socket (with peer credentials)",
            connections.clone(),
        );
        let store_errors: Family<OpLabel, Counter> = Family::default();
        registry.register(
            "store_errors",
            "Failed secure-store calls by operation: load, save, delete, list",
            Family::clone(&store_errors),
        );
        let store_available = Gauge::default();
        store_available.set(1);
        registry.register(
            "store_available",
            "1 while the secure store answers (the last store call succeeded), else 0; the health service reports NOT_SERVING while it is 0",
            store_available.clone(),
        );
        let sessions: Family<StateLabel, Gauge> = Family::default();
        registry.register(
            "sessions",
            "Configured accounts by session state: logged-out, active, refreshing, needs-login",
            Family::clone(&sessions),
        );
        // Known label values start at zero, so a rate over them works from the first scrape.
        for outcome in REFRESH_OUTCOMES {
            refreshes.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for endpoint in ["login", "refresh", "revoke"] {
            upstream_latency.get_or_create_owned(&EndpointLabel { endpoint });
        }
        for rpc in RPCS {
            denials.get_or_create_owned(&RpcLabel { rpc });
        }
        for outcome in ["ok", "invalid-credentials", "rate-limited"] {
            logins.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for scope in ["uid", "overall"] {
            lockouts.get_or_create_owned(&ScopeLabel { scope });
        }
        for op in ["load", "save", "delete", "list"] {
            store_errors.get_or_create_owned(&OpLabel { op });
        }
        Self {
            registry,
            token_requests,
            accounts,
            refreshes,
            upstream_latency,
            denials,
            logins,
            lockouts,
            open_connections,
            connections,
            store_errors,
            store_available,
            sessions,
            store_up: watch::Sender::new(true),
            render: Mutex::new(()),
        }
    }

    /// One GetAccessToken call of `account` ended with `outcome`. Accounts not in the config
    /// are not counted (their name is the caller's).
    pub fn token_request(&self, account: &str, outcome: TokenOutcome) {
        let Some(counters) = self.accounts.get(account) else {
            return;
        };
        match outcome {
            TokenOutcome::Cached => counters.cached.inc(),
            TokenOutcome::Refreshed => counters.refreshed.inc(),
            TokenOutcome::Failed(reason) => self
                .token_requests
                .get_or_create(&AccountOutcome {
                    account: account.to_owned(),
                    outcome: reason,
                })
                .inc(),
        };
    }

    /// One request to therappai's `/refresh/` ended with `outcome`.
    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// One request to therappai's `endpoint` took `elapsed`.
    pub fn upstream_request(&self, endpoint: &'static str, elapsed: Duration) {
        self.upstream_latency
            .get_or_create(&EndpointLabel { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// The policy refused a call of `rpc`.
    pub fn denial(&self, rpc: &'static str) {
        self.denials.get_or_create(&RpcLabel { rpc }).inc();
    }

    /// A Login call ended with `outcome` ("ok" or an error reason).
    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A login lockout began for `scope`.
    pub fn lockout(&self, scope: crate::ratelimit::Scope) {
        let scope = match scope {
            crate::ratelimit::Scope::Uid(_) => "uid",
            crate::ratelimit::Scope::Overall => "overall",
        };
        self.lockouts.get_or_create(&ScopeLabel { scope }).inc();
    }

    /// A client connection was accepted; the returned guard counts it open until dropped.
    pub(crate) fn connection_opened(&self) -> connection::OpenGuard {
        self.connections.inc();
        connection::OpenGuard::new(self.open_connections.clone())
    }

    /// A store call answered (whatever its answer): the store is available.
    pub fn store_answered(&self) {
        self.set_store_available(true);
    }

    /// A store call on `op` failed. `unavailable` says whether the store itself failed (no
    /// bus, locked, gone) rather than one entry (corrupt, ambiguous): only that flips the
    /// store to unavailable, until the next call that answers.
    pub fn store_failed(&self, op: &crate::store::Op, unavailable: bool) {
        let op = match op {
            crate::store::Op::Load(_) => "load",
            crate::store::Op::Save(_) => "save",
            crate::store::Op::Delete(_) => "delete",
            crate::store::Op::List => "list",
            _ => "open",
        };
        self.store_errors.get_or_create(&OpLabel { op }).inc();
        self.set_store_available(!unavailable);
    }

    fn set_store_available(&self, available: bool) {
        self.store_available.set(i64::from(available));
        self.store_up.send_if_modified(|up| {
            let changed = *up != available;
            *up = available;
            changed
        });
    }

    /// Whether the store answered its last call, and every change of that (the health
    /// service follows it).
    pub fn store_availability(&self) -> watch::Receiver<bool> {
        self.store_up.subscribe()
    }

    /// The text exposition of every family, with the session gauges read from `cache` now.
    pub fn render(&self, cache: &Cache) -> String {
        let _one = self
            .render
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut counts: HashMap<&'static str, i64> = [
            SessionState::LoggedOut,
            SessionState::Active,
            SessionState::Refreshing,
            SessionState::NeedsLogin,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for slot in cache.slots() {
            *counts.entry(slot.state().session().as_str()).or_default() += 1;
        }
        for (state, count) in counts {
            self.sessions
                .get_or_create(&StateLabel { state })
                .set(count);
        }
        let mut text = String::new();
        // Writing into a String cannot fail; an Err would be a bug in the encoder.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests;
