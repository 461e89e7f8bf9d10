//! The closest peer, oidc-agent (Debian's `oidc-agent-cli`), measured in the same run as the
//! broker: `oidc-token` as a whole process paired with `therappai-brokerctl token`, its IPC with
//! a cached token (oidc_ipc.rs), and its daemon's memory. It runs against the mock provider in
//! oidc_mock.rs, in a private temporary directory, set up the way a user would: `oidc-agent`,
//! then `oidc-gen` (which also loads the account, so no `oidc-add`).

use crate::Settings;
use crate::load::{Percentiles, median};
use crate::oidc_mock::{MockProvider, random_hex};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "bench";
const PACKAGE: &str = "oidc-agent-cli";
const BINARIES: [&str; 3] = ["oidc-agent", "oidc-gen", "oidc-token"];

/// Installs oidc-agent if missing. `Err` is why the peer rows are skipped, for the log.
pub fn ensure_installed() -> Result<(), String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(name).is_file()))
    };
    let installed = || BINARIES.iter().all(|b| on_path(b));
    if installed() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        eprintln!("+ apt-get {}", args.join(" "));
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!(
        "oidc-agent peer: {} not found; installing {PACKAGE}",
        BINARIES.join("/")
    );
    let install = ["install", "-y", "-qq", PACKAGE];
    // A fresh machine may have no package lists yet: update once, then try again.
    if (apt(&install) || (apt(&["update", "-qq"]) && apt(&install))) && installed() {
        return Ok(());
    }
    Err(format!(
        "`apt-get install -y {PACKAGE}` did not provide {} (not root, or no apt?); install it to get the peer rows",
        BINARIES.join(", ")
    ))
}

