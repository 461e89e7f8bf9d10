//! The command line of `therappai-brokerctl`. Also compiled by `cargo xtask deb` (through
//! `#[path]`) to write the man page and shell completions, so it uses only clap and std.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  other error
  2  usage error
  3  account not logged in, or its session ended (run the login command shown)
  4  permission denied by the broker's policy
  5  broker not reachable (not running, or wrong --socket)
  6  therappai unreachable or refused the request
  7  login refused: wrong e-mail or password
  8  unknown account (not in the broker's config)
  9  rate limited: wait and try again
 10  the broker's secure store failed
 11  revoke: tokens wiped on this device, but therappai did not confirm the revocation
     (ask therappai to revoke the account's sessions; the message says which)";

/// Control the therappai token broker.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Broker socket [default: $THERAPPAI_BROKER_SOCKET, else
    /// $XDG_RUNTIME_DIR/therappai-broker/broker.sock when it exists, else
    /// /run/therappai-broker/broker.sock]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "THERAPPAI_BROKER_SOCKET"
    )]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log an account in (asks for the password without echo).
    Login {
        #[arg(long, value_name = "NAME")]
        account: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Print an access token for the account (only the token, for scripts).
    Token {
        #[arg(long, value_name = "NAME")]
        account: String,
        /// The token must stay valid for at least this many seconds.
        #[arg(long, value_name = "SECONDS")]
        min_valid: Option<u32>,
    },
    /// Show every account's session state. Never shows a token.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Follow an account's session state: prints the current state, then one line per
    /// change (active, refreshing, needs-login, logged-out) until interrupted or the broker
    /// stops. Never shows a token.
    Watch {
        #[arg(long, value_name = "NAME")]
        account: String,
    },
    /// Log an account out (or, with --all, every account on this device): tell therappai
    /// (best effort, if configured), delete the stored token, wipe memory.
    Logout {
        #[command(flatten)]
        target: Target,
    },
    /// Admin: print the broker's metrics (Prometheus text format) for node_exporter's
    /// textfile collector. Never shows a token, a password or an e-mail.
    Metrics,
    /// Compromise: revoke the session at therappai and wipe it here, for one account or all.
    /// Exits 11 when therappai did not confirm the revocation (the local wipe still happens).
    Revoke {
        #[command(flatten)]
        target: Target,
    },
}

/// `--account NAME` or `--all`, exactly one.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Every configured account, plus store entries left by accounts no longer configured.
    #[arg(long)]
    pub all: bool,
}
