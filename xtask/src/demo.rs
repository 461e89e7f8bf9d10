//! `cargo xtask demo`: the broker end to end on this machine, with nothing to set up.
//!
//! Starts the HTTPS fake of therappai on loopback, writes a broker config in a private
//! directory (store `auto`: Secret Service when a desktop session offers it, else the kernel
//! keyring), logs the demo account in, asks for a token and prints a summary of it (never the
//! token itself), then keeps serving until Ctrl-C so `therappai-brokerctl` can be tried.

use crate::{root, run};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEMO_EMAIL: &str = "demo@example.com";
// A demo credential of the fake server, not a secret.
const DEMO_PASSWORD: &str = "demo-password";

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGTERM first so the broker removes its socket.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run_demo() -> Result<()> {
    run("cargo", &["build", "--quiet", "--bins"])?;
    let bin = root().join("target/debug");
    let dir = std::env::temp_dir().join(format!("therappai-broker-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("create demo directory")?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;

    // 1. The fake therappai.
    let ca = dir.join("fake-ca.pem");
    let mut fake = Command::new(bin.join("fake-therappai"))
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca)
        .env(
            "FAKE_THERAPPAI_USERS",
            format!("{DEMO_EMAIL}:{DEMO_PASSWORD}"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start fake-therappai")?;
    let stdout = fake.stdout.take().context("fake-therappai stdout")?;
    let fake = KillOnDrop(fake);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("read fake-therappai's address")?;
    let Some(base_url) = line.trim().strip_prefix("listening ") else {
        bail!("fake-therappai did not say where it listens (got {line:?})");
    };
    eprintln!("fake therappai API listening at {base_url}");

    // 2. The broker.
    let socket = dir.join("run/broker.sock");
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{}\"\n\n[store]\nbackend = \"auto\"\nservice = \"therappai-broker-demo\"\n\n[upstream]\nbase_url = \"{base_url}\"\nca_file = \"{}\"\nrevoke_path = \"/token/blacklist/\"\n\n[[account]]\nname = \"default\"\nemail = \"{DEMO_EMAIL}\"\n",
            socket.display(),
            ca.display()
        ),
    )?;
    let broker = KillOnDrop(
        Command::new(bin.join("therappai-broker"))
            .arg("--config")
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("broker.log"))?)
            .process_group(0)
            .spawn()
            .context("start therappai-broker")?,
    );
    wait_for_socket(&socket, &dir.join("broker.log"))?;

    // 3. Log in and get a token, as an app would.
    let ctl = bin.join("therappai-brokerctl");
    let mut login = Command::new(&ctl)
        .arg("--socket")
        .arg(&socket)
        .args(["login", "--account", "default", "--password-stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .context("run therappai-brokerctl login")?;
    login
        .stdin
        .take()
        .context("login stdin")?
        .write_all(format!("{DEMO_PASSWORD}\n").as_bytes())?;
    if !login.wait()?.success() {
        bail!(
            "the demo login failed; see {}",
            dir.join("broker.log").display()
        );
    }
    let token = Command::new(&ctl)
        .arg("--socket")
        .arg(&socket)
        .args(["token", "--account", "default"])
        .output()
        .context("run therappai-brokerctl token")?;
    if !token.status.success() {
        bail!("token failed: {}", String::from_utf8_lossy(&token.stderr));
    }
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    eprintln!(
        "got an access token for \"default\": a JWT of {} characters, {} parts (not printed: it is a secret)",
        token.len(),
        token.split('.').count()
    );
    drop(token);
    let status = Command::new(&ctl)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .status()?;
    if !status.success() {
        bail!("status failed");
    }

    eprintln!(
        "\nThe broker keeps serving. In another terminal try:\n  export THERAPPAI_BROKER_SOCKET={}\n  {} status\n  {} token --account default\n  {} logout --account default\nBroker log: {}\nPress Ctrl-C to stop the demo.",
        socket.display(),
        ctl.display(),
        ctl.display(),
        ctl.display(),
        dir.join("broker.log").display()
    );
    wait_for_ctrl_c();
    // Leave no demo token behind in the store.
    let _ = Command::new(&ctl)
        .arg("--socket")
        .arg(&socket)
        .args(["logout", "--account", "default"])
        .stdout(Stdio::null())
        .status();
    drop(broker);
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn wait_for_socket(socket: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the broker did not start listening on {} within 30 s; its log:\n{}",
                socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM (the children get the same SIGINT from the terminal).
fn wait_for_ctrl_c() {
    // SAFETY: a signal set on the stack, blocked for this thread then waited for.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}
