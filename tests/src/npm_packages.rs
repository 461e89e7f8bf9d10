//! Stock tools from npm (@grpc/grpc-js, buf, the Node.js example's packages), each installed
//! by `npm ci` into a directory of its own under `target/`, from a committed package.json and
//! package-lock.json with exact versions. Installed on first use and again whenever the lock
//! file changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/NAME` holding `source`'s package.json and package-lock.json, with `npm ci` done.
/// `probe` (a program and its arguments, run in that directory) must succeed, or the
/// packages are installed first.
#[track_caller]
pub fn install(name: &str, source: &Path, probe: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name);
    let lock = |dir: &Path| std::fs::read(dir.join("package-lock.json")).ok();
    let source_lock = lock(source);
    assert!(
        source_lock.is_some(),
        "{} has no package-lock.json",
        source.display()
    );
    let works = || {
        Command::new(probe[0])
            .args(&probe[1..])
            .current_dir(&dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if lock(&dir) != source_lock || !works() {
        std::fs::create_dir_all(&dir).expect("create the npm directory under target/");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(file), dir.join(file))
                .unwrap_or_else(|e| panic!("copy {file} from {}: {e}", source.display()));
        }
        // `npm ci` installs exactly the lock file's versions (and fails if package.json
        // disagrees with it); install scripts stay off, none of these packages needs one.
        let npm = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--loglevel=error",
            ])
            .current_dir(&dir)
            .status()
            .expect("run npm (apt-get install nodejs npm)");
        assert!(npm.success(), "npm ci in {} failed", dir.display());
    }
    assert!(
        works(),
        "{} in {} does not run",
        probe.join(" "),
        dir.display()
    );
    dir
}
