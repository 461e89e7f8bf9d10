//! `cargo xtask deb`: the Debian package `target/debian/therappai-broker_*.deb`.
//!
//! Writes the man pages (clap_mangen) and shell completions (clap_complete) of both binaries
//! from their own clap definitions into `target/debian-assets`, builds the release binaries,
//! and packs everything listed in `broker/Cargo.toml`'s `[package.metadata.deb]` with
//! cargo-deb (installed from crates.io when missing).

use crate::{root, run};
use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

#[path = "../../broker/src/bin/therappai-broker/args.rs"]
mod broker_args;
#[path = "../../client-lib/src/bin/therappai-brokerctl/cli.rs"]
mod brokerctl_cli;

/// Builds the package and returns its path.
pub fn build_deb() -> Result<PathBuf> {
    let assets = root().join("target/debian-assets");
    std::fs::create_dir_all(&assets).context("create target/debian-assets")?;
    // The daemon is an admin command (section 8), the CLI a user command (section 1).
    // Compiled here, clap would take the name (and about text) of the xtask crate: set them.
    let broker = broker_args::Args::command()
        .name("therappai-broker")
        .bin_name("therappai-broker")
        .about("Local token broker for the therappai API");
    write_docs(broker, "8", &assets)?;
    let brokerctl = brokerctl_cli::Cli::command()
        .name("therappai-brokerctl")
        .bin_name("therappai-brokerctl")
        .about("Control the therappai token broker");
    write_docs(brokerctl, "1", &assets)?;
    if !cargo_deb_installed() {
        run("cargo", &["install", "cargo-deb", "--locked"])?;
    }
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "therappai-broker",
            "-p",
            "therappai-broker-client",
            "--bins",
        ],
    )?;
    let out = root().join("target/debian");
    std::fs::create_dir_all(&out).context("create target/debian")?;
    // Only the package built now: a stale one from an older version must not be picked up.
    for entry in std::fs::read_dir(&out).context("read target/debian")? {
        let path = entry.context("read target/debian")?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    run(
        "cargo",
        &["deb", "-p", "therappai-broker", "--no-build", "--no-strip"],
    )?;
    let deb = std::fs::read_dir(&out)
        .context("read target/debian")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb wrote no .deb into target/debian")?;
    eprintln!("built {}", deb.display());
    Ok(deb)
}

fn cargo_deb_installed() -> bool {
    std::process::Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `NAME.SECTION.gz`, `NAME.bash`, `_NAME` (zsh) and `NAME.fish` in `dir`.
fn write_docs(mut command: clap::Command, section: &str, dir: &Path) -> Result<()> {
    let name = command.get_name().to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section(section)
        .render(&mut page)
        .with_context(|| format!("render the man page of {name}"))?;
    let man = dir.join(format!("{name}.{section}.gz"));
    gzip(&page, &man)?;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut script);
        let path = dir.join(file);
        std::fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Man pages are installed gzipped (Debian policy); gzip -9n keeps the output reproducible.
fn gzip(data: &[u8], to: &Path) -> Result<()> {
    let file = std::fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    let mut child = std::process::Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .spawn()
        .context("run gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(data)
        .context("write to gzip")?;
    let status = child.wait().context("wait for gzip")?;
    if !status.success() {
        bail!("gzip failed with {status}");
    }
    Ok(())
}
