//! The leak proof (issue 11): one run of every flow — login (wrong password, upstream faults,
//! a password echoed back), token, refresh with rotation, every fault the fake upstream can
//! script (5xx, 429, down, disconnect, redirects, a huge and a trickling body, malformed
//! answers, a refresh token echoed back in four shapes, 401 without `token_not_valid`,
//! `token_not_valid`), logout, device logout, revoke (confirmed and failing), a peer denied by
//! the policy, config reloads (applied and refused), WatchSession, a restart — with everything
//! at trace level. Then every token the fake issued and every password used is searched, by
//! 16-byte windows, in everything observable: the broker's output, every gRPC status, the
//! CLI's output (except `token`'s stdout), `status` and `status --json`, WatchSession events,
//! `/proc/PID/cmdline` and `environ` of the broker and of every CLI process, and every file
//! under the broker's directory (config, runtime, state: the encrypted-file store included).
//! Needs root (the denied peer runs as `nobody` via `setpriv`).

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{EchoShape, Endpoint, FakeTherappai};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use therappai_broker_e2e::leak_scan::{Surfaces, secret_needles};
use therappai_broker_e2e::peer::{AS_NOBODY, NOBODY_UID, require_root};
use therappai_broker_e2e::{
    Broker, BrokerOptions, CtlOutput, StoreKind, wait_until, workspace_bin,
};
use therappai_broker_proto::v1 as pb;
use tokio::io::AsyncWriteExt as _;

const EMAIL: &str = "leaky-larry@example.com";
const PASSWORD: &str = "larrys-correct-horse-battery";
const WRONG_PASSWORD: &str = "not-larrys-password-at-all";
/// Access tokens live this long: the broker refreshes every second or so, and a scripted
/// fault fires within a couple of seconds.
const SHORT: Duration = Duration::from_secs(2);
/// Attempts of one refresh cycle (the broker's `max_attempts`).
const ATTEMPTS: usize = 3;
const ECHO_SHAPES: [EchoShape; 4] = [
    EchoShape::Detail,
    EchoShape::Truncated,
    EchoShape::Escaped,
    EchoShape::Nested,
];
const ALLOW_NOBODY: &str = "[[allow]]\naccount = \"default\"\nuids = [65534]\n";

