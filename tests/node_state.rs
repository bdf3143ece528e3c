//! Shared state on real QUIC nodes on 127.0.0.1: traffic recorded on three nodes gives merged percentiles
//! equal to one histogram fed every sample; a config entry put on one node reaches the others and a node
//! that joins later; a dead node's health record ages out of the view; the leader is the healthy member with
//! the lowest node id. Every wait is a bounded poll.

use std::net::Ipv4Addr;
use std::time::Duration;

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions, TRAFFIC_WINDOW};
use bifrost_cluster::state::{ConfigChange, Histogram, Outcome};
use bifrost_cluster::transport::TransportOptions;

mod support;
use support::http::request_text;
use support::{free_port, wait_for};

const SECRET: &str = "A/hgB5Gx2l1HTcPRWq3A4ips7PVdaQyk5G/CfVVyVqA=";

async fn start(node: &str, port: u16, peers: &[u16]) -> ClusterHandle {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = load_from_str(&format!(
        r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{node}", "peers": [{}],
             "gossip": {{ "port": {port} }}, "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#,
        peers.join(",")
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

async fn three() -> (Vec<u16>, Vec<ClusterHandle>) {
    let ports = vec![free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, name) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        let others: Vec<u16> = ports.iter().copied().filter(|&p| p != ports[i]).collect();
        nodes.push(start(name, ports[i], &others).await);
    }
    wait_for(
        Duration::from_secs(20),
        "a healthy cluster of three",
        || {
            nodes
                .iter()
                .all(|n| n.members().is_some_and(|t| t.healthy_count() == 3))
        },
    )
    .await;
    (ports, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_percentiles_equal_one_histogram_fed_every_sample() {
    let (_, nodes) = three().await;
    // Stay inside one traffic window (one minute): start early in a minute.
    let into_minute = nodes[0].clock().now_unix_ms().get() % 60_000;
    if into_minute > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 100)).await;
    }
    let epoch = TRAFFIC_WINDOW.epoch_at(nodes[0].clock().now_unix_ms());
    let mut all = Histogram::new();
    let mut errors = 0;
    for (i, node) in nodes.iter().enumerate() {
        let handle = node
            .traffic()
            .handle("openai/gpt-4o")
            .expect("traffic handle");
        for s in 0..2_000u64 {
            // A different latency distribution per node: 1 ms .. ~4 s, long-tailed.
            let micros = 1_000 + (s * s * (i as u64 + 1) * 7) % 4_000_000;
            let latency = Duration::from_micros(micros);
            let outcome = if s % 50 == i as u64 {
                Outcome::Error
            } else {
                Outcome::Ok
            };
            errors += u64::from(outcome == Outcome::Error);
            handle.record(latency, outcome);
            all.record(latency);
        }
    }
    assert_eq!(
        TRAFFIC_WINDOW.epoch_at(nodes[0].clock().now_unix_ms()),
        epoch,
        "a minute boundary passed"
    );
    wait_for(
        Duration::from_secs(15),
        "every node to hold every sample",
        || {
            nodes.iter().all(|n| {
                let view = n.traffic().read("openai/gpt-4o", epoch);
                view.requests == 6_000 && view.latency.count() == 6_000
            })
        },
    )
    .await;
    for node in &nodes {
        let view = node.traffic().read("openai/gpt-4o", epoch);
        assert_eq!(view.errors, errors);
        assert_eq!(
            view.latency, all,
            "bucket counts equal those of one histogram"
        );
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(view.latency.quantile(q), all.quantile(q), "quantile {q}");
        }
        // Per node: three origins of 2 000 each.
        assert_eq!(view.by_origin.len(), 3);
        assert!(view.by_origin.iter().all(|o| o.requests == 2_000));
        assert_eq!(node.leader().as_deref(), Some("node-a"));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_entries_reach_every_node_and_a_late_joiner_and_health_records_age_out() {
    let (ports, nodes) = three().await;
    let mut changes = nodes[1].config_subscribe().expect("cluster mode");
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Route {
        provider: String,
        weight: u32,
    }
    let route = Route {
        provider: "openai".into(),
        weight: 3,
    };
    nodes[0]
        .config_put_json("routing/default", &route)
        .await
        .expect("put");
    nodes[2]
        .config_put("prices/gpt-4o", &b"2.50"[..])
        .await
        .expect("put");
    nodes[2]
        .config_put("to-delete", &b"x"[..])
        .await
        .expect("put");
    // Delete it once node-a has seen the put: then the delete orders after it (concurrent writes are ordered
    // by timestamp, not by real time).
    wait_for(Duration::from_secs(10), "the put at node-a", || {
        nodes[0].config_get("to-delete").is_some()
    })
    .await;
    nodes[0].config_delete("to-delete").await.expect("delete");
    wait_for(Duration::from_secs(10), "the entries everywhere", || {
        nodes.iter().all(|n| {
            n.config_get_json::<Route>("routing/default")
                .is_some_and(|r| r.is_ok_and(|r| r == route))
                && n.config_get("prices/gpt-4o").as_deref() == Some(&b"2.50"[..])
                && n.config_get("to-delete").is_none()
        })
    })
    .await;
    // The subscriber saw the put of the route.
    let mut saw_route = false;
    while let Ok(change) = changes.try_recv() {
        if let ConfigChange::Put { key, .. } = change {
            saw_route |= &*key == "routing/default";
        }
    }
    assert!(saw_route);

    // Over HTTP: PUT, GET, and DELETE of a key nobody holds is a 404 (no tombstone is written).
    let http = bifrost_cluster::http::HttpServer::start(
        nodes[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("http");
    let addr = http.local_addr();
    let (put, get, missing) = tokio::task::spawn_blocking(move || {
        (
            request_text(addr, "PUT", "/v1/config/http/key", Some("from http")).expect("put"),
            request_text(addr, "GET", "/v1/config/http/key", None).expect("get"),
            request_text(addr, "DELETE", "/v1/config/never/written", None).expect("delete"),
        )
    })
    .await
    .expect("join");
    assert_eq!(put.0, 200, "{}", put.1);
    assert_eq!(get, (200, "from http".to_string()));
    assert_eq!(missing.0, 404, "{}", missing.1);
    assert!(nodes[0].config_entries().get("never/written").is_none());
    http.shutdown().await;

    // A node that joins later (through node-a only) receives the map.
    let late = start("node-d", free_port(), &[ports[0]]).await;
    wait_for(
        Duration::from_secs(15),
        "the late joiner to hold the map",
        || {
            late.config_get("prices/gpt-4o").as_deref() == Some(&b"2.50"[..])
                && late.config_get("routing/default").is_some()
                && late.config_get("http/key").is_some()
                && late.config_get("to-delete").is_none()
        },
    )
    .await;
    assert_eq!(late.config_entries().len(), 3);

    // Health records: every node sees the four, fresh.
    wait_for(
        Duration::from_secs(10),
        "four health records at node-a",
        || {
            let view = nodes[0].nodes();
            view.len() == 4 && view.iter().all(|v| v.age_ms < 6_000)
        },
    )
    .await;
    let view = nodes[0].nodes();
    let a = view
        .iter()
        .find(|v| v.record.node_id == "node-a")
        .expect("own record");
    assert!(a.record.memory_bytes > 0, "{a:?}");
    assert_eq!(a.record.open_connections, 3);
    assert_eq!(a.record.links.len(), 3);

    // node-c dies without leaving (its handle dropped: tasks aborted, endpoint closed): its record ages out.
    let mut nodes = nodes;
    let c = nodes.pop().expect("c");
    drop(c);
    wait_for(
        Duration::from_secs(15),
        "node-c's record to age out at node-a",
        || {
            let view = nodes[0].nodes();
            !view.iter().any(|v| v.record.node_id == "node-c") && view.len() == 3
        },
    )
    .await;
    for node in nodes.iter().chain([&late]) {
        node.shutdown().await;
    }
}
