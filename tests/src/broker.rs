//! Starting, restarting and talking to the real `therappai-broker` binary.

use crate::keyring::SecretServiceSession;
use crate::{unique_name, wait_until, workspace_bin};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Which real store the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    SecretService,
    Keyutils,
    /// `encrypted-file` at `{dir}/state/tokens.enc`, keyed by `{dir}/store.key` (0600).
    EncryptedFile,
    /// `vault`: a fleet's OpenBao; the test puts the `[store.vault]` section in
    /// `extra_config` (see `openbao::store_section`).
    Vault,
}

impl StoreKind {
    /// The `[store] backend` value, which `status --json` also reports.
    pub fn backend(self) -> &'static str {
        match self {
            Self::SecretService => "secret-service",
            Self::Keyutils => "keyutils",
            Self::EncryptedFile => "encrypted-file",
            Self::Vault => "vault",
        }
    }
}

/// What to put in the broker's config.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub store: StoreKind,
    /// `(name, email)` of each `[[account]]`.
    pub accounts: Vec<(String, String)>,
    pub revoke_path: Option<String>,
    /// Log filter passed as `--log-level`.
    pub log_level: String,
    /// Top-level keys written before the first table (e.g. `socket_group = "nogroup"`).
    pub top_config: String,
    /// Tables appended at the end (e.g. `[[allow]]` rules); `{dir}` is replaced by the
    /// broker's directory.
    pub extra_config: String,
    /// Make the broker's directory traversable (0711) so processes of other uids can reach
    /// the socket (whose own mode and group then decide).
    pub shared_dir: bool,
    /// A program (and its arguments) that starts the daemon, e.g. `systemd-socket-activate
    /// -l {dir}/run/broker.sock` (`{dir}` is the broker's directory, whose `run/` then exists
    /// already): the daemon's own argv follows.
    pub launcher: Vec<String>,
    /// `[store] service`: give two brokers the same one to have them share entries. Default:
    /// a name unique to this broker.
    pub store_service: Option<String>,
    /// Extra keys of the `[store]` table (e.g. `call_timeout_seconds = 2`).
    pub store_config: String,
    /// `[upstream] request_timeout_seconds`.
    pub request_timeout_seconds: u64,
    /// The `[refresh]` section. Tests default to short retry delays so that waiting for a
    /// recovery costs little, and to acting on every rejected-token report (they report
    /// tokens seconds old; `report_too_soon.rs` tests the minimum age).
    pub refresh_section: String,
    /// Extra keys of the `[upstream]` table (e.g. `proxy = "http://127.0.0.1:3128"`).
    pub upstream_config: String,
    /// Extra environment variables of the daemon (e.g. `HTTPS_PROXY`).
    pub env: Vec<(String, String)>,
}

impl BrokerOptions {
    /// One account `default` for `email`, on `store`.
    pub fn new(store: StoreKind, email: &str) -> Self {
        Self {
            store,
            accounts: vec![("default".to_owned(), email.to_owned())],
            revoke_path: None,
            log_level: "debug".to_owned(),
            top_config: String::new(),
            store_service: None,
            store_config: String::new(),
            request_timeout_seconds: 5,
            refresh_section: "[refresh]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nfailure_backoff_seconds = 1\nreport_min_age_seconds = 0\n".to_owned(),
            extra_config: String::new(),
            shared_dir: false,
            launcher: Vec::new(),
            upstream_config: String::new(),
            env: Vec::new(),
        }
    }

    /// Adds an `[[account]]`.
    #[must_use]
    pub fn with_account(mut self, name: &str, email: &str) -> Self {
        self.accounts.push((name.to_owned(), email.to_owned()));
        self
    }
}

/// One CLI run.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A running broker in a private directory, with its store.
#[derive(Debug)]
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Keyring service name, unique to this broker.
    pub service: String,
    pub options: BrokerOptions,
    pub secret_service: Option<SecretServiceSession>,
    /// The config without `extra_config`, for [`Broker::rewrite_extra_config`].
    base_config: String,
    child: Option<Child>,
}

