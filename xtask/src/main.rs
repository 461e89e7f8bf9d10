//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `demo`: a fake therappai on loopback, the broker on the default store, a demo login and a
//!   token summary; then keeps serving so `therappai-brokerctl` can be tried.
//! - `test`: installs what the tests need (Debian packages) when missing, checks formatting
//!   and lints, runs every test, and runs the benchmark in smoke mode (it asserts no timing).
//! - `deb [--dev]`: the Debian package `target/debian/therappai-broker_*.deb` (see deb.rs).
//! - `fuzz [target] [seconds]`: runs the cargo-fuzz targets in `fuzz/` (all, or one) for
//!   `seconds` each (default 300); `test` runs each for 20 s.
//! - `bench [--smoke]`: builds in release mode and runs the benchmark; the table goes to
//!   stdout, the figures to `target/bench/bench.json`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod background;
mod deb;
mod demo;
mod fuzz;
mod release;
mod systemd_box;

/// Debian packages the end-to-end tests use, and a binary each provides.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("dbus", "dbus-daemon"),
    ("dbus-x11", "dbus-launch"),
    ("gnome-keyring", "gnome-keyring-daemon"),
    ("libsecret-tools", "secret-tool"),
    ("keyutils", "keyctl"),
    // The Node.js stock client and example (usually there already: Node 20).
    ("nodejs", "node"),
    ("npm", "npm"),
];

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => demo::run_demo(),
        "test" => test(),
        "deb" => {
            let profile = if std::env::args().any(|a| a == "--dev") {
                deb::Profile::Dev
            } else {
                deb::Profile::Release
            };
            deb::build_deb(profile).map(|_| ())
        }
        "bench" => bench(std::env::args().any(|a| a == "--smoke")),
        "fuzz" => fuzz::fuzz_command(std::env::args().skip(2)),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|bench|deb|fuzz>\n  demo   run the broker against a fake therappai and keep serving\n  test   install test dependencies if missing, lint, and run every test\n  bench  [--smoke] release build, then measure the broker against the bare gRPC floor\n  deb    [--dev] build target/debian/therappai-broker_*.deb (installs cargo-deb if missing);\n         --dev packs the debug binaries into target/debian-dev instead\n  fuzz   [target|all] [seconds] run the fuzz targets (config, jwt, upstream,\n         request_validation, authority) for seconds each, default 300 (installs cargo-fuzz if missing)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_env(program, args, &[])
}

/// As [`run`], with extra environment variables.
pub fn run_with_env(program: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false)
}

fn install_test_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(_, binary)| !on_path(binary))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root_user = unsafe { libc::geteuid() } == 0;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    if !root_user {
        bail!(
            "the tests need these Debian packages: {}. Install them with `sudo apt-get update && sudo apt-get install -y {}` and run `cargo xtask test` again",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run("apt-get", &["update", "-qq"])?;
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed with {status}", missing.join(" "));
    }
    Ok(())
}

fn test() -> Result<()> {
    install_test_packages()?;
    // The systemd-box scenarios need a Debian rootfs (about a minute to fetch the first
    // time, cached after) and cargo-deb: both start now and run beside the lints.
    let box_rootfs = systemd_box::build_in_background()?;
    let cargo_deb = deb::install_cargo_deb_in_background()?;
    let cargo_fuzz = fuzz::install_cargo_fuzz_in_background()?;
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The end-to-end tests start the real binaries: build them first.
    run("cargo", &["build", "--workspace", "--bins"])?;
    run("cargo", &["test", "--workspace"])?;
    // No panic, no runaway allocation, no secret in an error, for every parser of untrusted
    // input: a bounded run of each fuzz target (fuzz/, README "Fuzzing").
    cargo_fuzz.wait()?;
    fuzz::run_targets(fuzz::TARGETS, fuzz::SMOKE_SECONDS)?;
    // The package as a sysadmin installs it, in a real systemd (tests/tests/systemd_box.rs).
    cargo_deb.wait()?;
    let package = deb::build_deb(deb::Profile::Dev)?;
    box_rootfs.wait()?;
    run_with_env(
        "cargo",
        &[
            "test",
            "-p",
            "therappai-broker-e2e",
            "--test",
            "systemd_box",
            "--",
            "--ignored",
        ],
        &[("THERAPPAI_BROKER_DEB", package.as_os_str())],
    )?;
    // Proves the benchmark still runs end to end; its figures mean nothing in a debug build.
    run("target/debug/therappai-broker-bench", &["--smoke"])?;
    Ok(())
}

fn bench(smoke: bool) -> Result<()> {
    install_test_packages()?;
    release::build_release_bins(&["--workspace"])?;
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).context("create target/bench")?;
    let json = out.join("bench.json");
    let json = json.to_str().context("target path is not UTF-8")?;
    let mut args = vec!["--json", json];
    if smoke {
        args.push("--smoke");
    }
    run("target/release/therappai-broker-bench", &args)
}
