//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API: hidden from the docs).
//!
//! The config parser (`Config::parse`) and the JWT reader (`jwt::expiry`) are public already;
//! the upstream answer parsers and the per-RPC request checks are private to their modules,
//! and this module only forwards to them, so the fuzzers run exactly the code the daemon
//! runs without widening the broker's real API.

use crate::error::BrokerError;
use crate::service::validate;
use crate::upstream::{self, Revocation, UpstreamError};
use therappai_broker_proto::v1 as pb;

/// `/login/` answered `status` with `body`; `password` is what was sent.
pub fn login_answer(status: u16, body: &[u8], password: &str) -> Result<(), UpstreamError> {
    upstream::login_answer(status, body, password).map(drop)
}

/// `/refresh/` answered; `Ok` holds the access token's own error (an unusable `exp`), if any.
pub fn refresh_answer(
    status: u16,
    body: &[u8],
    refresh: &str,
) -> Result<Option<UpstreamError>, UpstreamError> {
    upstream::refresh_answer(status, body, refresh).map(|r| r.access.err())
}

/// The blacklist call at `path` answered.
pub fn revoke_answer(status: u16, body: &[u8], path: &str, refresh: &str) -> Revocation {
    upstream::revoke_answer(status, body, path, refresh)
}

/// The checks each RPC runs on its request before it acts.
pub fn check_get_access_token(request: &pb::GetAccessTokenRequest) -> Result<(), BrokerError> {
    validate::get_access_token(request).map(drop)
}

pub fn check_report_rejected(request: &mut pb::ReportRejectedRequest) -> Result<(), BrokerError> {
    validate::report_rejected(request).map(drop)
}

pub fn check_watch_session(request: &pb::WatchSessionRequest) -> Result<(), BrokerError> {
    validate::watch_session(request)
}

pub fn check_login(request: &pb::LoginRequest) -> Result<(), BrokerError> {
    validate::login(request)
}

pub fn check_logout(request: &pb::LogoutRequest) -> Result<(), BrokerError> {
    validate::logout(request)
}

pub fn check_revoke(request: &pb::RevokeRequest) -> Result<(), BrokerError> {
    validate::revoke(request)
}

/// The normaliser's quick look at a header block's first `:authority`.
pub fn first_authority_is_valid(block: &[u8]) -> Option<bool> {
    crate::authority::quick::first_authority_is_valid(block)
}

/// The normaliser's Huffman pre-pass: `block` with its Huffman-coded strings written plain.
pub fn without_huffman(block: &[u8]) -> Option<Vec<u8>> {
    crate::authority::plain::without_huffman(block).map(std::borrow::Cow::into_owned)
}
