//! AppRole set-up: a least-privilege policy for one KV prefix, a role with test-chosen
//! token lifetimes, and its credentials in two 0600 files, as a broker reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{KV_MOUNT, OpenBao, call};

/// What an AppRole's policy grants on its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// What a broker needs: create, read, update, delete, list on data and metadata.
    Full,
    /// Read and list only (a start check must name the missing `create`/`update`).
    ReadOnly,
    /// Nothing: the prefix is explicitly denied.
    Denied,
}

/// An AppRole to create: the KV prefix its policy covers and its tokens' lifetimes.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// Below the KV mount, without slashes at the ends, e.g. `therappai-broker/test-1`.
    pub prefix: String,
    pub access: Access,
    /// The token's TTL after login (and per renewal); short values exercise renewal.
    pub token_ttl: Duration,
    /// The longest a token can be renewed to; past it the client must log in again.
    pub token_max_ttl: Duration,
}

impl RoleSpec {
    /// Full access to `prefix`, tokens living 1 h (renewable to 4 h).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_matches('/').to_owned(),
            access: Access::Full,
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(4 * 3600),
        }
    }
}

/// An AppRole's credentials as a broker reads them: two files, mode 0600.
#[derive(Debug)]
pub struct AppRole {
    pub name: String,
    pub policy: String,
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    /// Holds the files (removed on drop).
    _dir: tempfile::TempDir,
}

/// The policy for `spec`, in HCL (the README's least-privilege snippet says the same).
pub fn policy_hcl(spec: &RoleSpec) -> String {
    let (data, metadata) = match spec.access {
        Access::Full => (
            r#"["create", "read", "update", "delete", "list"]"#,
            r#"["read", "delete", "list"]"#,
        ),
        Access::ReadOnly => (r#"["read", "list"]"#, r#"["read", "list"]"#),
        Access::Denied => (r#"["deny"]"#, r#"["deny"]"#),
    };
    let p = &spec.prefix;
    // `*` also matches the empty rest, so `prefix/*` covers the LIST of `prefix/` itself.
    format!(
        "path \"{KV_MOUNT}/data/{p}/*\" {{\n  capabilities = {data}\n}}\n\
         path \"{KV_MOUNT}/metadata/{p}/*\" {{\n  capabilities = {metadata}\n}}\n"
    )
}

/// AppRole set-up (both kinds of server).
impl OpenBao {
    /// Enables AppRole (once), writes the policy for `spec`, creates a role with it, and
    /// writes the role_id and a fresh secret_id to two 0600 files in a new directory.
    pub async fn approle(&self, spec: &RoleSpec) -> AppRole {
        let enabled = self.root_ok(Method::GET, "/v1/sys/auth", None).await;
        if enabled.body["data"]["approle/"].is_null() {
            self.root_ok(
                Method::POST,
                "/v1/sys/auth/approle",
                Some(json!({ "type": "approle" })),
            )
            .await;
        }
        let name = crate::unique_name("broker").replace('-', "_");
        let policy = format!("{name}_policy");
        self.root_ok(
            Method::PUT,
            &format!("/v1/sys/policies/acl/{policy}"),
            Some(json!({ "policy": policy_hcl(spec) })),
        )
        .await;
        self.root_ok(
            Method::POST,
            &format!("/v1/auth/approle/role/{name}"),
            Some(json!({
                "token_policies": [policy],
                "token_ttl": format!("{}s", spec.token_ttl.as_secs()),
                "token_max_ttl": format!("{}s", spec.token_max_ttl.as_secs()),
            })),
        )
        .await;
        let role_id = self
            .root_ok(
                Method::GET,
                &format!("/v1/auth/approle/role/{name}/role-id"),
                None,
            )
            .await;
        let secret_id = self
            .root_ok(
                Method::POST,
                &format!("/v1/auth/approle/role/{name}/secret-id"),
                None,
            )
            .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let role_id_file = dir.path().join("role-id");
        let secret_id_file = dir.path().join("secret-id");
        write_private(
            &role_id_file,
            role_id.body["data"]["role_id"].as_str().expect("role_id"),
        );
        write_private(
            &secret_id_file,
            secret_id.body["data"]["secret_id"]
                .as_str()
                .expect("secret_id"),
        );
        AppRole {
            name,
            policy,
            role_id_file,
            secret_id_file,
            _dir: dir,
        }
    }

    /// Logs in with `role` and writes the token to a 0600 file beside its credentials, as
    /// OpenBao Agent would for `auth = "token_file"`; returns the file.
    pub async fn token_file(&self, role: &AppRole) -> PathBuf {
        let (token, _) = self.login(role).await;
        let path = role._dir.path().join(crate::unique_name("token"));
        write_private(&path, &token);
        path
    }

    /// Logs in with `role` over HTTPS as a broker would; returns the token and its TTL.
    pub async fn login(&self, role: &AppRole) -> (String, Duration) {
        let read = |p: &Path| std::fs::read_to_string(p).expect("read AppRole file");
        let leader = self.leader().await.unwrap_or(0);
        let reply = call(
            &self.http,
            &self.nodes[leader].address(),
            Method::POST,
            "/v1/auth/approle/login",
            None,
            Some(&json!({
                "role_id": read(&role.role_id_file),
                "secret_id": read(&role.secret_id_file),
            })),
        )
        .await
        .expect("AppRole login");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "AppRole login: {}",
            reply.errors()
        );
        let auth = &reply.body["auth"];
        (
            auth["client_token"]
                .as_str()
                .expect("client_token")
                .to_owned(),
            Duration::from_secs(auth["lease_duration"].as_u64().expect("lease_duration")),
        )
    }
}

/// Writes `text` to a new file readable by its owner only.
pub(super) fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create a 0600 file");
    file.write_all(text.as_bytes()).expect("write a 0600 file");
}
