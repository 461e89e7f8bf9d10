//! Per-account session state held in memory: the access token cache, the refresh token, and
//! the session state machine (`logged-out`, `active`, `refreshing`, `needs-login`).
//!
//! Answering from the cache is the hot path: one short, uncontended `std::sync::Mutex` per
//! account, never held across an `.await`. The cache never logs a token and never talks to the
//! upstream or the store; the refresher and the session module update it.
//!
//! Two rules keep logout and revoke airtight:
//! - The session state changes only through [`SlotState::set_session`], the one place that
//!   tells watchers (WatchSession subscribes through [`AccountSlot::subscribe`]).
//! - Every session has an *epoch*. Ending a session ([`SlotState::end_session`]) bumps it under
//!   the same lock that wipes the tokens, and a refresh or login that started under an older
//!   epoch must not cache, store or serve what it got ([`AccountSlot::update_if_current`]):
//!   a token issued before a revoke is never handed out, even by a call in flight during it.

use crate::config::AccountConfig;
use crate::secret::{AccessToken, RefreshToken};
use crate::upstream::IssuedAccess;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Where an account's session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No refresh token: never logged in, or logged out.
    LoggedOut,
    /// A refresh token is held; access tokens are served or refreshed on demand.
    Active,
    /// A refresh is in flight.
    Refreshing,
    /// The upstream rejected the refresh token: only a new login helps.
    NeedsLogin,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged-out",
            Self::Active => "active",
            Self::Refreshing => "refreshing",
            Self::NeedsLogin => "needs-login",
        }
    }
}

/// The mutable part of an account.
#[derive(Debug)]
pub struct SlotState {
    /// Written only through [`SlotState::set_session`].
    session: SessionState,
    pub access: Option<IssuedAccess>,
    pub refresh: Option<RefreshToken>,
    /// Whether the store holds this account's refresh token (as far as the broker knows).
    pub refresh_stored: bool,
    /// Wall time and one-line outcome ("ok" or the reason) of the last refresh.
    pub last_refresh: Option<(SystemTime, String)>,
    /// Why the session needs a login, for status.
    pub needs_login_reason: Option<String>,
    /// Session generation, bumped by [`SlotState::end_session`] (see the module doc).
    epoch: u64,
    /// Session-state changes, for WatchSession streams.
    changes: watch::Sender<SessionState>,
}

/// What [`SlotState::end_session`] took out of memory.
#[derive(Debug)]
pub struct EndedSession {
    /// The refresh token, so the caller can revoke it upstream; zeroized when dropped.
    pub refresh: Option<RefreshToken>,
    /// Whether an access token was in memory (it is dropped, and so zeroized, at once).
    pub had_access: bool,
    /// How many watchers were told the new state (0 when the state did not change).
    pub watchers_notified: usize,
}

impl SlotState {
    /// The session state.
    pub fn session(&self) -> SessionState {
        self.session
    }

    /// The one place the session state changes. Tells every watcher of this account when the
    /// state actually changes, and returns how many watchers that was.
    ///
    /// Hook point: a WatchSession broadcast belongs here, so no transition can bypass it.
    pub fn set_session(&mut self, next: SessionState) -> usize {
        let changed = self.session != next;
        self.session = next;
        if !changed {
            return 0;
        }
        self.changes.send_replace(next);
        self.changes.receiver_count()
    }

    /// The current session epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets every token (they zeroize on drop) and moves to `session`, within the same
    /// session epoch (the refresher uses it when the upstream rejects the refresh token).
    pub fn clear(&mut self, session: SessionState) {
        self.access = None;
        self.refresh = None;
        self.refresh_stored = false;
        self.set_session(session);
    }

    /// Ends the session for good (logout, revoke): bumps the epoch so nothing in flight can
    /// bring its tokens back, takes the tokens out of memory and moves to `next`.
    pub fn end_session(&mut self, next: SessionState) -> EndedSession {
        self.epoch = self.epoch.wrapping_add(1);
        let had_access = self.access.take().is_some();
        let refresh = self.refresh.take();
        self.refresh_stored = false;
        self.needs_login_reason = None;
        let watchers_notified = self.set_session(next);
        EndedSession {
            refresh,
            had_access,
            watchers_notified,
        }
    }
}

/// One configured account.
#[derive(Debug)]
pub struct AccountSlot {
    pub config: AccountConfig,
    state: Mutex<SlotState>,
    /// The single-flight slot: held while a refresh, login or logout of this account is in
    /// flight, so at most one of them talks to the upstream at a time.
    pub flight: tokio::sync::Mutex<()>,
}

/// An access token served to a caller.
#[derive(Debug)]
pub struct ServedToken {
    pub token: AccessToken,
    pub expires_at: SystemTime,
}

