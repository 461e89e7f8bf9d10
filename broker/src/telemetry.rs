//! Logging: structured records to journald under systemd, human-readable lines on stderr
//! everywhere else.
//!
//! The filter comes from `--log-level` or `RUST_LOG`. Audit events use the `audit` target so
//! they can be routed or filtered on their own; in journald they also carry `AUDIT=1`, so
//! `journalctl -u therappai-broker AUDIT=1` lists exactly them. Event fields become journal
//! fields of the same name in upper case, without a prefix (`ACCOUNT`, `RPC`, `PEER_UID`,
//! `PEER_PID`, `PEER_EXE`, `PEER_UNIT`, `DECISION`, `RULE`, `OUTCOME`, …), and every record has
//! `SYSLOG_IDENTIFIER=therappai-broker`. No layer here ever sees a token: modules log
//! fingerprints only.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log records go (`--log-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald when stderr is connected to it (systemd sets `JOURNAL_STREAM`), else stderr.
    Auto,
    /// Human-readable lines on stderr.
    Stderr,
    /// journald's native protocol, with structured fields.
    Journald,
}

/// The `SYSLOG_IDENTIFIER` of every journal record.
pub const SYSLOG_IDENTIFIER: &str = "therappai-broker";

/// Installs the global subscriber and returns where records go. `level` is either a plain
/// level (`info`, `debug`, …), which applies to the broker's own lines and its audit events
/// while libraries stay at `warn`, or a full `EnvFilter` directive such as
/// `therappai_broker=debug,h2=trace`.
pub fn init(level: &str, target: LogTarget) -> Result<LogTarget, String> {
    let directive = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => env,
        _ if level.contains('=') || level.contains(',') => level.to_owned(),
        _ => format!("warn,therappai_broker={level},audit={level}"),
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| format!("invalid log filter \"{directive}\": {e}"))?;
    let journald = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if journald {
        init_journald(filter)?;
        Ok(LogTarget::Journald)
    } else {
        init_stderr(filter)?;
        Ok(LogTarget::Stderr)
    }
}

fn init_stderr(filter: EnvFilter) -> Result<(), String> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into journald or a file.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(true)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// Two journald layers: audit events get `AUDIT=1`, everything else does not (the layer's
/// custom fields are the same for every record it writes).
fn init_journald(filter: EnvFilter) -> Result<(), String> {
    let open = || {
        tracing_journald::layer()
            .map(|layer| {
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
            })
            .map_err(|e| {
                format!(
                    "cannot log to journald ({e}); is systemd-journald running? Use `--log-target stderr` to log to stderr instead"
                )
            })
    };
    let is_audit = |meta: &tracing::Metadata<'_>| meta.target() == crate::audit::TARGET;
    let audit = open()?
        .with_custom_fields([("AUDIT", "1")])
        .with_filter(tracing_subscriber::filter::filter_fn(is_audit));
    let other = open()?.with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
        !is_audit(meta)
    }));
    tracing_subscriber::registry()
        .with(filter)
        .with(audit)
        .with(other)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=dev:inode` names
/// the same file as fd 2), as sd_journal_stream_fd(3) asks services to check: a child that
/// inherited the variable but redirected stderr elsewhere must keep writing there.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a full `stat` into the buffer when it returns 0.
    let rc = unsafe { libc::fstat(libc::STDERR_FILENO, stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so the buffer is initialised.
    let stat = unsafe { stat.assume_init() };
    stat.st_dev == dev && stat.st_ino == ino
}
