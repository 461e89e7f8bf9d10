//! A real systemd 252 (Debian 12) as PID 1, through the project's `systemd-box` tool
//! (`../shared/tools/systemd-box` beside the repository, or `$SYSTEMD_BOX`), for the
//! scenarios that only a real systemd can show: socket activation, the sandbox, journald,
//! reload, the watchdog, credentials and a reboot.
//!
//! Each box shares the host's network namespace so that the fake therappai the test runs
//! in-process (on loopback) is reachable from the broker inside, and its counters survive
//! the box's reboots. Everything else (file systems, /run, PID 1, users) is the box's own,
//! and is thrown away when the [`SystemdBox`] is dropped.

use crate::CtlOutput;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the test looks for the package, set by `cargo xtask test` (which builds it).
pub const DEB_ENV: &str = "THERAPPAI_BROKER_DEB";
/// Where the package's directory is mounted inside the box.
const DEB_IN_BOX: &str = "/opt/therappai-broker-deb";

/// One running box, stopped (and its writes discarded) on drop.
#[derive(Debug)]
pub struct SystemdBox {
    name: String,
    tool: PathBuf,
    deb_dir: PathBuf,
    deb_name: String,
}

impl SystemdBox {
    /// Boots a fresh box named `name` (a box of that name left running by an earlier,
    /// interrupted run is stopped first). Panics with what to do when the tool, root or
    /// the package is missing.
    #[track_caller]
    pub fn boot(name: &str) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the systemd-box scenarios need root (systemd-nspawn): run `cargo xtask test` as root"
        );
        let deb = PathBuf::from(std::env::var_os(DEB_ENV).unwrap_or_else(|| {
            panic!("{DEB_ENV} is not set: `cargo xtask test` builds the package and sets it")
        }));
        assert!(deb.is_file(), "{DEB_ENV}={} does not exist", deb.display());
        let mut this = Self {
            name: name.to_owned(),
            tool: tool(),
            deb_dir: deb
                .parent()
                .expect("the package has a directory")
                .to_owned(),
            deb_name: deb
                .file_name()
                .expect("the package has a name")
                .to_string_lossy()
                .into_owned(),
        };
        let _ = this.tool_command(&["stop"], false).output();
        this.start(false);
        this
    }

    /// Powers the box off and boots it again, keeping everything it wrote (a reboot:
    /// /run and every process are gone, /var/lib and /etc stay).
    #[track_caller]
    pub fn reboot(&mut self) {
        self.run_tool(&["stop"], true);
        self.start(true);
    }

    #[track_caller]
    fn start(&mut self, keep: bool) {
        self.run_tool(&["start"], keep);
    }

    /// The package's path inside the box.
    pub fn deb(&self) -> String {
        format!("{DEB_IN_BOX}/{}", self.deb_name)
    }

    fn tool_command(&self, args: &[&str], keep: bool) -> Command {
        let mut command = Command::new(&self.tool);
        command
            .args(args)
            .env("BOX_NAME", &self.name)
            .env("BOX_NET", "host")
            .env("BOX_KEEP", if keep { "1" } else { "0" })
            // nspawn's seccomp filter blocks the keyring system calls (the kernel keyring is
            // not namespaced); the user-session scenario's keyutils store needs them.
            .env(
                "BOX_NSPAWN_ARGS",
                format!(
                    "--bind-ro={}:{DEB_IN_BOX} --system-call-filter=add_key --system-call-filter=keyctl --system-call-filter=request_key",
                    self.deb_dir.display()
                ),
            );
        command
    }

    #[track_caller]
    fn run_tool(&self, args: &[&str], keep: bool) {
        let output = self
            .tool_command(args, keep)
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-box");
        assert!(
            output.status.success(),
            "systemd-box {} (box {}) failed: {}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `script` with bash as root inside, `stdin` on its standard input.
    pub fn sh_with_stdin(&self, script: &str, stdin: &[u8]) -> CtlOutput {
        self.exec(&["sh", script], stdin)
    }

    /// Runs `script` with bash as root inside.
    pub fn sh(&self, script: &str) -> CtlOutput {
        self.exec(&["sh", script], b"")
    }

    /// Runs `script` with bash as root inside and returns its stdout; panics with its output
    /// when it fails.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(
            out.code, 0,
            "in box {}: `{script}` failed:\n{}{}",
            self.name, out.stdout, out.stderr
        );
        out.stdout
    }

    /// Runs `script` with bash as the box's user `tester` (uid 1000, with a user manager and
    /// its session bus), `stdin` on its standard input.
    pub fn user_sh(&self, script: &str, stdin: &[u8]) -> CtlOutput {
        self.exec(&["user-exec", "bash", "-c", script], stdin)
    }

    /// The bytes of `path` inside the box.
    #[track_caller]
    pub fn read(&self, path: &str) -> Vec<u8> {
        self.read_command(&format!("cat '{path}'"))
    }

    /// The bytes `script` (bash, as root inside) writes to stdout; panics when it fails.
    #[track_caller]
    pub fn read_command(&self, script: &str) -> Vec<u8> {
        let output = self.exec_raw(&["sh", script], b"");
        assert!(
            output.status.success(),
            "in box {}: `{script}` failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Writes `bytes` to `path` inside the box (mode 0644, root).
    #[track_caller]
    pub fn write(&self, path: &str, bytes: &[u8]) {
        let out = self.sh_with_stdin(&format!("cat > '{path}'"), bytes);
        assert_eq!(out.code, 0, "cannot write {path}: {}", out.stderr);
    }

    fn exec(&self, args: &[&str], stdin: &[u8]) -> CtlOutput {
        let output = self.exec_raw(args, stdin);
        CtlOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn exec_raw(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        let mut child = self
            .tool_command(args, false)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run systemd-box");
        let mut input = child.stdin.take().expect("stdin");
        // The command may exit without reading its input: a broken pipe is its answer.
        let _ = input.write_all(stdin);
        drop(input);
        child.wait_with_output().expect("systemd-box output")
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        // BOX_KEEP=0: the box's writable layer is deleted with it.
        let _ = self
            .tool_command(&["stop"], false)
            .stdin(Stdio::null())
            .output();
    }
}

/// The systemd-box tool: `$SYSTEMD_BOX`, else `../shared/tools/systemd-box` from the
/// repository's root.
#[track_caller]
fn tool() -> PathBuf {
    let path = std::env::var_os("SYSTEMD_BOX").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools/systemd-box")
                .to_owned()
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the systemd-box tool is not at {} (set SYSTEMD_BOX to its path)",
        path.display()
    );
    path
}
