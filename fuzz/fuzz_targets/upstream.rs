//! The parsers of therappai's answers: `/login/`, `/refresh/` and the blacklist call, for any
//! status and any body (what the broker gets after redirects, 429 and 5xx are handled).
//!
//! Properties: no panic, no unbounded allocation, error text of bounded size, and the secret
//! that was sent (the password or the refresh token) never appears in an error, however the
//! server echoes it: the input can splice it, whole, into the body.
//!
//! Input: byte 0 picks the endpoint and whether to splice the secret in, bytes 1-2 are the
//! status (big-endian), byte 3 where the secret goes in the body, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use therappai_broker::fuzzing;
use therappai_broker::upstream::Revocation;

/// Shaped like the refresh tokens the fake therappai issues (and a password as long).
const SECRET: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2VjcmV0LXNpZw";

fuzz_target!(|data: &[u8]| {
    let [mode, high, low, at, body @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*high, *low]);
    let body = if mode & 0x10 != 0 {
        let at = usize::from(*at).min(body.len());
        [&body[..at], SECRET.as_bytes(), &body[at..]].concat()
    } else {
        body.to_vec()
    };
    let message = match mode % 3 {
        0 => fuzzing::login_answer(status, &body, SECRET)
            .err()
            .map(|e| e.to_string()),
        1 => match fuzzing::refresh_answer(status, &body, SECRET) {
            Ok(access) => access.map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        },
        _ => match fuzzing::revoke_answer(status, &body, "/token/blacklist/", SECRET) {
            Revocation::Failed(reason) => Some(reason),
            Revocation::Done | Revocation::NotConfigured => None,
        },
    };
    if let Some(message) = message {
        assert!(
            !message.contains(SECRET),
            "the sent secret is in the error: {message}"
        );
        assert!(
            message.len() < 2048,
            "unbounded error text: {} bytes",
            message.len()
        );
    }
});
