//! Audit events: one structured event per grant, denial, admin action, login lockout and
//! ended session, on the tracing target `audit`, so they can be routed and filtered on their
//! own. They are emitted from this module only, with one field schema.
//!
//! Every event starts with `event` (what happened: `granted`, `denied`, `admin-action`,
//! `watch-denied`, `login-refused`, `login-lockout`, `session-ended`,
//! `revocation-incomplete`, `store-search-failed`, `session-ended-elsewhere`), `rpc` (the
//! call, or the action behind the event: `logout`, `revoke`, `fleet`) and `account` (empty
//! when none). Events about a caller carry `peer_uid`, and those that decide on one the rest
//! of the peer (`peer_gid`, `peer_pid`, `peer_exe`, `peer_unit`), the `decision` and the
//! `rule` that made it; the others add what is specific to them. Denials and admin actions are always logged at
//! warn/info (denials at most ten per uid per second, counting the dropped in `suppressed`).
//! Token and status grants are rate-limited: at most one info event per (uid,
//! exe, account, rpc) per minute; the ones in between go out at debug level
//! (`RUST_LOG=audit=debug` shows them all) and the next info event counts them in
//! `suppressed`. Never carries a token.

use crate::peer::PeerIdentity;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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

/// The peer's fields of an event: uid, gid, pid, exe and unit.
fn peer_fields(peer: &PeerIdentity) -> (u32, u32, String, String, &str) {
    let pid = peer
        .pid
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    (
        peer.uid,
        peer.gid,
        pid,
        peer.exe_display(),
        peer.unit_display(),
    )
}

