//! The `vault` backend: the fleet's entries in an OpenBao (or Vault) KV version 2 mount, one
//! per account at `{mount}/data/{prefix}/{account}`, shared by every broker that logs in to
//! it. OpenBao is the fleet's coordination: the brokers never talk to each other.
//!
//! - Every write is a check-and-set (`options.cas`) on the version the broker read, so two
//!   brokers never overwrite each other's rotation; a broker that loses a race re-reads.
//! - The entry carries the fleet's current access token and a refresh lease (see
//!   [`entry`]); `refresh/fleet.rs` uses them so that a fleet makes one upstream refresh per
//!   access-token lifetime, and `fleet_watch.rs` polls each entry's version so a logout on one
//!   broker reaches the others within `poll_seconds`.
//! - A logout writes a tombstone (who, when, why) rather than deleting the entry: the other
//!   brokers can say where the logout came from, and versions never restart at 1.
//!
//! The [`Store`] methods block on the daemon's runtime (they run on its blocking pool, like
//! every store call); the refresher and the watcher use the async methods directly.

mod client;
pub mod config;
pub mod entry;

use super::{Backend, Op, Store, StoreError, check_account};
use crate::secret::RefreshToken;
use client::{Answer, VaultClient};
use config::VaultConfig;
use entry::{Ended, Entry, RawEntry};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::time::SystemTime;

/// Check-and-set rounds before a write gives up (each lost round means another broker wrote).
const MAX_CAS_ROUNDS: usize = 8;

/// A short, growing, jittered pause after a lost check-and-set round, so brokers that raced
/// do not race again in step (and a standby's lagging copy has time to catch up).
pub async fn conflict_pause(round: usize) {
    let base = 30 * (round as u64 + 1);
    let jitter = rand::random::<u64>() % base.max(1);
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
}

fn busy(op: Op) -> StoreError {
    StoreError::Vault {
        op,
        problem: "the entry kept changing under this broker's writes (other brokers of the fleet were writing it); try again".to_owned(),
        unavailable: true,
    }
}

/// The fleet's store.
#[derive(Debug)]
pub struct VaultStore {
    client: VaultClient,
    /// Who this broker is in leases and tombstones: `host/pid/nonce`.
    id: String,
    runtime: tokio::runtime::Handle,
}

/// What a read found: the entry (if any) and the version a write must name as `cas`
/// (0 when the entry has never been written).
#[derive(Debug)]
pub struct Read {
    pub version: u64,
    pub entry: Option<Entry>,
}

/// What became of a rotated token an earlier write-back could not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// The entry holds it now.
    Written,
    /// The session was ended (or the entry removed) meanwhile: the token must be dropped.
    Ended,
    /// The entry holds another session (a new login): the token must be dropped.
    Replaced,
}

/// The outcome of a check-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written as this version.
    Version(u64),
    /// Another broker wrote first: re-read.
    Conflict,
}

#[derive(Deserialize)]
struct KvRead {
    data: KvReadData,
}

#[derive(Deserialize)]
struct KvReadData {
    data: Option<RawEntry>,
    metadata: KvVersion,
}

#[derive(Deserialize)]
struct KvVersion {
    version: u64,
}

#[derive(Deserialize)]
struct KvWritten {
    data: KvVersion,
}

#[derive(Deserialize)]
struct KvMetadata {
    data: KvMetadataData,
}

#[derive(Deserialize)]
struct KvMetadataData {
    current_version: u64,
}

#[derive(Deserialize)]
struct KvList {
    data: KvListData,
}

#[derive(Deserialize)]
struct KvListData {
    keys: Vec<String>,
}

impl VaultStore {
    /// Logs in to OpenBao and checks that the broker may read and list its prefix, so a wrong
    /// address, credential or policy is a start error naming what to fix. Must be called on a
    /// thread of the daemon's runtime's blocking pool.
    pub fn open(config: VaultConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::Vault {
            op: Op::Open,
            problem: "the vault backend can only be opened by the daemon".to_owned(),
            unavailable: false,
        })?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown-host".to_owned());
        let store = Self {
            client: VaultClient::new(config)?,
            // pid alone repeats across containers sharing a hostname (pid 1 in each) and
            // across restarts; the nonce makes every broker process its own lease holder.
            id: format!(
                "{host}/{}/{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            runtime,
        };
        store.block_on(store.check_policy())?;
        let accounts = store.block_on(store.list(&Op::Open))?;
        tracing::info!(
            broker = %store.id,
            accounts = accounts.len(),
            "OpenBao answered; the fleet's entries are readable"
        );
        Ok(store)
    }

