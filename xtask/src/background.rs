//! A slow preparation step (a download, a `cargo install`) run beside the lints and tests,
//! its output kept in a log file that is shown only if it fails.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A step started in the background, or nothing to wait for when it was not needed.
#[derive(Debug)]
pub struct Background {
    step: Option<(String, Child, PathBuf)>,
}

impl Background {
    /// Nothing to do: `wait` returns at once.
    pub fn done() -> Self {
        Self { step: None }
    }

    /// Starts `command`, its stdout and stderr going to `log`.
    pub fn start(what: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        eprintln!("+ (in the background) {what}; log: {}", log.display());
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("dup the log file")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(Self {
            step: Some((what.to_owned(), child, log)),
        })
    }

    /// Waits for the step; fails with the end of its log if it failed.
    pub fn wait(self) -> Result<()> {
        let Some((what, mut child, log)) = self.step else {
            return Ok(());
        };
        let status = child.wait().with_context(|| format!("wait for {what}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{what} failed with {status}; the end of {}:\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }
}
