//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Every key is part of the user contract and documented in the README. Unknown keys are an
//! error that names the key and the file, so a typo never silently changes behaviour.

use crate::groups;
use crate::paths;
use crate::policy::{AdminRule, AllowRule, GroupRef, PolicyRules};
use crate::ratelimit::LoginLimits;
use crate::store::BackendChoice;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the gRPC socket is created.
    pub socket: PathBuf,
    /// Who may reach the socket at all (the first gate; policy is the second).
    pub socket_access: SocketAccess,
    /// `[[allow]]` and `[admin]`: the only part a reload (SIGHUP) changes.
    pub policy: PolicyRules,
    pub store: StoreConfig,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    pub refresh: RefreshConfig,
    /// Bound on finishing in-flight calls after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Bound, after the grace, on finishing refresh cycles, session ends and the last store
    /// write (the drain runs whatever the connections do).
    pub shutdown_drain: Duration,
    /// Failed-login limits (`[login_limits]`).
    pub login_limits: LoginLimits,
    /// Per-uid and per-connection limits on the socket (`[connection_limits]`).
    pub connection_limits: ConnectionLimits,
}

/// What one uid may hold open on the socket (`[connection_limits]`; see `admission.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub connections_per_uid: usize,
    pub calls_per_uid: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connections_per_uid: 128,
            calls_per_uid: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Ownership and modes of the socket and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    /// `socket_group`: the group the socket and its directory are given to.
    pub group: Option<GroupRef>,
    /// `socket_mode`: 0600 by default, 0660 with a `socket_group`.
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            group: None,
            mode: 0o600,
        }
    }
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
    /// Cap on the pause after failed cycles: no new cycle starts before it ends.
    pub failure_backoff: Duration,
    /// First pause after a failed cycle; doubles per consecutive failure, with jitter, up to
    /// `failure_backoff` (see `refresh::schedule::failure_pause`).
    pub failure_backoff_initial: Duration,
    /// A rejected-token report on a token younger than this is refused rather than
    /// refreshed: an allowed app cannot make the broker refresh in a loop.
    pub report_min_age: Duration,
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
            failure_backoff_initial: Duration::from_secs(1),
            report_min_age: Duration::from_secs(10),
        }
    }
}

impl SocketAccess {
    /// The directory lets in (read + search, never write) exactly the classes the socket
    /// mode lets in: 0700, 0750 with group access, 0755 with access for others.
    pub fn dir_mode(&self) -> u32 {
        let mut mode = 0o700;
        if self.mode & 0o060 != 0 {
            mode |= 0o050;
        }
        if self.mode & 0o006 != 0 {
            mode |= 0o005;
        }
        mode
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: BackendChoice,
    /// Keyring service name the entries are filed under.
    pub service: String,
    /// `[store] file`: the encrypted-file store's file (default under the state directory,
    /// see `paths::default_store_file`).
    pub file: Option<PathBuf>,
    /// `[store] key_file`: the encrypted-file store's key outside systemd (under systemd the
    /// credential `store-key` is used when this is not set).
    pub key_file: Option<PathBuf>,
    /// `[store.vault]`: the fleet's OpenBao, for `backend = "vault"`.
    pub vault: Option<crate::store::vault::config::VaultConfig>,
    /// `[store] call_timeout_seconds`: bound on each call the broker makes to the store, so
    /// a hanging keyring answers UNAVAILABLE instead of holding the account forever.
    pub call_timeout: Duration,
}

/// `[store] call_timeout_seconds` when the config does not set it.
pub const DEFAULT_STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `https://…/api/v1`, without a trailing slash.
    pub base_url: String,
    /// Extra trust anchor (PEM) for private deployments and tests.
    pub ca_file: Option<PathBuf>,
    /// Path under `base_url` of the refresh-token blacklist call, e.g. `/token/blacklist/`.
    pub revoke_path: Option<String>,
    /// Bound on each upstream HTTP call.
    pub request_timeout: Duration,
    /// `[upstream] proxy`: the only proxy used (the environment's `HTTPS_PROXY` and the
    /// like are ignored); `None` connects directly.
    pub proxy: Option<ProxyUrl>,
}