/// `base` with `extra` appended, `{dir}` in `extra` replaced by `dir`.
fn with_extra(base: &str, extra: &str, dir: &Path) -> String {
    format!(
        "{base}\n{}",
        extra.replace("{dir}", &dir.display().to_string())
    )
}

impl Broker {
    /// Writes the config for the fake at `base_url` (trusting `ca_pem`) and starts the broker.
    #[track_caller]
    pub fn start(options: BrokerOptions, base_url: &str, ca_pem: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if options.shared_dir {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod the broker's directory 0711");
        }
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write CA");
        if options.store == StoreKind::EncryptedFile {
            write_store_key(&dir.path().join("store.key"));
        }
        let socket = dir.path().join("run/broker.sock");
        let service = options
            .store_service
            .clone()
            .unwrap_or_else(|| unique_name("therappai-broker-test"));
        let config_path = dir.path().join("broker.toml");
        let base_config = config_text(&options, &socket, &service, base_url, &ca_file);
        std::fs::write(
            &config_path,
            with_extra(&base_config, &options.extra_config, dir.path()),
        )
        .expect("write config");
        let secret_service =
            (options.store == StoreKind::SecretService).then(SecretServiceSession::start);
        let log_path = dir.path().join("broker.log");
        let mut broker = Self {
            dir,
            socket,
            config_path,
            log_path,
            service,
            options,
            secret_service,
            base_config,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// Environment every process of this broker's world gets (the private bus, if any).
    fn bus_env(&self, command: &mut Command) {
        command.env_remove("DBUS_SESSION_BUS_ADDRESS");
        if let Some(ss) = &self.secret_service {
            command.env("DBUS_SESSION_BUS_ADDRESS", ss.address());
        }
    }

    #[track_caller]
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open broker log");
        let mut command = match self.options.launcher.split_first() {
            Some((program, args)) => {
                let dir = self.dir.path().display().to_string();
                std::fs::create_dir_all(self.dir.path().join("run")).expect("mkdir run");
                let mut command = Command::new(program);
                command
                    .args(args.iter().map(|a| a.replace("{dir}", &dir)))
                    .arg(workspace_bin("therappai-broker"));
                command
            }
            None => Command::new(workspace_bin("therappai-broker")),
        };
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--log-level")
            .arg(&self.options.log_level)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.bus_env(&mut command);
        let child = command.spawn().expect("spawn therappai-broker");
        self.child = Some(child);
        let socket = self.socket.clone();
        let log_path = self.log_path.clone();
        let child = self.child.as_mut().expect("child");
        wait_until(
            "the broker's socket to accept connections",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the broker exited with {status} before listening; its log:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            },
        );
    }