impl Audit {
    /// A token or status grant (rate-limited, see the module doc).
    pub fn grant(&self, peer: &PeerIdentity, rpc: &'static str, account: &str, rule: &str) {
        let key = (peer.uid, peer.exe.clone(), account.to_owned(), rpc);
        let suppressed = self.admit(key, Instant::now());
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = peer_fields(peer);
        match suppressed {
            Some(suppressed) => {
                tracing::info!(target: TARGET, event = "granted", rpc, account, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, decision = "allow", rule, suppressed, "granted")
            }
            None => {
                tracing::debug!(target: TARGET, event = "granted", rpc, account, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, decision = "allow", rule, "granted (rate-limited)")
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
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = peer_fields(peer);
        tracing::warn!(target: TARGET, event = "denied", rpc, account, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, decision = "deny", rule, suppressed, "denied");
    }

    /// An admin action that policy allowed, with its outcome ("ok" or an error reason):
    /// always logged, never sampled.
    pub fn admin(&self, peer: &PeerIdentity, rpc: &str, account: &str, rule: &str, outcome: &str) {
        let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = peer_fields(peer);
        tracing::info!(target: TARGET, event = "admin-action", rpc, account, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, decision = "allow", rule, outcome, "admin action");
    }
}

/// A fleet's session ended on another broker (logout, revoke, rejected token), and this
/// broker followed: its memory is wiped and its watchers told.
pub fn session_ended_elsewhere(account: &str, reason: &str) {
    tracing::warn!(target: TARGET, event = "session-ended-elsewhere", rpc = "fleet", account, reason, "session ended by another broker of the fleet");
}

/// A WatchSession stream ended because a reload took the caller's right away.
pub fn watch_denied(peer: &PeerIdentity, account: &str) {
    let (peer_uid, peer_gid, peer_pid, peer_exe, peer_unit) = peer_fields(peer);
    tracing::warn!(target: TARGET, event = "watch-denied", rpc = "WatchSession", account, peer_uid, peer_gid, peer_pid, peer_exe, peer_unit, decision = "deny", "watch stream ended: the policy no longer allows it");
}

/// A login the failed-login limiter refused before it reached therappai.
pub fn login_refused(
    peer_uid: u32,
    account: &str,
    scope: &str,
    locked_out: bool,
    retry_at: SystemTime,
) {
    let retry_at = crate::clock::utc_rfc3339(retry_at);
    tracing::warn!(target: TARGET, event = "login-refused", rpc = "Login", account, peer_uid, scope, locked_out, retry_at, "login refused by the rate limit");
}

/// Too many failed logins: the limiter locks `scope` out until `until`.
pub fn login_lockout(peer_uid: u32, account: &str, scope: &str, strikes: u32, until: SystemTime) {
    let until = crate::clock::utc_rfc3339(until);
    tracing::warn!(target: TARGET, event = "login-lockout", rpc = "Login", account, peer_uid, scope, strikes, until, "too many failed logins: login locked out");
}

/// What ending one account's session did (`session::end`): `session-ended`, or for a
/// revoke that did not achieve everything, `revocation-incomplete` at error level.
#[derive(Debug)]
pub struct SessionEnded<'a> {
    pub action: &'static str,
    pub account: &'a str,
    pub configured: bool,
    pub refresh_sha256: &'a str,
    pub was_logged_in: bool,
    pub upstream: &'a str,
    pub store_error: Option<String>,
    pub incomplete: bool,
}

pub fn session_ended(e: &SessionEnded<'_>) {
    let SessionEnded {
        action,
        account,
        configured,
        refresh_sha256,
        was_logged_in,
        upstream,
        ..
    } = *e;
    let store_error = e.store_error.as_deref();
    if e.incomplete {
        tracing::error!(target: TARGET, event = "revocation-incomplete", rpc = action, account, configured, refresh_sha256, was_logged_in, upstream, store_error, "revocation incomplete: tokens wiped locally, but not everything succeeded");
    } else {
        tracing::warn!(target: TARGET, event = "session-ended", rpc = action, account, configured, refresh_sha256, was_logged_in, upstream, store_error, "session ended");
    }
}

/// A device logout or revoke could not list the store to find entries of accounts no
/// longer in the config.
pub fn store_search_failed(action: &'static str, error: &dyn std::fmt::Display) {
    tracing::error!(target: TARGET, event = "store-search-failed", rpc = action, account = "", %error, "could not search the store for entries of accounts no longer in the config");
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

    /// Every audit event, from every emitter, starts with `event`, `rpc` and `account`.
    #[test]
    fn every_event_has_the_common_fields_first() {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .finish();
        let peer = PeerIdentity {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            groups: Vec::new(),
            exe: None,
            unit: None,
        };
        tracing::subscriber::with_default(subscriber, || {
            let audit = Audit::default();
            audit.grant(&peer, "GetAccessToken", "default", "rule 1");
            audit.grant(&peer, "GetAccessToken", "default", "rule 1");
            audit.deny(&peer, "Login", "default", "no rule");
            audit.admin(&peer, "Logout", "default", "rule 2", "ok");
            watch_denied(&peer, "default");
            login_refused(1000, "default", "uid 1000", false, SystemTime::UNIX_EPOCH);
            login_lockout(1000, "default", "uid 1000", 5, SystemTime::UNIX_EPOCH);
            for incomplete in [false, true] {
                session_ended(&SessionEnded {
                    action: "revoke",
                    account: "default",
                    configured: true,
                    refresh_sha256: "0123abcd",
                    was_logged_in: true,
                    upstream: "Some(Done)",
                    store_error: None,
                    incomplete,
                });
            }
            store_search_failed("logout", &"the keyring is locked");
            session_ended_elsewhere("default", "logged out");
        });
        let text = String::from_utf8(buffer.lock().expect("buffer").clone()).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "one line per event:\n{text}");
        for line in lines {
            let at = |field: &str| line.find(&format!(" {field}=")).unwrap_or(usize::MAX);
            assert!(
                at("event") < at("rpc") && at("rpc") < at("account") && at("account") < usize::MAX,
                "event, rpc and account come first: {line}"
            );
            assert!(line.contains(" audit: "), "on the audit target: {line}");
        }
    }

    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
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
