//! The few HTTP calls the harness and the tests make: a client that trusts the test CA and
//! never follows redirects, and a reply reduced to status, headers and JSON.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// An HTTPS client trusting only `ca_pem`, no proxy, never following redirects (a standby
/// without a leader answers 307 to a dead address).
pub fn https_client(ca_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca_pem).expect("read the OpenBao CA");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("parse the CA PEM"))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the HTTPS client")
}

/// A response reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body (`Value::Null` when empty).
    pub body: Value,
}

impl Reply {
    /// The `errors` array joined with "; " (empty when none).
    pub fn errors(&self) -> String {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }
}

/// One request to `address` (`token` as `X-Vault-Token`); `Err` is a transport failure.
pub async fn call(
    http: &reqwest::Client,
    address: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply, reqwest::Error> {
    let mut request = http.request(method, format!("{address}{path}"));
    if let Some(token) = token {
        request = request.header("X-Vault-Token", token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        headers,
        body,
    })
}
