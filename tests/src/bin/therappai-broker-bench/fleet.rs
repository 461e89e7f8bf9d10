//! The fleet case: N brokers sharing one account through a real OpenBao (dev server over
//! TLS), each with callers asking for a token all the time, for a window of several
//! access-token lifetimes. The figure is the upstream refreshes per hour, which should not
//! depend on N; and the cached-path latency with the vault store, which should be that of
//! any store (memory serves it).

use crate::Settings;
use crate::load::{Target, latency, median};
use fake_therappai::{FakeConfig, FakeTherappai};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use therappai_broker_e2e::openbao::{OpenBao, RoleSpec, store_section};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, unique_name};

const EMAIL: &str = "bench-fleet@example.com";
const PASSWORD: &str = "bench-fleet-password";

#[derive(Debug, serde::Serialize)]
pub struct FleetRow {
    pub brokers: usize,
    /// Upstream `/refresh/` calls in the window.
    pub refreshes: u64,
    /// The same, scaled to an hour.
    pub refreshes_per_hour: f64,
    /// Against the fleet of one in the same run (the target: 1.0 for every size).
    pub ratio_to_one_broker: f64,
    /// Calls that got no token (each is an error; there should be none).
    pub failed_calls: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct Fleet {
    pub access_lifetime_s: u64,
    pub window_s: u64,
    pub rows: Vec<FleetRow>,
    /// Cached GetAccessToken p50 on a vault-store broker, and on this run's keyutils broker.
    pub cached_p50_us_vault: f64,
}

/// Runs the fleet case; `sizes` are the fleet sizes to measure.
pub async fn fleet(settings: &Settings, sizes: &[usize]) -> anyhow::Result<Fleet> {
    let lifetime = Duration::from_secs(if settings.smoke { 2 } else { 6 });
    let window = Duration::from_secs(if settings.smoke { 4 } else { 60 });
    let bao = OpenBao::dev().await;
    let mut rows = Vec::new();
    let mut cached = Vec::new();
    for &n in sizes {
        let fake = FakeTherappai::start(FakeConfig {
            users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
            access_lifetime: lifetime,
            rotate_refresh_tokens: true,
            ..FakeConfig::default()
        })
        .await?;
        let prefix = format!("therappai-broker/{}", unique_name("bench"));
        let role = bao.approle(&RoleSpec::new(&prefix)).await;
        let brokers: Vec<Broker> = (0..n)
            .map(|_| {
                let mut options = BrokerOptions::new(StoreKind::Vault, EMAIL);
                options.log_level = "info".to_owned();
                options.extra_config = store_section(&bao, &role, &prefix, 5, 30);
                Broker::start(options, &fake.base_url(), &fake.ca_pem())
            })
            .collect();
        brokers[0].login("default", PASSWORD).await;
        for broker in &brokers {
            broker.token("default").await;
        }
        if n == sizes[0] {
            let target = Target::broker(brokers[0].socket_path(), "default", 1).await?;
            let mut p50 = Vec::new();
            for _ in 0..settings.repeats {
                p50.push(latency(&target, settings.latency_calls).await?.p50_us);
            }
            cached.push(median(p50));
        }
        let before = fake.counters().refresh_calls;
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = tokio::task::JoinSet::new();
        for broker in &brokers {
            for _ in 0..2 {
                let mut client = broker.client().await;
                let stop = Arc::clone(&stop);
                callers.spawn(async move {
                    let mut failed = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if client.access_token("default").await.is_err() {
                            failed += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    failed
                });
            }
        }
        let started = Instant::now();
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let mut failed_calls = 0;
        while let Some(failed) = callers.join_next().await {
            failed_calls += failed?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let refreshes = fake.counters().refresh_calls - before;
        let per_hour = refreshes as f64 / elapsed * 3600.0;
        let one = rows
            .first()
            .map_or(per_hour, |r: &FleetRow| r.refreshes_per_hour);
        rows.push(FleetRow {
            brokers: n,
            refreshes,
            refreshes_per_hour: per_hour,
            ratio_to_one_broker: per_hour / one,
            failed_calls,
        });
        eprintln!("fleet of {n}: {refreshes} refreshes in {elapsed:.1} s");
    }
    Ok(Fleet {
        access_lifetime_s: lifetime.as_secs(),
        window_s: window.as_secs(),
        rows,
        cached_p50_us_vault: median(cached),
    })
}
