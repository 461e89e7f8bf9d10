//! Who is calling: the kernel's word on the process at the other end of the socket.
//!
//! Everything is captured once per connection, at accept time, from the socket itself:
//! SO_PEERCRED (uid, gid, pid as of `connect()`), SO_PEERGROUPS (supplementary groups as of
//! `connect()`) and SO_PEERPIDFD (a pidfd pinning the process that connected). The
//! executable (`/proc/PID/exe`) and systemd unit (`/proc/PID/cgroup`) are read from procfs
//! and then trusted only if the pidfd proves that the same process still holds that PID
//! after the reads: a peer that exited and whose PID was recycled by another process gets
//! `exe`/`unit` "unknown", never the newcomer's. Where the kernel lacks SO_PEERPIDFD the
//! broker falls back to plain procfs reads and warns once.
//!
//! Never trusts anything the client says; a connection without credentials is refused.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

// Socket options the libc crate does not export for every target yet; the values are the
// kernel's (asm-generic/socket.h; sparc has its own numbering).
/// SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;
/// SO_PEERGROUPS (Linux 4.13): the peer's supplementary groups at connect().
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;

/// The peer process as the kernel reported it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    /// Primary gid at `connect()`.
    pub gid: u32,
    /// `None` when the peer is in a PID namespace the broker cannot see into.
    pub pid: Option<i32>,
    /// Supplementary groups at `connect()`.
    pub groups: Vec<u32>,
    /// `/proc/PID/exe`; `None` when it could not be read or could not be proven to belong
    /// to the process that connected.
    pub exe: Option<PathBuf>,
    /// The systemd unit of the peer's cgroup, under the same proof as `exe`.
    pub unit: Option<String>,
}

impl PeerIdentity {
    /// Whether `gid` is the peer's primary or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// `/usr/bin/x`, or `unknown`.
    pub fn exe_display(&self) -> String {
        self.exe
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// The unit name, or `none`.
    pub fn unit_display(&self) -> &str {
        self.unit.as_deref().unwrap_or("none")
    }

    /// `uid=1000 gid=1000 pid=4242 exe=/usr/bin/x unit=foo.service`, for messages.
    pub fn describe(&self) -> String {
        let pid = self
            .pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        format!(
            "uid={} gid={} pid={pid} exe={} unit={}",
            self.uid,
            self.gid,
            self.exe_display(),
            self.unit_display()
        )
    }
}

/// Captures the identity of the peer of the connected Unix socket `socket`.
pub fn capture(socket: BorrowedFd<'_>) -> io::Result<PeerIdentity> {
    let mut cred = [libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    }];
    let len = getsockopt_into(socket, libc::SO_PEERCRED, &mut cred)?;
    if len != 1 {
        return Err(io::Error::other("SO_PEERCRED returned no credentials"));
    }
    let [cred] = cred;
    // pid 0: the peer lives in a PID namespace we cannot see into.
    let pid = (cred.pid > 0).then_some(cred.pid);
    let groups = peer_groups(socket).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "SO_PEERGROUPS failed; group rules see only the primary gid");
        Vec::new()
    });
    let (exe, unit) = match pid {
        None => (None, None),
        Some(pid) => match peer_pidfd(socket) {
            Ok(pidfd) => read_process(pid, Some(pidfd.as_fd())),
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                warn_no_pidfd_once(&e);
                read_process(pid, None)
            }
            // The peer is gone already (older kernels refuse a pidfd for a reaped task):
            // whatever now holds its PID is someone else.
            Err(e) => {
                tracing::debug!(pid, error = %e, "no pidfd for the peer; it has exited");
                (None, None)
            }
        },
    };
    Ok(PeerIdentity {
        uid: cred.uid,
        gid: cred.gid,
        pid,
        groups,
        exe,
        unit,
    })
}

fn warn_no_pidfd_once(error: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(%error, "this kernel has no SO_PEERPIDFD (Linux >= 6.5): executable and unit of peers are read from /proc without proof that the PID was not reused; executable and unit rules are weaker until the kernel is upgraded");
    }
}

/// Reads exe and unit of `pid`; with a pidfd, keeps them only if the pidfd proves the
/// process that connected still holds `pid` after the reads (so the reads saw it, not a
/// successor). A zombie still holds its PID, and its exe link is unreadable anyway.
pub fn read_process(pid: i32, pidfd: Option<BorrowedFd<'_>>) -> (Option<PathBuf>, Option<String>) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let unit = read_proc_text(&format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| unit_from_cgroup(&text));
    match pidfd {
        Some(pidfd) if !pidfd_holds(pidfd, pid) => {
            tracing::debug!(
                pid,
                "the peer exited before its identity was verified; its PID may be reused: exe and unit unknown"
            );
            (None, None)
        }
        _ => (exe, unit),
    }
}

/// Whether `pidfd` still refers to a process with PID `pid`, from the `Pid:` line of its
/// fdinfo (-1 once the process is reaped, or absent on kernels that do not say).
pub fn pidfd_holds(pidfd: BorrowedFd<'_>, pid: i32) -> bool {
    let Ok(info) = read_proc_text(&format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())) else {
        return false;
    };
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        == Some(pid)
}

