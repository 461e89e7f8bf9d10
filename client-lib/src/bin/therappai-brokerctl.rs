//! `therappai-brokerctl`: log accounts in and out, print tokens for scripts, show status,
//! clean a device (`logout --all`) and handle a compromise (`revoke`).
//!
//! Start-up is most of a `token` call's cost, so this runs on a current-thread runtime and
//! does nothing the subcommand does not need. Secrets never come from argv and are never
//! printed, except the access token that `token` exists to print.

use clap::Parser;
use cli::{Cli, Command};
use secrecy::SecretString;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use therappai_broker_client::{Client, Error, SessionState, proto};

// The clap definitions live in their own file so `cargo xtask deb` can build the man page
// and shell completions from the same `Command`.
#[path = "therappai-brokerctl/cli.rs"]
mod cli;

/// Exit codes, documented in the README and `--help`.
mod exit {
    pub const OTHER: u8 = 1;
    pub const NOT_LOGGED_IN: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const UPSTREAM: u8 = 6;
    pub const INVALID_CREDENTIALS: u8 = 7;
    pub const UNKNOWN_ACCOUNT: u8 = 8;
    pub const RATE_LIMITED: u8 = 9;
    pub const STORE: u8 = 10;
    pub const REVOCATION_INCOMPLETE: u8 = 11;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("therappai-brokerctl: cannot start: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Broker(e)) => {
            eprintln!("therappai-brokerctl: {e}");
            ExitCode::from(exit_code(&e))
        }
        Err(CliError::Local(message)) => {
            eprintln!("therappai-brokerctl: {message}");
            ExitCode::from(exit::OTHER)
        }
        Err(CliError::Incomplete { code, message }) => {
            eprintln!("therappai-brokerctl: {message}");
            ExitCode::from(code)
        }
    }
}

#[derive(Debug)]
enum CliError {
    Broker(Error),
    Local(String),
    /// The call was answered, but not everything it asked for happened.
    Incomplete {
        code: u8,
        message: String,
    },
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        Self::Broker(e)
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::NotLoggedIn { .. } => exit::NOT_LOGGED_IN,
        Error::PermissionDenied { .. } | Error::SocketForbidden { .. } => exit::PERMISSION_DENIED,
        Error::Unreachable { .. } | Error::NoBroker { .. } | Error::NotTheBroker { .. } => {
            exit::UNREACHABLE
        }
        Error::Upstream { .. } => exit::UPSTREAM,
        Error::InvalidCredentials { .. } => exit::INVALID_CREDENTIALS,
        Error::UnknownAccount { .. } => exit::UNKNOWN_ACCOUNT,
        Error::RateLimited { .. } => exit::RATE_LIMITED,
        Error::Store { .. } => exit::STORE,
        _ => exit::OTHER,
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let socket = match cli.socket {
        Some(path) => path,
        None => therappai_broker_client::default_socket()?,
    };
    match cli.command {
        Command::Token { account, min_valid } => {
            let mut client = Client::connect(&socket).await?;
            let token = match min_valid {
                Some(s) => {
                    client
                        .access_token_valid_for(&account, Duration::from_secs(u64::from(s)))
                        .await?
                }
                None => client.access_token(&account).await?,
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", token.expose_secret())
                .and_then(|()| out.flush())
                .map_err(|e| CliError::Local(format!("cannot write the token to stdout: {e}")))?;
        }
        Command::Login {
            account,
            password_stdin,
        } => {
            // Connect first: no point asking for a password when nobody is listening.
            let mut client = Client::connect(&socket).await?;
            let password = read_password(&account, password_stdin)?;
            let expires = client.login(&account, &password).await?;
            println!(
                "Logged in account \"{account}\"; its refresh token is in the broker's secure store (access token valid {}).",
                describe_until(expires)
            );
        }
        Command::Logout { target } => {
            let mut client = Client::connect(&socket).await?;
            match target.account {
                Some(account) => {
                    let report = client.logout(&account).await?;
                    print_logout(&account, &report);
                }
                None => {
                    let report = client.logout_device().await?;
                    println!("Device logout:");
                    print_outcomes(&report.accounts);
                    check_outcomes(&report.accounts, &report.store_listing_error, false)?;
                }
            }
        }
        Command::Revoke { target } => {
            let mut client = Client::connect(&socket).await?;
            let report = match &target.account {
                Some(account) => client.revoke(account).await?,
                None => client.revoke_all().await?,
            };
            println!("Revoke:");
            print_outcomes(&report.accounts);
            check_outcomes(&report.accounts, &report.store_listing_error, true)?;
        }
        Command::Watch { account } => {
            let mut client = Client::connect(&socket).await?;
            let mut watch = client.watch_session(&account).await?;
            while let Some(change) = watch.next().await {
                let change = change?;
                let mut out = std::io::stdout().lock();
                let reason = if change.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", change.reason)
                };
                let kind = if change.snapshot { "now" } else { "changed" };
                writeln!(
                    out,
                    "{} {kind}: {}{reason}",
                    change.account,
                    change.state.as_str()
                )
                .and_then(|()| out.flush())
                .map_err(|e| CliError::Local(format!("cannot write to stdout: {e}")))?;
            }
            eprintln!("therappai-brokerctl: the broker closed the stream (it is stopping)");
        }
        Command::Metrics => {
            let mut client = Client::connect(&socket).await?;
            let text = client.metrics().await?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| CliError::Local(format!("cannot write to stdout: {e}")))?;
        }
        Command::Status { json } => {
            let mut client = Client::connect(&socket).await?;
            let status = client.status().await?;
            if json {
                println!("{}", status_json(&status, &socket));
            } else {
                print_status(&status, &socket);
            }
        }
    }
    Ok(())
}

