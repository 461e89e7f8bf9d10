//! Policy: may this peer do this? A pure function of (policy, peer, action) → decision, with
//! the rule that decided it.
//!
//! Threat: any local process that can reach the socket may ask for any account's token or
//! try an admin action (log in, log out, list accounts). Socket permissions are only the
//! first gate; this is the second and the one that counts. The peer identity it judges comes
//! from the kernel (see `peer`), never from the request. Unknown facts never match: a peer
//! whose executable or unit could not be proven is refused by rules that name executables
//! or units.
//!
//! Defaults, when the config writes no rules: a broker running as an ordinary user serves
//! and administers only its own uid; a broker running as root serves and administers only
//! root. Writing any `[[allow]]` rule replaces the token default (so the broker's own uid
//! needs a rule too); writing `[admin]` replaces the admin default.

use crate::peer::PeerIdentity;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

/// What the peer wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Get (or refresh) an access token of `account`.
    Token { account: &'a str },
    /// Log in, log out, or see every account's status.
    Admin,
}

impl Action<'_> {
    pub fn describe(&self) -> String {
        match self {
            Self::Token { account } => format!("get a token for account \"{account}\""),
            Self::Admin => "run admin actions (login, logout, status of every account)".to_owned(),
        }
    }
}

/// A group named in the config, resolved to its gid when the config was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub name: String,
    pub gid: u32,
}

/// One `[[allow]]` section: `account` for peers whose uid is in `uids` or who are in one of
/// `groups`, and (when given) run one of `executables` and belong to one of `units`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// An account name, or `*` for every account.
    pub account: String,
    pub uids: Vec<u32>,
    pub groups: Vec<GroupRef>,
    pub executables: Vec<PathBuf>,
    pub units: Vec<String>,
}

/// The `[admin]` section: peers whose uid is in `uids` or who are in one of `groups`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminRule {
    pub uids: Vec<u32>,
    pub groups: Vec<GroupRef>,
}

/// The rules as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRules {
    /// Empty: the default (only the broker's own uid).
    pub allow: Vec<AllowRule>,
    /// `None`: the default (only the broker's own uid).
    pub admin: Option<AdminRule>,
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The uid the broker runs as: the default's only uid.
    pub broker_uid: u32,
    pub rules: PolicyRules,
}

/// A decision, with the rule that made it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: String,
    },
    Deny {
        rule: String,
        /// The TOML an admin would add to allow it.
        hint: String,
    },
}

impl Policy {
    pub fn decide(&self, peer: &PeerIdentity, action: Action<'_>) -> Decision {
        match action {
            Action::Token { account } => self.decide_token(peer, account),
            Action::Admin => self.decide_admin(peer),
        }
    }

    /// Status: an admin sees every account; anyone else sees the accounts they may use, and
    /// is refused when that is none. Returns the decision and the visible accounts.
    pub fn decide_status<'a>(
        &self,
        peer: &PeerIdentity,
        accounts: &'a [String],
    ) -> (Decision, Vec<&'a str>) {
        let admin = self.decide_admin(peer);
        if let Decision::Allow { .. } = admin {
            return (admin, accounts.iter().map(String::as_str).collect());
        }
        let visible: Vec<&str> = accounts
            .iter()
            .map(String::as_str)
            .filter(|a| matches!(self.decide_token(peer, a), Decision::Allow { .. }))
            .collect();
        if visible.is_empty() {
            return (admin, visible);
        }
        let rule = format!(
            "status of the accounts the caller may use: {}",
            visible.join(", ")
        );
        (Decision::Allow { rule }, visible)
    }

    fn decide_token(&self, peer: &PeerIdentity, account: &str) -> Decision {
        if self.rules.allow.is_empty() {
            if peer.uid == self.broker_uid {
                return Decision::Allow {
                    rule: format!("default: the broker's own uid {}", self.broker_uid),
                };
            }
            return Decision::Deny {
                rule: format!(
                    "default: no [[allow]] rules, so only the broker's own uid {} is served",
                    self.broker_uid
                ),
                hint: format!(
                    "{}\n{}",
                    allow_snippet(account, self.broker_uid, None),
                    allow_snippet(account, peer.uid, peer.exe.as_ref())
                ),
            };
        }
        for (index, rule) in self.rules.allow.iter().enumerate() {
            if rule_matches(rule, peer, account) {
                return Decision::Allow {
                    rule: format!("[[allow]] #{} (account \"{}\")", index + 1, rule.account),
                };
            }
        }
        Decision::Deny {
            rule: "no [[allow]] rule matches".to_owned(),
            hint: allow_snippet(account, peer.uid, peer.exe.as_ref()),
        }
    }

    fn decide_admin(&self, peer: &PeerIdentity) -> Decision {
        let Some(admin) = &self.rules.admin else {
            if peer.uid == self.broker_uid {
                return Decision::Allow {
                    rule: format!("default admin: the broker's own uid {}", self.broker_uid),
                };
            }
            return Decision::Deny {
                rule: format!(
                    "default admin: no [admin] section, so only the broker's own uid {} administers",
                    self.broker_uid
                ),
                hint: admin_snippet(&[self.broker_uid, peer.uid], &[]),
            };
        };
        if admin.uids.contains(&peer.uid) {
            return Decision::Allow {
                rule: format!("[admin] uids contains {}", peer.uid),
            };
        }
        if let Some(group) = admin.groups.iter().find(|g| peer.in_group(g.gid)) {
            return Decision::Allow {
                rule: format!("[admin] groups contains \"{}\"", group.name),
            };
        }
        let mut uids = admin.uids.clone();
        uids.push(peer.uid);
        Decision::Deny {
            rule: "[admin] matches neither the caller's uid nor its groups".to_owned(),
            hint: admin_snippet(&uids, &admin.groups),
        }
    }
}

