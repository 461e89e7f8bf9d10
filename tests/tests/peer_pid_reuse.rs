//! A client that exits mid-connection, and a PID reused afterwards, never gets another
//! process's rights.
//!
//! The trap, set deterministically (root): the broker is stopped (SIGSTOP) so it cannot
//! accept; a short-lived child connects a socket this test holds and exits at once (the
//! connection lives on in the test: the "client" is gone mid-connection); the test reaps it
//! and makes the kernel hand its PID to a process running an *allowed* executable (by
//! writing PID-1 to /proc/sys/kernel/ns_last_pid). Then the broker resumes and accepts: its
//! SO_PEERCRED PID now points at the allowed program. Without the pidfd proof the call
//! would be granted; with it, exe and unit are unknown and the call is denied.
//!
//! One test per file: the PID trick needs no other test spawning processes meanwhile.

#![expect(
    clippy::expect_used,
    reason = "end-to-end test: a failed step panics with its reason"
)]

use fake_therappai::{FakeConfig, FakeTherappai};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use therappai_broker_e2e::peer::{copy_executable, require_root};
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind, wait_until, workspace_bin};
use therappai_broker_proto::v1::{GetAccessTokenRequest, broker_client::BrokerClient};

const EMAIL: &str = "alice@example.com";
const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_never_lends_its_rights_to_an_exited_peer() {
    require_root();
    let fake = FakeTherappai::start(FakeConfig {
        users: vec![(EMAIL.to_owned(), PASSWORD.to_owned())],
        ..FakeConfig::default()
    })
    .await
    .expect("start fake therappai");
    let mut options = BrokerOptions::new(StoreKind::SecretService, EMAIL);
    options.extra_config = "[[allow]]\naccount = \"default\"\nuids = [0]\nexecutables = [\"{dir}/allowed-ctl\", \"{dir}/allowed-sleep\"]\n".to_owned();
    let broker = Broker::start(options, &fake.base_url(), &fake.ca_pem());
    broker.login("default", PASSWORD).await;

    // Control: the allowed executable really is allowed.
    let allowed_ctl = copy_executable(
        &workspace_bin("therappai-brokerctl"),
        broker.dir.path(),
        "allowed-ctl",
    );
    let sleep = which("sleep");
    let allowed_sleep = copy_executable(&sleep, broker.dir.path(), "allowed-sleep");
    let out = broker
        .run_ctl(&[], &allowed_ctl, &["token", "--account", "default"], None)
        .await;
    assert_eq!(
        out.code, 0,
        "the allowed executable gets a token: {}",
        out.stderr
    );

    broker.signal(libc::SIGSTOP);
    wait_until("the broker to be stopped", Duration::from_secs(5), || {
        process_state(broker.pid()) == Some('T')
    });
    let (socket, dead_pid) = connect_from_short_lived_child(broker.socket_path());
    let mut impostor = spawn_with_pid(&allowed_sleep, dead_pid);
    let exe = std::fs::read_link(format!("/proc/{dead_pid}/exe")).expect("impostor exe");
    assert_eq!(
        exe, allowed_sleep,
        "the trap is set: the dead peer's PID runs an allowed program"
    );
    broker.signal(libc::SIGCONT);

    let result = call_over(socket).await;
    let status = result.expect_err("the exited peer must not get a token");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("pid={dead_pid} exe=unknown")),
        "the identity of a peer that exited is unknown, not the new PID owner's: {}",
        status.message()
    );
    let denials = broker.log_lines_with(&[
        "audit:",
        "decision=\"deny\"",
        &format!("pid=\"{dead_pid}\""),
        "exe=\"unknown\"",
    ]);
    assert_eq!(
        denials,
        1,
        "one audit event for the denial:\n{}",
        broker.logs()
    );

    // Kernels >= 6.16 hand out a pidfd even for a reaped peer (its fdinfo says Pid: -1);
    // older ones refuse it. Either way the broker says why it trusted nothing.
    let logs = broker.logs();
    assert!(
        logs.contains("the peer exited before its identity was verified")
            || logs.contains("no pidfd for the peer; it has exited"),
        "the broker logs why the identity is unknown:\n{logs}"
    );
    impostor.kill().expect("kill impostor");
    impostor.wait().expect("reap impostor");
}

fn which(program: &str) -> std::path::PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} not found in /usr/bin or /bin"))
}

/// The state letter of `pid` from /proc/PID/stat (R, S, T, Z, …).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A socket connected to `path` by a child process that exits at once and is reaped.
/// Returns the socket (now ours alone) and the dead child's PID.
fn connect_from_short_lived_child(path: &std::path::Path) -> (OwnedFd, i32) {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the child only calls connect(2) and _exit(2), both async-signal-safe, on memory
    // prepared before the fork; the parent only waits for it.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: see above; `addr` and `fd` are valid in the child's copy of our memory.
        unsafe {
            let rc = libc::connect(fd, (&raw const addr).cast(), len);
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
    }
    assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(rc, child, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child could not connect to the stopped broker"
    );
    (socket, child)
}

/// Spawns `program 30` so that it gets PID `pid` (free again after its owner was reaped).
fn spawn_with_pid(program: &std::path::Path, pid: i32) -> Child {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid (needs root)");
        let mut child = Command::new(program).arg("30").spawn().expect("spawn");
        if i32::try_from(child.id()) == Ok(pid) {
            return child;
        }
        // Another process took the PID first: try again.
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
    panic!("could not get PID {pid} reused in 200 attempts (a busy system forks too fast)");
}

/// GetAccessToken("default") over the already connected `socket`.
async fn call_over(
    socket: OwnedFd,
) -> Result<tonic::Response<therappai_broker_proto::v1::GetAccessTokenResponse>, tonic::Status> {
    let std_stream = std::os::unix::net::UnixStream::from(socket);
    std_stream.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(std_stream).expect("tokio stream");
    let slot = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let stream = slot.lock().expect("lock").take();
        async move {
            stream
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the one connection was used already"))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://broker.invalid")
        .connect_with_connector(connector)
        .await
        .expect("HTTP/2 over the handed-over connection");
    BrokerClient::new(channel)
        .get_access_token(GetAccessTokenRequest {
            account: "default".to_owned(),
            min_valid_seconds: None,
        })
        .await
}
