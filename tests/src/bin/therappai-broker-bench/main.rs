//! `cargo xtask bench`: how fast a token is, side by side with the bare gRPC floor.
//!
//! One run measures, on this machine: the floor (a bare tonic call over a Unix socket) and the
//! broker's cached GetAccessToken through client-lib (latency and throughput, with ratios), the
//! cost of the listener's `:authority` normaliser (a raw HTTP/2 client sending `localhost` or
//! the socket path), isolation between accounts, a stampede on a fresh broker, the CLI as a
//! whole process, and the daemon's memory and CPU; beside them the closest peer, oidc-agent,
//! against a mock OpenID provider (oidc_peer.rs). It prints a table and writes the same figures
//! as JSON.
//! Timings are medians of repeated runs; ratios are taken within the run.

mod alloc_cost;
mod fleet;
mod floor;
mod load;
mod normaliser_cost;
mod oidc_ipc;
mod oidc_mock;
mod oidc_peer;
mod process;
mod raw_client;
mod report;
mod scenarios;
mod stores;

use fake_therappai::{FakeConfig, FakeTherappai};
use load::{Target, latency, median, throughput};
use std::path::PathBuf;
use std::time::Duration;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, workspace_bin};

const USERS: [(&str, &str, &str); 2] = [
    ("default", "bench-fast@example.com", "bench-password-1"),
    ("slow", "bench-slow@example.com", "bench-password-2"),
];

/// How much to measure: the full run, or a seconds-long smoke run that proves it works.
#[derive(Debug, Clone)]
pub struct Settings {
    pub smoke: bool,
    pub repeats: usize,
    pub latency_calls: usize,
    pub throughput_length: Duration,
    pub isolation_windows: usize,
    pub stampede_callers: usize,
    pub cli_runs: usize,
    /// oidc-agent peer: paired CLI runs, and IPC calls with a cached token.
    pub peer_pairs: usize,
    pub peer_ipc_calls: usize,
}