/// The broker, the fake, and everything seen so far.
struct World {
    fake: FakeTherappai,
    broker: Broker,
    seen: Surfaces,
    raw: pb::broker_client::BrokerClient<tonic::transport::Channel>,
    /// `token`'s stdout, kept apart: the positive control of the scan.
    tokens_printed: String,
    cli_runs: usize,
    /// CLI runs whose `/proc/PID/cmdline` and `environ` were read while they ran.
    cli_captured: usize,
    /// Raw WatchSession events, as their `Debug` text.
    events: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl World {
    async fn start() -> Self {
        require_root();
        let fake = FakeTherappai::start(fake_therappai::FakeConfig {
            users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
            access_lifetime: SHORT,
            rotate_refresh_tokens: true,
            ..fake_therappai::FakeConfig::default()
        })
        .await
        .expect("start fake therappai");
        let mut options = BrokerOptions::new(StoreKind::EncryptedFile, EMAIL);
        // Every crate at trace, not only the broker's: hyper, h2, rustls, reqwest, tonic.
        options.log_level = "trace,therappai_broker=trace,audit=trace".to_owned();
        options.revoke_path = Some("/token/blacklist/".to_owned());
        options.top_config = "socket_group = \"nogroup\"\n".to_owned();
        options.shared_dir = true;
        // A trickling body is cut by the total timeout: keep it short.
        options.request_timeout_seconds = 2;
        let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
        let raw = pb::broker_client::BrokerClient::new(
            tonic::transport::Endpoint::from_shared(format!(
                "unix://{}",
                broker.socket_path().display()
            ))
            .expect("endpoint")
            .connect_lazy(),
        );
        let mut world = Self {
            fake,
            broker,
            seen: Surfaces::default(),
            raw,
            tokens_printed: String::new(),
            cli_runs: 0,
            cli_captured: 0,
            events: Arc::default(),
            started: Instant::now(),
        };
        world.seen.add(
            "/proc/self/environ of the test",
            std::fs::read("/proc/self/environ").expect("environ"),
        );
        world.capture_broker("after start");
        world
    }

    fn capture_broker(&mut self, when: &str) {
        let pid = u32::try_from(self.broker.pid()).expect("pid");
        assert!(
            self.seen.add_process(&format!("the broker ({when})"), pid),
            "the broker's /proc files are readable"
        );
    }

    fn capture_files(&mut self, when: &str) {
        let dir = self.broker.dir.path().to_owned();
        let files = self
            .seen
            .add_tree(&format!("broker directory ({when})"), &dir);
        assert!(files >= 3, "config, CA and log at least ({files} files)");
    }

    /// Runs the CLI (as root, or under `wrapper`), reading its `/proc` files while it runs
    /// (it waits on stdin when `stdin` is given, so that read is certain then), and records its
    /// argv as built, its stderr and, unless it is `token`'s, its stdout.
    async fn ctl(&mut self, wrapper: &[&str], args: &[&str], stdin: Option<&str>) -> CtlOutput {
        let ctl = workspace_bin("therappai-brokerctl");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(rest).arg(&ctl);
                command
            }
            None => tokio::process::Command::new(&ctl),
        };
        command
            .arg("--socket")
            .arg(self.broker.socket_path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let built: Vec<u8> = command
            .as_std()
            .get_args()
            .flat_map(|a| a.as_encoded_bytes().iter().copied().chain([0]))
            .collect();
        let what = format!("brokerctl {}", args.join(" "));
        self.seen.add(format!("argv as built of `{what}`"), built);
        let mut child = command.spawn().expect("spawn brokerctl");
        let pid = child.id().expect("pid of a running child");
        self.cli_runs += 1;
        if self.seen.add_process(&format!("`{what}`"), pid) {
            self.cli_captured += 1;
        }
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
        }
        drop(pipe);
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{what}` did not exit within 30 s"))
            .expect("wait brokerctl");
        let out = CtlOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.seen.add(format!("stderr of `{what}`"), output.stderr);
        if args.first() == Some(&"token") && out.code == 0 {
            self.tokens_printed.push_str(&out.stdout);
        } else {
            self.seen.add(format!("stdout of `{what}`"), output.stdout);
        }
        out
    }

    async fn login(&mut self, password: &str) -> CtlOutput {
        self.ctl(
            &[],
            &["login", "--account", "default", "--password-stdin"],
            Some(&format!("{password}\n")),
        )
        .await
    }

    async fn login_ok(&mut self) {
        let out = self.login(PASSWORD).await;
        assert_eq!(out.code, 0, "login: {}", out.stderr);
    }

    async fn token(&mut self) -> CtlOutput {
        self.ctl(&[], &["token", "--account", "default"], None)
            .await
    }

    /// `status`, `status --json`, and GetAccessToken over raw gRPC (its status recorded whole:
    /// message, details and metadata).
    async fn observe(&mut self, when: &str) {
        self.ctl(&[], &["status"], None).await;
        self.ctl(&[], &["status", "--json"], None).await;
        let answer = self
            .raw
            .get_access_token(pb::GetAccessTokenRequest {
                account: "default".to_owned(),
                min_valid_seconds: None,
            })
            .await;
        if let Err(status) = answer {
            self.seen.add(
                format!("gRPC status of GetAccessToken ({when})"),
                format!("{status:?}"),
            );
        }
        let status = self.raw.status(pb::StatusRequest {}).await;
        self.seen
            .add(format!("gRPC Status RPC ({when})"), format!("{status:?}"));
    }

    /// Scripts a fault with `arm`, then asks for tokens until the fake says it fired (or, for
    /// faults the fake does not count, until a call failed), observing every answer; then
    /// waits until the broker serves again (re-logging in if the fault ended the session).
    /// `count`: how many injected faults the fake counts once `arm`'s have all fired (`None`:
    /// the fake does not count it, a failed call shows it fired).
    async fn fault(
        &mut self,
        name: &str,
        count: Option<u64>,
        arm: impl FnOnce(&fake_therappai::Knobs),
    ) {
        let before = self.fake.counters().faults_injected;
        arm(&self.fake.knobs());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.token().await;
            let fired = match count {
                Some(count) => self.fake.counters().faults_injected >= before + count,
                None => out.code != 0,
            };
            if fired {
                break;
            }
            assert!(Instant::now() < deadline, "the fault {name} never fired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.observe(name).await;
        let knobs = self.fake.knobs();
        knobs.set_down(false);
        knobs.set_malformed_refresh(false);
        knobs.set_refresh_missing_access(false);
        self.recover(name).await;
        println!(
            "{name}: done at {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Tokens again: after the broker's back-off, or after a new login when the session ended.
    async fn recover(&mut self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.token().await;
            match out.code {
                0 => return,
                3 => self.login_ok().await,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no token within 30 s after {after}: {}",
                out.stderr
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A `watch` CLI and a raw WatchSession stream, both until the broker stops.
    fn watch(&mut self) -> tokio::process::Child {
        let child = tokio::process::Command::new(workspace_bin("therappai-brokerctl"))
            .arg("--socket")
            .arg(self.broker.socket_path())
            .args(["watch", "--account", "default"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start brokerctl watch");
        let pid = child.id().expect("watch runs");
        let what = "`brokerctl watch` (just started)";
        wait_until(
            "watch to be readable in /proc",
            Duration::from_secs(5),
            || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"/")),
        );
        assert!(
            self.seen.add_process(what, pid),
            "{what} is readable in /proc"
        );
        let mut raw = self.raw.clone();
        let events = Arc::clone(&self.events);
        tokio::spawn(async move {
            let answer = raw
                .watch_session(pb::WatchSessionRequest {
                    account: "default".to_owned(),
                })
                .await;
            let mut stream = match answer {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    events.lock().expect("events").push(format!("{status:?}"));
                    return;
                }
            };
            loop {
                let next = stream.message().await;
                let done = !matches!(next, Ok(Some(_)));
                events.lock().expect("events").push(format!("{next:?}"));
                if done {
                    return;
                }
            }
        });
        child
    }

    /// The watch CLI's `/proc` files, while it runs (before the broker stops).
    fn capture_watch(&mut self, child: &tokio::process::Child, when: &str) {
        // Best effort: `watch` may have ended already (a session that ends ends it too).
        if let Some(pid) = child.id() {
            self.seen
                .add_process(&format!("`brokerctl watch` ({when})"), pid);
        }
    }

    async fn collect_watch(&mut self, mut child: tokio::process::Child, when: &str) {
        // The broker has stopped (or restarted): the stream ends and so does the CLI.
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("watch exits once the broker stops")
            .expect("wait watch");
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        use tokio::io::AsyncReadExt as _;
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_end(&mut stdout).await.expect("watch stdout");
        }
        if let Some(mut pipe) = child.stderr.take() {
            pipe.read_to_end(&mut stderr).await.expect("watch stderr");
        }
        let shown = String::from_utf8_lossy(&stdout).into_owned();
        assert!(
            shown.contains("active"),
            "watch saw the session ({status}): {shown}"
        );
        println!("watch ({when}) exited with {status}");
        self.seen
            .add(format!("stdout of `brokerctl watch` ({when})"), stdout);
        self.seen
            .add(format!("stderr of `brokerctl watch` ({when})"), stderr);
    }

    /// Stops the broker, recording its `/proc` files and files first.
    fn stop(&mut self, when: &str) {
        self.capture_broker(when);
        self.capture_files(when);
        let status = self.broker.stop();
        assert!(status.success(), "the broker exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_anything_observable_in_any_flow() {
    let started = Instant::now();
    let mut w = World::start().await;
    let watcher = w.watch();

    // Logins that fail: wrong password, upstream faults, the password echoed back.
    assert_eq!(
        w.login(WRONG_PASSWORD).await.code,
        7,
        "a wrong password is refused"
    );
    w.fake.knobs().fail_next(Endpoint::Login, 1, 500);
    assert_ne!(w.login(PASSWORD).await.code, 0);
    w.fake
        .knobs()
        .fail_next_with_retry_after(Endpoint::Login, 1, 429, Duration::from_secs(1));
    assert_ne!(w.login(PASSWORD).await.code, 0);
    for shape in ECHO_SHAPES {
        w.fake.knobs().echo_next(Endpoint::Login, 1, 400, shape);
        let out = w.login(PASSWORD).await;
        assert_ne!(out.code, 0, "an echoing login fails ({shape:?})");
    }
    w.observe("after failed logins").await;

    // Login, refresh with rotation (every `token` call refreshes).
    w.login_ok().await;
    w.capture_files("logged in");
    for _ in 0..3 {
        let out = w.token().await;
        assert_eq!(out.code, 0, "token: {}", out.stderr);
    }
    let out = w
        .ctl(
            &[],
            &["token", "--account", "default", "--min-valid", "0"],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "token --min-valid 0: {}", out.stderr);
    w.observe("logged in").await;

    // Every fault of the refresh endpoint, as many times in a row as a cycle tries (so that
    // the cycle fails and callers get the error, not only the log).
    let n = ATTEMPTS;
    let all = Some(n as u64);
    for status in [500, 502, 503] {
        w.fault(&format!("refresh {status}"), all, |k| {
            k.fail_next(Endpoint::Refresh, n, status);
        })
        .await;
    }
    w.fault("refresh 429", all, |k| {
        k.fail_next_with_retry_after(Endpoint::Refresh, n, 429, Duration::from_secs(1));
    })
    .await;
    w.fault("upstream down", None, |k| k.set_down(true)).await;
    w.fault("disconnect", all, |k| {
        k.disconnect_next(Endpoint::Refresh, n)
    })
    .await;
    w.fault("redirect to http", all, |k| {
        k.redirect_next(
            Endpoint::Refresh,
            n,
            302,
            "http://attacker.example/steal?x=1",
        );
    })
    .await;
    w.fault("redirect to another host", all, |k| {
        let to = "https://attacker.example/api/v1/refresh/";
        k.redirect_next(Endpoint::Refresh, n, 307, to);
    })
    .await;
    w.fault("huge body", all, |k| {
        k.huge_body_next(Endpoint::Refresh, n, 8 << 20)
    })
    .await;
    w.fault("trickle", Some(1), |k| k.trickle_next(Endpoint::Refresh, 1))
        .await;
    w.fault("malformed answer", None, |k| k.set_malformed_refresh(true))
        .await;
    w.fault("answer without access", None, |k| {
        k.set_refresh_missing_access(true)
    })
    .await;
    for shape in ECHO_SHAPES {
        for status in [400, 403, 500] {
            w.fault(
                &format!("refresh token echoed ({shape:?}, {status})"),
                all,
                |k| {
                    k.echo_next(Endpoint::Refresh, n, status, shape);
                },
            )
            .await;
        }
    }
    // A 401 without therappai's code is a failed attempt, not a dead session.
    w.fault("401 without token_not_valid", Some(1), |k| {
        k.fail_next(Endpoint::Refresh, 1, 401);
    })
    .await;
    let before = w.fake.counters().refresh_rejected;
    w.fake.revoke_all_refresh_tokens();
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.token().await.code != 3 {
        assert!(
            Instant::now() < deadline,
            "a revoked refresh token ends the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        w.fake.counters().refresh_rejected > before,
        "token_not_valid was answered"
    );
    w.observe("token_not_valid").await;
    w.recover("token_not_valid").await;

    // A restart: the session comes back from the encrypted file.
    w.fake.knobs().set_access_lifetime(Duration::from_secs(300));
    w.recover("long-lived tokens").await;
    w.capture_watch(&watcher, "before restart");
    w.stop("before restart");
    w.collect_watch(watcher, "before restart").await;
    w.broker.start_again();
    w.capture_broker("after restart");
    let watcher = w.watch();
    let out = w.token().await;
    assert_eq!(
        out.code, 0,
        "the session survives a restart: {}",
        out.stderr
    );

    // A peer the policy denies, then a reload that allows it, then refused reloads.
    let nobody_token = ["token", "--account", "default"];
    let out = w.ctl(AS_NOBODY, &nobody_token, None).await;
    assert_eq!(out.code, 4, "nobody is denied: {}", out.stderr);
    w.ctl(AS_NOBODY, &["status", "--json"], None).await;
    let out = w
        .ctl(AS_NOBODY, &["logout", "--account", "default"], None)
        .await;
    assert_eq!(out.code, 4, "nobody may not log out: {}", out.stderr);
    w.broker.rewrite_extra_config(ALLOW_NOBODY);
    w.broker.signal(libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(5), || {
        w.broker.log_lines_with(&["config reloaded"]) == 1
    });
    let out = w.ctl(AS_NOBODY, &nobody_token, None).await;
    assert_eq!(
        out.code, 0,
        "uid {NOBODY_UID} is allowed after the reload: {}",
        out.stderr
    );
    std::fs::write(&w.broker.config_path, "this is [not toml").expect("break the config");
    w.broker.signal(libc::SIGHUP);
    wait_until("the refused reload", Duration::from_secs(5), || {
        w.broker.log_lines_with(&["config reload refused"]) == 1
    });
    w.broker.rewrite_extra_config(ALLOW_NOBODY);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let config = &w.broker.config_path;
        std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        w.broker.signal(libc::SIGHUP);
        wait_until(
            "the reload refused for a writable file",
            Duration::from_secs(5),
            || w.broker.log_lines_with(&["config reload refused"]) == 2,
        );
        std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    w.observe("after reloads").await;

    // Logout, revoke (confirmed; therappai down; the token echoed back), device logout.
    w.fake.knobs().set_access_lifetime(SHORT);
    let out = w.ctl(&[], &["logout", "--account", "default"], None).await;
    assert_eq!(out.code, 0, "logout: {}", out.stderr);
    w.login_ok().await;
    let out = w.ctl(&[], &["revoke", "--account", "default"], None).await;
    assert_eq!(out.code, 0, "revoke confirmed: {}", out.stderr);
    w.login_ok().await;
    w.fake.knobs().set_down(true);
    let out = w.ctl(&[], &["revoke", "--all"], None).await;
    assert_eq!(out.code, 11, "revoke not confirmed: {}", out.stderr);
    w.fake.knobs().set_down(false);
    for shape in ECHO_SHAPES {
        w.login_ok().await;
        w.fake.knobs().echo_next(Endpoint::Blacklist, 1, 400, shape);
        let out = w.ctl(&[], &["revoke", "--account", "default"], None).await;
        assert_eq!(
            out.code, 11,
            "an echoing revocation is not confirmed ({shape:?}): {}",
            out.stderr
        );
    }
    w.login_ok().await;
    w.fake.knobs().fail_next(Endpoint::Blacklist, 1, 500);
    w.ctl(&[], &["logout", "--account", "default"], None).await;
    w.login_ok().await;
    w.capture_files("logged in again");
    let out = w.ctl(&[], &["logout", "--all"], None).await;
    assert_eq!(out.code, 0, "device logout: {}", out.stderr);
    w.observe("logged out").await;
    w.capture_watch(&watcher, "at the end");
    w.stop("at the end");
    w.collect_watch(watcher, "at the end").await;
    let events = w.events.lock().expect("events").join("\n");
    assert!(
        events.contains("Active"),
        "the raw watch saw the session: {events}"
    );
    w.seen.add("raw WatchSession events", events);
    let logs = w.broker.logs();
    assert!(logs.contains("TRACE"), "the broker logged at trace level");
    w.seen.add("the broker's stdout and stderr", logs);

    let tokens = w.fake.issued_tokens();
    assert!(
        tokens.len() >= 20,
        "the flow issued tokens to search for ({})",
        tokens.len()
    );
    let needles = secret_needles(&tokens, &[PASSWORD, WRONG_PASSWORD]);
    // The control: the scan finds what `token` printed.
    let mut control = Surfaces::default();
    control.add("token's stdout", w.tokens_printed.clone());
    assert!(
        !control.scan(&needles).is_empty(),
        "the scan finds a printed token"
    );

    let found = w.seen.scan(&needles);
    println!(
        "leak proof: {} tokens and 2 passwords searched in {} surfaces; {} of {} CLI runs had \
         their /proc files read while running (the rest: argv checked as built); {:.1} s",
        tokens.len(),
        w.seen.len(),
        w.cli_captured,
        w.cli_runs,
        started.elapsed().as_secs_f64()
    );
    assert!(found.is_empty(), "a secret leaked: {}", found.summary());
}
