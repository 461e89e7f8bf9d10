//! Policy: may this peer do this? A pure function of (policy, peer, action).
//!
//! Threat: any local process can dial the socket (directory and socket permissions are only
//! the first gate). Without rules written in the config, a broker serves and administers only
//! the uid it runs as — root's broker serves only root — so no other local user can take a
//! token or log an account out.

use crate::peer::PeerIdentity;

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
            Self::Token { account } => format!("token for account \"{account}\""),
            Self::Admin => "admin action".to_owned(),
        }
    }
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The uid the broker runs as: by default the only uid it serves.
    pub broker_uid: u32,
}

/// A decision, with the rule that made it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: String },
    Deny { rule: String },
}

impl Policy {
    pub fn decide(&self, peer: &PeerIdentity, _action: Action<'_>) -> Decision {
        if peer.uid == self.broker_uid {
            Decision::Allow {
                rule: format!("default: same uid as the broker ({})", self.broker_uid),
            }
        } else {
            Decision::Deny {
                rule: format!("default: only uid {} is served", self.broker_uid),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerIdentity {
        PeerIdentity {
            uid,
            gid: uid,
            pid: None,
        }
    }

    #[test]
    fn default_serves_only_the_brokers_own_uid() {
        let policy = Policy { broker_uid: 1000 };
        let token = Action::Token { account: "default" };
        assert!(matches!(
            policy.decide(&peer(1000), token),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            policy.decide(&peer(1001), token),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            policy.decide(&peer(0), Action::Admin),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn root_broker_serves_only_root_by_default() {
        let policy = Policy { broker_uid: 0 };
        assert!(matches!(
            policy.decide(&peer(0), Action::Admin),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            policy.decide(&peer(65534), Action::Admin),
            Decision::Deny { .. }
        ));
    }
}
