//! The checks every RPC runs on its request before it acts, on any bytes a client can send
//! (decoded with prost, as tonic does).
//!
//! Properties: no panic, no unbounded allocation, every refusal is INVALID_ARGUMENT, and the
//! refusal does not depend on what a caller put in a field it must not see echoed: the
//! password, the reported access token, an invalid account name or an invalid fingerprint
//! (the same request with that field's content replaced gets the same answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use therappai_broker::error::BrokerError;
use therappai_broker::fuzzing;
use therappai_broker_proto::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let [rpc, wire @ ..] = data else {
        return;
    };
    match rpc % 9 {
        0 => differential::<pb::GetAccessTokenRequest>(wire, fuzzing::check_get_access_token),
        1 => differential::<pb::ReportRejectedRequest>(wire, |r| {
            fuzzing::check_report_rejected(&mut r.clone())
        }),
        2 => differential::<pb::WatchSessionRequest>(wire, fuzzing::check_watch_session),
        3 => differential::<pb::LoginRequest>(wire, fuzzing::check_login),
        4 => differential::<pb::LogoutRequest>(wire, fuzzing::check_logout),
        5 => differential::<pb::RevokeRequest>(wire, fuzzing::check_revoke),
        // No fields to check: decoding (unknown fields skipped) must still never panic.
        6 => drop(pb::LogoutDeviceRequest::decode(wire)),
        7 => drop(pb::StatusRequest::decode(wire)),
        _ => drop(pb::GetMetricsRequest::decode(wire)),
    }
});

/// A request whose unseen fields can be swapped for other content of the same shape.
trait Masked: Message + Default + Clone {
    fn masked(&self) -> Self;
}

fn differential<M: Masked>(wire: &[u8], check: impl Fn(&M) -> Result<(), BrokerError>) {
    let Ok(request) = M::decode(wire) else {
        return;
    };
    let first = check(&request);
    let second = check(&request.masked());
    if let Err(err) = &first {
        assert!(
            matches!(err, BrokerError::InvalidArgument { .. }),
            "a request check answered something else than INVALID_ARGUMENT: {err:?}"
        );
        assert!(err.to_string().len() < 512, "unbounded error: {err}");
    }
    let shown = |r: &Result<(), BrokerError>| r.as_ref().err().map(ToString::to_string);
    assert_eq!(
        shown(&first),
        shown(&second),
        "the answer depends on the content of a field it must not echo"
    );
}

/// An invalid account name replaced by another invalid one; a valid or empty name kept.
fn account(name: &str) -> String {
    if name.is_empty()
        || fuzzing::check_logout(&pb::LogoutRequest {
            account: name.into(),
        })
        .is_ok()
    {
        name.to_owned()
    } else {
        "!".to_owned()
    }
}

/// Same length, other content (only emptiness matters to the checks).
fn other(secret: &str) -> String {
    "x".repeat(secret.len())
}

impl Masked for pb::GetAccessTokenRequest {
    fn masked(&self) -> Self {
        Self {
            account: account(&self.account),
            ..self.clone()
        }
    }
}

impl Masked for pb::ReportRejectedRequest {
    fn masked(&self) -> Self {
        let fingerprint = &self.fingerprint;
        let valid = fingerprint.len() == 8 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        Self {
            account: account(&self.account),
            access_token: other(&self.access_token),
            // An invalid fingerprint may be a token pasted in the wrong field: only its
            // length in characters may show.
            fingerprint: if valid || fingerprint.is_empty() {
                fingerprint.clone()
            } else {
                "z".repeat(fingerprint.chars().count())
            },
            ..self.clone()
        }
    }
}

impl Masked for pb::WatchSessionRequest {
    fn masked(&self) -> Self {
        Self {
            account: account(&self.account),
        }
    }
}

impl Masked for pb::LoginRequest {
    fn masked(&self) -> Self {
        Self {
            account: account(&self.account),
            password: other(&self.password),
        }
    }
}

impl Masked for pb::LogoutRequest {
    fn masked(&self) -> Self {
        Self {
            account: account(&self.account),
        }
    }
}

impl Masked for pb::RevokeRequest {
    fn masked(&self) -> Self {
        Self {
            account: account(&self.account),
            ..self.clone()
        }
    }
}