fn rule_matches(rule: &AllowRule, peer: &PeerIdentity, account: &str) -> bool {
    let account_ok = rule.account == "*" || rule.account == account;
    let who_ok = rule.uids.contains(&peer.uid) || rule.groups.iter().any(|g| peer.in_group(g.gid));
    let exe_ok = rule.executables.is_empty()
        || peer
            .exe
            .as_ref()
            .is_some_and(|exe| rule.executables.contains(exe));
    let unit_ok = rule.units.is_empty()
        || peer
            .unit
            .as_ref()
            .is_some_and(|unit| rule.units.contains(unit));
    account_ok && who_ok && exe_ok && unit_ok
}

fn allow_snippet(account: &str, uid: u32, exe: Option<&PathBuf>) -> String {
    let mut text = format!("[[allow]]\naccount = \"{account}\"\nuids = [{uid}]\n");
    if let Some(exe) = exe {
        text.push_str(&format!("executables = [\"{}\"]\n", exe.display()));
    }
    text
}

fn admin_snippet(uids: &[u32], groups: &[GroupRef]) -> String {
    let uids: Vec<String> = uids.iter().map(u32::to_string).collect();
    let mut text = format!("[admin]\nuids = [{}]\n", uids.join(", "));
    if !groups.is_empty() {
        let names: Vec<String> = groups.iter().map(|g| format!("\"{}\"", g.name)).collect();
        text.push_str(&format!("groups = [{}]\n", names.join(", ")));
    }
    text
}

