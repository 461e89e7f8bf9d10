//! Handlers an app uses: GetAccessToken, ReportRejected and WatchSession.
//!
//! All three need the same allow rule (a token rule for the account). The token leaves the
//! broker only in a GetAccessTokenResponse; a WatchSession stream carries states, never tokens.

use super::{BrokerService, session_state, validate};
use crate::cache::{AccountSlot, SessionEvent};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::jwt::unix_seconds;
use crate::metrics::TokenOutcome;
use crate::peer::PeerIdentity;
use crate::policy::{Action, Decision, SharedPolicy};
use crate::refresh::Need;
use std::sync::Arc;
use therappai_broker_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

/// Events a WatchSession stream buffers for a slow reader before it waits.
const STREAM_BUFFER: usize = 16;

/// The stream type of WatchSession.
pub type SessionEvents = ReceiverStream<Result<pb::SessionEvent, Status>>;

impl BrokerService {
    pub(super) async fn get_access_token_inner(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<pb::GetAccessTokenResponse, BrokerError> {
        let result = self.serve_token(&request).await;
        let account = request.get_ref().account.as_str();
        self.metrics.token_request(
            account,
            match &result {
                Ok((_, outcome)) => *outcome,
                Err(e) => TokenOutcome::Failed(e.reason()),
            },
        );
        result.map(|(response, _)| response)
    }

    /// The token for a GetAccessToken call, and whether memory had it.
    async fn serve_token(
        &self,
        request: &Request<pb::GetAccessTokenRequest>,
    ) -> Result<(pb::GetAccessTokenResponse, TokenOutcome), BrokerError> {
        let checked = validate::get_access_token(request.get_ref())?;
        let min_valid = checked.min_valid;
        let account = request.get_ref().account.as_str();
        self.authorize(request, "GetAccessToken", Action::Token { account })?;
        let slot = self.account_slot(account)?;
        let (served, outcome) = match slot.fresh_access(self.clock.now(), min_valid) {
            Some(served) => (served, TokenOutcome::Cached),
            None => (
                self.refresher
                    .obtain(slot, Need::ValidFor(min_valid))
                    .await?,
                TokenOutcome::Refreshed,
            ),
        };
        Ok((token_response(served), outcome))
    }

    pub(super) async fn report_rejected_inner(
        &self,
        mut request: Request<pb::ReportRejectedRequest>,
    ) -> Result<pb::GetAccessTokenResponse, BrokerError> {
        let report = validate::report_rejected(request.get_mut())?;
        let account = request.get_ref().account.clone();
        self.authorize(
            &request,
            "ReportRejected",
            Action::Token { account: &account },
        )?;
        let slot = self.account_slot(&account)?;
        let validate::RejectedReport {
            min_valid,
            fingerprint,
        } = report;
        tracing::info!(
            account,
            access_sha256 = %fingerprint,
            "an app reports its access token was rejected"
        );
        if let Some(too_soon) = self.refresher.report_too_soon(slot, &fingerprint) {
            return Err(too_soon);
        }
        let served = self
            .refresher
            .obtain(
                slot,
                Need::Replace {
                    fingerprint,
                    min_valid,
                },
            )
            .await?;
        Ok(token_response(served))
    }

    pub(super) fn watch_session_inner(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<SessionEvents, BrokerError> {
        validate::watch_session(request.get_ref())?;
        let account = request.get_ref().account.clone();
        let who = self.authorize(
            &request,
            "WatchSession",
            Action::Token { account: &account },
        )?;
        let slot = Arc::clone(self.account_slot(&account)?);
        let reloads = self.policy.reloads();
        let (first, events) = slot.subscribe(self.clock.now());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let watch = Watch {
            slot,
            peer: who.peer,
            policy: Arc::clone(&self.policy),
            tx,
            stop: self.streams_stop.clone(),
            clock: Arc::clone(&self.clock),
        };
        tokio::spawn(watch.run(first, events, reloads));
        Ok(ReceiverStream::new(rx))
    }
}

/// One WatchSession stream: forwards the account's session events until the app hangs up,
/// the broker shuts down, or a policy reload takes the app's right away.
struct Watch {
    slot: Arc<AccountSlot>,
    peer: Arc<PeerIdentity>,
    policy: Arc<SharedPolicy>,
    tx: mpsc::Sender<Result<pb::SessionEvent, Status>>,
    stop: CancellationToken,
    clock: Arc<dyn Clock>,
}

impl Watch {
    async fn run(
        self,
        first: SessionEvent,
        mut events: broadcast::Receiver<SessionEvent>,
        mut reloads: tokio::sync::watch::Receiver<u64>,
    ) {
        if !self.send(&first, true).await {
            return;
        }
        loop {
            let received = tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.tx.closed() => return,
                Ok(()) = reloads.changed() => {
                    // A reload may have taken this app's right away: then the stream ends now.
                    if self.allowed() {
                        continue;
                    }
                    self.end_denied().await;
                    return;
                }
                received = events.recv() => received,
            };
            let sent = match received {
                Ok(event) => self.send(&event, false).await,
                // Fell behind: what matters to an app is where the session is now, and the
                // events after it (not the stale ones still queued).
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (now, fresh) = self.slot.subscribe(self.clock.now());
                    events = fresh;
                    self.send(&now, true).await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !sent {
                return;
            }
        }
    }

    /// Sends one event if the peer may still watch this account; false ends the stream.
    async fn send(&self, event: &SessionEvent, snapshot: bool) -> bool {
        if !self.allowed() {
            self.end_denied().await;
            return false;
        }
        let account = self.slot.config.name.as_str();
        let wire = pb::SessionEvent {
            account: account.to_owned(),
            state: session_state(event.state).into(),
            at_unix: unix_seconds(event.at),
            reason: event.reason.clone(),
            snapshot,
        };
        self.deliver(Ok(wire)).await
    }

    /// Whether the policy in force still lets the peer watch this account.
    fn allowed(&self) -> bool {
        let account = self.slot.config.name.as_str();
        matches!(
            self.policy
                .current()
                .decide(&self.peer, Action::Token { account }),
            Decision::Allow { .. }
        )
    }

    /// Tells the app its right is gone; the stream ends after this.
    async fn end_denied(&self) {
        let account = self.slot.config.name.as_str();
        crate::audit::watch_denied(&self.peer, account);
        let denied = BrokerError::PermissionDenied {
            message: format!(
                "the broker's policy no longer lets this program ({}) watch account \"{account}\" \
                 (changed by a config reload); the stream ends",
                self.peer.describe()
            ),
        };
        self.deliver(Err(Status::from(denied))).await;
    }

    /// Queues one message for the app; gives up at shutdown, so an app that stopped reading
    /// (a full stream) cannot hold the broker's shutdown up.
    async fn deliver(&self, message: Result<pb::SessionEvent, Status>) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            sent = self.tx.send(message) => sent.is_ok(),
        }
    }
}

fn token_response(served: crate::cache::ServedToken) -> pb::GetAccessTokenResponse {
    pb::GetAccessTokenResponse {
        fingerprint: served.token.fingerprint(),
        expires_at_unix: unix_seconds(served.expires_at),
        // The one place an access token leaves the broker: to a peer policy allowed.
        access_token: served.token.expose().to_owned(),
    }
}
