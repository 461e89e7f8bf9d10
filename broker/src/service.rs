//! The gRPC handlers: each call is peer → policy → (cache → refresher | sessions).
//!
//! Handlers translate between wire messages and the broker's types; errors become
//! `tonic::Status` only through `error.rs`. Every grant, denial and admin action is one event
//! on the `audit` tracing target. Nothing here logs a token or a password.

use crate::cache::{Cache, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt::unix_seconds;
use crate::peer::PeerIdentity;
use crate::policy::{Action, Decision, Policy};
use crate::refresh::{Need, Refresher};
use crate::secret::Password;
use crate::session::Sessions;
use crate::upstream::Revocation;
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
            None => self.refresher.obtain(slot, Need::ValidFor(min_valid)).await?,
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
        self.authorize(&request, "Login", Action::Admin)?;
        let body = request.get_mut();
        let account = std::mem::take(&mut body.account);
        let password = Password::new(std::mem::take(&mut body.password));
        self.account_slot(&account)?;
        if password.expose().is_empty() {
            return Err(BrokerError::InvalidArgument {
                message: "the password is empty".to_owned(),
            });
        }
        let result = self.sessions.login(&account, password).await;
        tracing::info!(target: "audit", rpc = "Login", account, outcome = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason()), "admin action");
        let expires_at = result?;
        Ok(pb::LoginResponse {
            access_expires_at_unix: unix_seconds(expires_at),
            refresh_expires_at_unix: None,
        })
    }

    async fn logout_inner(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<pb::LogoutResponse, BrokerError> {
        self.authorize(&request, "Logout", Action::Admin)?;
        let account = request.get_ref().account.clone();
        self.account_slot(&account)?;
        let outcome = self.sessions.logout(&account).await;
        tracing::info!(target: "audit", rpc = "Logout", account, outcome = outcome.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason()), "admin action");
        let outcome = outcome?;
        let (upstream, upstream_detail) = match outcome.upstream {
            None => (
                pb::UpstreamRevocation::NothingToRevoke,
                "there was no refresh token to revoke".to_owned(),
            ),
            Some(Revocation::Done) => (
                pb::UpstreamRevocation::Done,
                "therappai revoked the refresh token".to_owned(),
            ),
            Some(Revocation::NotConfigured) => (
                pb::UpstreamRevocation::NotConfigured,
                "therappai was not told: no [upstream] revoke_path is configured".to_owned(),
            ),
            Some(Revocation::Failed(reason)) => (
                pb::UpstreamRevocation::Failed,
                format!("therappai was not told: {reason}"),
            ),
        };
        Ok(pb::LogoutResponse {
            was_logged_in: outcome.was_logged_in,
            store_entry_deleted: outcome.store_entry_deleted,
            upstream: upstream.into(),
            upstream_detail,
        })
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

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.status_inner(request)?))
    }
}