    /// Asks OpenBao which capabilities the broker's token has on its prefix
    /// (`sys/capabilities-self`, in every token's default policy), so a policy that forbids
    /// the path is a start error naming the path and the capability, not a failure at the
    /// first rotation.
    async fn check_policy(&self) -> Result<(), StoreError> {
        #[derive(Deserialize)]
        struct Capabilities {
            data: std::collections::HashMap<String, serde_json::Value>,
        }
        let probe = ".capability-probe";
        let data = format!(
            "{}/data/{}/{probe}",
            self.client.config.mount, self.client.config.prefix
        );
        let metadata = format!(
            "{}/metadata/{}/{probe}",
            self.client.config.mount, self.client.config.prefix
        );
        let body = serde_json::json!({ "paths": [data, metadata] });
        let answer = self
            .client
            .call(&Op::Open, Method::POST, "sys/capabilities-self", Some(body))
            .await?;
        let granted: Capabilities = self
            .expect_ok(&Op::Open, "sys/capabilities-self", "update", &answer)?
            .json(&Op::Open)?;
        let has = |path: &str, cap: &str| {
            granted
                .data
                .get(path)
                .and_then(|v| v.as_array())
                .is_some_and(|caps| {
                    caps.iter()
                        .any(|c| c.as_str() == Some(cap) || c.as_str() == Some("root"))
                })
        };
        let wanted = [
            (&data, "create"),
            (&data, "read"),
            (&data, "update"),
            (&metadata, "read"),
            (&metadata, "list"),
        ];
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(path, cap)| !has(path, cap))
            .map(|(path, cap)| format!("\"{cap}\" on {}", path.replace(probe, "*")))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let c = &self.client.config;
        Err(StoreError::Vault {
            op: Op::Open,
            problem: format!(
                "the broker's OpenBao policy lacks {}. Grant: path \"{m}/data/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }} and path \"{m}/metadata/{p}/*\" {{ capabilities = [\"read\", \"list\", \"delete\"] }} (the README's Fleets section has the whole policy)",
                missing.join(", "),
                m = c.mount,
                p = c.prefix
            ),
            unavailable: false,
        })
    }

    /// This broker's name in leases and tombstones.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// See [`VaultConfig::lease`].
    pub fn lease(&self) -> std::time::Duration {
        self.client.config.lease
    }

    /// See [`VaultConfig::poll_interval`].
    pub fn poll_interval(&self) -> std::time::Duration {
        self.client.config.poll_interval
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    fn data_path(&self, account: &str) -> String {
        let c = &self.client.config;
        format!("{}/data/{}/{account}", c.mount, c.prefix)
    }

    fn metadata_path(&self, account: &str) -> String {
        let c = &self.client.config;
        format!("{}/metadata/{}/{account}", c.mount, c.prefix)
    }

    /// The account's entry and its version.
    pub async fn read(&self, account: &str) -> Result<Read, StoreError> {
        check_account(account)?;
        let op = Op::Load(account.to_owned());
        let path = self.data_path(account);
        let answer = self.client.call(&op, Method::GET, &path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            self.absent_or_no_route(&op, &path, &answer)?;
            // Never written, or its newest version deleted by hand: a write still needs the
            // current version.
            let version = self.version(account).await?.unwrap_or(0);
            return Ok(Read {
                version,
                entry: None,
            });
        }
        let answer = self.expect_ok(&op, &path, "read", &answer)?;
        // The format first: a newer broker's entry may not even parse as this one's.
        let format = answer
            .json::<serde_json::Value>(&op)?
            .pointer("/data/data/format")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if format > entry::FORMAT {
            return Err(StoreError::Vault {
                op: op.clone(),
                problem: format!(
                    "the OpenBao entry {path} was written in format {format} by a newer broker; upgrade this broker"
                ),
                unavailable: false,
            });
        }
        let read: KvRead = answer.json(&op)?;
        let entry = match read.data.data {
            Some(raw) => Some(raw.into_entry().map_err(|why| StoreError::Vault {
                op: op.clone(),
                problem: format!("the OpenBao entry {path} cannot be used: {why}"),
                unavailable: false,
            })?),
            None => None,
        };
        Ok(Read {
            version: read.data.metadata.version,
            entry,
        })
    }

    /// Writes `entry` if the entry is still at version `cas` (0: it must not exist yet).
    pub async fn write(
        &self,
        account: &str,
        entry: &Entry,
        cas: u64,
    ) -> Result<Written, StoreError> {
        check_account(account)?;
        let op = Op::Save(account.to_owned());
        let path = self.data_path(account);
        let body = serde_json::json!({ "options": { "cas": cas }, "data": entry.to_data() });
        let answer = self
            .client
            .call(&op, Method::POST, &path, Some(body))
            .await?;
        if answer.status == StatusCode::BAD_REQUEST && answer.errors().contains("check-and-set") {
            return Ok(Written::Conflict);
        }
        let written: KvWritten = self
            .expect_ok(&op, &path, "create\", \"update", &answer)?
            .json(&op)?;
        Ok(Written::Version(written.data.version))
    }

    /// The entry's current version (cheap: no secret crosses the wire), `None` if it has none.
    pub async fn version(&self, account: &str) -> Result<Option<u64>, StoreError> {
        check_account(account)?;
        let op = Op::Load(account.to_owned());
        let path = self.metadata_path(account);
        let answer = self.client.call(&op, Method::GET, &path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            self.absent_or_no_route(&op, &path, &answer)?;
            return Ok(None);
        }
        let meta: KvMetadata = self.expect_ok(&op, &path, "read", &answer)?.json(&op)?;
        Ok(Some(meta.data.current_version))
    }

    /// Writes a rotated refresh token that an earlier write-back could not store, if the
    /// entry still holds the token it was rotated from (fingerprint `from`): anything else
    /// means the fleet moved on (a logout, a new login) and the late token must not win.
    pub async fn write_pending(
        &self,
        account: &str,
        token: &RefreshToken,
        from: &str,
    ) -> Result<Pending, StoreError> {
        for round in 0..MAX_CAS_ROUNDS {
            let read = self.read(account).await?;
            let held = read.entry.as_ref().and_then(|e| e.refresh.as_ref());
            match held {
                None => return Ok(Pending::Ended),
                Some(held) if held == token => return Ok(Pending::Written),
                Some(held) if held.fingerprint() != from => return Ok(Pending::Replaced),
                Some(_) => {}
            }
            let entry = Entry::session(token.duplicate(), &self.id);
            if let Written::Version(_) = self.write(account, &entry, read.version).await? {
                return Ok(Pending::Written);
            }
            conflict_pause(round).await;
        }
        Err(busy(Op::Save(account.to_owned())))
    }

    /// Writes a tombstone over whatever version is there (a logout wins over everything).
    /// Ok(true) when a live session's entry was ended.
    pub async fn end(&self, account: &str, reason: &str) -> Result<bool, StoreError> {
        for round in 0..MAX_CAS_ROUNDS {
            let read = self.read(account).await?;
            match read.entry {
                None => return Ok(false),
                Some(entry) if entry.refresh.is_none() => return Ok(false),
                Some(_) => {}
            }
            if let Written::Version(_) = self.end_at(account, read.version, reason).await? {
                return Ok(true);
            }
            conflict_pause(round).await;
        }
        Err(busy(Op::Delete(account.to_owned())))
    }

    /// Writes a tombstone only if the entry is still at `version`.
    pub async fn end_at(
        &self,
        account: &str,
        version: u64,
        reason: &str,
    ) -> Result<Written, StoreError> {
        let ended = Ended {
            by: self.id.clone(),
            at: SystemTime::now(),
            reason: reason.to_owned(),
        };
        self.write(account, &Entry::tombstone(ended, &self.id), version)
            .await
    }

    async fn list(&self, op: &Op) -> Result<Vec<String>, StoreError> {
        let c = &self.client.config;
        let path = format!("{}/metadata/{}/?list=true", c.mount, c.prefix);
        let answer = self.client.call(op, Method::GET, &path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            self.absent_or_no_route(op, &path, &answer)?;
            return Ok(Vec::new());
        }
        let list: KvList = self.expect_ok(op, &path, "list", &answer)?.json(op)?;
        // A key ending in '/' is a folder below the prefix: not one of the broker's entries.
        let mut keys: Vec<String> = list
            .data
            .keys
            .into_iter()
            .filter(|k| !k.ends_with('/') && check_account(k).is_ok())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// A 404 with an empty `errors` list is KV v2 saying "no such entry"; one with errors
    /// ("no handler for route") means the mount is wrong, and must never read as "logged out".
    fn absent_or_no_route(&self, op: &Op, path: &str, answer: &Answer) -> Result<(), StoreError> {
        let errors = answer.errors();
        if errors.is_empty() {
            return Ok(());
        }
        Err(StoreError::Vault {
            op: op.clone(),
            problem: format!(
                "OpenBao has no {path} ({errors}): check that [store.vault] mount = \"{}\" names a KV version 2 mount (`bao secrets list`)",
                self.client.config.mount
            ),
            unavailable: false,
        })
    }

    /// `answer` if it is a success; else the error an operator can act on.
    fn expect_ok<'a>(
        &self,
        op: &Op,
        path: &str,
        capability: &str,
        answer: &'a Answer,
    ) -> Result<&'a Answer, StoreError> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        let c = &self.client.config;
        let problem = if answer.status == StatusCode::FORBIDDEN {
            format!(
                "OpenBao denied the broker's token the \"{capability}\" capability on {path} (permission denied). Grant: path \"{m}/data/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }} and path \"{m}/metadata/{p}/*\" {{ capabilities = [\"read\", \"list\", \"delete\"] }} (the README's Fleets section has the whole policy)",
                m = c.mount,
                p = c.prefix
            )
        } else {
            format!(
                "OpenBao answered HTTP {} on {path}: {}",
                answer.status.as_u16(),
                answer.errors()
            )
        };
        Err(StoreError::Vault {
            op: op.clone(),
            problem,
            unavailable: answer.status.is_server_error(),
        })
    }
}