impl AccountSlot {
    fn new(config: AccountConfig) -> Self {
        let (changes, _) = watch::channel(SessionState::LoggedOut);
        Self {
            config,
            state: Mutex::new(SlotState {
                session: SessionState::LoggedOut,
                access: None,
                refresh: None,
                refresh_stored: false,
                last_refresh: None,
                needs_login_reason: None,
                epoch: 0,
                changes,
            }),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    /// Locks the state. Never hold the guard across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than refusing all service would, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current session epoch; read it before starting a refresh or login.
    pub fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// Runs `update` on the state only if no logout or revoke ended the session since `epoch`
    /// was read; `None` means the caller's result belongs to an ended session and must be
    /// dropped, not stored or served.
    pub fn update_if_current<R>(
        &self,
        epoch: u64,
        update: impl FnOnce(&mut SlotState) -> R,
    ) -> Option<R> {
        let mut state = self.state();
        (state.epoch == epoch).then(|| update(&mut state))
    }

    /// A stream of this account's session-state changes, starting at the current state.
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state().changes.subscribe()
    }

    /// The cached access token if it stays valid until at least `now + min_valid`.
    ///
    /// `min_valid` is capped at half the token's lifetime: a caller asking for more than the
    /// upstream ever issues would otherwise force a refresh on every call.
    pub fn fresh_access(&self, now: SystemTime, min_valid: Duration) -> Option<ServedToken> {
        let state = self.state();
        let access = state.access.as_ref()?;
        let lifetime = access
            .expires_at
            .duration_since(access.received_at)
            .unwrap_or_default();
        let min_valid = min_valid.min(lifetime / 2);
        if access.expires_at > now + min_valid {
            Some(ServedToken {
                token: access.token.duplicate(),
                expires_at: access.expires_at,
            })
        } else {
            None
        }
    }
}

/// All configured accounts, by name.
#[derive(Debug)]
pub struct Cache {
    accounts: HashMap<String, Arc<AccountSlot>>,
    order: Vec<String>,
}

impl Cache {
    pub fn new(accounts: &[AccountConfig]) -> Self {
        Self {
            accounts: accounts
                .iter()
                .map(|a| (a.name.clone(), Arc::new(AccountSlot::new(a.clone()))))
                .collect(),
            order: accounts.iter().map(|a| a.name.clone()).collect(),
        }
    }

    pub fn slot(&self, name: &str) -> Option<&Arc<AccountSlot>> {
        self.accounts.get(name)
    }

    /// Accounts in config order.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<AccountSlot>> {
        self.order.iter().filter_map(|n| self.accounts.get(n))
    }

    pub fn names(&self) -> Vec<String> {
        self.order.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> AccountSlot {
        AccountSlot::new(AccountConfig {
            name: "a".into(),
            email: "a@example.com".into(),
        })
    }

    #[test]
    fn fresh_access_honours_min_valid() {
        let slot = slot();
        let now = SystemTime::now();
        slot.state().access = Some(IssuedAccess {
            token: AccessToken::new("tok".into()),
            expires_at: now + Duration::from_secs(300),
            received_at: now - Duration::from_secs(200),
        });
        assert!(slot.fresh_access(now, Duration::from_secs(30)).is_some());
        // Asking for more than the token's whole lifetime (500 s) is capped at half of it.
        assert!(slot.fresh_access(now, Duration::from_secs(3600)).is_some());
        let later = now + Duration::from_secs(60);
        assert!(slot.fresh_access(later, Duration::from_secs(30)).is_some());
        assert!(
            slot.fresh_access(later, Duration::from_secs(3600))
                .is_none()
        );
        // A wall-clock jump past expiry (suspend/resume) makes it stale at once.
        assert!(
            slot.fresh_access(now + Duration::from_secs(301), Duration::ZERO)
                .is_none()
        );
    }

    fn logged_in(slot: &AccountSlot) {
        let now = SystemTime::now();
        let mut state = slot.state();
        state.access = Some(IssuedAccess {
            token: AccessToken::new("access".into()),
            expires_at: now + Duration::from_secs(300),
            received_at: now,
        });
        state.refresh = Some(RefreshToken::new("refresh".into()));
        state.set_session(SessionState::Active);
    }

    #[tokio::test]
    async fn ending_a_session_tells_every_watcher_logged_out() {
        let slot = slot();
        logged_in(&slot);
        let mut first = slot.subscribe();
        let mut second = slot.subscribe();
        assert_eq!(*first.borrow_and_update(), SessionState::Active);
        second.borrow_and_update();

        let ended = slot.state().end_session(SessionState::LoggedOut);
        assert_eq!(ended.watchers_notified, 2);
        assert!(ended.had_access && ended.refresh.is_some());
        for watcher in [&mut first, &mut second] {
            tokio::time::timeout(Duration::from_secs(5), watcher.changed())
                .await
                .expect("a watcher hears about the logout")
                .expect("the slot is alive");
            assert_eq!(*watcher.borrow_and_update(), SessionState::LoggedOut);
        }
        // Logging out again changes nothing, so nobody is woken.
        let again = slot.state().end_session(SessionState::LoggedOut);
        assert_eq!(again.watchers_notified, 0);
        assert!(!first.has_changed().expect("alive"));
        assert!(
            slot.fresh_access(SystemTime::now(), Duration::ZERO)
                .is_none()
        );
    }

    #[test]
    fn a_result_from_before_an_ended_session_is_refused() {
        let slot = slot();
        logged_in(&slot);
        let epoch = slot.epoch();
        slot.state().end_session(SessionState::LoggedOut);
        let applied = slot.update_if_current(epoch, |state| {
            state.set_session(SessionState::Active);
        });
        assert!(applied.is_none(), "a stale refresh must not commit");
        assert_eq!(slot.state().session(), SessionState::LoggedOut);
        let current = slot.epoch();
        assert!(slot.update_if_current(current, |_| ()).is_some());
    }
}