fn read_password(account: &str, from_stdin: bool) -> Result<SecretString, CliError> {
    let mut line = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Local(format!("cannot read the password from stdin: {e}")))?;
        line
    } else {
        rpassword::prompt_password(format!("therappai password for account \"{account}\": "))
            .map_err(|e| {
                CliError::Local(format!(
                    "cannot read the password from the terminal ({e}); use --password-stdin"
                ))
            })?
    };
    let trimmed_len = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed_len);
    if line.is_empty() {
        return Err(CliError::Local(
            "the password is empty; nothing was sent".to_owned(),
        ));
    }
    Ok(SecretString::from(line))
}

fn print_logout(account: &str, report: &proto::LogoutResponse) {
    if !report.was_logged_in {
        println!("Account \"{account}\" was already logged out; nothing to do.");
        return;
    }
    println!("Logged out account \"{account}\":");
    println!("  tokens in broker memory: wiped");
    println!(
        "  refresh token in secure store: {}",
        if report.store_entry_deleted {
            "deleted"
        } else {
            "NOT deleted"
        }
    );
    let upstream = proto::UpstreamRevocation::try_from(report.upstream).unwrap_or_default();
    let marker = match upstream {
        proto::UpstreamRevocation::Done => "revoked",
        proto::UpstreamRevocation::NothingToRevoke => "nothing to revoke",
        _ => "warning",
    };
    println!("  therappai: {marker}: {}", report.upstream_detail);
    println!(
        "  apps watching the session: {} told logged-out",
        report.watchers_notified
    );
}

fn print_outcomes(accounts: &[proto::AccountOutcome]) {
    if accounts.is_empty() {
        println!("  no accounts configured and no entries in the store");
    }
    for a in accounts {
        let name = if a.configured {
            format!("\"{}\"", a.account)
        } else {
            format!("\"{}\" (no longer in the config)", a.account)
        };
        let state = if a.was_logged_in {
            "logged out"
        } else {
            "was already logged out"
        };
        let store = if a.store_entry_deleted {
            "store entry deleted"
        } else {
            "store entry NOT deleted"
        };
        let upstream = match proto::UpstreamRevocation::try_from(a.upstream).unwrap_or_default() {
            proto::UpstreamRevocation::Done => "revoked".to_owned(),
            proto::UpstreamRevocation::NothingToRevoke => "nothing to revoke".to_owned(),
            _ => format!("warning: {}", a.upstream_detail),
        };
        println!(
            "  {name}: {state}; memory wiped; {store}; {} watching app(s) told logged-out; therappai: {upstream}",
            a.watchers_notified
        );
    }
}

