//! Per-account session state held in memory: the access token cache, the refresh token, and
//! the session state machine (`logged-out`, `active`, `refreshing`, `needs-login`).
//!
//! Answering from the cache is the hot path: one short, uncontended `std::sync::Mutex` per
//! account, never held across an `.await`. The cache never logs a token and never talks to the
//! upstream or the store; the refresher and the session module update it.

use crate::config::AccountConfig;
use crate::secret::{AccessToken, RefreshToken};
use crate::upstream::IssuedAccess;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

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
    pub session: SessionState,
    pub access: Option<IssuedAccess>,
    pub refresh: Option<RefreshToken>,
    /// Whether the store holds this account's refresh token (as far as the broker knows).
    pub refresh_stored: bool,
    /// Wall time and one-line outcome ("ok" or the reason) of the last refresh.
    pub last_refresh: Option<(SystemTime, String)>,
    /// Why the session needs a login, for status.
    pub needs_login_reason: Option<String>,
}

impl SlotState {
    /// Forgets every token (they zeroize on drop) and moves to `session`.
    pub fn clear(&mut self, session: SessionState) {
        self.access = None;
        self.refresh = None;
        self.refresh_stored = false;
        self.session = session;
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
        Self {
            config,
            state: Mutex::new(SlotState {
                session: SessionState::LoggedOut,
                access: None,
                refresh: None,
                refresh_stored: false,
                last_refresh: None,
                needs_login_reason: None,
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
}
