//! Helpers for the peer-policy tests: running the CLI as other users, from other paths and
//! inside a test cgroup. These need root (CI runs as root).

use crate::unique_name;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `setpriv` prefix: run as `nobody`/`nogroup` with no supplementary groups.
pub const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// The uid of `nobody`.
pub const NOBODY_UID: u32 = 65534;

/// Panics with a clear message unless the tests run as root.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the peer-policy tests run clients as other users and in test cgroups: run them as root (CI does)"
    );
}

/// Copies `src` to `dir/name`, mode 0755 (a second executable with the same code).
#[track_caller]
pub fn copy_executable(src: &Path, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join(name);
    std::fs::copy(src, &dest).expect("copy executable");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    dest
}

/// A cgroup v2 directory `therappai-test.slice/<unique>.service` under the cgroup2 mount,
/// removed on drop. A process writes its pid to `procs()` to join it.
#[derive(Debug)]
pub struct TestCgroup {
    pub unit: String,
    pub path: PathBuf,
}

impl TestCgroup {
    #[track_caller]
    pub fn create() -> Self {
        let mount = cgroup2_mount().expect(
            "no cgroup2 mount in /proc/self/mountinfo: the unit-rule test needs cgroup v2 (pure or hybrid)",
        );
        let unit = format!("{}.service", unique_name("therappai-test"));
        let path = mount.join("therappai-test.slice").join(&unit);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create test cgroup {}: {e}; the unit-rule test needs a writable cgroup v2 hierarchy (root)",
                path.display()
            )
        });
        Self { unit, path }
    }

    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The last member may take a moment to leave after it is reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The shared parent goes when the last test using it is done; busy is fine.
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
/// systems).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}
