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
use tokio::sync::{Notify, broadcast};

/// How many state changes a slow WatchSession subscriber may fall behind before it is told it
/// lagged (it then gets the current state).
const EVENT_BUFFER: usize = 64;

/// One session-state transition, as WatchSession streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub state: SessionState,
    pub at: SystemTime,
    /// Why, in one line (e.g. the reason a session needs a login); may be empty.
    pub reason: String,
}

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
    /// Changed only through [`SlotState::set_session`], which tells the watchers.
    session: SessionState,
    pub access: Option<IssuedAccess>,
    pub refresh: Option<RefreshToken>,
    /// Whether the store holds this account's current refresh token.
    pub refresh_stored: bool,
    /// Why the current refresh token is not in the store yet (a failed write after rotation).
    pub store_problem: Option<String>,
    /// Counts refresh tokens: 1 for a login's, +1 for each rotation.
    pub generation: u64,
    /// When the background refresher should replace the current access token.
    pub refresh_due: Option<SystemTime>,
    /// After a failed refresh cycle: no new cycle starts before this time.
    pub next_attempt_at: Option<SystemTime>,
    /// Refresh cycles that failed in a row since the last success (or the end of the session):
    /// the pause after the next failure grows with it (see `refresh::schedule`).
    pub failed_cycles: u32,
    /// The store has not been read for this account yet (start-up found it unreadable, e.g. a
    /// locked keyring): only then may the refresher look there for a token memory lacks. After
    /// a logout it must not, or a caller queued behind the logout would revive the session
    /// from the entry the logout is about to delete.
    pub store_unread: bool,
    /// Whether the current access token has been handed to a caller. The background refresher
    /// only keeps an account warm while someone uses it, so idle accounts cause no traffic.
    pub access_served: bool,
    /// Wall time and one-line outcome ("ok" or the reason) of the last refresh.
    pub last_refresh: Option<(SystemTime, String)>,
    /// Why the session needs a login, for status.
    pub needs_login_reason: Option<String>,
    /// Fingerprint of the refresh token the last ended session held: a fleet's entry that
    /// still holds it is that session, about to be marked ended, not a new login to follow.
    pub ended_refresh: Option<String>,
    /// Fleet (`vault` store) only: memory holds a rotated refresh token OpenBao does not have
    /// yet; this is the fingerprint of the token it was rotated from, which the fleet's entry
    /// still holds. Until it is written, memory is newer than the entry.
    pub fleet_pending_from: Option<String>,
    /// Logouts and revokes of this account between their step 1 and the flight slot (see
    /// `session::end`): a refresh in flight that rotated hands them its new refresh token.
    ends_waiting: usize,
    /// The refresh token a refresh rotated to while an end was waiting: the live one, which
    /// the end revokes and reports on (the one it took from memory was rotated away).
    rotated_for_end: Option<RefreshToken>,
    /// Session generation, bumped by [`SlotState::end_session`] (see the module doc).
    epoch: u64,
    events: broadcast::Sender<SessionEvent>,
    wake: Arc<Notify>,
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

    /// The one place the session state changes. Tells every watcher of this account (and the
    /// background refresher) when the state actually changes, and returns how many watchers
    /// that was.
    pub fn set_session(&mut self, next: SessionState, at: SystemTime, reason: &str) -> usize {
        if self.session == next {
            return 0;
        }
        self.session = next;
        self.wake.notify_one();
        // An error only means nobody is watching.
        self.events
            .send(SessionEvent {
                state: next,
                at,
                reason: reason.to_owned(),
            })
            .unwrap_or(0)
    }

    /// The current session epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets every token (they zeroize on drop) and moves to `session`, within the same
    /// session epoch (the refresher uses it when the upstream rejects the refresh token).
    pub fn clear(&mut self, session: SessionState, at: SystemTime, reason: &str) {
        self.forget_tokens();
        self.set_session(session, at, reason);
    }

    /// Takes both tokens out of memory with everything that describes them; returns whether
    /// an access token was there, and the refresh token.
    fn forget_tokens(&mut self) -> (bool, Option<RefreshToken>) {
        let had_access = self.access.take().is_some();
        let refresh = self.refresh.take();
        self.refresh_stored = false;
        self.store_problem = None;
        self.fleet_pending_from = None;
        self.refresh_due = None;
        self.next_attempt_at = None;
        self.failed_cycles = 0;
        self.access_served = false;
        (had_access, refresh)
    }

    /// Ends the session for good (logout, revoke): bumps the epoch so nothing in flight can
    /// bring its tokens back, takes the tokens out of memory and moves to `next`.
    pub fn end_session(
        &mut self,
        next: SessionState,
        at: SystemTime,
        reason: &str,
    ) -> EndedSession {
        self.epoch = self.epoch.wrapping_add(1);
        let (had_access, refresh) = self.forget_tokens();
        if let Some(refresh) = &refresh {
            self.ended_refresh = Some(refresh.fingerprint());
        }
        self.store_unread = false;
        self.needs_login_reason = None;
        let watchers_notified = self.set_session(next, at, reason);
        EndedSession {
            refresh,
            had_access,
            watchers_notified,
        }
    }

    /// Makes `access` the current access token, with its background refresh due at `due`
    /// (`refresh::schedule::ahead_due`), and ends any failure pause. The one place a token is
    /// installed, whether it came from a login, a refresh or a fleet's entry.
    pub fn install_access(&mut self, access: IssuedAccess, due: SystemTime) {
        self.access = Some(access);
        self.refresh_due = Some(due);
        self.next_attempt_at = None;
        self.wake_scheduler();
    }

    /// A logout or revoke has ended the session in memory and now waits for the flight slot.
    pub fn end_waits(&mut self) {
        self.ends_waiting += 1;
    }

    /// The end that called [`SlotState::end_waits`] has the flight slot: the refresh token
    /// a cycle rotated to meanwhile, if any.
    pub fn end_proceeds(&mut self) -> Option<RefreshToken> {
        self.ends_waiting = self.ends_waiting.saturating_sub(1);
        self.rotated_for_end.take()
    }

    /// A cycle whose session ended while it rotated: the rotated token goes to the waiting
    /// end, which revokes it and reports on it; `Err` gives it back when no end waits (a
    /// fleet's logout elsewhere), and the cycle revokes it itself.
    pub fn hand_to_end(&mut self, rotated: RefreshToken) -> Result<(), RefreshToken> {
        if self.ends_waiting == 0 {
            return Err(rotated);
        }
        self.rotated_for_end = Some(rotated);
        Ok(())
    }

    /// Tells the background refresher that the tokens changed, so it reschedules.
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
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
    /// Woken (all waiters) each time a refresh cycle ends, so callers that waited for it read
    /// its result from the cache together instead of taking the flight slot one by one.
    pub cycle_done: Notify,
    wake: Arc<Notify>,
}

