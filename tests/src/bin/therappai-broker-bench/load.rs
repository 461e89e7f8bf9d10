//! Load generation: sequential latency and concurrent throughput against either the floor or
//! the broker, through the same kind of tonic channel over the same kind of socket.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use therappai_broker_client::Client;
use therappai_broker_proto::v1 as pb;
use therappai_broker_proto::v1::broker_client::BrokerClient;
use tonic::transport::{Channel, Endpoint};

/// What is being measured: the bare floor, or the broker through client-lib.
#[derive(Debug, Clone)]
pub enum Target {
    Floor(Vec<BrokerClient<Channel>>),
    Broker {
        clients: Vec<Client>,
        account: String,
    },
}

impl Target {
    pub async fn floor(socket: &Path, channels: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..channels {
            let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))?
                .connect()
                .await?;
            clients.push(BrokerClient::new(channel));
        }
        Ok(Self::Floor(clients))
    }

    pub async fn broker(socket: &Path, account: &str, channels: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..channels {
            clients.push(Client::connect(socket).await?);
        }
        Ok(Self::Broker {
            clients,
            account: account.to_owned(),
        })
    }

    fn channels(&self) -> usize {
        match self {
            Self::Floor(c) => c.len(),
            Self::Broker { clients, .. } => clients.len(),
        }
    }

    /// One GetAccessToken on channel `i`; the token is checked to be non-empty, then dropped.
    pub async fn call(&self, i: usize) -> anyhow::Result<()> {
        match self {
            Self::Floor(clients) => {
                let mut client = clients[i % clients.len()].clone();
                let request = pb::GetAccessTokenRequest {
                    account: "default".to_owned(),
                    min_valid_seconds: None,
                };
                let token = client.get_access_token(request).await?.into_inner();
                anyhow::ensure!(!token.access_token.is_empty());
            }
            Self::Broker { clients, account } => {
                let mut client = clients[i % clients.len()].clone();
                let token = client.access_token(account).await?;
                anyhow::ensure!(!token.expose_secret().is_empty());
            }
        }
        Ok(())
    }
}

/// Latency percentiles of `calls` sequential calls on the first channel.
pub async fn latency(target: &Target, calls: usize) -> anyhow::Result<Percentiles> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        target.call(0).await?;
        samples.push(started.elapsed());
    }
    Ok(Percentiles::of(&mut samples))
}

/// Latency percentiles of `calls` sequential calls through the raw HTTP/2 client.
pub async fn raw_latency(
    client: &mut crate::raw_client::RawClient,
    calls: usize,
) -> anyhow::Result<Percentiles> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.call().await?;
        samples.push(started.elapsed());
    }
    Ok(Percentiles::of(&mut samples))
}

/// Calls per second with `callers` concurrent loops over the target's channels for `length`.
pub async fn throughput(target: &Target, callers: usize, length: Duration) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..callers {
        let (target, stop, done) = (target.clone(), Arc::clone(&stop), Arc::clone(&done));
        tasks.spawn(async move {
            let channel = i % target.channels();
            while !stop.load(Ordering::Relaxed) {
                target.call(channel).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(counted as f64 / elapsed.as_secs_f64())
}

/// p50 and p99 of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Self {
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }
}

/// The median of repeated measurements.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