    /// SIGTERM, then waits for the exit status (bounded).
    #[track_caller]
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("broker is running");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut status = None;
        wait_until(
            "the broker to exit after SIGTERM",
            Duration::from_secs(15),
            || {
                status = child.try_wait().expect("try_wait");
                status.is_some()
            },
        );
        status.expect("exited")
    }

    /// Stops the broker, rewrites its config with `accounts` instead of the configured ones
    /// (same store, socket and upstream) and starts it again.
    #[track_caller]
    pub fn restart_with_accounts(&mut self, accounts: &[(&str, &str)]) {
        let status = self.stop();
        assert!(status.success(), "broker exited with {status} on SIGTERM");
        self.options.accounts = accounts
            .iter()
            .map(|(n, e)| ((*n).to_owned(), (*e).to_owned()))
            .collect();
        let old = std::fs::read_to_string(&self.config_path).expect("read config");
        let base_url = old
            .lines()
            .find_map(|l| l.strip_prefix("base_url = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("config has base_url")
            .to_owned();
        let config = config_text(
            &self.options,
            &self.socket,
            &self.service,
            &base_url,
            &self.dir.path().join("ca.pem"),
        );
        std::fs::write(&self.config_path, config).expect("write config");
        self.spawn();
    }

    /// Stops and starts the broker with the same config, store and log.
    #[track_caller]
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "broker exited with {status} on SIGTERM; its log:\n{}",
            self.logs()
        );
        self.spawn();
    }

    /// `kill -9`: the broker gets no chance to finish anything; then starts it again with the
    /// same config, store and log.
    #[track_caller]
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `kill -9` and reap, without starting it again (see [`Broker::start_again`]).
    #[track_caller]
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("broker is running");
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the broker");
    }

    /// Starts the stopped (or killed) broker again with the same config, store and log.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        self.spawn();
    }

    /// Runs the daemon binary once more with this broker's config and `args` (e.g.
    /// `--rekey FILE`, or nothing to see it refuse to start) and waits for it to exit.
    /// `stdin` is written to its standard input.
    #[track_caller]
    pub fn run_daemon_once(&self, args: &[&str], stdin: Option<&[u8]>) -> CtlOutput {
        let mut command = Command::new(workspace_bin("therappai-broker"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.bus_env(&mut command);
        let mut child = command.spawn().expect("spawn therappai-broker");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            input.write_all(bytes).expect("write the daemon's stdin");
        }
        drop(input);
        output_at_exit(child, "the daemon run to exit")
    }

    /// Rewrites the config file with new `extra_config` (the broker reads it on SIGHUP).
    #[track_caller]
    pub fn rewrite_extra_config(&mut self, extra: &str) {
        self.options.extra_config = extra.to_owned();
        let text = with_extra(&self.base_config, extra, self.dir.path());
        std::fs::write(&self.config_path, text).expect("rewrite config");
    }

    /// The broker's process id.
    #[track_caller]
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("broker is running");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the broker.
    #[track_caller]
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// How many log lines contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.logs()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Everything the broker wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `therappai-brokerctl --socket SOCKET args…`.
    pub async fn ctl(&self, args: &[&str]) -> CtlOutput {
        self.ctl_with_stdin(args, None).await
    }

    /// As [`Broker::ctl`], writing `stdin` to its standard input.
    pub async fn ctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        let ctl = workspace_bin("therappai-brokerctl");
        self.run_ctl(&[], &ctl, args, stdin).await
    }

    /// Runs `wrapper… ctl --socket SOCKET args…`, e.g. with `wrapper` =
    /// `["setpriv", "--reuid=65534", …, "--"]` to run as another user, or a copy of the CLI
    /// at another path as `ctl`.
    pub async fn run_ctl(
        &self,
        wrapper: &[&str],
        ctl: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> CtlOutput {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(ctl);
                command
            }
            None => Command::new(ctl),
        };
        command
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        let output = tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("spawn therappai-brokerctl");
            if let Some(text) = stdin {
                let mut pipe = child.stdin.take().expect("stdin pipe");
                pipe.write_all(text.as_bytes()).expect("write stdin");
            }
            child.wait_with_output().expect("wait therappai-brokerctl")
        })
        .await
        .expect("ctl task");
        CtlOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `login --account NAME --password-stdin`, asserting success.
    pub async fn login(&self, account: &str, password: &str) {
        let out = self
            .ctl_with_stdin(
                &["login", "--account", account, "--password-stdin"],
                Some(&format!("{password}\n")),
            )
            .await;
        assert_eq!(out.code, 0, "login failed: {}", out.stderr);
    }

    /// `token --account NAME`, asserting success; returns the token.
    pub async fn token(&self, account: &str) -> String {
        let out = self.ctl(&["token", "--account", account]).await;
        assert_eq!(out.code, 0, "token failed: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    /// Asks for a token until the CLI succeeds (e.g. after an upstream recovered and the
    /// broker's failure back-off ran out); panics after `timeout`.
    pub async fn token_eventually(&self, account: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = self.ctl(&["token", "--account", account]).await;
            if out.code == 0 {
                return out.stdout.trim().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no token within {timeout:?}; last error (exit {}): {}",
                out.code,
                out.stderr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client-lib connection to this broker.
    pub async fn client(&self) -> therappai_broker_client::Client {
        therappai_broker_client::Client::connect(&self.socket)
            .await
            .expect("connect client-lib")
    }

    /// Whether the store itself holds an entry for `account`, asked through the store's own
    /// tools (secret-tool / keyctl), not through the broker.
    #[track_caller]
    pub fn store_has_entry(&self, account: &str) -> bool {
        match self.options.store {
            StoreKind::SecretService => self
                .secret_service
                .as_ref()
                .expect("secret service session")
                .has_entry(&self.service, account),
            StoreKind::Keyutils => crate::keyring::keyutils_has_entry(&self.service, account),
            StoreKind::EncryptedFile => self
                .encrypted_file_accounts()
                .iter()
                .any(|name| name == account),
            StoreKind::Vault => panic!("a vault entry is read from OpenBao by the test itself"),
        }
    }

    /// The accounts the encrypted-file store's file holds, decrypted here with its key (read
    /// without the broker's lock, as a backup tool would).
    #[track_caller]
    pub fn encrypted_file_accounts(&self) -> Vec<String> {
        use therappai_broker::store::encrypted_file::{KeySource, StoreKey, read_file};
        let key = StoreKey::load(&KeySource::KeyFile(self.path("store.key")))
            .expect("load the test's store key");
        read_file(&self.path("state/tokens.enc"), &key)
            .expect("the store file decrypts with its key")
            .map(|entries| entries.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A bare tonic client on the broker's socket, for requests client-lib would not send
    /// (junk fields, a client deadline, a token in the fingerprint field).
    pub async fn raw_client(
        &self,
    ) -> therappai_broker_proto::v1::broker_client::BrokerClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket.display()))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the broker's socket");
        therappai_broker_proto::v1::broker_client::BrokerClient::new(channel)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 32 random bytes at `path`, mode 0600: a store key as the README says to make one.
#[track_caller]
fn write_store_key(path: &Path) {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .expect("read /dev/urandom");
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(&key))
        .expect("write the store key");
}

/// `text` ending in a newline (empty stays empty), so that keys can follow it.
fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

/// The broker's TOML config for `options`.
fn config_text(
    options: &BrokerOptions,
    socket: &Path,
    service: &str,
    base_url: &str,
    ca_file: &Path,
) -> String {
    let mut config = format!(
        "socket = \"{}\"\nshutdown_grace_seconds = 3\n{}\n[store]\nbackend = \"{}\"\nservice = \"{service}\"\n{}{}\n[upstream]\nbase_url = \"{base_url}\"\nca_file = \"{}\"\nrequest_timeout_seconds = {}\n",
        socket.display(),
        options.top_config,
        options.store.backend(),
        match options.store {
            StoreKind::EncryptedFile => {
                let dir = socket
                    .parent()
                    .and_then(Path::parent)
                    .expect("the socket is DIR/run/broker.sock");
                format!(
                    "file = \"{}\"\nkey_file = \"{}\"\n",
                    dir.join("state/tokens.enc").display(),
                    dir.join("store.key").display()
                )
            }
            StoreKind::SecretService | StoreKind::Keyutils | StoreKind::Vault => String::new(),
        },
        with_newline(&options.store_config),
        ca_file.display(),
        options.request_timeout_seconds
    );
    if let Some(path) = &options.revoke_path {
        config.push_str(&format!("revoke_path = \"{path}\"\n"));
    }
    config.push_str(&options.upstream_config);
    config.push('\n');
    for (name, email) in &options.accounts {
        config.push_str(&format!(
            "\n[[account]]\nname = \"{name}\"\nemail = \"{email}\"\n"
        ));
    }
    config.push('\n');
    config.push_str(&options.refresh_section);
    config
}

/// Runs the broker with `config` (written to a private directory; `{dir}` in the text is
/// replaced by that directory) and expects it to refuse to start. Returns its exit code and
/// output.
#[track_caller]
pub fn broker_refuses(config: &str) -> CtlOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new(workspace_bin("therappai-broker"))
        .arg("--config")
        .arg(&path)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn therappai-broker");
    output_at_exit(child, "the broker to refuse its config and exit")
}

/// Waits (bounded) for a daemon run with piped output to exit, and collects that output.
#[track_caller]
fn output_at_exit(mut child: Child, what: &str) -> CtlOutput {
    wait_until(what, Duration::from_secs(20), || {
        child.try_wait().expect("try_wait").is_some()
    });
    let output = child.wait_with_output().expect("output");
    CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
