//! The gRPC handlers: each call is peer → policy → (cache → refresher | sessions).
//!
//! Handlers translate between wire messages and the broker's types; errors become
//! `tonic::Status` only through `error.rs`. Every grant, denial and admin action is one event
//! on the `audit` tracing target. Nothing here logs a token or a password. Logout, device
//! logout and revoke are in [`end`].

mod end;

use crate::cache::{Cache, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt::unix_seconds;
use crate::peer::PeerIdentity;
use crate::policy::{Action, Decision, Policy};
use crate::ratelimit::{Outcome, Refusal, SharedLimiter};
use crate::refresh::Refresher;
use crate::secret::Password;
use crate::session::Sessions;
use std::sync::Arc;
use std::time::Duration;
use therappai_broker_proto::v1 as pb;
use tonic::{Request, Response, Status};

/// Validity asked for when a request does not say.
const DEFAULT_MIN_VALID: Duration = Duration::from_secs(30);
/// Longest validity a caller may ask for.
const MAX_MIN_VALID_SECONDS: u32 = 86_400;

#[derive(Debug)]
pub struct BrokerService {
    pub policy: Policy,
    pub cache: Arc<Cache>,
    pub refresher: Arc<Refresher>,
    pub sessions: Arc<Sessions>,
    pub login_limiter: Arc<SharedLimiter>,
    pub clock: Arc<dyn Clock>,
}

impl BrokerService {
    /// Peer identity and policy decision for one call; denials are returned as errors.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: &str,
        action: Action<'_>,
    ) -> Result<PeerIdentity, BrokerError> {
        let peer = PeerIdentity::of(request)?;
        match self.policy.decide(&peer, action) {
            Decision::Allow { rule } => {
                tracing::info!(target: "audit", rpc, uid = peer.uid, gid = peer.gid, pid = peer.pid, account = account_of(action), decision = "allow", rule, "allowed");
                Ok(peer)
            }
            Decision::Deny { rule } => {
                let who = peer.describe();
                tracing::warn!(target: "audit", rpc, uid = peer.uid, gid = peer.gid, pid = peer.pid, peer = %who, account = account_of(action), decision = "deny", rule, "denied");
                Err(BrokerError::PermissionDenied {
                    message: format!(
                        "permission denied: the broker does not allow {who} a {} ({rule}); an admin can allow it in the broker's config",
                        action.describe()
                    ),
                })
            }
        }
    }

    fn account_slot(&self, account: &str) -> Result<&Arc<crate::cache::AccountSlot>, BrokerError> {
        if account.is_empty() {
            return Err(BrokerError::InvalidArgument {
                message: "the request names no account; pass --account NAME".to_owned(),
            });
        }
        self.cache
            .slot(account)
            .ok_or_else(|| BrokerError::UnknownAccount {
                account: account.to_owned(),
                known: self.cache.names(),
            })
    }

    async fn get_access_token_inner(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<pb::GetAccessTokenResponse, BrokerError> {
        let account = request.get_ref().account.clone();
        self.authorize(
            &request,
            "GetAccessToken",
            Action::Token { account: &account },
        )?;
        let slot = self.account_slot(&account)?;
        let min_valid = match request.get_ref().min_valid_seconds {
            None => DEFAULT_MIN_VALID,
            Some(s) if s <= MAX_MIN_VALID_SECONDS => Duration::from_secs(u64::from(s)),
            Some(s) => {
                return Err(BrokerError::InvalidArgument {
                    message: format!(
                        "min_valid_seconds {s} is more than the maximum {MAX_MIN_VALID_SECONDS}"
                    ),
                });
            }
        };
        let served = match slot.fresh_access(self.clock.now(), min_valid) {
            Some(served) => served,
            None => self.refresher.refresh(slot, min_valid).await?,
        };
        Ok(pb::GetAccessTokenResponse {
            fingerprint: served.token.fingerprint(),
            expires_at_unix: unix_seconds(served.expires_at),
            // The one place an access token leaves the broker: to a peer policy allowed.
            access_token: served.token.expose().to_owned(),
        })
    }

    async fn login_inner(
        &self,
        mut request: Request<pb::LoginRequest>,
    ) -> Result<pb::LoginResponse, BrokerError> {
        let peer = self.authorize(&request, "Login", Action::Admin)?;
        let body = request.get_mut();
        let account = std::mem::take(&mut body.account);
        let password = Password::new(std::mem::take(&mut body.password));
        // Before anything else, so a locked-out caller learns nothing (not even whether an
        // account name exists) and never reaches the upstream.
        let attempt = self
            .login_limiter
            .begin(peer.uid, &account)
            .map_err(|refusal| self.rate_limited(&account, peer.uid, refusal))?;
        self.account_slot(&account)?;
        if password.expose().is_empty() {
            return Err(BrokerError::InvalidArgument {
                message: "the password is empty".to_owned(),
            });
        }
        let result = self.sessions.login(&account, password).await;
        tracing::info!(target: "audit", rpc = "Login", account, uid = peer.uid, outcome = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason()), "admin action");
        let lockouts = attempt.finish(match &result {
            Ok(_) => Outcome::Success,
            Err(BrokerError::InvalidCredentials { .. }) => Outcome::Failure,
            Err(_) => Outcome::Neutral,
        });
        for lockout in lockouts {
            tracing::warn!(target: "audit", event = "login-lockout", scope = %lockout.scope.describe(), uid = peer.uid, account, strikes = lockout.strikes, until = %crate::clock::utc_rfc3339(lockout.until), "too many failed logins: login locked out");
        }
        let expires_at = result?;
        Ok(pb::LoginResponse {
            access_expires_at_unix: unix_seconds(expires_at),
            refresh_expires_at_unix: None,
        })
    }

    /// The error for a login the limiter refused, with its audit event.
    fn rate_limited(&self, account: &str, uid: u32, refusal: Refusal) -> BrokerError {
        let now = self.clock.now();
        let retry_in = refusal.retry_at.duration_since(now).unwrap_or_default();
        tracing::warn!(target: "audit", rpc = "Login", event = "login-refused", uid, account, scope = %refusal.scope.describe(), locked_out = refusal.locked_out, retry_at = %crate::clock::utc_rfc3339(refusal.retry_at), "login refused by the rate limit");
        BrokerError::RateLimited {
            account: account.to_owned(),
            scope: refusal.scope,
            locked_out: refusal.locked_out,
            retry_at: refusal.retry_at,
            retry_in,
        }
    }

    fn status_inner(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<pb::StatusResponse, BrokerError> {
        self.authorize(&request, "Status", Action::Admin)?;
        let store = self.sessions.store();
        let accounts = self
            .sessions
            .status()
            .into_iter()
            .map(|a| pb::AccountStatus {
                name: a.name,
                email: a.email,
                base_url: self.sessions.base_url().to_owned(),
                state: session_state(a.state).into(),
                access_expires_at_unix: a.access_expires_at.map(unix_seconds),
                refresh_token_stored: a.refresh_token_stored,
                last_refresh_at_unix: a.last_refresh.as_ref().map(|(t, _)| unix_seconds(*t)),
                last_refresh_outcome: a.last_refresh.map(|(_, o)| o).unwrap_or_default(),
            })
            .collect();
        Ok(pb::StatusResponse {
            store_backend: store.backend().to_string(),
            store_detail: store.describe(),
            accounts,
            broker_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
}

fn account_of<'a>(action: Action<'a>) -> &'a str {
    match action {
        Action::Token { account } => account,
        Action::Admin => "",
    }
}

fn session_state(state: SessionState) -> pb::SessionState {
    match state {
        SessionState::LoggedOut => pb::SessionState::LoggedOut,
        SessionState::Active => pb::SessionState::Active,
        SessionState::Refreshing => pb::SessionState::Refreshing,
        SessionState::NeedsLogin => pb::SessionState::NeedsLogin,
    }
}

#[tonic::async_trait]
impl pb::broker_server::Broker for BrokerService {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        Ok(Response::new(self.get_access_token_inner(request).await?))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        Ok(Response::new(self.login_inner(request).await?))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        Ok(Response::new(self.logout_inner(request).await?))
    }

    async fn logout_device(
        &self,
        request: Request<pb::LogoutDeviceRequest>,
    ) -> Result<Response<pb::LogoutDeviceResponse>, Status> {
        Ok(Response::new(self.logout_device_inner(request).await?))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        Ok(Response::new(self.revoke_inner(request).await?))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.status_inner(request)?))
    }
}
