//! The command line of `therappai-broker`. Also compiled by `cargo xtask deb` (through
//! `#[path]`) to write the man page and shell completions, so it uses only clap and std.

use clap::Parser;
use std::path::PathBuf;

/// Local token broker for the therappai API: keeps refresh tokens in the OS secure store and
/// serves short-lived access tokens to allowed local programs over a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = "Logs go to stderr (journald under systemd). \
Control it with therappai-brokerctl: login, token, status, logout, revoke.")]
pub struct Args {
    /// The TOML config file (see the README for every key).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Log filter, e.g. `info`, `debug`, `therappai_broker=trace`; RUST_LOG overrides it.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    /// Where logs go: `auto` is journald (with structured fields) when systemd connected
    /// stderr to the journal, else stderr.
    #[arg(long, value_name = "TARGET", default_value = "auto", value_parser = ["auto", "stderr", "journald"])]
    pub log_target: String,
    /// Re-encrypt the `encrypted-file` store under the key in NEW_KEY (a file, or `-` for
    /// standard input), atomically, then exit. Stop the broker first; the old key is found as
    /// at start (`[store] key_file`, or the `store-key` credential). See the README,
    /// "Rotating the store key".
    #[arg(long, value_name = "NEW_KEY")]
    pub rekey: Option<PathBuf>,
}
