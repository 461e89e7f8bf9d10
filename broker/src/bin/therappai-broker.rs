//! `therappai-broker --config FILE`: runs the broker in the foreground (systemd runs it).
//!
//! `main` is a list of phases: arguments → telemetry → hardening → config (exit 64 on a bad
//! one) → start (store, sessions, socket) → serve (SIGHUP reloads the policy rules) → drain
//! on SIGTERM/SIGINT → exit code.

use anyhow::Context;
use args::Args;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use therappai_broker::config::Config;
use therappai_broker::store::encrypted_file::KeySource;
use therappai_broker::telemetry::LogTarget;
use therappai_broker::{Daemon, StatusLine, listener, notify, reload::Reloader, store};
use tokio_util::sync::CancellationToken;

// The clap definitions live in their own file so `cargo xtask deb` can build the man page
// and shell completions from the same `Command`.
#[path = "therappai-broker/args.rs"]
mod args;

/// Every heap block is wiped before it is freed, so buffers of the HTTP, TLS and gRPC layers
/// that carried a token do not keep it after they are dropped (see `alloc.rs`).
#[global_allocator]
static ALLOCATOR: therappai_broker::alloc::ZeroizingAlloc =
    therappai_broker::alloc::ZeroizingAlloc::new();

/// Exit code for a configuration or usage error (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = therappai_broker::telemetry::init(&args.log_level, log_target(&args.log_target))
    {
        eprintln!("therappai-broker: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    harden();
    // Before any thread exists: taking the socket clears LISTEN_* from the environment.
    let systemd_socket = match listener::take_systemd_socket() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("therappai-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("therappai-broker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(new_key) = &args.rekey {
        return rekey(&config, new_key);
    }
    if config.store.backend != store::BackendChoice::SecretService {
        // Before any thread exists: threads inherit the session keyring of their creator.
        // keyutils needs one of our own to link the user's persistent keyring into.
        if let Err(e) = store::join_session_keyring() {
            tracing::warn!(error = %e, "could not join a session keyring of our own");
        }
    }
    match run(config, &args.config, systemd_socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("therappai-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--rekey NEW_KEY`: re-encrypts the store under the new key and says what to do next.
fn rekey(config: &Config, new_key: &Path) -> ExitCode {
    let new = if new_key == Path::new("-") {
        KeySource::Stdin
    } else {
        KeySource::KeyFile(new_key.to_owned())
    };
    match store::rekey(&config.store, &new) {
        Ok(done) => {
            println!(
                "re-encrypted {} ({} account(s)) under {} (key id {}); the old key ({}, key id {}) no longer opens it",
                done.file.display(),
                done.accounts,
                new,
                done.new_key_id,
                done.old_key,
                done.old_key_id
            );
            println!(
                "next: make the new key the one the broker reads (for the system service: systemd-creds encrypt --name=store-key --with-key=host NEW_KEY /etc/therappai-broker/store-key.cred), then start the broker"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("therappai-broker: rekey refused, the store file is unchanged: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No core dumps and no ptrace by other processes of the same user: memory holds tokens.
fn harden() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and only changes this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not make the process non-dumpable");
    }
    // A second lock on the same door: no core file even if something makes the process
    // dumpable again (a setuid exec, a future prctl). The units also set LimitCORE=0, as
    // their system-call filter refuses setrlimit.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one rlimit we own and only changes this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not set RLIMIT_CORE to 0 (the unit's LimitCORE=0 does it under systemd)");
    }
}

fn run(
    config: Config,
    config_path: &Path,
    systemd_socket: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        // An idle worker would keep the last bytes of the token it served on its stack and in
        // its registers.
        .on_thread_park(therappai_broker::secret::wipe_idle_thread)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // The serving future runs as a task on a worker, not in `block_on` on the main thread:
    // there the accept loop needed a wake-up hop from the worker that polled epoll to the
    // parked main thread for every new connection, which a one-shot CLI call waits through.
    let config_path = config_path.to_owned();
    let serving = runtime.spawn(async move {
        let socket = match &systemd_socket {
            Some(_) => "the socket systemd passed".to_owned(),
            None => config.socket.display().to_string(),
        };
        let daemon = Daemon::start(config, systemd_socket)
            .await
            .with_context(|| format!("start the broker on {socket}"))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(forward_signals(
            shutdown.clone(),
            daemon.reloader(),
            daemon.status_line(),
            config_path,
        ));
        daemon.serve(shutdown).await.context("serve gRPC")?;
        anyhow::Ok(())
    });
    let result = match runtime.block_on(serving) {
        Ok(result) => result,
        // Only a bug gets here (a panic in start-up or the accept loop; handlers' panics are
        // caught per task). The payload is not repeated: we cannot vouch for what it holds.
        Err(e) => Err(anyhow::anyhow!(
            "the serving task {}; this is a bug, please report it with the log",
            if e.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            }
        )),
    };
    // A store call stuck in a blocking thread (e.g. behind a keyring unlock prompt nobody
    // answers) must not keep the process alive after serve returned.
    runtime.shutdown_timeout(BLOCKING_EXIT_GRACE);
    result
}

/// One worker per core, at most 4. A cached token costs microseconds, so more workers add
/// no throughput a local broker needs, only resident memory: each worker has its own stack
/// and, once it allocates, its own malloc arena.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(MAX_WORKERS))
}

const MAX_WORKERS: usize = 4;

/// How long exiting waits for blocking store calls still running after serving stopped.
const BLOCKING_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGTERM or SIGINT → one shutdown signal for every task; SIGHUP → reload the policy.
async fn forward_signals(
    shutdown: CancellationToken,
    reloader: Reloader,
    status: StatusLine,
    config_path: PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the broker with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                tracing::info!(file = %config_path.display(), "SIGHUP: reloading the config");
                notify::reloading();
                // Group lookups may block on NSS (LDAP, sssd): off the async workers.
                let path = config_path.clone();
                let reloader = &reloader;
                tokio::task::block_in_place(move || reloader.reload(&path));
                notify::reloaded(&status.current());
            }
        }
    }
    shutdown.cancel();
}

fn log_target(name: &str) -> LogTarget {
    match name {
        "stderr" => LogTarget::Stderr,
        "journald" => LogTarget::Journald,
        _ => LogTarget::Auto,
    }
}
