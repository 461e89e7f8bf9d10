//! One account's entry in OpenBao, shared by every broker of the fleet: the refresh token,
//! the fleet's current access token (so the other brokers serve it instead of refreshing),
//! the refresh claim (lease), and, after a logout, a tombstone saying who ended the session.
//!
//! Stored as KV version 2 data with flat string and number fields, version `format` = 1.
//! Every write is a check-and-set on the version read, so two brokers never overwrite each
//! other's rotation.

use crate::secret::{AccessToken, RefreshToken};
use crate::upstream::IssuedAccess;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The format written; a broker refuses an entry of a newer one rather than misread it.
pub(super) const FORMAT: u64 = 1;

/// What one account's entry holds.
#[derive(Debug, Default)]
pub struct Entry {
    /// The refresh token; `None` once the session was logged out (see `ended`).
    pub refresh: Option<RefreshToken>,
    /// The fleet's current access token for `refresh`, if one was issued.
    pub access: Option<IssuedAccess>,
    /// Which broker is refreshing right now, until when.
    pub lease: Option<Lease>,
    /// Set by a logout, revoke or rejected token: who ended the session, when and why.
    pub ended: Option<Ended>,
    /// The broker that wrote this version (for logs and status).
    pub written_by: String,
}

/// A broker's claim on the account's next refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub until: SystemTime,
}

/// How a session ended, as the other brokers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub by: String,
    pub at: SystemTime,
    pub reason: String,
}

impl Entry {
    /// A live session's entry holding `refresh` only.
    pub fn session(refresh: RefreshToken, written_by: &str) -> Self {
        Self {
            refresh: Some(refresh),
            written_by: written_by.to_owned(),
            ..Self::default()
        }
    }

    /// A tombstone: the session ended.
    pub fn tombstone(ended: Ended, written_by: &str) -> Self {
        Self {
            ended: Some(ended),
            written_by: written_by.to_owned(),
            ..Self::default()
        }
    }

    /// The lease, when another broker than `me` holds it. Whether it still stands is the
    /// waiter's call, by its own clock (see `refresh/fleet.rs`), never the holder's `until`.
    pub fn lease_of_other(&self, me: &str) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.holder != me)
    }

    /// The KV v2 `data` object. Holds the secrets in the clear: it goes into one request
    /// body, nowhere else.
    pub fn to_data(&self) -> serde_json::Value {
        let mut data = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            data.insert(k.to_owned(), v);
        };
        put("format", FORMAT.into());
        put("written_by", self.written_by.clone().into());
        if let Some(refresh) = &self.refresh {
            put("refresh_token", refresh.expose().into());
        }
        if let Some(access) = &self.access {
            put("access_token", access.token.expose().into());
            put("access_expires_at", unix(access.expires_at).into());
            put("access_received_at", unix(access.received_at).into());
        }
        if let Some(lease) = &self.lease {
            put("lease_holder", lease.holder.clone().into());
            put("lease_until", unix(lease.until).into());
        }
        if let Some(ended) = &self.ended {
            put("ended_by", ended.by.clone().into());
            put("ended_at", unix(ended.at).into());
            put("ended_reason", ended.reason.clone().into());
        }
        serde_json::Value::Object(data)
    }
}

/// The KV v2 `data` object as read; the strings move into secret types at once.
#[derive(Deserialize)]
pub(super) struct RawEntry {
    #[serde(default)]
    format: u64,
    #[serde(default)]
    written_by: String,
    refresh_token: Option<String>,
    access_token: Option<String>,
    access_expires_at: Option<u64>,
    access_received_at: Option<u64>,
    lease_holder: Option<String>,
    lease_until: Option<u64>,
    ended_by: Option<String>,
    ended_at: Option<u64>,
    ended_reason: Option<String>,
}

impl std::fmt::Debug for RawEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawEntry([redacted])")
    }
}

impl RawEntry {
    /// The entry, or why it cannot be used (without any of its values).
    pub fn into_entry(self) -> Result<Entry, String> {
        if self.format > FORMAT {
            return Err(format!(
                "it was written in format {} by a newer broker ({}); upgrade this broker",
                self.format, self.written_by
            ));
        }
        let access = match (self.access_token, self.access_expires_at) {
            (Some(token), Some(expires)) => Some(IssuedAccess {
                token: AccessToken::new(token),
                expires_at: from_unix(expires),
                received_at: from_unix(self.access_received_at.unwrap_or(expires)),
            }),
            _ => None,
        };
        let lease = match (self.lease_holder, self.lease_until) {
            (Some(holder), Some(until)) => Some(Lease {
                holder,
                until: from_unix(until),
            }),
            _ => None,
        };
        let ended = self.ended_by.map(|by| Ended {
            by,
            at: from_unix(self.ended_at.unwrap_or(0)),
            reason: self.ended_reason.unwrap_or_default(),
        });
        let refresh = self
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(RefreshToken::new);
        if refresh.is_none() && ended.is_none() {
            return Err("it holds neither a refresh token nor a logout record".to_owned());
        }
        Ok(Entry {
            refresh,
            access,
            lease,
            ended,
            written_by: self.written_by,
        })
    }
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_the_round_trip_and_its_debug_shows_no_token() {
        let now = from_unix(1_800_000_000);
        let entry = Entry {
            refresh: Some(RefreshToken::new("refresh-secret".to_owned())),
            access: Some(IssuedAccess {
                token: AccessToken::new("access-secret".to_owned()),
                expires_at: now + Duration::from_secs(300),
                received_at: now,
            }),
            lease: Some(Lease {
                holder: "host-a/42".to_owned(),
                until: now + Duration::from_secs(60),
            }),
            ended: None,
            written_by: "host-a/42".to_owned(),
        };
        let raw: RawEntry = serde_json::from_value(entry.to_data()).expect("reads back");
        let back = raw.into_entry().expect("valid");
        assert_eq!(
            back.refresh.as_ref().map(|r| r.expose()),
            Some("refresh-secret")
        );
        let access = back.access.as_ref().expect("access");
        assert_eq!(access.token.expose(), "access-secret");
        assert_eq!(access.expires_at, now + Duration::from_secs(300));
        assert_eq!(back.lease, entry.lease);
        assert!(back.lease_of_other("host-b/7").is_some());
        assert!(back.lease_of_other("host-a/42").is_none());
        let shown = format!("{back:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_tombstone_has_no_token_and_an_empty_entry_is_refused() {
        let ended = Ended {
            by: "host-c/9".to_owned(),
            at: from_unix(1_800_000_000),
            reason: "logged out".to_owned(),
        };
        let raw: RawEntry =
            serde_json::from_value(Entry::tombstone(ended.clone(), "host-c/9").to_data())
                .expect("reads back");
        let back = raw.into_entry().expect("valid");
        assert!(back.refresh.is_none());
        assert_eq!(back.ended, Some(ended));
        let raw: RawEntry =
            serde_json::from_value(serde_json::json!({"format": 1})).expect("parses");
        assert!(raw.into_entry().is_err());
        let raw: RawEntry =
            serde_json::from_value(serde_json::json!({"format": 2, "refresh_token": "x"}))
                .expect("parses");
        assert!(raw.into_entry().expect_err("newer").contains("upgrade"));
    }
}
