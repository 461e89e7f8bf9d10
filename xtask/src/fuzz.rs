//! `cargo xtask fuzz [target] [seconds]`: the cargo-fuzz targets in `fuzz/` (README,
//! "Fuzzing"), and their bounded smoke run in `cargo xtask test`.
//!
//! Runs on the stable toolchain: `RUSTC_BOOTSTRAP=1` lets cargo-fuzz pass its `-Z` flags,
//! and `--sanitizer none` needs no nightly-only sanitizer runtime (the targets check their
//! properties with assertions; libFuzzer's own limits catch runaway memory). The targets are
//! built in cargo-fuzz's dev mode (opt-level 1, see fuzz/Cargo.toml): a release build forces
//! one codegen unit per crate and takes about 15 minutes cold on two cores.
//!
//! The build goes to `/var/tmp/therappai-broker-fuzz/target` (like the systemd-box rootfs,
//! kept across clones and CI runs on one machine): its instrumented copy of the whole
//! dependency tree takes 10 to 17 minutes cold on two busy cores, a rebuild after a broker
//! change well under a minute.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/<target>/`) and keeps what it
//! finds in `fuzz/corpus/<target>/` (not committed). A crash, a failed assertion, an input
//! over the memory limits or a hang fails the run with the target's name and the path of
//! the input libFuzzer saved under `fuzz/artifacts/<target>/`.

use crate::background::Background;
use crate::root;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "config",
    "jwt",
    "upstream",
    "request_validation",
    "authority",
];
/// Seconds each target runs in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 20;
/// Seconds each target runs by default in `cargo xtask fuzz`.
pub const DEFAULT_SECONDS: u64 = 300;

/// The cargo-fuzz release the targets were written for.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// libFuzzer flags shared by every run: no single allocation over 512 MiB, no process over
/// 2 GiB, no input over 64 KiB (the broker refuses larger ones before any parser sees them),
/// no input that takes more than 10 s.
const LIMITS: &[&str] = &[
    "-rss_limit_mb=2048",
    "-malloc_limit_mb=512",
    "-max_len=65536",
    "-timeout=10",
];

/// `cargo install cargo-fuzz` when `cargo fuzz` is missing (it lands in ~/.cargo/bin, so
/// only the first run pays the ~35 s).
pub fn install_cargo_fuzz_in_background() -> Result<Background> {
    if cargo_fuzz_installed() {
        return Ok(Background::done());
    }
    let mut command = Command::new("cargo");
    command.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    Background::start(
        "cargo install cargo-fuzz",
        command,
        root().join("target/cargo-fuzz-install.log"),
    )
}

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cargo xtask fuzz [target] [seconds]`.
pub fn fuzz_command(mut args: impl Iterator<Item = String>) -> Result<()> {
    let target = args.next();
    let seconds = match args.next() {
        None => DEFAULT_SECONDS,
        Some(s) => s
            .parse()
            .with_context(|| format!("seconds must be a whole number, got {s:?}"))?,
    };
    let targets: Vec<&str> = match target.as_deref() {
        None | Some("all") => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => vec![*t],
            None => bail!(
                "no fuzz target {name:?}: the targets are {} (or `all`)",
                TARGETS.join(", ")
            ),
        },
    };
    install_cargo_fuzz_in_background()?.wait()?;
    run_targets(&targets, seconds)
}

/// Builds the targets, then runs each for `seconds`, one after the other.
pub fn run_targets(targets: &[&str], seconds: u64) -> Result<()> {
    let started = std::time::Instant::now();
    let target_dir = target_dir();
    cargo_fuzz(&[
        "build",
        "--dev",
        "--sanitizer",
        "none",
        "--target-dir",
        &target_dir,
    ])
    .context("build the fuzz targets (fuzz/)")?;
    eprintln!("fuzz: built in {} s", started.elapsed().as_secs());
    for target in targets {
        run_target(target, seconds)?;
    }
    eprintln!(
        "fuzz: {} target(s), {seconds} s each, no failure ({} s in all)",
        targets.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let fuzz = root().join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let before = saved_inputs(&artifacts);
    let max_time = format!("-max_total_time={seconds}");
    let target_dir = target_dir();
    let corpus_arg = corpus.to_string_lossy();
    let seeds_arg = seeds.to_string_lossy();
    let mut args = vec![
        "run",
        "--dev",
        "--sanitizer",
        "none",
        "--target-dir",
        &target_dir,
        target,
        &corpus_arg,
        &seeds_arg,
        "--",
        &max_time,
        "-print_final_stats=1",
    ];
    args.extend(LIMITS);
    if cargo_fuzz(&args).is_ok() {
        return Ok(());
    }
    let found: Vec<PathBuf> = saved_inputs(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    match found.as_slice() {
        [] => bail!(
            "fuzz target {target} failed without saving an input (see its output above); run it again with `cargo xtask fuzz {target}`"
        ),
        inputs => bail!(
            "fuzz target {target} found a failing input: {}. Reproduce it with `RUSTC_BOOTSTRAP=1 cargo fuzz run --dev --sanitizer none --target-dir {} {target} {}` (from the repository root), fix the broker, and add the input to fuzz/seeds/{target}/",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            target_dir,
            inputs[0].display()
        ),
    }
}

/// Where the instrumented build goes (outside the clone: see the module doc).
fn target_dir() -> String {
    std::env::var("THERAPPAI_FUZZ_TARGET_DIR")
        .unwrap_or_else(|_| "/var/tmp/therappai-broker-fuzz/target".to_owned())
}

/// The inputs libFuzzer saved for a target (crash-*, oom-*, timeout-*, leak-*).
fn saved_inputs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

fn cargo_fuzz(args: &[&str]) -> Result<()> {
    eprintln!("+ RUSTC_BOOTSTRAP=1 cargo fuzz {}", args.join(" "));
    let status = Command::new("cargo")
        .arg("fuzz")
        .args(args)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root())
        .status()
        .context("run cargo fuzz")?;
    if !status.success() {
        bail!("`cargo fuzz {}` failed with {status}", args.join(" "));
    }
    Ok(())
}
