//! Logging: human-readable lines on stderr (journald picks them up under systemd).
//!
//! The filter comes from `--log-level` or `RUST_LOG`. Audit events use the `audit` target so
//! they can be routed or filtered on their own. No layer here ever sees a token: modules log
//! fingerprints only.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as `info` or
/// `therappai_broker=debug,audit=info`.
pub fn init(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}