/// The exit status of a device logout or revoke: the store failing wins (nothing may be
/// left on the device), then an unconfirmed revocation.
fn check_outcomes(
    accounts: &[proto::AccountOutcome],
    listing_error: &str,
    revoke: bool,
) -> Result<(), CliError> {
    let store_failed: Vec<String> = accounts
        .iter()
        .filter(|a| !a.store_entry_deleted)
        .map(|a| format!("\"{}\": {}", a.account, a.error))
        .chain((!listing_error.is_empty()).then(|| listing_error.to_owned()))
        .collect();
    if !store_failed.is_empty() {
        return Err(CliError::Incomplete {
            code: exit::STORE,
            message: format!(
                "the secure store still holds tokens: {}",
                store_failed.join("; ")
            ),
        });
    }
    let unrevoked: Vec<String> = accounts
        .iter()
        .filter(|a| !a.error.is_empty())
        .map(|a| format!("\"{}\": {}", a.account, a.error))
        .collect();
    if revoke && !unrevoked.is_empty() {
        return Err(CliError::Incomplete {
            code: exit::REVOCATION_INCOMPLETE,
            message: format!(
                "tokens are wiped on this device, but {}",
                unrevoked.join("; ")
            ),
        });
    }
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    SessionState::from_wire(state).map_or("unknown", SessionState::as_str)
}

fn print_status(status: &proto::StatusResponse, socket: &std::path::Path) {
    println!(
        "therappai-broker {} on {}",
        status.broker_version,
        socket.display()
    );
    println!("store: {} ({})", status.store_backend, status.store_detail);
    if status.accounts.is_empty() {
        println!("No accounts configured: add an [[account]] section to the broker's config.");
        return;
    }
    println!();
    println!(
        "{:<16} {:<12} {:<28} {:<22} {:<14} LAST REFRESH",
        "ACCOUNT", "STATE", "EMAIL", "ACCESS TOKEN", "REFRESH TOKEN"
    );
    for a in &status.accounts {
        let access = match a.access_expires_at_unix {
            Some(t) => describe_until(from_unix(t)),
            None => "none in memory".to_owned(),
        };
        let last = match a.last_refresh_at_unix {
            Some(t) => format!(
                "{}: {}",
                describe_since(from_unix(t)),
                a.last_refresh_outcome
            ),
            None => "never".to_owned(),
        };
        println!(
            "{:<16} {:<12} {:<28} {:<22} {:<14} {}",
            a.name,
            state_name(a.state),
            a.email,
            access,
            if a.refresh_token_stored {
                "stored"
            } else {
                "none"
            },
            last
        );
    }
    for a in &status.accounts {
        if !a.store_problem.is_empty() {
            println!(
                "\n\"{}\": the current refresh token is only in memory ({}); the broker retries the write. Fix the store, or the account needs a login after a restart.",
                a.name, a.store_problem
            );
        }
        if let Some(t) = a.next_refresh_attempt_at_unix {
            println!(
                "\n\"{}\": the last refresh failed; the broker tries again {} (until then, requests that need a new token get UNAVAILABLE; valid cached tokens are still served).",
                a.name,
                match from_unix(t).duration_since(SystemTime::now()) {
                    Ok(left) => format!("in {}", short(left)),
                    Err(_) => "on the next request".to_owned(),
                }
            );
        }
    }
    for a in &status.accounts {
        match proto::SessionState::try_from(a.state).unwrap_or_default() {
            proto::SessionState::NeedsLogin | proto::SessionState::LoggedOut => {
                println!(
                    "\n\"{}\" needs a login: therappai-brokerctl login --account {}",
                    a.name, a.name
                );
            }
            _ => {}
        }
    }
}

fn status_json(status: &proto::StatusResponse, socket: &std::path::Path) -> serde_json::Value {
    let accounts: Vec<_> = status
        .accounts
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name,
                "email": a.email,
                "base_url": a.base_url,
                "state": state_name(a.state),
                "access_expires_at_unix": a.access_expires_at_unix,
                "refresh_token_stored": a.refresh_token_stored,
                "last_refresh_at_unix": a.last_refresh_at_unix,
                "last_refresh_outcome": a.last_refresh_outcome,
                "store_problem": a.store_problem,
                "next_refresh_attempt_at_unix": a.next_refresh_attempt_at_unix,
            })
        })
        .collect();
    serde_json::json!({
        "broker_version": status.broker_version,
        "socket": socket.display().to_string(),
        "store_backend": status.store_backend,
        "store_detail": status.store_detail,
        "accounts": accounts,
    })
}

fn from_unix(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn describe_until(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(left) => format!("for {}", short(left)),
        Err(_) => "expired".to_owned(),
    }
}

fn describe_since(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(ago) => format!("{} ago", short(ago)),
        Err(_) => "just now".to_owned(),
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
