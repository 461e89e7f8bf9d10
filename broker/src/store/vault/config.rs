//! `[store.vault]`: where the fleet's OpenBao (or Vault) is and how the broker logs in to it.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated `[store.vault]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// `https://host:port` of each node (or one load balancer), tried in order.
    pub addresses: Vec<String>,
    /// Extra trust anchor (PEM) for OpenBao's certificate.
    pub ca_file: Option<PathBuf>,
    /// The KV version 2 mount, e.g. `secret`.
    pub mount: String,
    /// One entry per account below this path, e.g. `therappai-broker/prod`.
    pub prefix: String,
    /// How the broker gets its OpenBao token.
    pub auth: VaultAuth,
    /// How often each account's entry is checked for a logout, login or rotation made by
    /// another broker of the fleet (the bound on how late a fleet-wide logout is noticed).
    pub poll_interval: Duration,
    /// How long a broker may hold an account's refresh claim (the lease) before another
    /// broker may take over; longer than a whole refresh cycle can take.
    pub lease: Duration,
    /// Bound on each call to OpenBao.
    pub request_timeout: Duration,
}

/// `auth = "approle" | "token_file"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// AppRole login with the role_id and secret_id read from files at each login.
    AppRole {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    /// A token another program keeps fresh in a file (e.g. OpenBao Agent's sink).
    TokenFile { token_file: PathBuf },
}

/// One or several addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Addresses {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    address: Addresses,
    ca_file: Option<PathBuf>,
    mount: Option<String>,
    prefix: String,
    auth: String,
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    poll_seconds: Option<u64>,
    lease_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
}

impl RawVault {
    pub(crate) fn validate(self) -> Result<VaultConfig, String> {
        let addresses = match self.address {
            Addresses::One(a) => vec![a],
            Addresses::Many(a) => a,
        };
        if addresses.is_empty() {
            return Err("[store.vault] address must name at least one https:// URL".to_owned());
        }
        let addresses = addresses
            .into_iter()
            .map(|a| {
                if a.starts_with("https://") && a.len() > "https://".len() {
                    Ok(a.trim_end_matches('/').to_owned())
                } else {
                    Err(format!(
                        "[store.vault] address must be https:// (OpenBao carries the fleet's refresh tokens), got {a:?}"
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mount = self.mount.unwrap_or_else(|| "secret".to_owned());
        let prefix = self.prefix.trim_matches('/').to_owned();
        for (key, value) in [("mount", mount.as_str()), ("prefix", prefix.as_str())] {
            let ok = !value.is_empty()
                && value.split('/').all(|part| {
                    !part.is_empty()
                        && part != "."
                        && part != ".."
                        && part
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                });
            if !ok {
                return Err(format!(
                    "[store.vault] {key} must be a path of letters, digits, '-', '_' and '.' separated by '/', got {value:?}"
                ));
            }
        }
        let absolute = |key: &str, path: Option<PathBuf>| -> Result<PathBuf, String> {
            let path =
                path.ok_or_else(|| format!("[store.vault] auth = \"{}\" needs {key}", self.auth))?;
            check_absolute(key, &path)?;
            Ok(path)
        };
        let auth = match self.auth.as_str() {
            "approle" => {
                if self.token_file.is_some() {
                    return Err("[store.vault] token_file is used by auth = \"token_file\" only; remove it or change auth".to_owned());
                }
                VaultAuth::AppRole {
                    role_id_file: absolute("role_id_file", self.role_id_file)?,
                    secret_id_file: absolute("secret_id_file", self.secret_id_file)?,
                }
            }
            "token_file" => {
                if self.role_id_file.is_some() || self.secret_id_file.is_some() {
                    return Err("[store.vault] role_id_file and secret_id_file are used by auth = \"approle\" only; remove them or change auth".to_owned());
                }
                VaultAuth::TokenFile {
                    token_file: absolute("token_file", self.token_file)?,
                }
            }
            other => {
                return Err(format!(
                    "[store.vault] auth must be \"approle\" or \"token_file\", got {other:?}"
                ));
            }
        };
        if let Some(ca) = &self.ca_file {
            check_absolute("ca_file", ca)?;
        }
        let poll = self.poll_seconds.unwrap_or(5);
        if !(1..=60).contains(&poll) {
            return Err(format!(
                "[store.vault] poll_seconds must be between 1 and 60, got {poll}"
            ));
        }
        let lease = self.lease_seconds.unwrap_or(60);
        if !(5..=600).contains(&lease) {
            return Err(format!(
                "[store.vault] lease_seconds must be between 5 and 600, got {lease}"
            ));
        }
        let timeout = self.request_timeout_seconds.unwrap_or(5);
        if !(1..=60).contains(&timeout) {
            return Err(format!(
                "[store.vault] request_timeout_seconds must be between 1 and 60, got {timeout}"
            ));
        }
        Ok(VaultConfig {
            addresses,
            ca_file: self.ca_file,
            mount,
            prefix,
            auth,
            poll_interval: Duration::from_secs(poll),
            lease: Duration::from_secs(lease),
            request_timeout: Duration::from_secs(timeout),
        })
    }
}

fn check_absolute(key: &str, path: &Path) -> Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "[store.vault] {key} must be an absolute path, got {}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VaultConfig, String> {
        let raw: RawVault = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate()
    }

    #[test]
    fn approle_section_with_defaults() {
        let config = parse(
            r#"
            address = "https://bao.internal:8200/"
            prefix = "/therappai-broker/prod/"
            auth = "approle"
            role_id_file = "/etc/therappai-broker/bao-role-id"
            secret_id_file = "/run/credentials/therappai-broker.service/bao-secret-id"
            "#,
        )
        .expect("valid");
        assert_eq!(config.addresses, ["https://bao.internal:8200"]);
        assert_eq!(config.mount, "secret");
        assert_eq!(config.prefix, "therappai-broker/prod");
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert!(matches!(config.auth, VaultAuth::AppRole { .. }));
    }

    #[test]
    fn plain_http_and_odd_paths_are_refused_with_the_key_named() {
        let base = "prefix = \"p\"\nauth = \"token_file\"\ntoken_file = \"/t\"\n";
        let err = parse(&format!("address = \"http://bao:8200\"\n{base}")).expect_err("http");
        assert!(err.contains("https://"), "{err}");
        let err = parse("address = \"https://b\"\nprefix = \"a/../b\"\nauth = \"token_file\"\ntoken_file = \"/t\"")
            .expect_err("dotdot");
        assert!(err.contains("prefix"), "{err}");
        let err = parse(
            "address = \"https://b\"\nprefix = \"p\"\nauth = \"approle\"\nrole_id_file = \"/r\"",
        )
        .expect_err("no secret_id_file");
        assert!(err.contains("secret_id_file"), "{err}");
        let err = parse("address = [\"https://a\", \"https://b\"]\nprefix = \"p\"\nauth = \"token_file\"\ntoken_file = \"t\"")
            .expect_err("relative");
        assert!(err.contains("absolute"), "{err}");
    }
}
