//! A Raft cluster on loopback: a throw-away CA, one config per node, init, join, unseal,
//! and waits for voters and for the KV v2 mount.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::approle::write_private;
use super::{
    KV_MOUNT, Node, OpenBao, RootSecrets, START_TIMEOUT, StartError, call, free_ports, https_client,
};

/// Server settings of a cluster that tests may change.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterOptions {
    /// `disable_standby_reads`: standbys forward reads to the active node too.
    pub disable_standby_reads: bool,
}

/// A 3-node (or n-node) Raft cluster.
impl OpenBao {
    /// `n` nodes with integrated Raft storage on loopback, TLS from a fresh CA: node 0 is
    /// initialised (1 key share) and unsealed, the others join it and are unsealed; returns
    /// once there is a leader, every node is a voter, and KV v2 is mounted at `secret/`.
    pub async fn cluster(n: usize) -> Self {
        Self::cluster_with(n, ClusterOptions::default()).await
    }

    /// [`OpenBao::cluster`] with non-default server settings.
    pub async fn cluster_with(n: usize, options: ClusterOptions) -> Self {
        for _attempt in 0..5 {
            match Self::try_cluster(n, options).await {
                Ok(bao) => return bao,
                Err(StartError::PortTaken) => continue,
            }
        }
        panic!("could not find free ports for an OpenBao cluster in 5 attempts");
    }

    async fn try_cluster(n: usize, options: ClusterOptions) -> Result<Self, StartError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_pem = dir.path().join("ca.pem");
        write_cluster_tls(dir.path());
        let ports = free_ports(2 * n);
        let nodes = (0..n)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(node_dir.join("raft")).expect("mkdir raft");
                let (api_port, cluster_port) = (ports[2 * i], ports[2 * i + 1]);
                let config = node_dir.join("config.hcl");
                std::fs::write(
                    &config,
                    node_config(dir.path(), &node_dir, i, (api_port, cluster_port), options),
                )
                .expect("write node config");
                Node {
                    api_port,
                    args: vec![format!("-config={}", config.display())],
                    env: Vec::new(),
                    log: node_dir.join("bao.log"),
                    child: None,
                }
            })
            .collect();
        let mut bao = Self {
            nodes,
            http: https_client(&ca_pem),
            ca_pem,
            secrets: RootSecrets {
                root_token: String::new(),
                unseal_key: None,
            },
            dir,
        };
        for i in 0..n {
            bao.nodes[i].spawn();
        }
        for i in 0..n {
            bao.wait_listening(i).await?;
        }
        bao.init_first().await;
        let leader_api = bao.nodes[0].address();
        let ca = std::fs::read_to_string(&bao.ca_pem).expect("read CA");
        for i in 1..n {
            let join = call(
                &bao.http,
                &bao.nodes[i].address(),
                Method::POST,
                "/v1/sys/storage/raft/join",
                None,
                Some(&json!({ "leader_api_addr": leader_api, "leader_ca_cert": ca })),
            )
            .await
            .expect("raft join");
            assert!(
                join.status == StatusCode::OK && join.body["joined"] == json!(true),
                "node {i} did not join: {} {}",
                join.status,
                join.errors()
            );
            bao.unseal(i).await;
        }
        bao.wait_for_voters(n).await;
        bao.root_ok(
            Method::POST,
            &format!("/v1/sys/mounts/{KV_MOUNT}"),
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        )
        .await;
        bao.wait_kv_ready().await;
        Ok(bao)
    }

    /// Initialises node 0 (1 share, threshold 1), unseals it, waits for it to lead, and makes
    /// autopilot promote new nodes to voters after 1 s instead of 10 s.
    async fn init_first(&mut self) {
        let init = call(
            &self.http,
            &self.nodes[0].address(),
            Method::PUT,
            "/v1/sys/init",
            None,
            Some(&json!({ "secret_shares": 1, "secret_threshold": 1 })),
        )
        .await
        .expect("sys/init");
        assert_eq!(init.status, StatusCode::OK, "sys/init: {}", init.errors());
        self.secrets = RootSecrets {
            root_token: init.body["root_token"]
                .as_str()
                .expect("root_token")
                .to_owned(),
            unseal_key: Some(
                init.body["keys_base64"][0]
                    .as_str()
                    .expect("keys_base64")
                    .to_owned(),
            ),
        };
        self.unseal(0).await;
        self.wait_health(0, |s| s == StatusCode::OK).await;
        self.root_ok(
            Method::POST,
            "/v1/sys/storage/raft/autopilot/configuration",
            Some(json!({ "server_stabilization_time": "1s" })),
        )
        .await;
    }

    /// Waits until autopilot reports `n` voters and a leader.
    async fn wait_for_voters(&self, n: usize) {
        self.wait_for(&format!("{n} Raft voters"), START_TIMEOUT, async || {
            let Some(leader) = self.leader().await else {
                return false;
            };
            let state = self
                .root(
                    leader,
                    Method::GET,
                    "/v1/sys/storage/raft/autopilot/state",
                    None,
                )
                .await;
            state.body["data"]["voters"]
                .as_array()
                .is_some_and(|v| v.len() == n)
        })
        .await;
    }

    /// Waits until every node serves the new KV v2 mount (standbys refuse it while the
    /// active node upgrades it).
    async fn wait_kv_ready(&self) {
        let path = format!("/v1/{KV_MOUNT}/metadata/harness-probe");
        for i in 0..self.nodes.len() {
            self.wait_for(&format!("KV v2 on node {i}"), START_TIMEOUT, async || {
                self.root(i, Method::GET, &path, None).await.status == StatusCode::NOT_FOUND
            })
            .await;
        }
    }
}

/// A fresh CA (`ca.pem`) and one certificate for every node (`node.pem`, `node-key.pem`)
/// valid for 127.0.0.1 and localhost, for the API and for Raft join.
fn write_cluster_tls(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "therappai-broker tests OpenBao CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("self-sign the CA");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("node cert params");
    params
        .distinguished_name
        .push(DnType::CommonName, "openbao-node");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("node key");
    let cert = params.signed_by(&key, &ca).expect("sign the node cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(dir.join("node.pem"), cert.pem()).expect("write node cert");
    write_private(&dir.join("node-key.pem"), &key.serialize_pem());
}

/// One node's server config. `performance_multiplier = 1` makes Raft elect a new leader in
/// about a second after a kill instead of about 9 s.
fn node_config(
    dir: &Path,
    node_dir: &Path,
    i: usize,
    (api_port, cluster_port): (u16, u16),
    options: ClusterOptions,
) -> String {
    let d = dir.display();
    let nd = node_dir.display();
    let disable_standby_reads = options.disable_standby_reads;
    format!(
        r#"disable_mlock = true
disable_standby_reads = {disable_standby_reads}
api_addr = "https://127.0.0.1:{api_port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
storage "raft" {{
  path = "{nd}/raft"
  node_id = "node{i}"
  performance_multiplier = 1
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval = "500ms"
}}
listener "tcp" {{
  address = "127.0.0.1:{api_port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{d}/node.pem"
  tls_key_file = "{d}/node-key.pem"
}}
"#
    )
}
