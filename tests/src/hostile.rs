//! Hostile traffic against a broker's socket, run from a process of another uid (the flood
//! test re-executes its own binary under `setpriv`): thousands of connections, the HTTP/2
//! preface a byte at a time or replaced by junk, oversized messages, and account names of
//! every length and byte value (non-UTF-8, NUL, control characters) in real gRPC requests.
//! It only counts what happened; the victim's side asserts.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the hostile process saw, printed as one `key=value` line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub connections_tried: u64,
    pub connect_errors: u64,
    /// Connections the broker closed (EOF or reset) while the flood held them.
    pub closed_by_broker: u64,
    /// Connections still open when the flood let go.
    pub held: u64,
    pub calls: u64,
    /// Calls by outcome: `OK`, a gRPC code, `Timeout` or `NotReady`.
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    pub fn line(&self) -> String {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!(
            "FLOOD connections_tried={} connect_errors={} closed_by_broker={} held={} calls={} outcomes={}",
            self.connections_tried,
            self.connect_errors,
            self.closed_by_broker,
            self.held,
            self.calls,
            outcomes.join(",")
        )
    }

    fn count(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }

    /// The value of `key` in a [`Tally::line`] found in `text`.
    pub fn field(text: &str, key: &str) -> Option<u64> {
        let line = text.lines().find_map(|l| l.split_once("FLOOD "))?.1;
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    }
}

/// A request whose string fields are raw bytes: on the wire a protobuf `string` and `bytes`
/// field are the same, so this sends what no well-behaved client can (invalid UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JunkRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub first: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub second: Option<Vec<u8>>,
}

/// Any answer, its fields ignored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ignored {}

/// Account names: every length 0..=300 and a few KiB, cycling through byte patterns
/// (printable, NUL, control characters, invalid UTF-8, multi-byte and bidi characters, '*',
/// path-like).
pub fn junk_names() -> Vec<Vec<u8>> {
    let patterns: [&[u8]; 9] = [
        b"a",
        b"\0",
        b"\x01\x1b[31m\n\r\t\x7f",
        b"\xff\xfe\xc0\x80",
        "\u{e9}\u{202e}\u{1f600}".as_bytes(),
        b"*",
        b"../../etc/passwd",
        b"default\0",
        b"%s%n{}\"'\\",
    ];
    let lengths = (0..=300).chain([1024, 4096, 16 * 1024, 60 * 1024]);
    lengths
        .enumerate()
        .map(|(i, len)| {
            let pattern = patterns[i % patterns.len()];
            pattern.iter().copied().cycle().take(len).collect()
        })
        .collect()
}

/// Opens `count` connections, each sending the preface a byte at a time (`slow`), junk instead
/// of a preface, or nothing, and holds them for `hold`; counts those the broker closed.
pub async fn connection_flood(socket: &Path, count: usize, hold: Duration, tally: &mut Tally) {
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tally.connections_tried += 1;
        let stream = match UnixStream::connect(socket).await {
            Ok(stream) => stream,
            Err(_) => {
                tally.connect_errors += 1;
                continue;
            }
        };
        tasks.push(tokio::spawn(hold_connection(stream, i % 5, hold)));
    }
    for task in tasks {
        match task.await {
            Ok(true) => tally.closed_by_broker += 1,
            Ok(false) | Err(_) => tally.held += 1,
        }
    }
}

/// One held connection; true when the broker closed it before `hold` ran out. By `kind`:
/// 0 the preface a byte every 50 ms, 2 junk instead of a preface, 3 silence for 5 s then the
/// preface; 1 and 4 a prompt preface (a client that leaks connections). Those that complete the preface then
/// send an empty SETTINGS frame and stay silent: past the handshake timeout, they hold a
/// descriptor each until the idle timeout, so without a per-uid cap 1,600 of them exhaust the
/// broker's descriptors.
async fn hold_connection(mut stream: UnixStream, kind: usize, hold: Duration) -> bool {
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let (mut reader, mut writer) = stream.split();
    let write = async {
        match kind {
            0 => {
                for byte in PREFACE {
                    if writer.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = writer.write_all(&SETTINGS).await;
            }
            2 => {
                let _ = writer
                    .write_all(b"GET / HTTP/1.1\r\n\x00\xff\xfe junk\r\n\r\n")
                    .await;
            }
            // Silence, then the preface just before a 10 s handshake timeout would close it.
            3 => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = writer.write_all(PREFACE).await;
                let _ = writer.write_all(&SETTINGS).await;
            }
            _ => {
                let _ = writer.write_all(PREFACE).await;
                let _ = writer.write_all(&SETTINGS).await;
            }
        }
        std::future::pending::<()>().await;
    };
    let closed = async {
        let mut sink = [0u8; 1024];
        loop {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = write => false,
        () = closed => true,
        () = tokio::time::sleep(hold) => false,
    }
}

/// A gRPC channel over the broker's socket.
pub async fn channel(socket: &Path) -> Option<tonic::transport::Channel> {
    let socket = PathBuf::from(socket);
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .ok()
}

/// One unary call of `method` (e.g. `GetAccessToken`) with `request`.
pub async fn call(
    channel: &tonic::transport::Channel,
    method: &str,
    request: JunkRequest,
    tally: &mut Tally,
) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    tally.calls += 1;
    if grpc.ready().await.is_err() {
        tally.count("NotReady");
        return;
    }
    let path = format!("/therappai.broker.v1.Broker/{method}")
        .parse()
        .unwrap_or_else(|_| tonic::codegen::http::uri::PathAndQuery::from_static("/"));
    let codec = tonic_prost::ProstCodec::<JunkRequest, Ignored>::default();
    let request = tonic::Request::new(request);
    let answer =
        tokio::time::timeout(Duration::from_secs(10), grpc.unary(request, path, codec)).await;
    match answer {
        Ok(Ok(_)) => tally.count("OK"),
        Ok(Err(status)) => tally.count(format!("{:?}", status.code())),
        Err(_) => tally.count("Timeout"),
    }
}

/// Junk names to every RPC that takes an account, and oversized messages, over `channels`.
pub async fn junk_calls(channels: &[tonic::transport::Channel], tally: &mut Tally) {
    let names = junk_names();
    let methods = [
        "GetAccessToken",
        "ReportRejected",
        "Login",
        "Logout",
        "Revoke",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let channel = &channels[i % channels.len()];
        let method = methods[i % methods.len()];
        // Login's second field is the password; the others' is absent or not a string.
        let second = (method == "Login").then(|| b"a junk password".to_vec());
        let request = JunkRequest {
            first: name,
            second,
        };
        call(channel, method, request, tally).await;
    }
    // Oversized: a 1 MiB and a 4 MiB "access token", and a 3 MiB account name.
    for (i, size) in [1 << 20, 4 << 20, 3 << 20].into_iter().enumerate() {
        let channel = &channels[i % channels.len()];
        let request = JunkRequest {
            first: b"default".to_vec(),
            second: Some(vec![b'x'; size]),
        };
        call(channel, "ReportRejected", request, tally).await;
        let request = JunkRequest {
            first: vec![b'y'; size],
            second: None,
        };
        call(channel, "GetAccessToken", request, tally).await;
    }
}
