//! The scenarios beyond plain load: isolation between accounts, the stampede on a fresh
//! broker, and the CLI as a whole process.

use crate::Settings;
use crate::load::{Percentiles, median};
use fake_therappai::FakeTherappai;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use therappai_broker_e2e::Broker;

/// How long the fake holds a refresh in the isolation scenario.
pub const HELD_REFRESH: Duration = Duration::from_millis(500);
/// The fake's own latency for a refresh in the stampede scenario.
pub const UPSTREAM_LATENCY: Duration = Duration::from_millis(50);

#[derive(Debug, serde::Serialize)]
pub struct Isolation {
    /// The other account's cached-token latency while a refresh is held.
    pub during_refresh: Percentiles,
    /// The same account and number of calls with no refresh in flight.
    pub baseline: Percentiles,
    pub samples: usize,
}

/// While `slow`'s refresh is held for [`HELD_REFRESH`], the latency of `fast`'s cached token.
pub async fn isolation(
    broker: &Broker,
    fake: &FakeTherappai,
    settings: &Settings,
) -> anyhow::Result<Isolation> {
    let mut fast = broker.client().await;
    let mut slow = broker.client().await;
    fake.knobs().set_refresh_delay(HELD_REFRESH);
    let mut during = Vec::new();
    for _ in 0..settings.isolation_windows {
        let current = slow.access_token("slow").await?;
        let before = fake.counters().refresh_calls;
        let fingerprint = current.fingerprint().to_owned();
        let mut reporter = slow.clone();
        let held =
            tokio::spawn(async move { reporter.report_rejected("slow", &fingerprint).await });
        while fake.counters().refresh_calls == before {
            tokio::task::yield_now().await;
        }
        // The refresh is now in flight at the fake: measure until it is answered.
        while !held.is_finished() {
            let started = Instant::now();
            fast.access_token("default").await?;
            during.push(started.elapsed());
        }
        held.await??;
    }
    fake.knobs().set_refresh_delay(Duration::ZERO);
    let mut baseline = Vec::with_capacity(during.len());
    for _ in 0..during.len() {
        let started = Instant::now();
        fast.access_token("default").await?;
        baseline.push(started.elapsed());
    }
    Ok(Isolation {
        samples: during.len(),
        during_refresh: Percentiles::of(&mut during),
        baseline: Percentiles::of(&mut baseline),
    })
}

#[derive(Debug, serde::Serialize)]
pub struct Stampede {
    pub callers: usize,
    /// Upstream `/refresh/` calls per run (each must be 1).
    pub refresh_calls: Vec<u64>,
    /// Median over runs of the p50 / p99 time until a caller had its token.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Median over runs of one lone caller's time on a fresh broker: the upstream's own
    /// latency plus one TLS connection, the floor for the figures above.
    pub lone_caller_ms: f64,
}

/// `callers` callers at once on a freshly restarted broker (no access token in memory).
pub async fn stampede(
    broker: &mut Broker,
    fake: &FakeTherappai,
    settings: &Settings,
) -> anyhow::Result<Stampede> {
    fake.knobs().set_refresh_delay(UPSTREAM_LATENCY);
    let (mut p50s, mut p99s, mut lone, mut refresh_calls) = (vec![], vec![], vec![], vec![]);
    for _ in 0..settings.repeats {
        broker.restart();
        let mut client = broker.client().await;
        let started = Instant::now();
        client.access_token("default").await?;
        lone.push(started.elapsed().as_secs_f64() * 1e3);

        broker.restart();
        let mut clients = Vec::new();
        for _ in 0..50 {
            clients.push(broker.client().await);
        }
        let before = fake.counters().refresh_calls;
        let gate = Arc::new(tokio::sync::Barrier::new(settings.stampede_callers));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..settings.stampede_callers {
            let mut client = clients[i % clients.len()].clone();
            let gate = Arc::clone(&gate);
            tasks.spawn(async move {
                gate.wait().await;
                let started = Instant::now();
                client.access_token("default").await?;
                anyhow::Ok(started.elapsed())
            });
        }
        let mut times = Vec::new();
        while let Some(result) = tasks.join_next().await {
            times.push(result??);
        }
        refresh_calls.push(fake.counters().refresh_calls - before);
        let p = Percentiles::of(&mut times);
        p50s.push(p.p50_us / 1e3);
        p99s.push(p.p99_us / 1e3);
    }
    fake.knobs().set_refresh_delay(Duration::ZERO);
    Ok(Stampede {
        callers: settings.stampede_callers,
        refresh_calls,
        p50_ms: median(p50s),
        p99_ms: median(p99s),
        lone_caller_ms: median(lone),
    })
}

#[derive(Debug, serde::Serialize)]
pub struct Cli {
    pub runs: usize,
    /// Median wall time of `therappai-brokerctl token` as a whole process.
    pub token_median_ms: f64,
    /// Median wall time of `/bin/true`: what starting any process costs here.
    pub true_median_ms: f64,
}

/// `therappai-brokerctl token` end to end, against `true` for the process-start floor.
pub fn cli(ctl: &Path, socket: &Path, settings: &Settings) -> anyhow::Result<Cli> {
    let time = |command: &mut Command| -> anyhow::Result<f64> {
        let mut samples = Vec::with_capacity(settings.cli_runs);
        for _ in 0..settings.cli_runs {
            let started = Instant::now();
            let status = command.status()?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(status.success(), "{command:?} failed: {status}");
        }
        Ok(median(samples))
    };
    let mut token = Command::new(ctl);
    token
        .arg("--socket")
        .arg(socket)
        .args(["token", "--account", "default"])
        .stdout(Stdio::null());
    let token_median_ms = time(&mut token)?;
    let true_median_ms = time(&mut Command::new("true"))?;
    Ok(Cli {
        runs: settings.cli_runs,
        token_median_ms,
        true_median_ms,
    })
}
