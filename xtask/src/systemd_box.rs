//! The project's `systemd-box` tool (a real systemd 252 under systemd-nspawn), which the
//! `systemd_box` end-to-end scenarios boot. Its rootfs is debootstrapped once and cached.

use crate::background::Background;
use crate::root;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// `$SYSTEMD_BOX`, else `../shared/tools/systemd-box` beside the repository.
pub fn tool() -> PathBuf {
    std::env::var_os("SYSTEMD_BOX")
        .map_or_else(|| root().join("../shared/tools/systemd-box"), PathBuf::from)
}

/// Starts `systemd-box build` (a no-op once the rootfs is cached).
pub fn build_in_background() -> Result<Background> {
    let tool = tool();
    if !tool.is_file() {
        bail!(
            "the systemd-box tool is not at {}: the system-service tests need it (set SYSTEMD_BOX to its path)",
            tool.display()
        );
    }
    let mut command = Command::new(tool);
    command.arg("build");
    Background::start(
        "systemd-box build",
        command,
        root().join("target/systemd-box-build.log"),
    )
}
