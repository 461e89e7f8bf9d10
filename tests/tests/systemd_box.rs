//! The system service as a sysadmin gets it: the `.deb` installed with apt in a real systemd
//! 252 (Debian 12, PID 1 under systemd-nspawn), socket-activated, sandboxed, logging to
//! journald, reloaded, supervised by the watchdog, and keeping its sessions in the
//! `encrypted-file` store across a reboot. Plus the user units as a desktop user.
//!
//! The scenarios need root and the package: `cargo xtask test` builds the package (from the
//! debug binaries), boots the boxes and runs them (`--ignored`), concurrently. By hand:
//! `cargo xtask deb --dev && THERAPPAI_BROKER_DEB=$(ls target/debian-dev/*.deb) cargo test
//! -p therappai-broker-e2e --test systemd_box -- --ignored`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use fake_therappai::FakeTherappai;
use std::time::Duration;
use therappai_broker::store::encrypted_file::{KeySource, StoreKey, read_file};
use therappai_broker_e2e::systemd_box::SystemdBox;
use therappai_broker_e2e::{fake_with_user, wait_until};

const EMAIL: &str = "alice@example.com";
const PASSWORD: &str = "correct horse battery staple";
const STORE_FILE: &str = "/var/lib/therappai-broker/tokens.enc";

async fn fake() -> FakeTherappai {
    fake_with_user(EMAIL, PASSWORD, Duration::from_secs(300)).await
}

/// The README's steps: install the package, create the key credential, fill in the shipped
/// example config (pointed at the fake), add an app user to `therappai`, enable the socket.
#[track_caller]
fn install_and_enable(b: &SystemdBox, fake: &FakeTherappai) {
    let out = b.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q {} 2>&1",
        b.deb()
    ));
    assert!(
        out.contains("nothing is enabled"),
        "installing says what to do next:\n{out}"
    );
    // (The service is "indirect": enabled through the socket, by `Also=`.)
    assert_eq!(
        b.sh("systemctl is-enabled therappai-broker.socket")
            .stdout
            .trim(),
        "disabled",
        "installing the package enables nothing"
    );
    assert_eq!(
        b.sh("systemctl is-active therappai-broker.socket therappai-broker.service")
            .stdout
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["inactive", "inactive"],
        "installing the package starts nothing"
    );
    b.ok("id therappai-broker && getent group therappai");
    b.write(
        "/etc/therappai-broker/fake-ca.pem",
        fake.ca_pem().as_bytes(),
    );
    b.ok(&format!(
        "sed -i -e 's|FILL-IN@example.com|{EMAIL}|' -e 's|^base_url = .*|base_url = \"{}\"\\nca_file = \"/etc/therappai-broker/fake-ca.pem\"|' /etc/therappai-broker/broker.toml",
        fake.base_url()
    ));
    b.ok("head -c 32 /dev/urandom | systemd-creds encrypt --name=store-key --with-key=host - /etc/therappai-broker/store-key.cred");
    b.ok("useradd -m -G therappai app && useradd -m outsider");
    b.ok("systemctl enable --now therappai-broker.socket");
}

#[track_caller]
fn login(b: &SystemdBox) {
    let out = b.sh_with_stdin(
        "therappai-brokerctl login --account default --password-stdin",
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert_eq!(out.code, 0, "login as root failed: {}", out.stderr);
}

/// `systemctl show -p NAME --value therappai-broker`.
fn show(b: &SystemdBox, property: &str) -> String {
    b.ok(&format!(
        "systemctl show -p {property} --value therappai-broker.service"
    ))
    .trim()
    .to_owned()
}

/// Polls a box-side condition (each poll costs a few `systemctl` runs, so not every 20 ms).
#[track_caller]
fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_until(what, timeout, || {
        condition() || {
            std::thread::sleep(Duration::from_millis(80));
            false
        }
    });
}

