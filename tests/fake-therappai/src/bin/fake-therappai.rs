//! `fake-therappai`: the HTTPS fake of therappai as a process, for the demo.
//!
//! Phases: args → telemetry → start (writes the CA, prints `listening URL`) → run until
//! SIGINT/SIGTERM → shut down. Logs method, path and status of each request to stderr;
//! never a token or a password.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fake_therappai::{FakeConfig, FakeTherappai};

/// HTTPS fake of the therappai API (test credentials only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the PEM of the generated CA.
    #[arg(long)]
    ca_out: PathBuf,
    /// An account as EMAIL:PASSWORD; repeat for more. Also read from
    /// FAKE_THERAPPAI_USERS (comma-separated).
    #[arg(
        long = "user",
        env = "FAKE_THERAPPAI_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    users: Vec<User>,
    /// Lifetime of access tokens.
    #[arg(long, default_value_t = 300)]
    access_lifetime_seconds: u64,
    /// Lifetime of refresh tokens.
    #[arg(long, default_value_t = 86_400)]
    refresh_lifetime_seconds: u64,
    /// Rotate refresh tokens (and blacklist the old one) on every refresh.
    #[arg(long)]
    rotate: bool,
}

#[derive(Clone)]
struct User {
    email: String,
    password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({}, [redacted])", self.email)
    }
}

impl FromStr for User {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((email, password)) if !email.is_empty() && !password.is_empty() => Ok(Self {
                email: email.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err("expected EMAIL:PASSWORD"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-therappai: start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-therappai: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = FakeConfig {
        users: args
            .users
            .into_iter()
            .map(|u| (u.email, u.password))
            .collect(),
        access_lifetime: Duration::from_secs(args.access_lifetime_seconds),
        refresh_lifetime: Duration::from_secs(args.refresh_lifetime_seconds),
        rotate_refresh_tokens: args.rotate,
    };
    if config.users.is_empty() {
        tracing::warn!("no users configured: every login will fail");
    }
    let fake = FakeTherappai::start_on(config, args.listen)
        .await
        .context("start server")?;
    std::fs::write(&args.ca_out, fake.ca_pem())
        .with_context(|| format!("write CA certificate {}", args.ca_out.display()))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {}", fake.base_url()).context("write to stdout")?;
    stdout.flush().context("flush stdout")?;
    drop(stdout);

    wait_for_signal().await?;
    tracing::info!("shutting down");
    fake.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