/// Room for a procfs text file in one `read`. Both files read here are a few hundred bytes.
const PROC_TEXT_ROOM: usize = 1024;
/// Bound on one procfs text file (a cgroup path is at most PATH_MAX per line).
const PROC_TEXT_MAX: u64 = 64 * 1024;

/// Reads a procfs text file with one `read` where it fits. procfs reports a size of 0, so
/// `fs::read_to_string` stats the file and then reads it in small, growing pieces (32, 32,
/// 64, 128 bytes for a cgroup file): seven or eight system calls a file instead of four, for
/// each of the two files on every accepted connection.
fn read_proc_text(path: &str) -> io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::with_capacity(PROC_TEXT_ROOM);
    // Through `Take`, which has no size hint: `File`'s own read_to_string would stat it.
    (&file).take(PROC_TEXT_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > PROC_TEXT_MAX {
        // Cut short, a cgroup path could name another unit: refuse rather than guess.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} is longer than {PROC_TEXT_MAX} bytes"),
        ));
    }
    Ok(text)
}

/// The systemd unit a process belongs to, from the text of `/proc/PID/cgroup`: the first
/// path component that names a unit and is not a slice, on the cgroup v2 line (`0::`), else
/// on the v1 `name=systemd` line. The first such component is the system unit: only
/// systemd (root) creates cgroups there, while a unit may create any names below its own.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let v2 = text.lines().filter_map(|line| line.strip_prefix("0::"));
    let v1 = text
        .lines()
        .filter_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path));
    v2.chain(v1).find_map(|path| {
        path.split('/')
            .find(|c| is_unit_name(c) && !c.ends_with(".slice"))
            .map(str::to_owned)
    })
}

fn is_unit_name(component: &str) -> bool {
    const SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
    SUFFIXES
        .iter()
        .any(|s| component.len() > s.len() && component.ends_with(s))
}

/// Supplementary groups of the peer (SO_PEERGROUPS, as of `connect()`).
fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        match getsockopt_into(socket, SO_PEERGROUPS, &mut groups) {
            Ok(n) => {
                groups.truncate(n);
                return Ok(groups);
            }
            // NGROUPS_MAX is 65536; grow until it fits.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && groups.len() < 65_536 => {
                groups.resize(groups.len() * 4, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A pidfd for the process that connected (SO_PEERPIDFD).
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd = [-1 as libc::c_int];
    let n = getsockopt_into(socket, SO_PEERPIDFD, &mut fd)?;
    if n != 1 || fd[0] < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd[0]) })
}

/// `getsockopt(SOL_SOCKET, option)` into `out`; returns how many whole `T`s were written.
/// `T` must be plain old data (integers, `ucred`): any bit pattern is valid.
fn getsockopt_into<T: Copy>(
    socket: BorrowedFd<'_>,
    option: libc::c_int,
    out: &mut [T],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(out))
        .map_err(|_| io::Error::other("getsockopt buffer too large"))?;
    // SAFETY: `out` is a valid, writable buffer of `len` bytes for the duration of the call;
    // the kernel writes at most `len` bytes and updates `len`; T is plain old data.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            out.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize / std::mem::size_of::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn proc_text_reads_whole_files_short_and_long() {
        assert_eq!(
            read_proc_text("/proc/self/cgroup").expect("cgroup"),
            std::fs::read_to_string("/proc/self/cgroup").expect("cgroup")
        );
        // Longer than one read's room: it keeps reading to the end.
        let long = "0::/a.slice/b.service\n".repeat(200);
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &long).expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        assert_eq!(read_proc_text(path).expect("read"), long);
        // Over the bound: an error, never a shortened text.
        std::fs::write(file.path(), "x".repeat(PROC_TEXT_MAX as usize + 1)).expect("write");
        assert!(read_proc_text(path).is_err());
    }

    #[test]
    fn captures_own_process_over_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let id = capture(a.as_fd()).expect("capture");
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((id.uid, id.gid), (uid, gid));
        assert_eq!(id.pid, Some(std::process::id() as i32));
        let me = std::fs::canonicalize(std::env::current_exe().expect("exe")).expect("canon");
        assert_eq!(id.exe.as_deref(), Some(me.as_path()));
    }

    #[test]
    fn pidfd_of_an_exited_process_proves_nothing() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(raw >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this new descriptor to us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };

        let (exe, _) = read_process(pid, Some(pidfd.as_fd()));
        assert!(
            exe.is_some_and(|e| e.ends_with("sleep")),
            "a live process is identified"
        );

        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!pidfd_holds(pidfd.as_fd(), pid));
        // Whatever /proc/PID now shows (nothing, or a successor), it is not trusted.
        assert_eq!(read_process(pid, Some(pidfd.as_fd())), (None, None));
    }

    #[test]
    fn unit_is_the_first_non_slice_unit_of_the_cgroup_path() {
        let v2 = "0::/system.slice/therappai-sync.service\n";
        assert_eq!(
            unit_from_cgroup(v2).as_deref(),
            Some("therappai-sync.service")
        );
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/evil.service\n";
        assert_eq!(unit_from_cgroup(user).as_deref(), Some("user@1000.service"));
        let scope = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(unit_from_cgroup(scope).as_deref(), Some("session-3.scope"));
        let hybrid = "9:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(unit_from_cgroup(hybrid).as_deref(), Some("cron.service"));
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup("0::/.service/x\n"), None);
    }
}
