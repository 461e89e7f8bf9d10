//! Stock tools from npm (@grpc/grpc-js, buf, the Node.js example's packages), each installed
//! by `npm ci` into a directory of its own under `target/`, from a committed package.json and
//! package-lock.json with exact versions. Installed on first use and again whenever either
//! file changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `npm ci` installs from; a copy under `target/` tells whether to install again.
const FILES: [&str; 2] = ["package.json", "package-lock.json"];

/// `target/NAME` holding `source`'s package.json and package-lock.json, with `npm ci` done.
/// `probe` (a program and its arguments, run in that directory) must succeed, or the
/// packages are installed first.
#[track_caller]
pub fn install(name: &str, source: &Path, probe: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name);
    let manifests = |dir: &Path| FILES.map(|file| std::fs::read(dir.join(file)).ok());
    let wanted = manifests(source);
    assert!(
        wanted.iter().all(Option::is_some),
        "{} needs a package.json and a package-lock.json",
        source.display()
    );
    let works = || {
        Command::new(probe[0])
            .args(&probe[1..])
            .current_dir(&dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if manifests(&dir) != wanted || !works() {
        std::fs::create_dir_all(&dir).expect("create the npm directory under target/");
        for file in FILES {
            std::fs::copy(source.join(file), dir.join(file))
                .unwrap_or_else(|e| panic!("copy {file} from {}: {e}", source.display()));
        }
        // `npm ci` installs exactly the lock file's versions (and fails if package.json
        // disagrees with it). Install scripts stay off: buf's only fetches its platform
        // binary package when npm skipped it, and the lock file names that package.
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
