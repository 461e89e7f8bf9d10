//! A minimal HTTP CONNECT proxy on 127.0.0.1 that records every connection and every
//! `CONNECT host:port` it tunnels: to show that the broker goes through the configured proxy,
//! and through no proxy it finds in its environment.

use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    connects: Vec<String>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct ConnectProxy {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts on an ephemeral port. Must be called inside a tokio runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the CONNECT proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                recorder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .connections += 1;
                tokio::spawn(tunnel(client, Arc::clone(&recorder)));
            }
        });
        Self { port, seen, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connections
    }

    /// The `host:port` of every CONNECT request so far.
    pub fn connects(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connects
            .clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one `CONNECT host:port HTTP/1.1` request (and its headers), answers 200 and copies
/// bytes both ways. Anything else is answered 405 and closed.
async fn tunnel(client: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut client = BufReader::new(client);
    let mut request = String::new();
    if client.read_line(&mut request).await.is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match client.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut words = request.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let target = target.to_owned();
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .connects
        .push(target.clone());
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