/// The policy in force, swapped whole on reload (SIGHUP): each call reads one consistent
/// snapshot and the next call sees the new rules. Long-lived streams subscribe to reloads, so
/// a right taken away ends them at once.
#[derive(Debug)]
pub struct SharedPolicy {
    current: RwLock<Arc<Policy>>,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl SharedPolicy {
    pub fn new(policy: Policy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time the policy is replaced.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    pub fn current(&self) -> Arc<Policy> {
        // A poisoned lock still holds a whole Arc: a panic cannot leave it half-written.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.reloads.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerIdentity {
        PeerIdentity {
            uid,
            gid: uid,
            pid: Some(4242),
            groups: vec![],
            exe: Some(PathBuf::from("/usr/bin/app")),
            unit: None,
        }
    }

    fn allows(decision: Decision) -> bool {
        matches!(decision, Decision::Allow { .. })
    }

    fn rule(account: &str) -> AllowRule {
        AllowRule {
            account: account.to_owned(),
            uids: vec![],
            groups: vec![],
            executables: vec![],
            units: vec![],
        }
    }

    fn policy(broker_uid: u32, allow: Vec<AllowRule>, admin: Option<AdminRule>) -> Policy {
        Policy {
            broker_uid,
            rules: PolicyRules { allow, admin },
        }
    }

    const TOKEN: Action<'static> = Action::Token { account: "default" };

    #[test]
    fn default_serves_only_the_brokers_own_uid() {
        let policy = policy(1000, vec![], None);
        assert!(allows(policy.decide(&peer(1000), TOKEN)));
        assert!(allows(policy.decide(&peer(1000), Action::Admin)));
        assert!(!allows(policy.decide(&peer(1001), TOKEN)));
        assert!(!allows(policy.decide(&peer(0), Action::Admin)));
    }

    #[test]
    fn root_broker_serves_only_root_by_default() {
        let policy = policy(0, vec![], None);
        assert!(allows(policy.decide(&peer(0), Action::Admin)));
        assert!(!allows(policy.decide(&peer(65534), Action::Admin)));
        assert!(!allows(policy.decide(&peer(65534), TOKEN)));
    }

    #[test]
    fn default_denial_hint_keeps_the_brokers_own_uid() {
        let Decision::Deny { hint, .. } = policy(1000, vec![], None).decide(&peer(1001), TOKEN)
        else {
            panic!("must deny");
        };
        assert!(
            hint.contains("uids = [1000]") && hint.contains("uids = [1001]"),
            "{hint}"
        );
        assert!(hint.contains("executables = [\"/usr/bin/app\"]"), "{hint}");
        let parsed: Result<toml::Table, _> = hint.parse();
        assert!(parsed.is_ok(), "the hint is valid TOML: {hint}");
    }

    #[test]
    fn uid_and_group_rules_match_per_account() {
        let mut by_uid = rule("default");
        by_uid.uids = vec![1001];
        let mut by_group = rule("*");
        by_group.groups = vec![GroupRef {
            name: "apps".into(),
            gid: 500,
        }];
        let policy = policy(1000, vec![by_uid, by_group], None);
        assert!(allows(policy.decide(&peer(1001), TOKEN)));
        assert!(!allows(
            policy.decide(&peer(1001), Action::Token { account: "work" })
        ));
        assert!(
            !allows(policy.decide(&peer(1000), TOKEN)),
            "rules replace the default"
        );
        let mut member = peer(1002);
        member.groups = vec![500];
        assert!(allows(
            policy.decide(&member, Action::Token { account: "work" })
        ));
        let mut primary = peer(1003);
        primary.gid = 500;
        assert!(allows(policy.decide(&primary, TOKEN)));
        assert_eq!(
            policy.decide(&primary, TOKEN),
            Decision::Allow {
                rule: "[[allow]] #2 (account \"*\")".into()
            }
        );
    }

    #[test]
    fn executable_and_unit_must_both_match_and_unknown_never_matches() {
        let mut r = rule("default");
        r.uids = vec![1000];
        r.executables = vec![PathBuf::from("/usr/bin/app")];
        r.units = vec!["sync.service".into()];
        let policy = policy(1000, vec![r], None);
        let mut p = peer(1000);
        assert!(!allows(policy.decide(&p, TOKEN)), "no unit");
        p.unit = Some("sync.service".into());
        assert!(allows(policy.decide(&p, TOKEN)));
        p.exe = Some(PathBuf::from("/usr/bin/other"));
        assert!(!allows(policy.decide(&p, TOKEN)));
        p.exe = None;
        assert!(
            !allows(policy.decide(&p, TOKEN)),
            "unknown exe (peer exited)"
        );
    }

    #[test]
    fn admin_section_replaces_the_default() {
        let admin = AdminRule {
            uids: vec![0],
            groups: vec![GroupRef {
                name: "ops".into(),
                gid: 700,
            }],
        };
        let policy = policy(1000, vec![], Some(admin));
        assert!(allows(policy.decide(&peer(0), Action::Admin)));
        assert!(!allows(policy.decide(&peer(1000), Action::Admin)));
        let mut op = peer(1005);
        op.groups = vec![700];
        assert!(allows(policy.decide(&op, Action::Admin)));
        let Decision::Deny { hint, .. } = policy.decide(&peer(1000), Action::Admin) else {
            panic!("must deny");
        };
        assert!(
            hint.contains("uids = [0, 1000]") && hint.contains("\"ops\""),
            "{hint}"
        );
    }

    #[test]
    fn status_shows_admins_everything_and_users_their_accounts() {
        let mut r = rule("work");
        r.uids = vec![1001];
        let policy = policy(1000, vec![r], None);
        let accounts = vec!["default".to_owned(), "work".to_owned()];
        let (d, all) = policy.decide_status(&peer(1000), &accounts);
        assert!(allows(d));
        assert_eq!(all, ["default", "work"]);
        let (d, some) = policy.decide_status(&peer(1001), &accounts);
        assert!(allows(d));
        assert_eq!(some, ["work"]);
        let (d, none) = policy.decide_status(&peer(1002), &accounts);
        assert!(!allows(d));
        assert!(none.is_empty());
    }

    #[test]
    fn shared_policy_swaps_whole() {
        let shared = SharedPolicy::new(policy(1000, vec![], None));
        let before = shared.current();
        let mut r = rule("*");
        r.uids = vec![1001];
        shared.replace(policy(1000, vec![r], None));
        assert!(
            !allows(before.decide(&peer(1001), TOKEN)),
            "a snapshot stays as it was"
        );
        assert!(allows(shared.current().decide(&peer(1001), TOKEN)));
    }
}
