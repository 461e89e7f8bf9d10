//! What the kernel says about a process: resident memory and CPU time, from /proc.

use std::path::Path;

/// A `Vm*` line of /proc/PID/status (e.g. `VmRSS`, `VmHWM`), in KiB.
pub fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 / per_second as f64)
}

/// `N × model` from /proc/cpuinfo and the cores this process may use.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({ "cores": cores, "cpu_model": model, "kernel": kernel.trim() })
}

/// Resident memory by what it holds, from /proc/PID/smaps, in KiB: the program's own file
/// (code and read-only data the kernel paged in, largely by fault-around: it maps up to 16
/// pages around each page touched), shared libraries, and anonymous memory (heap, stacks).
pub fn resident_by_mapping(pid: u32) -> anyhow::Result<serde_json::Value> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let (mut program, mut libraries, mut anonymous) = (0u64, 0u64, 0u64);
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            match current.as_deref() {
                Some(path) if Path::new(path) == exe => program += kib,
                Some(path) if path.starts_with('/') => libraries += kib,
                _ => anonymous += kib,
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping's header: "start-end perms offset dev inode [path]".
            current = line.split_whitespace().nth(5).map(str::to_owned);
        }
    }
    Ok(serde_json::json!({
        "program_kib": program,
        "libraries_kib": libraries,
        "anonymous_kib": anonymous,
    }))
}