/// The accounts the store file holds, decrypted on the host with the key the credential
/// holds (`systemd-creds decrypt`, as root in the box).
fn stored_accounts(b: &SystemdBox) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let file = dir.path().join("tokens.enc");
    let key_bytes = b.read_command(
        "systemd-creds decrypt --name=store-key /etc/therappai-broker/store-key.cred -",
    );
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| f.write_all(&key_bytes))
            .unwrap();
    }
    std::fs::write(&file, b.read(STORE_FILE)).unwrap();
    let key = StoreKey::load(&KeySource::KeyFile(key)).expect("the credential holds a store key");
    read_file(&file, &key)
        .expect("the store file decrypts with the credential's key")
        .map(|entries| entries.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every journal entry of the broker, as JSON objects.
fn journal(b: &SystemdBox, filter: &str) -> Vec<serde_json::Value> {
    b.ok(&format!(
        "journalctl --no-pager -o json -u therappai-broker.service {filter}"
    ))
    .lines()
    .map(|line| serde_json::from_str(line).expect("journalctl -o json prints JSON lines"))
    .collect()
}

/// `systemd-analyze security`'s overall exposure figure for the system service.
fn exposure(b: &SystemdBox) -> f64 {
    let out = b.ok("systemd-analyze security --no-pager therappai-broker.service");
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure figure in:\n{out}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the figure in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the package: `cargo xtask test` runs it"]
async fn the_package_gives_a_socket_activated_sandboxed_journald_logging_broker() {
    let fake = fake().await;
    let b = SystemdBox::boot("tpb-service");
    install_and_enable(&b, &fake);

    // Every unit the package ships passes systemd's own checks (the box has no `man`
    // to look the Documentation= pages up with; the package ships them).
    b.ok("systemd-analyze verify --man=no /lib/systemd/system/therappai-broker.socket /lib/systemd/system/therappai-broker.service");

    // Socket activation: nothing runs until the first connection.
    assert_eq!(show(&b, "ActiveState"), "inactive");
    login(&b);
    assert_eq!(show(&b, "ActiveState"), "active");
    assert_eq!(show(&b, "User"), "therappai-broker", "never root");
    assert_eq!(
        show(&b, "StatusText"),
        "1 account: default active; store encrypted-file"
    );

    // A member of `therappai` with an [[allow]] rule gets a token through the socket.
    let app_uid = b.ok("id -u app").trim().to_owned();
    let token = b.ok("runuser -u app -- therappai-brokerctl token --account default");
    let token = token.trim();
    assert!(fake.issued_tokens().iter().any(|t| t == token));
    // Anyone else cannot connect at all, and is told what to ask for.
    let outsider = b.sh("runuser -u outsider -- therappai-brokerctl token --account default");
    assert_ne!(outsider.code, 0, "outsider got: {}", outsider.stdout);
    assert!(
        outsider.stderr.contains("usermod -aG therappai"),
        "the refusal says how to get access: {}",
        outsider.stderr
    );

    // journald: structured fields, and the audit events alone under AUDIT=1.
    let audit = journal(&b, "AUDIT=1");
    assert!(
        audit.iter().all(|e| e["AUDIT"] == "1"),
        "AUDIT=1 selects only audit events"
    );
    let grant = audit
        .iter()
        .find(|e| e["RPC"] == "GetAccessToken" && e["PEER_UID"] == app_uid.as_str())
        .unwrap_or_else(|| panic!("no audit event for the app's token: {audit:#?}"));
    assert_eq!(grant["DECISION"], "allow");
    assert_eq!(grant["ACCOUNT"], "default");
    assert_eq!(grant["SYSLOG_IDENTIFIER"], "therappai-broker");
    assert!(grant["PEER_PID"].is_string() && grant["PEER_UNIT"].is_string());
    assert!(
        audit
            .iter()
            .any(|e| e["RPC"] == "Login" && e["PEER_UID"] == "0"),
        "the admin's login is audited"
    );
    // Each call to therappai has its outcome and latency as fields.
    let calls = journal(&b, "ENDPOINT=login");
    let login_call = calls
        .first()
        .expect("the login call to therappai is logged");
    assert_eq!(login_call["OUTCOME"], "200");
    assert!(
        login_call["LATENCY_MS"]
            .as_str()
            .is_some_and(|ms| ms.parse::<u64>().is_ok()),
        "{login_call:#?}"
    );

    // Reload applies a policy change without a restart: the app loses access.
    let pid = show(&b, "MainPID");
    b.ok("sed -i 's|^groups = \\[\"therappai\"\\]|uids = [0]|' /etc/therappai-broker/broker.toml");
    b.ok("systemctl reload therappai-broker.service");
    let denied = b.sh("runuser -u app -- therappai-brokerctl token --account default");
    assert_ne!(denied.code, 0, "the reloaded policy must deny the app");
    assert_eq!(show(&b, "MainPID"), pid, "reload must not restart");
    assert_eq!(show(&b, "NRestarts"), "0");
    assert!(
        journal(&b, "AUDIT=1")
            .iter()
            .any(|e| e["DECISION"] == "deny" && e["PEER_UID"] == app_uid.as_str()),
        "the denial is audited"
    );

    // Device logout as the admin wipes the store file's entries.
    assert_eq!(stored_accounts(&b), ["default"]);
    b.ok("therappai-brokerctl logout --all");
    assert!(
        stored_accounts(&b).is_empty(),
        "logout --all leaves no entry"
    );

    // No token and no password anywhere in the journal (every unit, every field).
    let everything = b.ok("journalctl --no-pager -o json");
    assert!(
        !everything.contains(PASSWORD),
        "the password reached the journal"
    );
    for issued in fake.issued_tokens() {
        assert!(!everything.contains(&issued), "a token reached the journal");
    }

    // The sandbox: at or under 1.5 as shipped; the ptrace drop-in's figure is reported.
    let shipped = exposure(&b);
    b.ok("mkdir -p /etc/systemd/system/therappai-broker.service.d && cp /usr/share/doc/therappai-broker/examples/ptrace.conf /etc/systemd/system/therappai-broker.service.d/ && systemctl daemon-reload");
    let with_ptrace = exposure(&b);
    eprintln!("systemd-analyze security: {shipped} as shipped, {with_ptrace} with ptrace.conf");
    assert!(shipped <= 1.5, "exposure {shipped} is over 1.5");
    b.ok(
        "rm /etc/systemd/system/therappai-broker.service.d/ptrace.conf && systemctl daemon-reload",
    );

    // A wedged event loop (SIGSTOP) stops the watchdog pings: systemd restarts the broker.
    b.ok("printf '[Service]\\nWatchdogSec=2s\\n' > /etc/systemd/system/therappai-broker.service.d/watchdog.conf && systemctl daemon-reload && systemctl restart therappai-broker.service");
    let wedged = show(&b, "MainPID");
    b.ok(&format!("kill -STOP {wedged}"));
    wait_for(
        "systemd to restart the wedged broker",
        Duration::from_secs(30),
        || show(&b, "NRestarts") != "0",
    );
    assert!(
        b.ok("journalctl --no-pager -u therappai-broker.service")
            .contains("Watchdog timeout"),
        "the restart was the watchdog's"
    );
    wait_for(
        "the restarted broker to be ready",
        Duration::from_secs(30),
        || show(&b, "ActiveState") == "active",
    );
    assert_ne!(show(&b, "MainPID"), wedged);
    b.ok("therappai-brokerctl status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the package: `cargo xtask test` runs it"]
async fn sessions_survive_a_reboot_and_a_damaged_store_is_a_clear_error() {
    let fake = fake().await;
    let mut b = SystemdBox::boot("tpb-reboot");
    install_and_enable(&b, &fake);
    login(&b);
    let before = fake.counters();

    b.reboot();
    // After the reboot the socket is listening again (enabled), the first call starts the
    // broker, and it refreshes with the refresh token the file kept: no new login.
    let token = b.ok("runuser -u app -- therappai-brokerctl token --account default");
    assert!(fake.issued_tokens().iter().any(|t| t == token.trim()));
    let after = fake.counters();
    assert_eq!(
        after.login_ok, before.login_ok,
        "no second login after the reboot"
    );
    assert_eq!(
        after.refresh_ok,
        before.refresh_ok + 1,
        "memory was gone: one refresh"
    );

    // The README's key rotation, command for command: the session survives it.
    b.ok("systemctl stop therappai-broker.socket therappai-broker.service");
    b.ok("(umask 077; head -c 32 /dev/urandom > /root/new-store-key)");
    let rekey = b.ok("systemd-run --pipe --wait -p User=therappai-broker -p StateDirectory=therappai-broker -p LoadCredentialEncrypted=store-key:/etc/therappai-broker/store-key.cred /usr/bin/therappai-broker --config /etc/therappai-broker/broker.toml --rekey - < /root/new-store-key");
    assert!(rekey.contains("1 account"), "{rekey}");
    b.ok("systemd-creds encrypt --name=store-key --with-key=host /root/new-store-key /etc/therappai-broker/store-key.cred && shred -u /root/new-store-key");
    b.ok("systemctl start therappai-broker.socket");
    b.ok("runuser -u app -- therappai-brokerctl token --account default");
    assert_eq!(
        fake.counters().login_ok,
        before.login_ok,
        "no login after the rekey"
    );

    // A flipped byte: the broker refuses to start, says which file and what to do, and
    // leaves the file as it was.
    b.ok("systemctl stop therappai-broker.socket therappai-broker.service");
    b.ok(&format!(
        "python3 -c \"import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-1]^=1; open(p,'wb').write(b)\" {STORE_FILE}"
    ));
    let damaged = b.read(STORE_FILE);
    b.ok("systemctl start therappai-broker.socket");
    let refused = b.sh("therappai-brokerctl status");
    assert_ne!(refused.code, 0, "a damaged store must not serve");
    wait_for(
        "the broker to give up on the damaged store",
        Duration::from_secs(30),
        || {
            b.ok("journalctl --no-pager -u therappai-broker.service")
                .contains(STORE_FILE)
        },
    );
    let log = b.ok("journalctl --no-pager -u therappai-broker.service");
    assert!(
        log.contains("tampered") || log.contains("damaged"),
        "the error says what is wrong:\n{log}"
    );
    assert_eq!(
        b.read(STORE_FILE),
        damaged,
        "the damaged file must stay as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the package: `cargo xtask test` runs it"]
async fn the_user_units_work_for_a_desktop_user() {
    let fake = fake().await;
    let b = SystemdBox::boot("tpb-user");
    b.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q {} 2>&1",
        b.deb()
    ));
    // The box's session has no Secret Service: the user's broker uses the kernel keyring.
    let config = format!(
        "[store]\nbackend = \"keyutils\"\nservice = \"therappai-broker-box-user-{}\"\n\n[upstream]\nbase_url = \"{}\"\nca_file = \"/home/tester/.config/therappai-broker/ca.pem\"\n\n[[account]]\nname = \"default\"\nemail = \"{EMAIL}\"\n\n[[allow]]\naccount = \"default\"\nuids = [1000]\n\n[admin]\nuids = [1000]\n",
        std::process::id(),
        fake.base_url()
    );
    let setup = b.user_sh(
        "mkdir -p ~/.config/therappai-broker && cat > ~/.config/therappai-broker/broker.toml",
        config.as_bytes(),
    );
    assert_eq!(setup.code, 0, "{}", setup.stderr);
    let ca = b.user_sh(
        "cat > ~/.config/therappai-broker/ca.pem",
        fake.ca_pem().as_bytes(),
    );
    assert_eq!(ca.code, 0, "{}", ca.stderr);
    let verify = b.user_sh(
        "cd && systemd-analyze --user verify --man=no /usr/lib/systemd/user/therappai-broker.socket /usr/lib/systemd/user/therappai-broker.service",
        b"",
    );
    assert_eq!(
        verify.code, 0,
        "the user units: {}{}",
        verify.stdout, verify.stderr
    );
    let enable = b.user_sh("systemctl --user enable --now therappai-broker.socket", b"");
    assert_eq!(enable.code, 0, "{}", enable.stderr);
    let mode = b.ok("stat -c %a /run/user/1000/therappai-broker/broker.sock");
    assert_eq!(mode.trim(), "600", "the user socket is the user's alone");

    // No --socket: the CLI finds the session's socket by itself.
    let login = b.user_sh(
        "therappai-brokerctl login --account default --password-stdin",
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert_eq!(login.code, 0, "{}", login.stderr);
    let token = b.user_sh("therappai-brokerctl token --account default", b"");
    assert_eq!(token.code, 0, "{}", token.stderr);
    assert!(
        fake.issued_tokens()
            .iter()
            .any(|t| t == token.stdout.trim())
    );
    let status = b.user_sh(
        "systemctl --user show -p StatusText --value therappai-broker.service",
        b"",
    );
    assert_eq!(
        status.stdout.trim(),
        "1 account: default active; store keyutils"
    );
    let logout = b.user_sh("therappai-brokerctl logout --account default", b"");
    assert_eq!(logout.code, 0, "{}", logout.stderr);
}