impl Store for VaultStore {
    fn backend(&self) -> Backend {
        Backend::Vault
    }

    fn describe(&self) -> String {
        let c = &self.client.config;
        format!(
            "OpenBao KV v2 at {} ({}/data/{}/ACCOUNT), shared by the fleet: entries outlive restarts and reboots of any broker, and a logout reaches every broker within {} s; this broker is {}",
            c.addresses.join(", "),
            c.mount,
            c.prefix,
            c.poll_interval.as_secs(),
            self.id
        )
    }

    fn load(&self, account: &str) -> Result<Option<RefreshToken>, StoreError> {
        let read = self.block_on(self.read(account))?;
        Ok(read.entry.and_then(|e| e.refresh))
    }

    /// A login's refresh token replaces whatever the entry held (a new session for the fleet).
    fn save(&self, account: &str, token: &RefreshToken) -> Result<(), StoreError> {
        self.block_on(async {
            for round in 0..MAX_CAS_ROUNDS {
                let read = self.read(account).await?;
                let entry = Entry::session(token.duplicate(), &self.id);
                if let Written::Version(_) = self.write(account, &entry, read.version).await? {
                    return Ok(());
                }
                conflict_pause(round).await;
            }
            Err(busy(Op::Save(account.to_owned())))
        })
    }

    fn delete(&self, account: &str) -> Result<bool, StoreError> {
        self.block_on(self.end(account, "logged out"))
    }

    fn accounts(&self) -> Result<Vec<String>, StoreError> {
        self.block_on(async {
            let mut live = Vec::new();
            for account in self.list(&Op::List).await? {
                if let Some(entry) = self.read(&account).await?.entry
                    && entry.refresh.is_some()
                {
                    live.push(account);
                }
            }
            Ok(live)
        })
    }
}
