//! The gRPC handlers: each call is peer → policy → (cache → refresher | sessions).
//!
//! Handlers translate between wire messages and the broker's types; errors become
//! `tonic::Status` only through `error.rs`. Every grant, denial and admin action is one event
//! on the `audit` tracing target. Nothing here logs a token or a password. Logout, device
//! logout and revoke are in `service/end.rs`.

mod end;
mod token;
pub(crate) mod validate;

use crate::admission::ConnectedPeer;
use crate::audit::Audit;
use crate::cache::{Cache, SessionState};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt::unix_seconds;
use crate::peer::PeerIdentity;
use crate::policy::{Action, Decision, SharedPolicy};
use crate::ratelimit::{Outcome, Refusal, SharedLimiter};
use crate::refresh::Refresher;
use crate::secret::Password;
use crate::session::Sessions;
use std::sync::Arc;
use therappai_broker_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct BrokerService {
    /// Swapped whole on SIGHUP; each call reads one snapshot.
    pub(crate) policy: Arc<SharedPolicy>,
    pub(crate) audit: Audit,
    pub(crate) cache: Arc<Cache>,
    pub(crate) refresher: Arc<Refresher>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) login_limiter: Arc<SharedLimiter>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Counters and gauges for `GetMetrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Cancelled at shutdown, so WatchSession streams end instead of holding it up.
    pub(crate) streams_stop: CancellationToken,
}

impl BrokerService {
    /// Peer identity and policy decision for one call; denials are returned as errors and
    /// audited here. Token grants are audited here too; an admin handler reports its
    /// allowed action once it has an outcome, with [`Audit::admin`] and the returned rule.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        action: Action<'_>,
    ) -> Result<Authorized, BrokerError> {
        let peer = caller(request)?;
        let account = account_of(action);
        // The handler ran its `validate` check first, so the name is well formed; a name
        // that is not configured gets NOT_FOUND here, before the policy runs. Neither a junk
        // nor an unknown name reaches the audit log or grows the grant-audit map (issue 11,
        // defect 4).
        if let Action::Token { account } = action {
            self.account_slot(account)?;
        }
        match self.policy.current().decide(&peer, action) {
            Decision::Allow { rule } => {
                // The account was checked above: only configured accounts reach the grant
                // audit, so its map stays bounded by the config.
                if let Action::Token { .. } = action {
                    self.audit.grant(&peer, rpc, account, &rule);
                }
                Ok(Authorized { peer, rule })
            }
            Decision::Deny { rule, hint } => {
                self.audit.deny(&peer, rpc, account, &rule);
                self.metrics.denial(rpc);
                Err(denied(&peer, &action.describe(), &rule, &hint))
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

    async fn login_inner(
        &self,
        mut request: Request<pb::LoginRequest>,
    ) -> Result<pb::LoginResponse, BrokerError> {
        validate::login(request.get_ref())?;
        let who = self.authorize(&request, "Login", Action::Admin)?;
        let uid = who.peer.uid;
        let body = request.get_mut();
        let account = std::mem::take(&mut body.account);
        let password = Password::new(std::mem::take(&mut body.password));
        // Before anything else but the request's own check (which tells nothing about the
        // config), so a locked-out caller learns nothing (not even whether an account name
        // exists) and never reaches the upstream.
        let attempt = self.login_limiter.begin(uid, &account).map_err(|refusal| {
            self.metrics.login("rate-limited");
            self.rate_limited(&account, uid, refusal)
        })?;
        self.account_slot(&account)?;
        let result = self.sessions.login(&account, password).await;
        let outcome = result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason());
        self.metrics.login(outcome);
        self.audit
            .admin(&who.peer, "Login", &account, &who.rule, outcome);
        let lockouts = attempt.finish(match &result {
            Ok(_) => Outcome::Success,
            Err(BrokerError::InvalidCredentials { .. }) => Outcome::Failure,
            Err(_) => Outcome::Neutral,
        });
        for lockout in lockouts {
            self.metrics.lockout(lockout.scope);
            crate::audit::login_lockout(
                uid,
                &account,
                &lockout.scope.describe(),
                lockout.strikes,
                lockout.until,
            );
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
        crate::audit::login_refused(
            uid,
            account,
            &refusal.scope.describe(),
            refusal.locked_out,
            refusal.retry_at,
        );
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
        let peer = caller(&request)?;
        let names = self.cache.names();
        let (decision, visible) = self.policy.current().decide_status(&peer, &names);
        match decision {
            Decision::Allow { rule } => self.audit.grant(&peer, "Status", "", &rule),
            Decision::Deny { rule, hint } => {
                self.audit.deny(&peer, "Status", "", &rule);
                self.metrics.denial("Status");
                return Err(denied(&peer, "see the status of any account", &rule, &hint));
            }
        }
        let store = self.sessions.store();
        let accounts = self
            .sessions
            .status()
            .into_iter()
            // Only the accounts this peer may use (all, for an admin).
            .filter(|a| visible.contains(&a.name.as_str()))
            .map(|a| pb::AccountStatus {
                name: a.name,
                email: a.email,
                base_url: self.sessions.base_url().to_owned(),
                state: session_state(a.state).into(),
                access_expires_at_unix: a.access_expires_at.map(unix_seconds),
                refresh_token_stored: a.refresh_token_stored,
                last_refresh_at_unix: a.last_refresh.as_ref().map(|(t, _)| unix_seconds(*t)),
                last_refresh_outcome: a.last_refresh.map(|(_, o)| o).unwrap_or_default(),
                store_problem: a.store_problem.unwrap_or_default(),
                next_refresh_attempt_at_unix: a.next_attempt_at.map(unix_seconds),
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

impl BrokerService {
    /// Admin: the metrics text. Audited like every admin action.
    fn get_metrics_inner(
        &self,
        request: &Request<pb::GetMetricsRequest>,
    ) -> Result<pb::GetMetricsResponse, BrokerError> {
        let who = self.authorize(request, "GetMetrics", Action::Admin)?;
        let text = self.metrics.render(&self.cache);
        self.audit
            .admin(&who.peer, "GetMetrics", "", &who.rule, "ok");
        Ok(pb::GetMetricsResponse { text })
    }
}

/// Who an allowed call came from, and the rule that allowed it.
#[derive(Debug)]
struct Authorized {
    peer: Arc<PeerIdentity>,
    rule: String,
}

/// PERMISSION_DENIED naming the caller and the rule an admin would add; never a word on
/// the account's tokens or session.
fn denied(peer: &PeerIdentity, what: &str, rule: &str, hint: &str) -> BrokerError {
    BrokerError::PermissionDenied {
        message: format!(
            "permission denied: the broker's policy does not let the caller ({}) {what} ({rule}). \
             An admin can allow it by adding this to the broker's config and reloading it \
             (`systemctl reload therappai-broker` or SIGHUP):\n{hint}",
            peer.describe()
        ),
    }
}

fn account_of<'a>(action: Action<'a>) -> &'a str {
    match action {
        Action::Token { account } => account,
        Action::Admin => "",
    }
}

pub(crate) fn session_state(state: SessionState) -> pb::SessionState {
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

    async fn report_rejected(
        &self,
        request: Request<pb::ReportRejectedRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        Ok(Response::new(self.report_rejected_inner(request).await?))
    }

    type WatchSessionStream = token::SessionEvents;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        Ok(Response::new(self.watch_session_inner(request)?))
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

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        Ok(Response::new(self.get_metrics_inner(&request)?))
    }
}

/// Who is calling, as the listener captured it from the kernel.
fn caller<T>(request: &Request<T>) -> Result<Arc<PeerIdentity>, BrokerError> {
    ConnectedPeer::identity_of(request).ok_or_else(|| BrokerError::PermissionDenied {
        message: "the broker could not read the caller's credentials from the kernel; \
                  connect over the broker's Unix socket"
            .to_owned(),
    })
}
