//! The JWT claim reader (`jwt::expiry`) on arbitrary tokens and arbitrary claim sets.
//!
//! Properties: no panic (a huge or odd `exp` once panicked: issue 11, defect 7), no unbounded
//! allocation, and an expiry it returns is one every part of the broker can represent (up to
//! the end of the year 9999).
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use therappai_broker::jwt;

const LAST_SECOND_OF_9999: i64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    // The input as a whole token, and as the claims of a token shaped like therappai's.
    if let Ok(token) = std::str::from_utf8(data) {
        check(token);
    }
    let token = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(data)
    );
    check(&token);
});

fn check(token: &str) {
    match jwt::expiry(token) {
        Ok(Some(at)) => {
            let seconds = jwt::unix_seconds(at);
            assert!(
                (0..=LAST_SECOND_OF_9999).contains(&seconds),
                "expiry {seconds} is outside 1970..=9999"
            );
        }
        Ok(None) => {}
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("exp claim"), "{message}");
            assert!(
                message.len() < 1024,
                "an unbounded error message: {message}"
            );
        }
    }
}
