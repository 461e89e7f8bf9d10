//! Hostile error answers that echo what the client sent (its refresh token, or its password
//! on `/login/`), in the shapes that have defeated naive scrubbing: the whole value in a JSON
//! `detail`, a long plain-text page where the value only starts near a 200-character cut, the
//! value with JSON escapes so that its raw text differs from the value, and a DRF-style field
//! error that puts it in a nested object.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

/// Where in an error answer the echoed value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EchoShape {
    /// `{"detail": "Token <value> is not valid"}`.
    Detail,
    /// A text/html page: 150 characters of prose, then the value (a cut at 200 characters
    /// keeps a fragment of it).
    Truncated,
    /// `{"error": "<value>"}` with every `.` and the first character written as `\uXXXX`:
    /// the raw body does not contain the value, the parsed string does.
    Escaped,
    /// `{"detail": {"refresh": ["<value>"]}}`: a field error, `detail` is not a string.
    Nested,
}

/// The `status` answer for `shape`, echoing `value`.
pub(crate) fn reply(status: u16, shape: EchoShape, value: &str) -> Response<Full<Bytes>> {
    let (body, content_type) = match shape {
        EchoShape::Detail => (
            json!({ "detail": format!("Token {value} is not valid") }).to_string(),
            "application/json",
        ),
        EchoShape::Truncated => (
            format!(
                "<html><body><p>{}</p><p>rejected: {value}</p></body></html>",
                "The request could not be processed by the gateway. ".repeat(3)
            ),
            "text/html; charset=utf-8",
        ),
        EchoShape::Escaped => (
            format!("{{\"error\": \"{}\"}}", escaped(value)),
            "application/json",
        ),
        EchoShape::Nested => (
            json!({ "detail": { "refresh": [value] } }).to_string(),
            "application/json",
        ),
    };
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// `value` as a JSON string body with its first character and every `.` escaped.
fn escaped(value: &str) -> String {
    value
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 || c == '.' {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}
