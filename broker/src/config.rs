//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Every key is part of the user contract and documented in the README. Unknown keys are an
//! error that names the key and the file, so a typo never silently changes behaviour.

use crate::paths;
use crate::store::BackendChoice;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file, after validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gRPC socket is created.
    pub socket: PathBuf,
    pub store: StoreConfig,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    pub refresh: RefreshConfig,
    /// Bound on finishing in-flight calls after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

/// How and when access tokens are refreshed (`[refresh]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// Share of an access token's lifetime after which the background refresher replaces it.
    pub ahead_share: f64,
    /// Upstream attempts per refresh cycle (transient failures only are retried).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    pub backoff_initial: Duration,
    /// Cap on one retry delay.
    pub backoff_max: Duration,
    /// Cap on an honoured `Retry-After`.
    pub retry_after_max: Duration,
    /// After a cycle fails for transient reasons, no new cycle starts for this long.
    pub failure_backoff: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            ahead_share: 0.8,
            max_attempts: 3,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: BackendChoice,
    /// Keyring service name the entries are filed under.
    pub service: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `https://…/api/v1`, without a trailing slash.
    pub base_url: String,
    /// Extra trust anchor (PEM) for private deployments and tests.
    pub ca_file: Option<PathBuf>,
    /// Path under `base_url` of the refresh-token blacklist call, e.g. `/token/blacklist/`.
    pub revoke_path: Option<String>,
    /// Bound on each upstream HTTP call.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    pub name: String,
    pub email: String,
}

/// Why a configuration file was refused. Each message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (toml's message names the key and line).
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is well-formed TOML but not acceptable.
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    #[serde(default)]
    store: RawStore,
    upstream: RawUpstream,
    #[serde(default, rename = "account")]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    refresh: RawRefresh,
    shutdown_grace_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRefresh {
    ahead_share: Option<f64>,
    max_attempts: Option<u32>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    retry_after_max_seconds: Option<u64>,
    failure_backoff_seconds: Option<u64>,
}