/// A running oidc-agent with its own socket and configuration directory.
#[derive(Debug)]
struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Agent {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent/oidc-agent.sock");
        std::fs::create_dir(dir.path().join("config"))?;
        // `-d` keeps it in the foreground: this process owns it and stops it.
        let child = Command::new("oidc-agent")
            .args(["-d", "--no-autoload", "--quiet", "-a"])
            .arg(&socket)
            .env("OIDC_CONFIG_DIR", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let agent = Self { dir, socket, child };
        wait_until(Duration::from_secs(10), "oidc-agent's socket", || {
            agent.socket.exists()
        })?;
        Ok(agent)
    }

    /// A client of this agent: `OIDC_SOCK` says where it is.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("OIDC_SOCK", &self.socket)
            .env("OIDC_CONFIG_DIR", self.dir.path().join("config"))
            .stdin(Stdio::null());
        command
    }

    /// The agent and the daemon it forks (oidc-agent is two processes).
    fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        self.pids()
            .into_iter()
            .map(|pid| crate::process::memory_kib(pid, field))
            .sum()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent stops its daemon too.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = wait_until(Duration::from_secs(5), "oidc-agent to stop", || {
            self.child.try_wait().is_ok_and(|s| s.is_some())
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(
    deadline: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `oidc-gen` for the mock provider's user, non-interactively, with a deadline: it prompts
/// (and then waits forever) when an option is missing.
fn generate_account(agent: &Agent, provider: &MockProvider) -> anyhow::Result<()> {
    let ((client_id, client_secret), (username, password)) = provider.credentials();
    let log = agent.dir.path().join("oidc-gen.log");
    let output = std::fs::File::create(&log)?;
    let mut command = agent.command("oidc-gen");
    command
        .arg(ACCOUNT)
        .arg(format!("--issuer={}/", provider.issuer()))
        // oidc-gen takes the client secret and the provider password only from argv or a
        // prompt. These are this run's random credentials for the loopback mock, which dies
        // with the run; no real account is involved.
        .arg(format!("--client-id={client_id}"))
        .arg(format!("--client-secret={client_secret}"))
        .arg("--flow=password")
        .arg(format!("--op-username={username}"))
        .arg(format!("--op-password={password}"))
        .args(["--scope=openid offline_access", "--pw-env"])
        .args(["--confirm-default", "--no-url-call"])
        .env("OIDC_ENCRYPTION_PW", random_hex(16)?)
        .stdout(output.try_clone()?)
        .stderr(output);
    let mut child = command.spawn()?;
    let finished = wait_until(Duration::from_secs(30), "oidc-gen", || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if finished.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    anyhow::ensure!(
        finished.is_ok() && status.success(),
        "oidc-gen did not create the account ({status}); it said:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Ok(())
}

/// Wall and CPU (user + system) milliseconds of one run of `command`, which must succeed.
fn timed(command: &mut Command) -> anyhow::Result<(f64, f64)> {
    let cpu_before = children_cpu_ms();
    let started = Instant::now();
    let status = command.status()?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status.success(), "{command:?} failed: {status}");
    Ok((wall, children_cpu_ms() - cpu_before))
}

/// CPU time of every child this process has waited for.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// The peer's figures, with the broker's CLI paired against it in the same loop.
#[derive(Debug, serde::Serialize)]
pub struct Peer {
    pub version: String,
    pub pairs: usize,
    /// Medians over the pairs, ms.
    pub oidc_token_ms: f64,
    pub brokerctl_token_ms: f64,
    pub true_ms: f64,
    pub oidc_token_cpu_ms: f64,
    pub brokerctl_token_cpu_ms: f64,
    /// Medians of the per-pair ratios brokerctl / oidc-token.
    pub ratio_wall: f64,
    pub ratio_cpu: f64,
    /// liboidc-agent's getAccessToken3 with a cached token: {calls, p50_us, p99_us}.
    pub ipc: serde_json::Value,
    /// The broker's cached token through client-lib, connecting anew for each call.
    pub broker_new_connection: Percentiles,
    /// Summed over oidc-agent's two processes, KiB. Its peak (VmHWM) is left out: it is set
    /// during `oidc-gen` (about 75 MiB on the development VM), not by serving tokens.
    pub idle_rss_kib: u64,
    pub idle_anon_kib: u64,
    pub after_load_rss_kib: u64,
    pub after_load_anon_kib: u64,
    /// Token-endpoint calls during the run: 1 password grant (oidc-gen), 1 refresh (the
    /// forced one at the end); none during the cached measurements.
    pub password_grants: u64,
    pub refresh_grants: u64,
}

pub async fn measure(ctl: &Path, socket: &Path, settings: &Settings) -> anyhow::Result<Peer> {
    let provider = MockProvider::start().await?;
    let ours = broker_new_connection(socket, settings.peer_ipc_calls).await?;
    tokio::task::block_in_place(|| measure_with(&provider, ctl, socket, settings, ours))
}

/// The broker asked the way liboidc-agent asks: a new connection for every call.
async fn broker_new_connection(socket: &Path, calls: usize) -> anyhow::Result<Percentiles> {
    eprintln!("broker IPC: {calls} calls, a new client-lib connection each");
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let mut client = therappai_broker_client::Client::connect(socket).await?;
        client.access_token("default").await?;
        samples.push(started.elapsed());
    }
    Ok(Percentiles::of(&mut samples))
}

fn measure_with(
    provider: &MockProvider,
    ctl: &Path,
    socket: &Path,
    settings: &Settings,
    broker_new_connection: Percentiles,
) -> anyhow::Result<Peer> {
    let version = Command::new("oidc-agent").arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let agent = Agent::start()?;
    generate_account(&agent, provider)?;
    let mut oidc_token = agent.command("oidc-token");
    oidc_token.arg(ACCOUNT).stdout(Stdio::null());
    timed(&mut oidc_token)?;
    // Idle the way the broker's figure is taken: half a second after its last request.
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_kib = agent.memory_kib("VmRSS")?;
    let idle_anon_kib = agent.memory_kib("RssAnon")?;
    let grants_before = provider.grants();

    eprintln!(
        "peer CLI: {} pairs of `oidc-token` and `therappai-brokerctl token`, order alternating, with `true`",
        settings.peer_pairs
    );
    let mut brokerctl = Command::new(ctl);
    brokerctl
        .arg("--socket")
        .arg(socket)
        .args(["token", "--account", "default"])
        .stdout(Stdio::null());
    let mut true_ = Command::new("true");
    let (mut ours, mut theirs, mut trues) = (vec![], vec![], vec![]);
    for pair in 0..settings.peer_pairs {
        trues.push(timed(&mut true_)?.0);
        if pair % 2 == 0 {
            ours.push(timed(&mut brokerctl)?);
            theirs.push(timed(&mut oidc_token)?);
        } else {
            theirs.push(timed(&mut oidc_token)?);
            ours.push(timed(&mut brokerctl)?);
        }
    }
    let ratio = |pick: fn(&(f64, f64)) -> f64| {
        median(
            ours.iter()
                .zip(&theirs)
                .map(|(o, t)| pick(o) / pick(t))
                .collect(),
        )
    };
    let column =
        |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| median(v.iter().map(pick).collect());

    eprintln!(
        "peer IPC: {} getAccessToken3 calls",
        settings.peer_ipc_calls
    );
    let output = agent
        .command(std::env::current_exe()?)
        .args(["oidc-ipc", ACCOUNT, &settings.peer_ipc_calls.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "the oidc-ipc client failed: {}",
        output.status
    );
    let mut ipc: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    ipc["calls"] = settings.peer_ipc_calls.into();
    anyhow::ensure!(
        provider.grants() == grants_before,
        "oidc-agent called the provider during the cached measurements: they are not of the cached path"
    );
    let after_load_rss_kib = agent.memory_kib("VmRSS")?;
    let after_load_anon_kib = agent.memory_kib("RssAnon")?;
    // The refresh grant, once: proves the agent and the mock do the whole flow.
    timed(
        agent
            .command("oidc-token")
            .args(["--force-new", ACCOUNT])
            .stdout(Stdio::null()),
    )?;
    let (password_grants, refresh_grants) = provider.grants();
    anyhow::ensure!(
        refresh_grants == grants_before.1 + 1,
        "`oidc-token --force-new` did not refresh at the provider"
    );
    Ok(Peer {
        version,
        pairs: settings.peer_pairs,
        oidc_token_ms: column(&theirs, |s| s.0),
        brokerctl_token_ms: column(&ours, |s| s.0),
        true_ms: median(trues),
        oidc_token_cpu_ms: column(&theirs, |s| s.1),
        brokerctl_token_cpu_ms: column(&ours, |s| s.1),
        ratio_wall: ratio(|s| s.0),
        ratio_cpu: ratio(|s| s.1),
        ipc,
        broker_new_connection,
        idle_rss_kib,
        idle_anon_kib,
        after_load_rss_kib,
        after_load_anon_kib,
        password_grants,
        refresh_grants,
    })
}
