//! Shared-state bounds on real nodes over QUIC on 127.0.0.1 (issue 14):
//! - local config writes past `limits.config_max_bytes` / `limits.config_max_entries` answer 507 with a JSON
//!   error naming the limit, deletes free room at once (however often), and `/metrics` counts the refusals;
//! - a trusted peer (it holds the cluster secret) that publishes a health record for another node is refused,
//!   counted, and the record never shows; its own record is taken.
//!
//! Every wait is a bounded poll; every address is on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bifrost_cluster::config::{ClusterSecret, NodeId, load_from_str};
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::{TlsSetup, Transport, TransportOptions};
use bifrost_cluster::wire::{self, Hello, NodeHealth, capabilities};

mod support;
use support::http::{parse_prometheus, request, request_text};
use support::{free_port, wait_for};

const SECRET: &str = "10X2XaMjUXqUr5hJJz0IOiL2Rr1uIPs6bBdp7hkbcX8=";

async fn start(node: &str, port: u16, limits: &str) -> ClusterHandle {
    // Cluster mode needs a peer: one that never answers (a free loopback port).
    let config = load_from_str(&format!(
        r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{node}",
             "peers": ["127.0.0.1:{}"], "gossip": {{ "port": {port} }},
             "security": {{ "cluster_secret": "{SECRET}" }}, "limits": {limits} }} }}"#,
        free_port()
    ))
    .expect("config")
    .config;
    Cluster::start_with(
        config,
        NodeOptions {
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            env_secret: None,
            transport: TransportOptions::default(),
            membership: None,
            discovery_overrides: Default::default(),
        },
    )
    .await
    .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_writes_past_the_caps_answer_507_naming_the_limit_and_deletes_free_room() {
    let node = start(
        "node-a",
        free_port(),
        r#"{ "config_max_bytes": 131072, "config_max_entries": 3 }"#,
    )
    .await;
    let http = bifrost_cluster::http::HttpServer::start(
        node.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("http");
    let addr = http.local_addr();
    let big = "x".repeat(60 * 1024);
    let results = tokio::task::spawn_blocking(move || {
        let put = |key: &str, body: &str| {
            request(addr, "PUT", &format!("/v1/config/{key}"), Some(body)).expect("put")
        };
        let delete = |key: &str| {
            request_text(addr, "DELETE", &format!("/v1/config/{key}"), None)
                .expect("delete")
                .0
        };
        // Bytes: two 60 KiB values fit in 128 KiB, a third does not. Entries: big/2, big/3 and one small entry
        // make three; a fourth key does not fit.
        let mut out = vec![
            ("big/1", put("big/1", &big)),
            ("big/2", put("big/2", &big)),
            ("big/3 (bytes cap)", put("big/3", &big)),
            ("delete big/1", (delete("big/1"), serde_json::Value::Null)),
            ("big/3 after the delete", put("big/3", &big)),
            ("small/1", put("small/1", "s")),
            ("small/2 (entries cap)", put("small/2", "s")),
        ];
        // At the cap, delete one key and put another, again and again: the cap never wedges (tombstones do
        // not count).
        let mut previous = "small/1".to_string();
        for round in 0..30 {
            let status = delete(&previous);
            if status != 200 {
                out.push(("churn delete", (status, serde_json::Value::Null)));
            }
            let key = format!("churn/{round}");
            let (status, body) = put(&key, "c");
            if status != 200 {
                out.push(("churn put", (status, body)));
            }
            previous = key;
        }
        out.push(("small/2 after the churn", put("small/2", "s")));
        let metrics = request_text(addr, "GET", "/metrics", None).expect("metrics");
        (out, metrics)
    })
    .await
    .expect("join");
    let (answers, metrics) = results;
    let status = |name: &str| {
        answers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, (s, body))| (*s, body.clone()))
            .unwrap_or_else(|| panic!("no answer {name}: {answers:?}"))
    };
    assert_eq!(status("big/1").0, 200, "{answers:?}");
    assert_eq!(status("big/2").0, 200, "{answers:?}");
    let (code, body) = status("big/3 (bytes cap)");
    assert_eq!(code, 507, "{body}");
    let error = body["error"].as_str().expect("a JSON error");
    assert!(error.contains("limits.config_max_bytes"), "{error}");
    assert_eq!(status("delete big/1").0, 200);
    assert_eq!(status("big/3 after the delete").0, 200, "{answers:?}");
    assert_eq!(status("small/1").0, 200, "{answers:?}");
    let (code, body) = status("small/2 (entries cap)");
    assert_eq!(code, 507, "{body}");
    let error = body["error"].as_str().expect("a JSON error");
    assert!(error.contains("limits.config_max_entries"), "{error}");
    assert!(
        !answers.iter().any(|(n, _)| n.starts_with("churn")),
        "a delete always frees room: {answers:?}"
    );
    // Still full (big/2, big/3, churn/29): the churn left no residue either way.
    assert_eq!(status("small/2 after the churn").0, 507);
    assert_eq!(node.config_entries().len(), 3);

    assert_eq!(metrics.0, 200);
    let samples = parse_prometheus(&metrics.1).expect("metrics parse");
    let local_full = samples
        .iter()
        .find(|(name, _)| name == "bifrost_config_refused_total{reason=\"local_full\"}")
        .map(|(_, v)| *v);
    assert!(
        local_full.is_some_and(|v| v >= 2.0),
        "refusals counted: {local_full:?}"
    );
    http.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_cannot_publish_a_health_record_for_another_node() {
    let port = free_port();
    let node = start("node-a", port, "{}").await;
    // A peer holding the secret, driven by hand: a real hello, then records.
    let secret = ClusterSecret::new(SECRET).expect("secret");
    let tls = TlsSetup::from_secret(&secret, &NodeId::new("rogue").expect("id")).expect("tls");
    let rogue = Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        tls,
        TransportOptions::default(),
    )
    .expect("bind");
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let link = rogue.connect(target).await.expect("connect");
    let hello = wire::encode(&Hello {
        node_id: "rogue".into(),
        replica_id: 0xbad,
        protocol_version: u32::from(wire::PROTOCOL_MAJOR) << 16,
        capabilities: capabilities::REPLICATION_V1,
        gossip_addr: String::new(),
        link_nonce: 0,
    })
    .expect("encode");
    let (mut send, mut recv) = link.open_stream().await.expect("stream");
    send.write_all(&hello).await.expect("write");
    send.finish().expect("finish");
    let answer = recv.read_to_end(4096).await.expect("hello answer");
    assert!(matches!(wire::decode(&answer), Ok(wire::Frame::Hello(_))));
    wait_for(Duration::from_secs(5), "the rogue to be linked", || {
        node.peers().len() == 1
    })
    .await;

    let record = |owner: u64, node_id: &str, version: u64| {
        wire::encode(&NodeHealth {
            owner,
            node_id: node_id.into(),
            version,
            published_ms: 0,
            cpu_millicores: 64_000,
            memory_bytes: 1,
            memory_total_bytes: 1,
            open_connections: 0,
            request_rate_milli: 0,
            links: Vec::new(),
        })
        .expect("encode")
    };
    // Forged: another node's id and replica; then the rogue's own record.
    for frame in [
        record(0x1234, "node-b", 1),
        record(0xbad, "node-b", 2),
        record(0xbad, "rogue", 3),
    ] {
        let (mut send, _) = link.open_stream().await.expect("stream");
        send.write_all(&frame).await.expect("write");
        send.finish().expect("finish");
    }
    wait_for(Duration::from_secs(5), "the rogue's own record", || {
        node.nodes().iter().any(|v| v.record.node_id == "rogue")
    })
    .await;
    wait_for(Duration::from_secs(5), "two refusals counted", || {
        node.status().state.records_refused == 2
    })
    .await;
    assert!(
        !node.nodes().iter().any(|v| v.record.node_id == "node-b"),
        "{:?}",
        node.nodes()
    );
    link.close("done");
    node.shutdown().await;
}
