//! Handlers that end sessions: Logout, LogoutDevice and Revoke, and their wire answers.
//!
//! Each answer says, per account, which steps succeeded and, where one failed, what to do
//! next. A revoke whose upstream step failed tells the admin that the stolen refresh token may
//! still work at therappai and who can kill it.

use super::BrokerService;
use crate::error::BrokerError;
use crate::policy::Action;
use crate::session::{AccountOutcome, DeviceOutcome, EndMode};
use crate::upstream::Revocation;
use therappai_broker_proto::v1 as pb;
use tonic::Request;

impl BrokerService {
    pub(super) async fn logout_inner(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<pb::LogoutResponse, BrokerError> {
        super::validate::logout(request.get_ref())?;
        let who = self.authorize(&request, "Logout", Action::Admin)?;
        let account = request.get_ref().account.clone();
        self.account_slot(&account)?;
        let mut outcome = self.sessions.end_account(&account, EndMode::Logout).await?;
        let result = if outcome.local_wipe_done() {
            "ok"
        } else {
            "store-failed"
        };
        self.audit
            .admin(&who.peer, "Logout", &account, &who.rule, result);
        if let Some(source) = outcome.store_error.take() {
            return Err(BrokerError::Store { account, source });
        }
        let wire = account_outcome(&outcome, EndMode::Logout);
        Ok(pb::LogoutResponse {
            was_logged_in: wire.was_logged_in,
            store_entry_deleted: wire.store_entry_deleted,
            upstream: wire.upstream,
            upstream_detail: wire.upstream_detail,
            watchers_notified: wire.watchers_notified,
        })
    }

    pub(super) async fn logout_device_inner(
        &self,
        request: Request<pb::LogoutDeviceRequest>,
    ) -> Result<pb::LogoutDeviceResponse, BrokerError> {
        let who = self.authorize(&request, "LogoutDevice", Action::Admin)?;
        let outcome = self.sessions.end_device(EndMode::Logout).await?;
        let complete = outcome.complete(EndMode::Logout);
        self.audit.admin(
            &who.peer,
            "LogoutDevice",
            "*",
            &who.rule,
            if complete { "ok" } else { "incomplete" },
        );
        let (accounts, store_listing_error) = device_outcome(&outcome, EndMode::Logout);
        Ok(pb::LogoutDeviceResponse {
            accounts,
            store_listing_error,
        })
    }

    pub(super) async fn revoke_inner(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<pb::RevokeResponse, BrokerError> {
        super::validate::revoke(request.get_ref())?;
        let who = self.authorize(&request, "Revoke", Action::Admin)?;
        let body = request.get_ref();
        let outcome = if body.all {
            self.sessions.end_device(EndMode::Revoke).await?
        } else {
            self.account_slot(&body.account)?;
            let account = self
                .sessions
                .end_account(&body.account, EndMode::Revoke)
                .await?;
            DeviceOutcome {
                accounts: vec![account],
                listing_error: None,
            }
        };
        let complete = outcome.complete(EndMode::Revoke);
        let target = if body.all { "*" } else { body.account.as_str() };
        self.audit.admin(
            &who.peer,
            "Revoke",
            target,
            &who.rule,
            if complete { "ok" } else { "incomplete" },
        );
        tracing::warn!(
            accounts = outcome.accounts.len(),
            complete,
            "compromise: sessions revoked for {target}"
        );
        let (accounts, store_listing_error) = device_outcome(&outcome, EndMode::Revoke);
        Ok(pb::RevokeResponse {
            accounts,
            store_listing_error,
            complete,
        })
    }
}

fn device_outcome(outcome: &DeviceOutcome, mode: EndMode) -> (Vec<pb::AccountOutcome>, String) {
    let accounts = outcome
        .accounts
        .iter()
        .map(|a| account_outcome(a, mode))
        .collect();
    let listing = outcome
        .listing_error
        .as_ref()
        .map(|e| {
            format!(
                "{e}; entries of accounts no longer in the config may remain: fix the store and run the same command again"
            )
        })
        .unwrap_or_default();
    (accounts, listing)
}

fn account_outcome(outcome: &AccountOutcome, mode: EndMode) -> pb::AccountOutcome {
    let (upstream, upstream_detail) = upstream_step(outcome, mode);
    let mut errors = Vec::new();
    if let Some(err) = &outcome.store_error {
        errors.push(format!(
            "the store entry is still there ({err}); fix the store, then run the same command again"
        ));
    }
    if mode == EndMode::Revoke && !outcome.upstream_revoked() {
        errors.push(format!("revocation incomplete: {upstream_detail}"));
    }
    pb::AccountOutcome {
        account: outcome.account.clone(),
        configured: outcome.email.is_some(),
        was_logged_in: outcome.was_logged_in,
        store_entry_deleted: outcome.store_entry_deleted,
        upstream: upstream.into(),
        upstream_detail,
        watchers_notified: u32::try_from(outcome.watchers_notified).unwrap_or(u32::MAX),
        error: errors.join("; "),
    }
}

fn upstream_step(outcome: &AccountOutcome, mode: EndMode) -> (pb::UpstreamRevocation, String) {
    let not_told = |why: String| match mode {
        EndMode::Logout => format!("therappai was not told: {why}"),
        // The wipe here cannot stop a copy of the refresh token used elsewhere.
        EndMode::Revoke => format!(
            "therappai was NOT told ({why}); the refresh token may still work for whoever copied it: ask therappai to revoke every session of {} and change its password",
            outcome
                .email
                .as_deref()
                .map(|e| format!("the therappai account {e}"))
                .unwrap_or_else(|| format!(
                    "the account that stored entry \"{}\"",
                    outcome.account
                ))
        ),
    };
    match &outcome.upstream {
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
            not_told("no [upstream] revoke_path is configured".to_owned()),
        ),
        Some(Revocation::Failed(reason)) => {
            (pb::UpstreamRevocation::Failed, not_told(reason.clone()))
        }
    }
}
