//! SIGHUP: re-read the config file and put its policy rules (`[[allow]]`, `[admin]`) in
//! force for the next call.
//!
//! Only the rules change at run time. Other keys (socket and its access, store, upstream,
//! accounts, shutdown grace) are bound to resources opened at start; when they differ, the
//! log says a restart is needed and the running values stay. An invalid file changes
//! nothing: the reason is logged and the old rules stay in force.

use crate::config::Config;
use crate::policy::{Policy, SharedPolicy};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct Reloader {
    /// The config the daemon started with (the running non-policy values).
    running: Config,
    policy: Arc<SharedPolicy>,
}

impl Reloader {
    pub fn new(running: Config, policy: Arc<SharedPolicy>) -> Self {
        Self { running, policy }
    }

    /// Loads `path` and swaps in its rules; returns whether the new rules are in force.
    pub fn reload(&self, path: &Path) -> bool {
        let new = match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("config reload refused, the previous rules stay in force: {e}");
                return false;
            }
        };
        let restart_keys = changed_keys(&self.running, &new);
        if !restart_keys.is_empty() {
            tracing::warn!(
                keys = %restart_keys.join(", "),
                "config reload: these changed keys take effect only after a restart (`systemctl restart therappai-broker`); the running values stay"
            );
        }
        let broker_uid = self.policy.current().broker_uid;
        let allow_rules = new.policy.allow.len();
        let admin_section = new.policy.admin.is_some();
        crate::capability::warn_about_missing_ptrace(&new.policy, broker_uid);
        self.policy.replace(Policy {
            broker_uid,
            rules: new.policy,
        });
        tracing::info!(
            file = %path.display(),
            allow_rules,
            admin_section,
            "config reloaded: the new policy rules apply from the next call"
        );
        true
    }
}

/// Keys other than the policy rules whose new value differs from the running one.
fn changed_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if running.socket != new.socket {
        keys.push("socket");
    }
    if running.socket_access != new.socket_access {
        keys.push("socket_group/socket_mode");
    }
    if running.store != new.store {
        keys.push("[store]");
    }
    if running.upstream != new.upstream {
        keys.push("[upstream]");
    }
    if running.accounts != new.accounts {
        keys.push("[[account]]");
    }
    if running.shutdown_grace != new.shutdown_grace {
        keys.push("shutdown_grace_seconds");
    }
    if running.connection_limits != new.connection_limits {
        keys.push("[connection_limits]");
    }
    if running.shutdown_drain != new.shutdown_drain {
        keys.push("shutdown_drain_seconds");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerIdentity;
    use crate::policy::{Action, Decision, PolicyRules};

    const BASE: &str = "socket = \"/tmp/x/broker.sock\"\n[upstream]\nbase_url = \"https://example.com/api\"\n[[account]]\nname = \"default\"\nemail = \"a@example.com\"\n";

    #[test]
    fn reload_swaps_rules_and_a_broken_file_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        let running = Config::parse(BASE, &path).expect("base");
        let policy = Arc::new(SharedPolicy::new(Policy {
            broker_uid: 1000,
            rules: PolicyRules::default(),
        }));
        let reloader = Reloader::new(running, Arc::clone(&policy));
        let peer = PeerIdentity {
            uid: 1001,
            gid: 1001,
            pid: None,
            groups: vec![],
            exe: None,
            unit: None,
        };
        let token = Action::Token { account: "default" };
        let allowed = || {
            matches!(
                policy.current().decide(&peer, token),
                Decision::Allow { .. }
            )
        };
        assert!(!allowed());

        std::fs::write(
            &path,
            format!("{BASE}[[allow]]\naccount = \"*\"\nuids = [1001]\n"),
        )
        .expect("write");
        assert!(reloader.reload(&path));
        assert!(allowed());

        std::fs::write(
            &path,
            format!("{BASE}[[allow]]\naccount = \"*\"\nuidz = [1]\n"),
        )
        .expect("write");
        assert!(!reloader.reload(&path));
        assert!(allowed(), "the old rules stay in force");
    }
}
