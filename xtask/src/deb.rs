//! `cargo xtask deb`: the Debian package `target/debian/therappai-broker_*.deb`.
//!
//! Writes the man pages (clap_mangen) and shell completions (clap_complete) of both binaries
//! from their own clap definitions into `target/debian-assets`, builds the release binaries,
//! and packs everything listed in `broker/Cargo.toml`'s `[package.metadata.deb]` with
//! cargo-deb (installed from crates.io when missing).
//!
//! The systemd-box test packs the debug binaries the test run built anyway instead
//! ([`Profile::Dev`], stripped, fast compression, into `target/debian-dev`): the same package
//! without a second, release build of the whole tree.

use crate::background::Background;
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

/// Which binaries go into the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build --release`: the package users install.
    Release,
    /// The debug binaries, already built by the test run (cargo-deb maps the assets'
    /// `target/release/` paths to the profile's directory).
    Dev,
}

/// Builds the package and returns its path.
pub fn build_deb(profile: Profile) -> Result<PathBuf> {
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
    install_cargo_deb_in_background()?.wait()?;
    let (out, pack): (PathBuf, &[&str]) = match profile {
        Profile::Release => {
            crate::release::build_release_bins(&[
                "-p",
                "therappai-broker",
                "-p",
                "therappai-broker-client",
            ])?;
            (root().join("target/debian"), &["--no-strip"])
        }
        Profile::Dev => (
            root().join("target/debian-dev"),
            &["--profile", "dev", "--strip", "--fast"],
        ),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    // Only the package built now: a stale one from an older version must not be picked up.
    for entry in std::fs::read_dir(&out).with_context(|| format!("read {}", out.display()))? {
        let path = entry.context("read the package directory")?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    let out_arg = out.to_str().context("target path is not UTF-8")?;
    let mut args = vec!["deb", "-p", "therappai-broker", "--no-build", "-o", out_arg];
    args.extend_from_slice(pack);
    run("cargo", &args)?;
    let deb = std::fs::read_dir(&out)
        .with_context(|| format!("read {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb wrote no .deb into {}", out.display()))?;
    eprintln!("built {}", deb.display());
    Ok(deb)
}

/// Starts `cargo install cargo-deb` from crates.io when it is missing.
pub fn install_cargo_deb_in_background() -> Result<Background> {
    if cargo_deb_installed() {
        return Ok(Background::done());
    }
    let mut command = std::process::Command::new("cargo");
    command.args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]);
    Background::start(
        "cargo install cargo-deb",
        command,
        root().join("target/cargo-deb-install.log"),
    )
}

/// The cargo-deb release the package was made with (its flags are used as of this one).
const CARGO_DEB_VERSION: &str = "3.8.0";

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