/// An `http://` or `https://` proxy URL. Its `Debug` and [`ProxyUrl::shown`] leave out any
/// `user:password@`, so a proxy's credentials never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: String,
    shown: String,
}

impl ProxyUrl {
    /// Parses and checks `text`: a scheme of `http` or `https`, a host, nothing after the
    /// port. The error never repeats the text (it may hold credentials).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "[upstream] proxy must be a URL such as \"http://proxy.example:3128\" (scheme http or https, a host, an optional port, nothing else): {why}"
            )
        };
        let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(&format!("the scheme is \"{}\"", url.scheme())));
        }
        let Some(host) = url.host_str() else {
            return Err(bad("it names no host"));
        };
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it has a path, query or fragment"));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let shown = format!("{}://{host}:{port}", url.scheme());
        Ok(Self {
            url: text.to_owned(),
            shown,
        })
    }

    /// The URL as configured, credentials included: for the HTTP client only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `scheme://host:port`, without credentials: for logs and messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
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
    /// The file, or the `ca_file` it names, can be changed by someone other than root and
    /// the broker's user (see `file_trust`).
    #[error("refusing config file {path}: {message}")]
    Untrusted { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    socket_mode: Option<String>,
    #[serde(default)]
    store: RawStore,
    upstream: RawUpstream,
    #[serde(default, rename = "account")]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    refresh: RawRefresh,
    shutdown_grace_seconds: Option<u64>,
    shutdown_drain_seconds: Option<u64>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    login_limits: RawLoginLimits,
    #[serde(default)]
    connection_limits: RawConnectionLimits,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnectionLimits {
    connections_per_uid: Option<usize>,
    calls_per_uid: Option<usize>,
    handshake_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
}

impl RawConnectionLimits {
    fn validate(self) -> Result<ConnectionLimits, String> {
        let d = ConnectionLimits::default();
        let count = |value: Option<usize>, default: usize, key: &str| match value {
            None => Ok(default),
            Some(n) if (1..=100_000).contains(&n) => Ok(n),
            Some(n) => Err(format!(
                "[connection_limits] {key} must be between 1 and 100000, got {n}"
            )),
        };
        let seconds = |value: Option<u64>, default: Duration, max: u64, key: &str| match value {
            None => Ok(default),
            Some(s) if (1..=max).contains(&s) => Ok(Duration::from_secs(s)),
            Some(s) => Err(format!(
                "[connection_limits] {key} must be between 1 and {max} seconds, got {s}"
            )),
        };
        Ok(ConnectionLimits {
            connections_per_uid: count(
                self.connections_per_uid,
                d.connections_per_uid,
                "connections_per_uid",
            )?,
            calls_per_uid: count(self.calls_per_uid, d.calls_per_uid, "calls_per_uid")?,
            handshake_timeout: seconds(
                self.handshake_timeout_seconds,
                d.handshake_timeout,
                300,
                "handshake_timeout_seconds",
            )?,
            idle_timeout: seconds(
                self.idle_timeout_seconds,
                d.idle_timeout,
                86_400,
                "idle_timeout_seconds",
            )?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    account: String,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    executables: Vec<PathBuf>,
    #[serde(default)]
    units: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLoginLimits {
    failures_per_uid: Option<u32>,
    failures_overall: Option<u32>,
    window_seconds: Option<u64>,
    lockout_seconds: Option<u64>,
    max_lockout_seconds: Option<u64>,
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
    failure_backoff_initial_ms: Option<u64>,
    report_min_age_seconds: Option<u64>,
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
            failure_backoff_initial: ms(self.failure_backoff_initial_ms, d.failure_backoff_initial),
            report_min_age: secs(self.report_min_age_seconds, d.report_min_age),
        };
        if config.report_min_age > Duration::from_secs(300) {
            return Err(format!(
                "[refresh] report_min_age_seconds must be at most 300 (0 acts on every report), got {}",
                config.report_min_age.as_secs()
            ));
        }
        if config.backoff_initial > config.backoff_max {
            return Err("[refresh] backoff_initial_ms must not exceed backoff_max_ms".to_owned());
        }
        if config.failure_backoff > Duration::from_secs(3600) {
            return Err("[refresh] failure_backoff_seconds must be at most 3600".to_owned());
        }
        if config.failure_backoff_initial > Duration::from_secs(3600) {
            return Err(
                "[refresh] failure_backoff_initial_ms must be at most 3600000 (an hour)".to_owned(),
            );
        }
        Ok(config)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<BackendChoice>,
    service: Option<String>,
    file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    call_timeout_seconds: Option<u64>,
    vault: Option<crate::store::vault::config::RawVault>,
}

impl RawStore {
    fn validate(self, service: String) -> Result<StoreConfig, String> {
        let backend = self.backend.unwrap_or(BackendChoice::Auto);
        let call_timeout = match self.call_timeout_seconds {
            None => DEFAULT_STORE_CALL_TIMEOUT,
            Some(s @ 1..=300) => Duration::from_secs(s),
            Some(s) => {
                return Err(format!(
                    "[store] call_timeout_seconds must be between 1 and 300, got {s}"
                ));
            }
        };
        for (key, path) in [("file", &self.file), ("key_file", &self.key_file)] {
            let Some(path) = path else { continue };
            if !path.is_absolute() {
                return Err(format!(
                    "[store] {key} must be an absolute path, got {}",
                    path.display()
                ));
            }
            // A key that has no effect would mislead whoever reads the config.
            if matches!(
                backend,
                BackendChoice::SecretService | BackendChoice::Keyutils | BackendChoice::Vault
            ) {
                return Err(format!(
                    "[store] {key} is used by backend = \"encrypted-file\" (or \"auto\") only, but backend = \"{}\"; remove {key} or change the backend",
                    backend.as_str()
                ));
            }
        }
        let vault = match (backend, self.vault) {
            (BackendChoice::Vault, Some(raw)) => Some(raw.validate()?),
            (BackendChoice::Vault, None) => {
                return Err("[store] backend = \"vault\" needs a [store.vault] section with address, prefix and auth (see the README's Fleets section)".to_owned());
            }
            (_, Some(_)) => {
                return Err(format!(
                    "[store.vault] is used by backend = \"vault\" only, but backend = \"{}\"; remove the section or set backend = \"vault\"",
                    backend.as_str()
                ));
            }
            (_, None) => None,
        };
        Ok(StoreConfig {
            backend,
            service,
            file: self.file,
            key_file: self.key_file,
            vault,
            call_timeout,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: String,
    ca_file: Option<PathBuf>,
    revoke_path: Option<String>,
    request_timeout_seconds: Option<u64>,
    proxy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    email: String,
}

impl Config {
    /// Reads and validates `path`, and checks that only root and the broker's own user can
    /// change it or its `[upstream] ca_file` (the config is policy).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let untrusted = |message: String| ConfigError::Untrusted {
            path: path.to_owned(),
            message,
        };
        crate::file_trust::check("config file", path).map_err(untrusted)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        if let Some(ca_file) = &config.upstream.ca_file {
            crate::file_trust::check("[upstream] ca_file", ca_file).map_err(untrusted)?;
        }
        Ok(config)
    }

    /// Validates `text` as if read from `path` (the path only appears in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_error_message(text, &e),
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
            .clone()
            .unwrap_or_else(|| paths::KEYRING_SERVICE.to_owned());
        if service.is_empty() || !service.starts_with(paths::KEYRING_SERVICE) {
            return Err(invalid(format!(
                "[store] service must start with \"{}\" so entries are recognisably this broker's, got \"{service}\"",
                paths::KEYRING_SERVICE
            )));
        }

        let store = raw.store.validate(service).map_err(invalid)?;
        let upstream = validate_upstream(raw.upstream).map_err(invalid)?;
        if let Some(vault) = &store.vault {
            // A lease shorter than one upstream call lets another broker refresh while the
            // holder's call is still out: two refreshes, and the loser's rotation kills the
            // session. Each attempt must fit in the lease with room for the write-back.
            let least = upstream.request_timeout + Duration::from_secs(2);
            if vault.lease < least {
                return Err(invalid(format!(
                    "[store.vault] lease_seconds ({}) must be at least [upstream] request_timeout_seconds + 2 ({} s), so a refresh can finish within its lease",
                    vault.lease.as_secs(),
                    least.as_secs()
                )));
            }
        }
        let socket_access =
            validate_socket_access(raw.socket_group, raw.socket_mode).map_err(invalid)?;
        let login_limits = validate_login_limits(raw.login_limits).map_err(invalid)?;
        let connection_limits = raw.connection_limits.validate().map_err(invalid)?;

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

        let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        let policy = PolicyRules {
            allow: raw
                .allow
                .into_iter()
                .enumerate()
                .map(|(i, rule)| validate_allow(i + 1, rule, &names))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            admin: raw.admin.map(validate_admin).transpose().map_err(invalid)?,
        };

        let refresh = raw.refresh.validate().map_err(invalid)?;
        let shutdown_drain = match raw.shutdown_drain_seconds.unwrap_or(10) {
            s @ 1..=120 => Duration::from_secs(s),
            s => {
                return Err(invalid(format!(
                    "shutdown_drain_seconds must be between 1 and 120, got {s}"
                )));
            }
        };

        Ok(Config {
            socket,
            socket_access,
            policy,
            refresh,
            store,
            upstream,
            accounts,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(5)),
            shutdown_drain,
            login_limits,
            connection_limits,
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
    let proxy = raw.proxy.as_deref().map(ProxyUrl::parse).transpose()?;
    Ok(UpstreamConfig {
        base_url,
        ca_file: raw.ca_file,
        revoke_path,
        request_timeout: Duration::from_secs(timeout),
        proxy,
    })
}

fn validate_login_limits(raw: RawLoginLimits) -> Result<LoginLimits, String> {
    let default = LoginLimits::default();
    let count = |value: Option<u32>, default: u32, key: &str| match value {
        None => Ok(default),
        Some(n) if (1..=10_000).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "[login_limits] {key} must be between 1 and 10000, got {n}"
        )),
    };
    // A week bounds every duration: longer only locks a typo'd config's users out for good.
    let seconds = |value: Option<u64>, default: Duration, key: &str| match value {
        None => Ok(default),
        Some(s) if (1..=7 * 86_400).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(format!(
            "[login_limits] {key} must be between 1 and 604800 seconds, got {s}"
        )),
    };
    let limits = LoginLimits {
        failures_per_uid: count(
            raw.failures_per_uid,
            default.failures_per_uid,
            "failures_per_uid",
        )?,
        failures_overall: count(
            raw.failures_overall,
            default.failures_overall,
            "failures_overall",
        )?,
        window: seconds(raw.window_seconds, default.window, "window_seconds")?,
        lockout: seconds(raw.lockout_seconds, default.lockout, "lockout_seconds")?,
        max_lockout: seconds(
            raw.max_lockout_seconds,
            default.max_lockout,
            "max_lockout_seconds",
        )?,
    };
    if limits.max_lockout < limits.lockout {
        return Err(format!(
            "[login_limits] max_lockout_seconds ({}) must be at least lockout_seconds ({})",
            limits.max_lockout.as_secs(),
            limits.lockout.as_secs()
        ));
    }
    Ok(limits)
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

fn validate_socket_access(
    group: Option<String>,
    mode: Option<String>,
) -> Result<SocketAccess, String> {
    let group = group
        .map(|name| {
            groups::gid_of(&name)
                .map(|gid| GroupRef { name, gid })
                .map_err(|e| format!("socket_group: {e}"))
        })
        .transpose()?;
    let mode = match mode {
        None if group.is_some() => 0o660,
        None => 0o600,
        Some(text) => {
            let parsed = u32::from_str_radix(text.trim_start_matches("0o"), 8).ok();
            match parsed {
                // Owner read+write is needed by the broker itself; execute and special bits
                // mean nothing on a socket and hint at a typo.
                Some(m) if m & !0o666 == 0 && m & 0o600 == 0o600 => m,
                _ => {
                    return Err(format!(
                        "socket_mode must be an octal string of read/write bits that includes the owner's, such as \"0660\" or \"0666\", got \"{text}\""
                    ));
                }
            }
        }
    };
    Ok(SocketAccess { group, mode })
}

fn resolve_groups(section: &str, names: Vec<String>) -> Result<Vec<GroupRef>, String> {
    names
        .into_iter()
        .map(|name| {
            groups::gid_of(&name)
                .map(|gid| GroupRef { name, gid })
                .map_err(|e| format!("{section} groups: {e}"))
        })
        .collect()
}

fn validate_allow(index: usize, raw: RawAllow, accounts: &[&str]) -> Result<AllowRule, String> {
    let section = format!("[[allow]] #{index}");
    if raw.account != "*" && !accounts.contains(&raw.account.as_str()) {
        return Err(format!(
            "{section}: account \"{}\" is not an [[account]] name; use one of them or \"*\"",
            raw.account
        ));
    }
    // An empty "who" would mean "nobody", which is surely not what was meant; "anyone" must
    // not be one typo away either.
    if raw.uids.is_empty() && raw.groups.is_empty() {
        return Err(format!(
            "{section}: names neither uids nor groups; say who it allows, e.g. uids = [1000]"
        ));
    }
    let mut executables = Vec::new();
    for exe in raw.executables {
        if !exe.is_absolute() {
            return Err(format!(
                "{section}: executable {} must be an absolute path",
                exe.display()
            ));
        }
        // The kernel reports the resolved path (/usr/bin/x for /bin/x on merged-/usr).
        executables.push(std::fs::canonicalize(&exe).unwrap_or(exe));
    }
    for unit in &raw.units {
        if unit.contains('/') || !unit.contains('.') {
            return Err(format!(
                "{section}: unit \"{unit}\" must be a full unit name such as \"therappai-sync.service\""
            ));
        }
    }
    Ok(AllowRule {
        account: raw.account,
        uids: raw.uids,
        groups: resolve_groups(&section, raw.groups)?,
        executables,
        units: raw.units,
    })
}

fn validate_admin(raw: RawAdmin) -> Result<AdminRule, String> {
    Ok(AdminRule {
        uids: raw.uids,
        groups: resolve_groups("[admin]", raw.groups)?,
    })
}

/// Longest part of the offending line a parse error quotes.
const QUOTED_LINE_MAX: usize = 160;

/// toml's message with the line and column, and the offending line with any URL's
/// `user:password@` masked. toml's own rendering quotes the line as it is, which put the
/// proxy password in the log for a typo on the `proxy` line (found by the `config` fuzz
/// target), and quotes a line of any length.
fn parse_error_message(text: &str, error: &toml::de::Error) -> String {
    let message = mask_userinfo(error.message().trim_end()).replace('\n', " ");
    let Some(span) = error.span() else {
        return format!("TOML parse error: {message}");
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut quoted: String = mask_userinfo(line.trim())
        .chars()
        .take(QUOTED_LINE_MAX)
        .collect();
    if quoted.chars().count() < line.trim().chars().count() {
        quoted.push('…');
    }
    format!(
        "TOML parse error at line {line_number}, column {column}: {message} (the line reads: {quoted})"
    )
}

/// `scheme://user:password@host` → `scheme://***@host`, for every URL in `text`. Masks up to
/// the last `@` before a quote or a space, whatever comes between (a malformed URL can still
/// hold a password: `http://?user:password@host`).
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
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
    fn report_min_age_defaults_to_10_s_and_is_bounded() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.refresh.report_min_age, Duration::from_secs(10));
        let off = parse(&format!("{GOOD}[refresh]\nreport_min_age_seconds = 0\n")).expect("0");
        assert_eq!(off.refresh.report_min_age, Duration::ZERO);
        let message = parse(&format!("{GOOD}[refresh]\nreport_min_age_seconds = 301\n"))
            .expect_err("above 300")
            .to_string();
        assert!(
            message.contains("report_min_age_seconds must be at most 300"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let text = GOOD.replace("[store]", "[store]\nbakend = \"auto\"");
        let message = parse(&text).expect_err("typo must fail").to_string();
        assert!(message.contains("bakend"), "{message}");
        assert!(message.contains("/etc/therappai-broker.toml"), "{message}");
    }

    /// Found while writing the `config` fuzz target (its seed proxy-typo.toml fails the old
    /// code): toml's message quoted the offending line whole,
    /// so a typo on the proxy line put the proxy's password in the log.
    #[test]
    fn a_parse_error_masks_url_credentials_and_keeps_the_line() {
        let text = GOOD.replace(
            "[upstream]",
            "[upstream]\nproxy = \"http://user:hunter2hunter2@proxy.example:3128\" x",
        );
        let message = parse(&text).expect_err("not TOML").to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("line 6, column 57"), "{message}");
        assert!(
            message.contains("proxy = \"http://***@proxy.example:3128\" x"),
            "{message}"
        );
        let odd = GOOD.replace(
            "[upstream]",
            "[upstream]\nproxy = \"http://?user:hunter2hunter2@proxy.example:3128\" x",
        );
        let message = parse(&odd).expect_err("not TOML").to_string();
        assert!(!message.contains("hunter2"), "{message}");
        let long = format!("socket = \"/x\" {}", "y".repeat(10_000));
        let message = parse(&long).expect_err("not TOML").to_string();
        assert!(message.len() < 600, "{message}");
    }

    #[test]
    fn store_call_timeout_defaults_and_is_bounded() {
        assert_eq!(
            parse(GOOD).expect("valid").store.call_timeout,
            DEFAULT_STORE_CALL_TIMEOUT
        );
        let two = GOOD.replace("[store]", "[store]\ncall_timeout_seconds = 2");
        assert_eq!(
            parse(&two).expect("valid").store.call_timeout,
            Duration::from_secs(2)
        );
        for bad in ["0", "301"] {
            let text = GOOD.replace("[store]", &format!("[store]\ncall_timeout_seconds = {bad}"));
            let message = parse(&text).expect_err(bad).to_string();
            assert!(
                message.contains("[store] call_timeout_seconds"),
                "{message}"
            );
            assert!(message.contains("/etc/therappai-broker.toml"), "{message}");
        }
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
    fn socket_group_and_mode_are_validated() {
        let config = parse(&format!("socket_group = \"root\"\n{GOOD}")).expect("valid");
        assert_eq!(config.socket_access.mode, 0o660);
        assert_eq!(config.socket_access.dir_mode(), 0o750);
        assert_eq!(config.socket_access.group.map(|g| g.gid), Some(0));
        assert_eq!(parse(GOOD).expect("valid").socket_access.dir_mode(), 0o700);
        let open = parse(&format!("socket_mode = \"0666\"\n{GOOD}")).expect("valid");
        assert_eq!(open.socket_access.dir_mode(), 0o755);
        for bad in ["0777", "0060", "rw", "0o1666"] {
            let text = format!("socket_mode = \"{bad}\"\n{GOOD}");
            let message = parse(&text).expect_err(bad).to_string();
            assert!(message.contains("socket_mode"), "{message}");
        }
        let text = format!("socket_group = \"therappai-no-such-group\"\n{GOOD}");
        assert!(
            parse(&text)
                .expect_err("missing group")
                .to_string()
                .contains("groupadd")
        );
    }

    #[test]
    fn allow_and_admin_rules_parse_and_are_checked() {
        let text = format!(
            "{GOOD}\n[[allow]]\naccount = \"default\"\nuids = [1000]\ngroups = [\"root\"]\nexecutables = [\"/usr/bin/therappai-desktop\"]\nunits = [\"therappai-sync.service\"]\n[admin]\nuids = [0]\n"
        );
        let config = parse(&text).expect("valid");
        let rule = &config.policy.allow[0];
        assert_eq!((rule.uids.as_slice(), rule.groups[0].gid), (&[1000][..], 0));
        assert_eq!(config.policy.admin.expect("admin").uids, [0]);
        for (bad, needle) in [
            ("account = \"nope\"\nuids = [1]", "not an [[account]]"),
            ("account = \"*\"", "neither uids nor groups"),
            (
                "account = \"*\"\nuids = [1]\nexecutables = [\"app\"]",
                "absolute",
            ),
            (
                "account = \"*\"\nuids = [1]\nunits = [\"sync\"]",
                "full unit name",
            ),
            ("account = \"*\"\nuid = [1]", "uid"),
        ] {
            let text = format!("{GOOD}\n[[allow]]\n{bad}\n");
            let message = parse(&text).expect_err(bad).to_string();
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn login_limits_default_and_override() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.login_limits, LoginLimits::default());
        let text = format!("{GOOD}\n[login_limits]\nfailures_per_uid = 3\nlockout_seconds = 2\n");
        let config = parse(&text).expect("valid limits");
        assert_eq!(config.login_limits.failures_per_uid, 3);
        assert_eq!(config.login_limits.lockout, Duration::from_secs(2));
        let bad =
            format!("{GOOD}\n[login_limits]\nlockout_seconds = 600\nmax_lockout_seconds = 60\n");
        let message = parse(&bad).expect_err("max < lockout").to_string();
        assert!(message.contains("max_lockout_seconds"), "{message}");
        let typo = format!("{GOOD}\n[login_limits]\nfailures = 3\n");
        assert!(parse(&typo).is_err());
    }

    #[test]
    fn encrypted_file_keys_parse_and_are_checked() {
        let text = GOOD.replace(
            "backend = \"keyutils\"",
            "backend = \"encrypted-file\"\nfile = \"/var/lib/x/tokens.enc\"\nkey_file = \"/etc/x/store.key\"",
        );
        let store = parse(&text).expect("valid").store;
        assert_eq!(store.backend, BackendChoice::EncryptedFile);
        assert_eq!(
            store.file.as_deref(),
            Some(Path::new("/var/lib/x/tokens.enc"))
        );
        assert_eq!(
            store.key_file.as_deref(),
            Some(Path::new("/etc/x/store.key"))
        );
        let relative = text.replace("/etc/x/store.key", "store.key");
        let message = parse(&relative).expect_err("relative").to_string();
        assert!(
            message.contains("key_file must be an absolute path"),
            "{message}"
        );
        let unused = GOOD.replace("[store]", "[store]\nkey_file = \"/etc/x/store.key\"");
        let message = parse(&unused).expect_err("no effect").to_string();
        assert!(message.contains("remove key_file"), "{message}");
        let auto = GOOD.replace("backend = \"keyutils\"", "key_file = \"/etc/x/k\"");
        assert_eq!(
            parse(&auto).expect("auto").store.backend,
            BackendChoice::Auto
        );
    }

    #[test]
    fn proxy_is_checked_and_its_credentials_never_shown() {
        assert_eq!(parse(GOOD).expect("valid").upstream.proxy, None);
        let text = GOOD.replace(
            "[upstream]",
            "[upstream]\nproxy = \"http://user:hunter2@proxy.example:3128\"",
        );
        let proxy = parse(&text).expect("valid").upstream.proxy.expect("proxy");
        assert_eq!(proxy.shown(), "http://proxy.example:3128");
        assert_eq!(format!("{proxy:?}"), "http://proxy.example:3128");
        assert_eq!(proxy.expose(), "http://user:hunter2@proxy.example:3128");
        for bad in [
            "socks5://user:hunter2@proxy.example:1080",
            "http://user:hunter2@proxy.example:3128/path",
            "proxy.example:3128",
            "http://",
        ] {
            let text = GOOD.replace("[upstream]", &format!("[upstream]\nproxy = \"{bad}\""));
            let message = parse(&text).expect_err(bad).to_string();
            assert!(message.contains("[upstream] proxy must be"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
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
