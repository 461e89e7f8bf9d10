//! Whether an upstream error body echoes a secret the request carried (the refresh token, the
//! password). Checked on the whole body before anything is cut or quoted from it, on its raw
//! bytes and on every string of it decoded as JSON (so `\u002e`-style escapes do not hide a
//! token), and for any [`WINDOW`] bytes of a secret, not only the whole of it: a partial echo
//! is a leak too.

use std::collections::HashSet;

/// Bytes of a secret that count as an echo: 12 base64url characters are 72 bits, never
/// chance. A secret shorter than this counts only whole.
const WINDOW: usize = 12;

/// Whether `body` holds a piece of any of `secrets`.
pub(super) fn echoes_secret(body: &[u8], secrets: &[&str]) -> bool {
    let mut windows: HashSet<&[u8]> = HashSet::new();
    let mut whole: Vec<&[u8]> = Vec::new();
    for secret in secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
    {
        if secret.len() < WINDOW {
            whole.push(secret);
        } else {
            windows.extend(secret.windows(WINDOW));
        }
    }
    let holds = |text: &[u8]| {
        text.windows(WINDOW).any(|w| windows.contains(w))
            || whole.iter().any(|s| text.windows(s.len()).any(|w| w == *s))
    };
    if holds(body) {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|value| any_string(&value, &holds))
}

/// Whether any string (or object key) in `value` satisfies `holds`.
fn any_string(value: &serde_json::Value, holds: &impl Fn(&[u8]) -> bool) -> bool {
    match value {
        serde_json::Value::String(s) => holds(s.as_bytes()),
        serde_json::Value::Array(items) => items.iter().any(|v| any_string(v, holds)),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| holds(k.as_bytes()) || any_string(v, holds)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::echoes_secret;

    const TOKEN: &str = "eyJhbGciOi.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn whole_partial_and_escaped_echoes_are_found() {
        let whole = format!(r#"{{"detail": "Token {TOKEN} is bad"}}"#);
        assert!(echoes_secret(whole.as_bytes(), &[TOKEN]));
        let partial = format!("<html>{}{}", "x".repeat(190), &TOKEN[..30]);
        assert!(echoes_secret(partial.as_bytes(), &[TOKEN]));
        let escaped = format!(r#"{{"error": "{}"}}"#, TOKEN.replace('.', "\\u002e"));
        assert!(echoes_secret(escaped.as_bytes(), &[TOKEN]));
        let nested = format!(r#"{{"detail": {{"refresh": ["{TOKEN}"]}}}}"#);
        assert!(echoes_secret(nested.as_bytes(), &[TOKEN]));
        assert!(echoes_secret(b"wrong pw: hunter2", &["hunter2"]));
    }

    #[test]
    fn an_ordinary_error_is_not_an_echo() {
        let body = br#"{"detail": "Token is invalid or expired", "code": "token_not_valid"}"#;
        assert!(!echoes_secret(body, &[TOKEN, "hunter2"]));
        assert!(!echoes_secret(b"", &[TOKEN]));
        assert!(!echoes_secret(body, &[""]));
    }
}
