//! Audit events: one structured event per grant, denial and admin action, on the tracing
//! target `audit`, so they can be routed and filtered on their own.
//!
//! Every event carries the peer's uid, gid, pid, exe and unit (fields `peer_uid`, `peer_gid`,
//! `peer_pid`, `peer_exe`, `peer_unit`), the account, the rpc, the
//! decision and the rule that made it. Denials and admin actions are always logged at
//! warn/info (denials at most ten per uid per second, counting the dropped in `suppressed`).
//! Token and status grants are rate-limited: at most one info event per (uid,
//! exe, account, rpc) per minute; the ones in between go out at debug level
//! (`RUST_LOG=audit=debug` shows them all) and the next info event counts them in
//! `suppressed`. Never carries a token.

use crate::peer::PeerIdentity;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The tracing target of every audit event (journald also marks them `AUDIT=1`).
pub const TARGET: &str = "audit";

/// At most one info-level grant event per key per this window.
pub const GRANT_WINDOW: Duration = Duration::from_secs(60);
/// Past this many keys, windows that have ended are forgotten.
const MAX_KEYS: usize = 4096;

type GrantKey = (u32, Option<std::path::PathBuf>, String, &'static str);

/// At most [`DENY_BURST`] warn-level denial events per uid per this window, so a denied peer
/// cannot flood the log; the next logged event counts the ones dropped in `suppressed`.
pub const DENY_WINDOW: Duration = Duration::from_secs(1);
pub const DENY_BURST: u64 = 10;

#[derive(Debug, Default)]
pub struct Audit {
    grants: Mutex<HashMap<GrantKey, (Instant, u64)>>,
    /// Per uid: window start, events logged in it, events dropped since the last logged one.
    denials: Mutex<HashMap<u32, (Instant, u64, u64)>>,
}

/// Whether a denial by `uid` at `now` is logged: `Some(dropped since the last one)` or `None`.
fn admit_denial(
    map: &Mutex<HashMap<u32, (Instant, u64, u64)>>,
    uid: u32,
    now: Instant,
) -> Option<u64> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() > MAX_KEYS {
        map.retain(|_, (start, _, _)| now.duration_since(*start) < DENY_WINDOW);
    }
    let (start, logged, dropped) = map.entry(uid).or_insert((now, 0, 0));
    if now.duration_since(*start) >= DENY_WINDOW {
        (*start, *logged) = (now, 0);
    }
    if *logged < DENY_BURST {
        *logged += 1;
        Some(std::mem::take(dropped))
    } else {
        *dropped += 1;
        None
    }
}

/// One rate-limit window per key: `Some(n)` (log, with `n` dropped since the last event) or
/// `None` (drop). Past `MAX_KEYS` keys, ended windows are forgotten.
fn admit_in<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, (Instant, u64)>>,
    key: K,
    now: Instant,
    window: Duration,
) -> Option<u64> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() > MAX_KEYS {
        map.retain(|_, (start, _)| now.duration_since(*start) < window);
    }
    match map.get_mut(&key) {
        Some((start, count)) if now.duration_since(*start) < window => {
            *count += 1;
            None
        }
        Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
        None => {
            map.insert(key, (now, 0));
            Some(0)
        }
    }
}

fn pid(peer: &PeerIdentity) -> String {
    peer.pid
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Audit {
    /// A token or status grant (rate-limited, see the module doc).
    pub fn grant(&self, peer: &PeerIdentity, rpc: &'static str, account: &str, rule: &str) {
        let key = (peer.uid, peer.exe.clone(), account.to_owned(), rpc);
        let suppressed = self.admit(key, Instant::now());
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = (
            peer.uid,
            peer.gid,
            pid(peer),
            peer.exe_display(),
            peer.unit_display(),
        );
        match suppressed {
            Some(suppressed) => {
                tracing::info!(target: "audit", peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, account, rpc, decision = "allow", rule, suppressed, "granted")
            }
            None => {
                tracing::debug!(target: "audit", peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, account, rpc, decision = "allow", rule, "granted (rate-limited)")
            }
        }
    }

    /// Whether a grant with `key` at `now` gets an info event: `Some(n)` with the number of
    /// grants suppressed since the last one, or `None` (suppressed: debug only).
    fn admit(&self, key: GrantKey, now: Instant) -> Option<u64> {
        admit_in(&self.grants, key, now, GRANT_WINDOW)
    }

    /// A denial: at most [`DENY_BURST`] warn events per uid per [`DENY_WINDOW`], counting the
    /// dropped.
    pub fn deny(&self, peer: &PeerIdentity, rpc: &str, account: &str, rule: &str) {
        let Some(suppressed) = admit_denial(&self.denials, peer.uid, Instant::now()) else {
            return;
        };
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = (
            peer.uid,
            peer.gid,
            pid(peer),
            peer.exe_display(),
            peer.unit_display(),
        );
        tracing::warn!(target: "audit", peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, account, rpc, decision = "deny", rule, suppressed, "denied");
    }

    /// An admin action that policy allowed, with its outcome ("ok" or an error reason):
    /// always logged, never sampled.
    pub fn admin(&self, peer: &PeerIdentity, rpc: &str, account: &str, rule: &str, outcome: &str) {
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = (
            peer.uid,
            peer.gid,
            pid(peer),
            peer.exe_display(),
            peer.unit_display(),
        );
        tracing::info!(target: "audit", peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, account, rpc, decision = "allow", rule, outcome, "admin action");
    }
}

/// A fleet's session ended on another broker (logout, revoke, rejected token), and this
/// broker followed: its memory is wiped and its watchers told.
pub fn session_ended_elsewhere(account: &str, reason: &str) {
    tracing::warn!(target: "audit", account, rpc = "fleet", decision = "session-ended", reason, "session ended by another broker of the fleet");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grant_event_per_key_per_window_counting_the_rest() {
        let audit = Audit::default();
        let key = |uid| (uid, None, "default".to_owned(), "GetAccessToken");
        let t0 = Instant::now();
        assert_eq!(audit.admit(key(1), t0), Some(0));
        assert_eq!(audit.admit(key(1), t0 + Duration::from_secs(1)), None);
        assert_eq!(audit.admit(key(1), t0 + Duration::from_secs(2)), None);
        assert_eq!(
            audit.admit(key(2), t0),
            Some(0),
            "another uid has its own window"
        );
        assert_eq!(audit.admit(key(1), t0 + GRANT_WINDOW), Some(2));
    }

    /// Issue 11, defect 4: denials were logged in full, never rate limited.
    #[test]
    fn denials_are_rate_limited_per_uid_counting_the_dropped() {
        let audit = Audit::default();
        let t0 = Instant::now();
        let deny = |uid, at| admit_denial(&audit.denials, uid, at);
        for _ in 0..DENY_BURST {
            assert_eq!(deny(7, t0), Some(0));
        }
        assert_eq!(deny(7, t0), None);
        assert_eq!(deny(7, t0), None);
        assert_eq!(deny(8, t0), Some(0), "another uid is still logged");
        assert_eq!(deny(7, t0 + DENY_WINDOW), Some(2));
    }
}
