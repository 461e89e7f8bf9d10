//! Real secure stores for the tests, and looking into them without going through the broker.
//!
//! Secret Service: each test gets a private `dbus-daemon` and a `gnome-keyring-daemon`
//! unlocked with a throwaway password on a fresh data directory (which creates the `login`
//! collection as the default). Kernel keyring: the user's persistent keyring, seen from a
//! fresh session keyring (`keyctl session -`), as the broker itself does.

use crate::wait_until;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private D-Bus session bus with an unlocked gnome-keyring on it.
#[derive(Debug)]
pub struct SecretServiceSession {
    dir: tempfile::TempDir,
    address: String,
    bus: Child,
    keyring: Child,
}

impl SecretServiceSession {
    #[track_caller]
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "data", "config", "cache", "run"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        // A session bus with no service directories: nothing can be D-Bus-activated on it, so
        // the only Secret Service is the gnome-keyring started below (activation would start
        // another one, with the wrong HOME and locked, if a check raced its start-up).
        let socket = dir.path().join("run/bus");
        let bus_config = dir.path().join("bus.conf");
        std::fs::write(
            &bus_config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus config");
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", bus_config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (install the `dbus` package; `cargo xtask test` does)");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().expect("bus stdout"))
            .read_line(&mut line)
            .expect("read the bus address");
        let address = line.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address: {line:?}"
        );

        let keyring = Self::spawn_keyring(dir.path(), &address);
        let session = Self {
            dir,
            address,
            bus,
            keyring,
        };
        wait_until(
            "gnome-keyring's unlocked `login` collection",
            Duration::from_secs(20),
            || session.default_collection_ready(),
        );
        session
    }

    /// gnome-keyring on the bus, unlocking the keyring in `dir` (created on first start).
    fn spawn_keyring(dir: &Path, address: &str) -> Child {
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets", "--foreground"])
            .envs(Self::isolated_env(dir, address))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start gnome-keyring-daemon (install `gnome-keyring`; `cargo xtask test` does)",
            );
        // The unlock password, without a newline, then EOF.
        let mut stdin = keyring.stdin.take().expect("keyring stdin");
        stdin
            .write_all(b"therappai-test-keyring")
            .expect("write keyring password");
        keyring
    }

    /// Kills gnome-keyring: from now on every Secret Service call fails (the bus stays up, and
    /// nothing can be activated on it).
    #[track_caller]
    pub fn stop_keyring(&mut self) {
        self.keyring.kill().expect("kill gnome-keyring");
        self.keyring.wait().expect("reap gnome-keyring");
        wait_until(
            "the Secret Service to be gone",
            Duration::from_secs(20),
            || !self.default_collection_ready(),
        );
    }

    /// Starts gnome-keyring again on the same keyring files, unlocked.
    #[track_caller]
    pub fn restart_keyring(&mut self) {
        self.keyring = Self::spawn_keyring(self.dir.path(), &self.address);
        wait_until(
            "gnome-keyring's unlocked `login` collection",
            Duration::from_secs(20),
            || self.default_collection_ready(),
        );
    }

    /// SIGSTOPs gnome-keyring: it stays on the bus and keeps its name, but answers nothing
    /// (a stuck keyring daemon), until [`SecretServiceSession::thaw_keyring`].
    #[track_caller]
    pub fn freeze_keyring(&self) {
        self.signal_keyring(libc::SIGSTOP);
    }

    /// SIGCONTs a frozen gnome-keyring: it answers what was queued, and everything after.
    #[track_caller]
    pub fn thaw_keyring(&self) {
        self.signal_keyring(libc::SIGCONT);
    }

    #[track_caller]
    fn signal_keyring(&self, signal: i32) {
        let pid = i32::try_from(self.keyring.id()).expect("pid fits i32");
        // SAFETY: a signal to our own child process, which has not been reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn isolated_env(dir: &Path, address: &str) -> Vec<(String, String)> {
        let at = |sub: &str| dir.join(sub).display().to_string();
        vec![
            ("HOME".into(), at("home")),
            ("XDG_DATA_HOME".into(), at("data")),
            ("XDG_CONFIG_HOME".into(), at("config")),
            ("XDG_CACHE_HOME".into(), at("cache")),
            ("XDG_RUNTIME_DIR".into(), at("run")),
            ("DBUS_SESSION_BUS_ADDRESS".into(), address.to_owned()),
        ]
    }

    /// The bus address to give the broker (`DBUS_SESSION_BUS_ADDRESS`).
    pub fn address(&self) -> &str {
        &self.address
    }

    fn default_collection_ready(&self) -> bool {
        let alias = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.ReadAlias",
                "string:default",
            ])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .output();
        matches!(alias, Ok(out) if String::from_utf8_lossy(&out.stdout).contains("/collection/login"))
    }

    /// Whether the keyring holds an item for (`service`, `account`), asked with `secret-tool`.
    #[track_caller]
    pub fn has_entry(&self, service: &str, account: &str) -> bool {
        let out = Command::new("secret-tool")
            .args(["lookup", "service", service, "username", account])
            .envs(Self::isolated_env(self.dir.path(), &self.address))
            .output()
            .expect("run secret-tool (install `libsecret-tools`; `cargo xtask test` does)");
        // Exit 0 with the secret on stdout when found, 1 when absent. The secret is dropped here.
        out.status.success() && !out.stdout.is_empty()
    }
}

impl Drop for SecretServiceSession {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// Whether the kernel keyring holds the broker's entry for (`service`, `account`), asked with
/// `keyctl` from a fresh session keyring linked to the user's persistent keyring.
#[track_caller]
pub fn keyutils_has_entry(service: &str, account: &str) -> bool {
    let script = format!(
        "keyctl get_persistent @s >/dev/null && keyctl search @s user 'keyring:{account}@{service}' >/dev/null"
    );
    let status = Command::new("keyctl")
        .args(["session", "-", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run keyctl (install `keyutils`; `cargo xtask test` does)");
    status.success()
}