/// An access token served to a caller.
#[derive(Debug)]
pub struct ServedToken {
    pub token: AccessToken,
    pub expires_at: SystemTime,
}

impl AccountSlot {
    fn new(config: AccountConfig) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let wake = Arc::new(Notify::new());
        Self {
            config,
            state: Mutex::new(SlotState {
                session: SessionState::LoggedOut,
                access: None,
                refresh: None,
                refresh_stored: false,
                store_problem: None,
                generation: 0,
                refresh_due: None,
                next_attempt_at: None,
                failed_cycles: 0,
                access_served: false,
                store_unread: true,
                last_refresh: None,
                needs_login_reason: None,
                ended_refresh: None,
                fleet_pending_from: None,
                ends_waiting: 0,
                rotated_for_end: None,
                epoch: 0,
                events,
                wake: Arc::clone(&wake),
            }),
            flight: tokio::sync::Mutex::new(()),
            cycle_done: Notify::new(),
            wake,
        }
    }

    /// The current state and a receiver of every later change (for WatchSession).
    pub fn subscribe(&self, now: SystemTime) -> (SessionEvent, broadcast::Receiver<SessionEvent>) {
        let state = self.state();
        let current = SessionEvent {
            state: state.session,
            at: now,
            reason: state.needs_login_reason.clone().unwrap_or_default(),
        };
        (current, state.events.subscribe())
    }

    /// Resolves when the tokens or the session of this account changed (for the background
    /// refresher; one waiter).
    pub async fn changed(&self) {
        self.wake.notified().await;
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

    /// The cached access token if it stays valid until at least `now + min_valid`.
    ///
    /// `min_valid` is capped at half the token's lifetime: a caller asking for more than the
    /// upstream ever issues would otherwise force a refresh on every call.
    pub fn fresh_access(&self, now: SystemTime, min_valid: Duration) -> Option<ServedToken> {
        let mut state = self.state();
        let access = state.access.as_ref()?;
        let lifetime = access
            .expires_at
            .duration_since(access.received_at)
            .unwrap_or_default();
        let min_valid = min_valid.min(lifetime / 2);
        if access.expires_at > now + min_valid {
            let served = ServedToken {
                token: access.token.duplicate(),
                expires_at: access.expires_at,
            };
            if !state.access_served {
                state.access_served = true;
                // The background refresher keeps a token warm only once it is in use.
                self.wake.notify_one();
            }
            Some(served)
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
        state.set_session(SessionState::Active, now, "logged in");
    }

    #[tokio::test]
    async fn ending_a_session_tells_every_watcher_logged_out() {
        let slot = slot();
        logged_in(&slot);
        let (current, mut first) = slot.subscribe(SystemTime::now());
        let (_, mut second) = slot.subscribe(SystemTime::now());
        assert_eq!(current.state, SessionState::Active);

        let ended =
            slot.state()
                .end_session(SessionState::LoggedOut, SystemTime::now(), "logged out");
        assert_eq!(ended.watchers_notified, 2);
        assert!(ended.had_access && ended.refresh.is_some());
        for watcher in [&mut first, &mut second] {
            let event = tokio::time::timeout(Duration::from_secs(5), watcher.recv())
                .await
                .expect("a watcher hears about the logout")
                .expect("the slot is alive");
            assert_eq!(event.state, SessionState::LoggedOut);
            assert_eq!(event.reason, "logged out");
        }
        // Logging out again changes nothing, so nobody is woken.
        let again =
            slot.state()
                .end_session(SessionState::LoggedOut, SystemTime::now(), "logged out");
        assert_eq!(again.watchers_notified, 0);
        assert!(first.is_empty());
        assert!(
            slot.fresh_access(SystemTime::now(), Duration::ZERO)
                .is_none()
        );
    }

    #[test]
    fn an_ended_session_forgets_its_failed_cycles() {
        let slot = slot();
        logged_in(&slot);
        slot.state().failed_cycles = 4;
        slot.state().next_attempt_at = Some(SystemTime::now());
        slot.state()
            .end_session(SessionState::LoggedOut, SystemTime::now(), "logged out");
        let state = slot.state();
        assert_eq!(
            state.failed_cycles, 0,
            "a new login starts with short pauses"
        );
        assert!(state.next_attempt_at.is_none());
    }

    #[test]
    fn a_result_from_before_an_ended_session_is_refused() {
        let slot = slot();
        logged_in(&slot);
        let epoch = slot.epoch();
        slot.state()
            .end_session(SessionState::LoggedOut, SystemTime::now(), "logged out");
        let applied = slot.update_if_current(epoch, |state| {
            state.set_session(SessionState::Active, SystemTime::now(), "");
        });
        assert!(applied.is_none(), "a stale refresh must not commit");
        assert_eq!(slot.state().session(), SessionState::LoggedOut);
        let current = slot.epoch();
        assert!(slot.update_if_current(current, |_| ()).is_some());
    }
}