impl RawRefresh {
    fn validate(self) -> Result<RefreshConfig, String> {
        let d = RefreshConfig::default();
        let ahead_share = self.ahead_share.unwrap_or(d.ahead_share);
        if !(0.1..=0.95).contains(&ahead_share) {
            return Err(format!(
                "[refresh] ahead_share must be between 0.1 and 0.95 (a share of the token lifetime), got {ahead_share}"
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(d.max_attempts);
        if !(1..=10).contains(&max_attempts) {
            return Err(format!(
                "[refresh] max_attempts must be between 1 and 10, got {max_attempts}"
            ));
        }
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let config = RefreshConfig {
            ahead_share,
            max_attempts,
            backoff_initial: ms(self.backoff_initial_ms, d.backoff_initial),
            backoff_max: ms(self.backoff_max_ms, d.backoff_max),
            retry_after_max: secs(self.retry_after_max_seconds, d.retry_after_max),
            failure_backoff: secs(self.failure_backoff_seconds, d.failure_backoff),
        };
        if config.backoff_initial > config.backoff_max {
            return Err("[refresh] backoff_initial_ms must not exceed backoff_max_ms".to_owned());
        }
        if config.failure_backoff > Duration::from_secs(3600) {
            return Err("[refresh] failure_backoff_seconds must be at most 3600".to_owned());
        }
        Ok(config)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<BackendChoice>,
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: String,
    ca_file: Option<PathBuf>,
    revoke_path: Option<String>,
    request_timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    email: String,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (the path only appears in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };

        let socket = match raw.socket {
            Some(socket) if socket.is_absolute() => socket,
            Some(socket) => {
                return Err(invalid(format!(
                    "`socket` must be an absolute path, got {}",
                    socket.display()
                )));
            }
            None => paths::default_socket_path().map_err(|e| invalid(e.to_string()))?,
        };

        let service = raw
            .store
            .service
            .unwrap_or_else(|| paths::KEYRING_SERVICE.to_owned());
        if service.is_empty() || !service.starts_with(paths::KEYRING_SERVICE) {
            return Err(invalid(format!(
                "[store] service must start with \"{}\" so entries are recognisably this broker's, got \"{service}\"",
                paths::KEYRING_SERVICE
            )));
        }

        let upstream = validate_upstream(raw.upstream).map_err(invalid)?;

        let mut accounts: Vec<AccountConfig> = Vec::new();
        for account in raw.accounts {
            validate_account_name(&account.name).map_err(invalid)?;
            if accounts.iter().any(|a| a.name == account.name) {
                return Err(invalid(format!(
                    "account \"{}\" is defined twice in [[account]]",
                    account.name
                )));
            }
            if !account.email.contains('@') {
                return Err(invalid(format!(
                    "[[account]] \"{}\": email \"{}\" is not an e-mail address",
                    account.name, account.email
                )));
            }
            accounts.push(AccountConfig {
                name: account.name,
                email: account.email,
            });
        }

        let refresh = raw.refresh.validate().map_err(invalid)?;

        Ok(Config {
            socket,
            refresh,
            store: StoreConfig {
                backend: raw.store.backend.unwrap_or(BackendChoice::Auto),
                service,
            },
            upstream,
            accounts,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(5)),
        })
    }

    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

fn validate_upstream(raw: RawUpstream) -> Result<UpstreamConfig, String> {
    let base_url = raw.upstream_base_url()?;
    let revoke_path = match raw.revoke_path {
        None => None,
        Some(p) if p.starts_with('/') && !p.contains("://") && !p.contains('?') => Some(p),
        Some(p) => {
            return Err(format!(
                "[upstream] revoke_path must be a path under base_url starting with '/', such as \"/token/blacklist/\", got \"{p}\""
            ));
        }
    };
    let timeout = raw.request_timeout_seconds.unwrap_or(10);
    if !(1..=120).contains(&timeout) {
        return Err(format!(
            "[upstream] request_timeout_seconds must be between 1 and 120, got {timeout}"
        ));
    }
    Ok(UpstreamConfig {
        base_url,
        ca_file: raw.ca_file,
        revoke_path,
        request_timeout: Duration::from_secs(timeout),
    })
}

impl RawUpstream {
    fn upstream_base_url(&self) -> Result<String, String> {
        let url = self.base_url.trim_end_matches('/');
        let Some(rest) = url.strip_prefix("https://") else {
            return Err(format!(
                "[upstream] base_url must start with https:// (tokens never travel over plain HTTP), got \"{}\"; for a private CA set [upstream] ca_file instead",
                self.base_url
            ));
        };
        if rest.is_empty() || rest.contains(['?', '#', '@', ' ']) {
            return Err(format!(
                "[upstream] base_url \"{}\" is not a plain https://host[:port]/path URL",
                self.base_url
            ));
        }
        Ok(url.to_owned())
    }
}

/// Account names appear in keyring entries, logs and CLI arguments: keep them boring.
pub fn validate_account_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name \"{name}\" must be 1-64 characters of letters, digits, '-', '_' or '.' (not starting with '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
socket = "/tmp/x/broker.sock"
[store]
backend = "keyutils"
[upstream]
base_url = "https://api.therappai.com/api/v1/"
[[account]]
name = "default"
email = "alice@example.com"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/therappai-broker.toml"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.upstream.base_url, "https://api.therappai.com/api/v1");
        assert_eq!(config.store.backend, BackendChoice::Keyutils);
        assert_eq!(config.store.service, "therappai-broker");
        assert_eq!(config.accounts[0].name, "default");
        assert_eq!(config.upstream.revoke_path, None);
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let text = GOOD.replace("[store]", "[store]\nbakend = \"auto\"");
        let message = parse(&text).expect_err("typo must fail").to_string();
        assert!(message.contains("bakend"), "{message}");
        assert!(message.contains("/etc/therappai-broker.toml"), "{message}");
    }

    #[test]
    fn http_base_url_is_refused() {
        let text = GOOD.replace("https://api", "http://api");
        let message = parse(&text).expect_err("http must fail").to_string();
        assert!(message.contains("must start with https://"), "{message}");
    }

    #[test]
    fn duplicate_and_odd_account_names_are_refused() {
        let dup = format!("{GOOD}\n[[account]]\nname = \"default\"\nemail = \"b@example.com\"\n");
        assert!(parse(&dup).is_err());
        let odd = GOOD.replace("name = \"default\"", "name = \"a b\"");
        assert!(parse(&odd).is_err());
    }

    #[test]
    fn revoke_path_must_be_a_path() {
        let text = GOOD.replace(
            "[upstream]",
            "[upstream]\nrevoke_path = \"https://elsewhere/\"",
        );
        assert!(parse(&text).is_err());
    }
}
