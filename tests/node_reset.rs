//! Admin reset of a poisoned key, cluster-wide (issue 14), on real nodes over real QUIC on 127.0.0.1: one
//! node's key is poisoned with n = u64::MAX in window 1Y, the key is reset through another node's
//! `POST /v1/counters/{key}/reset`, and every node — a node that was down during the reset included —
//! converges to the counts made after it. Every wait is a bounded poll.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::counter::{MAX_CELL_VALUE, Window};
use bifrost_cluster::http::HttpServer;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::TransportOptions;

mod support;
use support::http::{parse_prometheus, post, request_text};
use support::{free_port, wait_for};

const SECRET: &str = "3ao9Y+FxciNlnWobTD/DQU+lOK+eYg8XmIrIDN4YB1Q=";
const KEY: &str = "tenant-42/gpt-4o";

fn config(node: &str, port: u16, peers: &[u16]) -> bifrost_cluster::config::ClusterConfig {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}", "peers": [{}],
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "replication": {{ "anti_entropy_interval": "1s" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#,
        peers.join(",")
    );
    load_from_str(&text).expect("valid test config").config
}

fn options() -> NodeOptions {
    NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides: Default::default(),
    }
}

/// Starts a node, retrying the bind briefly: a restarted node's previous endpoint in this process releases its
/// socket asynchronously.
async fn start(node: &str, port: u16, peers: &[u16]) -> ClusterHandle {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Cluster::start_with(config(node, port, peers), options()).await {
            Ok(handle) => return handle,
            Err(error) if Instant::now() < deadline => {
                eprintln!("{node} not started yet: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{node} failed to start: {error}"),
        }
    }
}

fn year() -> Window {
    Window::parse("1Y").expect("window")
}

fn global_at(node: &ClusterHandle, epoch: u64) -> u64 {
    node.store()
        .counts_at(KEY, year(), epoch)
        .map_or(0, |(local, remote)| local.saturating_add(remote))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_poisoned_with_u64_max_is_reset_through_another_node_and_every_node_converges() {
    let ports = [free_port(), free_port(), free_port()];
    let peers_of =
        |port: u16| -> Vec<u16> { ports.iter().copied().filter(|&p| p != port).collect() };
    let a = start("node-a", ports[0], &peers_of(ports[0])).await;
    let b = start("node-b", ports[1], &peers_of(ports[1])).await;
    let c = start("node-c", ports[2], &peers_of(ports[2])).await;
    wait_for(Duration::from_secs(15), "a full mesh", || {
        [&a, &b, &c].iter().all(|n| n.peers().len() == 2)
    })
    .await;
    let epoch = year().epoch_at(a.clock().now_unix_ms());

    // Some honest traffic, seen everywhere (so every node holds b's and c's origins), then the attack.
    b.store().add(KEY, year(), 10).expect("add");
    c.store().add(KEY, year(), 20).expect("add");
    wait_for(
        Duration::from_secs(10),
        "the honest counts everywhere",
        || [&a, &b, &c].iter().all(|n| global_at(n, epoch) == 30),
    )
    .await;
    a.store().add(KEY, year(), u64::MAX).expect("add");
    wait_for(Duration::from_secs(10), "the poison everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|n| global_at(n, epoch) >= MAX_CELL_VALUE)
    })
    .await;

    // node-c goes down before the reset; it comes back later as a new process.
    let c_port = ports[2];
    c.shutdown().await;
    drop(c);
    wait_for(Duration::from_secs(10), "c gone from a and b", || {
        a.peers().len() == 1 && b.peers().len() == 1
    })
    .await;

    // The reset, through node-b's HTTP API.
    let http = HttpServer::start(b.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("http");
    let addr = http.local_addr();
    let (code, answer) = tokio::task::spawn_blocking(move || {
        post(
            addr,
            &format!("/v1/counters/{KEY}/reset"),
            r#"{"window":"1Y"}"#,
        )
    })
    .await
    .expect("join")
    .expect("http call");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["outcome"], "reset", "{answer}");
    assert_eq!(answer["global"], 0, "{answer}");
    assert_eq!(answer["epoch"], epoch, "{answer}");
    assert_eq!(answer["origins"], 3, "a, b and c's previous life: {answer}");
    assert!(
        answer["before"]
            .as_u64()
            .is_some_and(|v| v >= MAX_CELL_VALUE),
        "{answer}"
    );
    wait_for(Duration::from_secs(10), "a to apply the reset", || {
        global_at(&a, epoch) == 0
    })
    .await;
    // The reset and the counter plane's bounds are in /metrics.
    let (code, text) =
        tokio::task::spawn_blocking(move || request_text(addr, "GET", "/metrics", None))
            .await
            .expect("join")
            .expect("metrics");
    assert_eq!(code, 200);
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("bifrost_counter_resets_total"), 1.0);
    assert_eq!(value("bifrost_counter_floors_raised_total"), 3.0);
    assert_eq!(value("bifrost_replication_encode_errors_total"), 0.0);
    assert_eq!(value("bifrost_replication_forged_entries_total"), 0.0);
    assert_eq!(
        value("bifrost_counter_refused_keys_by_kind_total{kind=\"remote\"}"),
        0.0
    );

    // node-c restarts (new replica id): it gets the values and the floors with its state transfer and
    // anti-entropy.
    let c = start("node-c", c_port, &peers_of(c_port)).await;
    wait_for(Duration::from_secs(15), "c to relink", || {
        c.peers().len() == 2
    })
    .await;

    // Counted after the reset: counts everywhere, on the poisoned node too.
    a.store().add(KEY, year(), 3).expect("add");
    b.store().add(KEY, year(), 4).expect("add");
    c.store().add(KEY, year(), 5).expect("add");
    let took = wait_for(Duration::from_secs(20), "12 everywhere", || {
        [&a, &b, &c].iter().all(|n| global_at(n, epoch) == 12)
    })
    .await;
    eprintln!("every node at the post-reset count {took:?} after the last add");
    // The poisoned node counts again (its saturated value was moved into its floor offset).
    assert_eq!(
        a.store().counts_at(KEY, year(), epoch).map(|c| c.0),
        Some(3)
    );
    // The status the stats come from is refreshed every 50 ms.
    wait_for(Duration::from_secs(2), "the floors counted", || {
        b.replication_stats().floors_sent > 0 && c.replication_stats().floors_merged > 0
    })
    .await;
    eprintln!("c: {:?}", c.replication_stats());

    http.shutdown().await;
    for node in [&a, &b, &c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_an_unknown_key_is_a_json_404_and_a_bad_body_a_400() {
    let port = free_port();
    let node = start("solo", port, &[free_port()]).await;
    let http = HttpServer::start(node.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("http");
    let addr = http.local_addr();
    let (missing, bad) = tokio::task::spawn_blocking(move || {
        (
            post(addr, "/v1/counters/nobody/reset", r#"{"window":"1Y"}"#),
            post(addr, "/v1/counters/nobody/reset", r#"{"window":"forever"}"#),
        )
    })
    .await
    .expect("join");
    let (code, body) = missing.expect("http call");
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
    let (code, body) = bad.expect("http call");
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("window")),
        "{body}"
    );
    http.shutdown().await;
    node.shutdown().await;
}
