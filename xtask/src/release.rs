//! The release binaries as they ship: the daemon as cargo links it, and the CLI relinked as a
//! static PIE.
//!
//! Why static: `therappai-brokerctl token` is a whole process per token, and most of its
//! cost is the kernel starting it. Linked dynamically it spends about half a millisecond in the
//! dynamic loader (libc, libm, libgcc_s, 6,000 relocations, ~160 page faults); statically it
//! takes ~100 page faults and ends ~0.5 ms sooner (README, Performance). It stays
//! position-independent so ASLR still applies to a program that handles passwords; a non-PIE
//! static build was only ~0.05 ms faster. The CLI resolves no user or group names through
//! NSS (it reads /etc/group itself), so static glibc has no runtime caveat here. The daemon
//! stays dynamic: it resolves `socket_group` and policy groups through NSS (LDAP, sssd).

use crate::run;
use anyhow::Result;

/// `cargo build --release` of `packages` (`-p` arguments, or `--workspace`) with `--bins`, then
/// the CLI relinked static. Only the CLI's own crate is rebuilt by the second step.
pub fn build_release_bins(packages: &[&str]) -> Result<()> {
    let mut args = vec!["build", "--release"];
    args.extend_from_slice(packages);
    args.push("--bins");
    run("cargo", &args)?;
    run(
        "cargo",
        &[
            "rustc",
            "--release",
            "-p",
            "therappai-broker-client",
            "--bin",
            "therappai-brokerctl",
            "--",
            "-C",
            "target-feature=+crt-static",
        ],
    )
}
