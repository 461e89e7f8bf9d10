//! The OpenBao harness works, and OpenBao answers the way the `vault` store expects: AppRole
//! login, token renewal, KV v2 check-and-set, reads, metadata, policy refusals, sealing, and
//! a Raft cluster that survives the loss of its leader.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use therappai_broker_e2e::openbao::{Access, ClusterOptions, KV_MOUNT, OpenBao, RoleSpec, call};
use therappai_broker_e2e::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_approle_and_kv_v2_check_and_set() {
    let started = Instant::now();
    let mut bao = OpenBao::dev().await;
    eprintln!("OpenBao dev server ready in {:?}", started.elapsed());
    let prefix = format!("therappai-broker/{}", unique_name("t"));
    let role = bao
        .approle(&RoleSpec {
            token_ttl: Duration::from_secs(60),
            ..RoleSpec::new(&prefix)
        })
        .await;
    for file in [&role.role_id_file, &role.secret_id_file] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} must be 0600", file.display());
    }

    let http = bao.client();
    let addr = bao.address();
    let token_file = bao.token_file(&role).await;
    let from_file = std::fs::read_to_string(&token_file).expect("read the token file");
    let (token, ttl) = bao.login(&role).await;
    assert_ne!(from_file, token, "each login is a new token");
    assert_eq!(ttl, Duration::from_secs(60), "the role's token_ttl");
    let token = Some(token.as_str());

    let renewed = call(
        &http,
        &addr,
        Method::POST,
        "/v1/auth/token/renew-self",
        token,
        Some(&json!({"increment": "30s"})),
    )
    .await
    .expect("renew-self");
    assert_eq!(renewed.status, StatusCode::OK);
    assert_eq!(renewed.body["auth"]["lease_duration"], json!(30));
    let me = call(
        &http,
        &addr,
        Method::GET,
        "/v1/auth/token/lookup-self",
        token,
        None,
    )
    .await
    .expect("lookup-self");
    assert!(
        me.body["data"]["ttl"].as_u64().is_some_and(|t| t <= 30),
        "{}",
        me.body
    );

    // Near its max TTL a renewal still succeeds, but grants less than asked and says so.
    let short = bao
        .approle(&RoleSpec {
            token_ttl: Duration::from_secs(2),
            token_max_ttl: Duration::from_secs(3),
            ..RoleSpec::new(&prefix)
        })
        .await;
    let (short_token, _) = bao.login(&short).await;
    let capped = call(
        &http,
        &addr,
        Method::POST,
        "/v1/auth/token/renew-self",
        Some(&short_token),
        Some(&json!({"increment": "60s"})),
    )
    .await
    .expect("renew-self");
    assert_eq!(capped.status, StatusCode::OK, "{}", capped.errors());
    assert!(
        capped.body["auth"]["lease_duration"]
            .as_u64()
            .is_some_and(|t| t <= 3),
        "{}",
        capped.body
    );
    assert!(
        capped.body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("max_ttl")),
        "{}",
        capped.body
    );

    let data = format!("/v1/{KV_MOUNT}/data/{prefix}/account-a");
    let metadata = format!("/v1/{KV_MOUNT}/metadata/{prefix}/account-a");
    let missing = call(&http, &addr, Method::GET, &data, token, None)
        .await
        .expect("read");
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let write = |cas: u64, value: &str| {
        let body = json!({"options": {"cas": cas}, "data": {"refresh": value}});
        let (http, addr, data) = (http.clone(), addr.clone(), data.clone());
        async move {
            call(&http, &addr, Method::POST, &data, token, Some(&body))
                .await
                .expect("write")
        }
    };
    let first = write(0, "r1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.errors());
    assert_eq!(first.body["data"]["version"], json!(1));
    let lost_race = write(0, "r-other").await;
    assert_eq!(lost_race.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        lost_race.errors(),
        "check-and-set parameter did not match the current version"
    );
    let second = write(1, "r2").await;
    assert_eq!(
        second.body["data"]["version"],
        json!(2),
        "{}",
        second.errors()
    );

    let read = call(&http, &addr, Method::GET, &data, token, None)
        .await
        .expect("read");
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        bao.read_kv(&format!("{prefix}/account-a")).await.body["data"],
        read.body["data"],
        "the root view"
    );
    assert_eq!(read.body["data"]["data"], json!({"refresh": "r2"}));
    assert_eq!(read.body["data"]["metadata"]["version"], json!(2));
    let meta = call(&http, &addr, Method::GET, &metadata, token, None)
        .await
        .expect("metadata");
    assert_eq!(meta.body["data"]["current_version"], json!(2));
    assert!(
        meta.body["data"]["updated_time"].is_string(),
        "{}",
        meta.body
    );
    let list = call(
        &http,
        &addr,
        Method::from_bytes(b"LIST").expect("LIST"),
        &format!("/v1/{KV_MOUNT}/metadata/{prefix}/"),
        token,
        None,
    )
    .await
    .expect("list");
    assert_eq!(
        list.body["data"]["keys"],
        json!(["account-a"]),
        "{}",
        list.errors()
    );

    // Soft delete: 404, yet the body still says which version was deleted.
    let deleted = call(&http, &addr, Method::DELETE, &data, token, None)
        .await
        .expect("delete");
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = call(&http, &addr, Method::GET, &data, token, None)
        .await
        .expect("read");
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["data"]["metadata"]["version"], json!(2));
    assert!(
        gone.body["data"]["metadata"]["deletion_time"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    let outside = format!("/v1/{KV_MOUNT}/data/therappai-broker/elsewhere/x");
    let denied = call(&http, &addr, Method::GET, &outside, token, None)
        .await
        .expect("read");
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied.errors().contains("permission denied"),
        "{}",
        denied.errors()
    );

    // A read-only role: capabilities-self says what is missing before anything fails.
    let read_only = bao
        .approle(&RoleSpec {
            access: Access::ReadOnly,
            ..RoleSpec::new(&prefix)
        })
        .await;
    let (ro_token, _) = bao.login(&read_only).await;
    let paths = json!({"paths": [format!("{KV_MOUNT}/data/{prefix}/account-a")]});
    let caps = call(
        &http,
        &addr,
        Method::POST,
        "/v1/sys/capabilities-self",
        Some(&ro_token),
        Some(&paths),
    )
    .await
    .expect("capabilities-self");
    assert_eq!(
        caps.body["data"][format!("{KV_MOUNT}/data/{prefix}/account-a")],
        json!(["list", "read"])
    );
    let refused = call(
        &http,
        &addr,
        Method::POST,
        &data,
        Some(&ro_token),
        Some(&json!({"data": {}})),
    )
    .await
    .expect("write");
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let denied_role = bao
        .approle(&RoleSpec {
            access: Access::Denied,
            ..RoleSpec::new(&prefix)
        })
        .await;
    let (denied_token, _) = bao.login(&denied_role).await;
    let caps = call(
        &http,
        &addr,
        Method::POST,
        "/v1/sys/capabilities-self",
        Some(&denied_token),
        Some(&paths),
    )
    .await
    .expect("capabilities-self");
    assert_eq!(
        caps.body["data"][format!("{KV_MOUNT}/data/{prefix}/account-a")],
        json!(["deny"])
    );

    bao.seal_all().await;
    let sealed = call(&http, &addr, Method::GET, &metadata, token, None)
        .await
        .expect("read");
    assert_eq!(sealed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sealed.errors(), "Vault is sealed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_cluster_keeps_a_written_entry_when_its_leader_is_killed() {
    let started = Instant::now();
    let mut bao = OpenBao::cluster(3).await;
    eprintln!(
        "OpenBao 3-node Raft cluster ready in {:?}",
        started.elapsed()
    );
    let prefix = format!("therappai-broker/{}", unique_name("t"));
    let role = bao.approle(&RoleSpec::new(&prefix)).await;
    let (bao_token, _) = bao.login(&role).await;
    let token = Some(bao_token.as_str());
    let http = bao.client();
    let data = format!("/v1/{KV_MOUNT}/data/{prefix}/account-a");

    let old = bao.leader().await.expect("a leader");
    let written = call(
        &http,
        &bao.addresses()[old],
        Method::POST,
        &data,
        token,
        Some(&json!({"options": {"cas": 0}, "data": {"refresh": "r1"}})),
    )
    .await
    .expect("write");
    assert_eq!(written.status, StatusCode::OK, "{}", written.errors());

    // Read-your-write on a standby: the index of the write plus forward-active-node makes a
    // standby that has not caught up forward the read instead of serving its stale copy.
    let index = written.headers["x-vault-index"].clone();
    let standby = (old + 1) % 3;
    let fresh = http
        .get(format!("{}{data}", bao.addresses()[standby]))
        .header("X-Vault-Token", &bao_token)
        .header("X-Vault-Index", index)
        .header("X-Vault-Inconsistent", "forward-active-node")
        .send()
        .await
        .expect("read on a standby");
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh: serde_json::Value = fresh.json().await.expect("JSON");
    assert_eq!(fresh["data"]["data"], json!({"refresh": "r1"}));

    bao.kill(old);
    let killed = Instant::now();
    let new = bao.wait_for_new_leader(old, Duration::from_secs(30)).await;
    eprintln!(
        "new OpenBao leader (node {new}) after {:?}",
        killed.elapsed()
    );

    let read = call(
        &http,
        &bao.addresses()[new],
        Method::GET,
        &data,
        token,
        None,
    )
    .await
    .expect("read");
    assert_eq!(read.status, StatusCode::OK, "{}", read.errors());
    assert_eq!(read.body["data"]["data"], json!({"refresh": "r1"}));

    // The killed node comes back as a standby of the new leader.
    bao.restart(old).await;
    assert_eq!(bao.leader().await, Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_without_standby_reads_answer_with_the_leaders_data() {
    let mut bao = OpenBao::cluster_with(
        3,
        ClusterOptions {
            disable_standby_reads: true,
        },
    )
    .await;
    let prefix = format!("therappai-broker/{}", unique_name("t"));
    let role = bao.approle(&RoleSpec::new(&prefix)).await;
    let (token, _) = bao.login(&role).await;
    let token = Some(token.as_str());
    let http = bao.client();
    let data = format!("/v1/{KV_MOUNT}/data/{prefix}/account-a");
    let leader = bao.leader().await.expect("a leader");
    let standby = bao.addresses()[(leader + 1) % 3].clone();
    // With standby reads on, each of these reads (and the CAS check of each write) sees the
    // previous version; with them off, the standby forwards everything.
    for version in 0..5u64 {
        let body = json!({"options": {"cas": version}, "data": {"n": version}});
        let write = call(&http, &standby, Method::POST, &data, token, Some(&body))
            .await
            .expect("write through a standby");
        assert_eq!(write.status, StatusCode::OK, "{}", write.errors());
        let read = call(&http, &standby, Method::GET, &data, token, None)
            .await
            .expect("read on a standby");
        assert_eq!(read.body["data"]["metadata"]["version"], json!(version + 1));
    }

    bao.seal_all().await;
    for address in bao.addresses() {
        let sealed = call(&http, &address, Method::GET, &data, token, None)
            .await
            .expect("read");
        assert_eq!(sealed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(sealed.errors(), "Vault is sealed");
    }
}
