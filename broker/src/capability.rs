//! Whether the rules in force can work with the privileges the broker has.
//!
//! An `executables` rule needs the peer's `/proc/PID/exe`, which the kernel lets a process
//! read for another user's process only with `CAP_SYS_PTRACE`. The hardened system unit does
//! not grant it (a drop-in does). Without it such a rule silently matches no peer of another
//! uid, so the broker says so at start and at every reload, naming the rule and the fix.

use crate::policy::PolicyRules;

/// `CAP_SYS_PTRACE` from linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;

/// Where the package puts the drop-in that grants the capability, and where it goes.
pub const PTRACE_DROP_IN_EXAMPLE: &str = "/usr/share/doc/therappai-broker/examples/ptrace.conf";
pub const PTRACE_DROP_IN: &str = "/etc/systemd/system/therappai-broker.service.d/ptrace.conf";

/// Whether this process has `CAP_SYS_PTRACE` in its effective set (read from
/// `/proc/self/status`; unknown counts as missing).
pub fn has_sys_ptrace() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    effective_caps(&status).is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The `[[allow]]` rules (1-based numbers and accounts) that name executables and can match
/// a peer of a uid other than `broker_uid`: those need `CAP_SYS_PTRACE`.
pub fn rules_needing_ptrace(rules: &PolicyRules, broker_uid: u32) -> Vec<(usize, String)> {
    rules
        .allow
        .iter()
        .enumerate()
        .filter(|(_, rule)| !rule.executables.is_empty())
        .filter(|(_, rule)| !rule.groups.is_empty() || rule.uids.iter().any(|&u| u != broker_uid))
        .map(|(index, rule)| (index + 1, rule.account.clone()))
        .collect()
}

/// Logs a warning for every rule that cannot work without `CAP_SYS_PTRACE` when the process
/// lacks it. Called at start and after each reload.
pub fn warn_about_missing_ptrace(rules: &PolicyRules, broker_uid: u32) {
    let needing = rules_needing_ptrace(rules, broker_uid);
    if needing.is_empty() || has_sys_ptrace() {
        return;
    }
    for (number, account) in needing {
        tracing::warn!(
            rule = number,
            account,
            "[[allow]] #{number} (account \"{account}\") names executables, but the broker lacks CAP_SYS_PTRACE, which the kernel requires to read another user's /proc/PID/exe: this rule will deny every caller of another uid. Grant it with the shipped drop-in: `install -D -m 0644 {PTRACE_DROP_IN_EXAMPLE} {PTRACE_DROP_IN} && systemctl daemon-reload && systemctl restart therappai-broker`, or match those callers by `units` instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AllowRule, GroupRef};

    fn rule(uids: Vec<u32>, groups: Vec<GroupRef>, exe: bool) -> AllowRule {
        AllowRule {
            account: "default".to_owned(),
            uids,
            groups,
            executables: if exe {
                vec!["/usr/bin/app".into()]
            } else {
                vec![]
            },
            units: vec![],
        }
    }

    #[test]
    fn only_executable_rules_for_other_uids_need_ptrace() {
        let group = GroupRef {
            name: "apps".into(),
            gid: 1500,
        };
        let rules = PolicyRules {
            allow: vec![
                rule(vec![1000], vec![], true),
                rule(vec![1001], vec![], true),
                rule(vec![1001], vec![], false),
                rule(vec![], vec![group], true),
            ],
            admin: None,
        };
        assert_eq!(
            rules_needing_ptrace(&rules, 1000),
            vec![(2, "default".to_owned()), (4, "default".to_owned())]
        );
    }

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000080000\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_SYS_PTRACE));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