impl Settings {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                repeats: 1,
                latency_calls: 200,
                throughput_length: Duration::from_millis(200),
                isolation_windows: 1,
                stampede_callers: 100,
                cli_runs: 5,
                peer_pairs: 5,
                peer_ipc_calls: 200,
            }
        } else {
            Self {
                smoke,
                repeats: 3,
                latency_calls: 50_000,
                throughput_length: Duration::from_secs(3),
                isolation_windows: 6,
                stampede_callers: 1_000,
                cli_runs: 300,
                peer_pairs: 60,
                peer_ipc_calls: 5_000,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [command, socket] = args.as_slice()
        && command == "floor-server"
    {
        return floor::serve(&PathBuf::from(socket));
    }
    if let [command, account, calls] = args.as_slice()
        && command == "oidc-ipc"
    {
        return oidc_ipc::main(account, calls);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    if let Some(unknown) = args.iter().find(|a| {
        !matches!(a.as_str(), "--smoke" | "--json") && Some(PathBuf::from(a.as_str())) != json_path
    }) {
        anyhow::bail!(
            "unknown argument {unknown:?}\nusage: therappai-broker-bench [--smoke] [--json FILE]"
        );
    }
    let settings = Settings::new(smoke);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(run(&settings))?;
    report::print_table(&results);
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// The cached path through the listener's `:authority` normaliser: one raw HTTP/2 client,
/// sending `localhost` (passes through) or the socket path, as grpcio does (rewritten), each
/// against the same raw client on the floor. The floor refuses the path (h2's PROTOCOL_ERROR),
/// which proves the client sends what the normaliser exists for.
async fn authority_cost(
    floor_socket: &std::path::Path,
    socket: &std::path::Path,
    settings: &Settings,
) -> anyhow::Result<serde_json::Value> {
    use raw_client::RawClient;
    let path = socket.display().to_string();
    let refused = RawClient::connect(floor_socket, &path, "default")
        .await?
        .call()
        .await;
    anyhow::ensure!(
        refused.is_err(),
        "the bare floor accepted a path as :authority: the raw client does not send what grpcio sends"
    );
    eprintln!(
        "authority normaliser: {} sequential calls × {} runs, raw HTTP/2 client",
        settings.latency_calls, settings.repeats
    );
    let mut floor = RawClient::connect(floor_socket, "localhost", "default").await?;
    let mut passes = RawClient::connect(socket, "localhost", "default").await?;
    let mut rewritten = RawClient::connect(socket, &path, "default").await?;
    let (mut f, mut p, mut r) = (vec![], vec![], vec![]);
    for _ in 0..settings.repeats {
        f.push(
            load::raw_latency(&mut floor, settings.latency_calls)
                .await?
                .p50_us,
        );
        p.push(
            load::raw_latency(&mut passes, settings.latency_calls)
                .await?
                .p50_us,
        );
        r.push(
            load::raw_latency(&mut rewritten, settings.latency_calls)
                .await?
                .p50_us,
        );
    }
    let (f, p, r) = (median(f), median(p), median(r));
    Ok(serde_json::json!({
        "floor_p50_us": f,
        "localhost_p50_us": p,
        "socket_path_p50_us": r,
        "ratio_localhost": p / f,
        "ratio_socket_path": r / f,
    }))
}

async fn run(settings: &Settings) -> anyhow::Result<serde_json::Value> {
    let fake = FakeTherappai::start(FakeConfig {
        users: USERS
            .iter()
            .map(|(_, email, password)| ((*email).to_owned(), (*password).to_owned()))
            .collect(),
        access_lifetime: Duration::from_secs(3600),
        ..FakeConfig::default()
    })
    .await?;
    let mut options = BrokerOptions::new(StoreKind::Keyutils, USERS[0].1);
    options = options.with_account(USERS[1].0, USERS[1].1);
    // What a deployment runs with: info, so audit events are on.
    options.log_level = "info".to_owned();
    let mut broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    for (account, _, password) in USERS {
        broker.login(account, password).await;
    }
    broker.token("default").await;
    let broker_pid = u32::try_from(broker.pid())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_kib = process::memory_kib(broker_pid, "VmRSS")?;
    // RSS counts the binary's code pages (shared page cache) too; RssAnon is the daemon's own.
    let idle_anon_kib = process::memory_kib(broker_pid, "RssAnon")?;
    let idle_by_mapping = process::resident_by_mapping(broker_pid)?;

    let floor_dir = tempfile::tempdir()?;
    let floor_socket = floor_dir.path().join("floor.sock");
    let floor = floor::FloorProcess::start(&floor_socket)?;
    let socket = broker.socket_path().to_owned();

    eprintln!(
        "latency: {} sequential calls × {} runs",
        settings.latency_calls, settings.repeats
    );
    let (floor_one, broker_one) = (
        Target::floor(&floor_socket, 1).await?,
        Target::broker(&socket, "default", 1).await?,
    );
    let (mut f50, mut f99, mut b50, mut b99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..settings.repeats {
        let f = latency(&floor_one, settings.latency_calls).await?;
        let b = latency(&broker_one, settings.latency_calls).await?;
        f50.push(f.p50_us);
        f99.push(f.p99_us);
        b50.push(b.p50_us);
        b99.push(b.p99_us);
    }
    let latency = serde_json::json!({
        "calls": settings.latency_calls,
        "floor": { "p50_us": median(f50.clone()), "p99_us": median(f99.clone()) },
        "broker": { "p50_us": median(b50.clone()), "p99_us": median(b99.clone()) },
        "ratio_p50": median(b50) / median(f50),
        "ratio_p99": median(b99) / median(f99),
    });
    let authority = authority_cost(&floor_socket, &socket, settings).await?;
    eprintln!("stores: the cached path with keyutils and encrypted-file behind it");
    let stores = stores::cached_by_store(
        &floor_socket,
        &socket,
        (&fake.base_url(), &fake.ca_pem()),
        USERS[0],
        settings,
    )
    .await?;

    let mut rows = Vec::new();
    let mut cpu = serde_json::Value::Null;
    for channels in [1, 8] {
        let floor_target = Target::floor(&floor_socket, channels).await?;
        let broker_target = Target::broker(&socket, "default", channels).await?;
        for callers in [1, 8, 64] {
            eprintln!("throughput: {callers} callers over {channels} channels");
            let (mut f, mut b) = (vec![], vec![]);
            let (mut floor_cpu, mut broker_cpu, mut floor_calls, mut broker_calls) =
                (0.0, 0.0, 0.0, 0.0);
            for _ in 0..settings.repeats {
                let before = process::cpu_seconds(floor.pid())?;
                let rate = throughput(&floor_target, callers, settings.throughput_length).await?;
                floor_cpu += process::cpu_seconds(floor.pid())? - before;
                floor_calls += rate * settings.throughput_length.as_secs_f64();
                f.push(rate);
                let before = process::cpu_seconds(broker_pid)?;
                let rate = throughput(&broker_target, callers, settings.throughput_length).await?;
                broker_cpu += process::cpu_seconds(broker_pid)? - before;
                broker_calls += rate * settings.throughput_length.as_secs_f64();
                b.push(rate);
            }
            if (callers, channels) == (64, 8) {
                cpu = serde_json::json!({
                    "floor_cpu_s_per_100k": floor_cpu / floor_calls * 1e5,
                    "broker_cpu_s_per_100k": broker_cpu / broker_calls * 1e5,
                });
            }
            let (f, b) = (median(f), median(b));
            rows.push(serde_json::json!({
                "callers": callers, "channels": channels,
                "floor_per_s": f, "broker_per_s": b, "ratio": b / f,
            }));
        }
    }
    let peak_rss_kib = process::memory_kib(broker_pid, "VmHWM")?;
    let loaded_anon_kib = process::memory_kib(broker_pid, "RssAnon")?;
    drop(floor);

    eprintln!("isolation: {} held refreshes", settings.isolation_windows);
    let isolation = scenarios::isolation(&broker, &fake, settings).await?;
    eprintln!("CLI: {} runs", settings.cli_runs);
    let ctl = workspace_bin("therappai-brokerctl");
    let cli = tokio::task::block_in_place(|| scenarios::cli(&ctl, &socket, settings))?;
    let peer = match tokio::task::block_in_place(oidc_peer::ensure_installed) {
        Ok(()) => serde_json::to_value(oidc_peer::measure(&ctl, &socket, settings).await?)?,
        Err(why) => {
            eprintln!("oidc-agent peer skipped: {why}");
            serde_json::json!({ "skipped": why })
        }
    };
    eprintln!(
        "stampede: {} callers × {} runs",
        settings.stampede_callers, settings.repeats
    );
    let stampede = scenarios::stampede(&mut broker, &fake, settings).await?;
    let sizes: &[usize] = if settings.smoke { &[1, 3] } else { &[1, 3, 10] };
    eprintln!("fleet: {sizes:?} brokers sharing one account through OpenBao");
    let fleet = fleet::fleet(settings, sizes).await?;
    eprintln!("allocator: the zeroizing allocator against the system one, in process");
    let allocator = alloc_cost::measure(settings.smoke);
    eprintln!("normaliser: header blocks through the :authority fix, in process");
    let first_request = normaliser_cost::capture_first_request().await?;
    let normaliser = normaliser_cost::measure(settings.smoke, &first_request);

    Ok(serde_json::json!({
        "machine": process::machine(),
        "mode": if settings.smoke { "smoke" } else { "full" },
        "repeats": settings.repeats,
        "latency": latency,
        "authority": authority,
        "normaliser": normaliser,
        "stores": stores,
        "throughput": rows,
        "isolation": isolation,
        "stampede": stampede,
        "fleet": fleet,
        "cli": cli,
        "peer": peer,
        "memory": {
            "idle_rss_kib": idle_rss_kib,
            "idle_anon_kib": idle_anon_kib,
            "idle_by_mapping": idle_by_mapping,
            "peak_rss_kib": peak_rss_kib,
            "after_load_anon_kib": loaded_anon_kib,
        },
        "cpu": cpu,
        "allocator": allocator,
    }))
}
