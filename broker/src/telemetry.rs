//! Logging: human-readable lines on stderr (journald picks them up under systemd).
//!
//! The filter comes from `--log-level` or `RUST_LOG`. Audit events use the `audit` target so
//! they can be routed or filtered on their own. No layer here ever sees a token: modules log
//! fingerprints only.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is either a plain level (`info`, `debug`, …),
/// which applies to the broker's own lines and its audit events while libraries stay at
/// `warn`, or a full `EnvFilter` directive such as `therappai_broker=debug,h2=trace`.
pub fn init(level: &str) -> Result<(), String> {
    let directive = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => env,
        _ if level.contains('=') || level.contains(',') => level.to_owned(),
        _ => format!("warn,therappai_broker={level},audit={level}"),
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| format!("invalid log filter \"{directive}\": {e}"))?;
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
