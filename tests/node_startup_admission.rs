//! Start-up admission on real nodes over QUIC on 127.0.0.1 (issue 16): a node that starts before the peers it
//! expects admits only its share of a limit; once it holds every expected member's state the limit applies in
//! full, and the cluster as a whole admits exactly the limit. Every address is on loopback.

use std::net::Ipv4Addr;
use std::time::Duration;

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::counter::{Algorithm, Window};
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};

mod support;
use support::{free_port, wait_for};

const SECRET: &str = "pvpvAyeGnDyLxqgsGE1J01X1XyexOyuMWseCUxCT+oE=";
const LIMIT: u64 = 90;

async fn start(node: &str, port: u16, peers: &[u16]) -> ClusterHandle {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}", "peers": [{}],
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#,
        peers.join(",")
    );
    let config = load_from_str(&text).expect("valid test config").config;
    let options = NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        ..NodeOptions::default()
    };
    Cluster::start_with(config, options)
        .await
        .expect("node starts")
}

/// Tries `attempts` acquires of 1 on `key` (fixed 1 h window, limit [`LIMIT`]); how many were allowed.
fn admitted(node: &ClusterHandle, key: &str, attempts: u64) -> u64 {
    let handle = node
        .store()
        .handle(key, Window::parse("1h").expect("window"))
        .expect("handle");
    (0..attempts)
        .filter(|_| handle.acquire(Algorithm::FixedWindow, LIMIT, 1).allowed)
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_in_start_up_admits_its_share_and_the_full_limit_once_it_heard_everyone() {
    let ports = [free_port(), free_port(), free_port()];
    let key = "startup/limit";
    let a_started = std::time::Instant::now();
    let a = start("node-a", ports[0], &ports[1..]).await;
    // node-a expects two peers that are not running: a third of the limit.
    assert_eq!(a.store().startup_share(), (1, 3));
    assert_eq!(
        admitted(&a, key, 200),
        LIMIT / 3,
        "node-a alone in start-up"
    );

    let b = start("node-b", ports[1], &[ports[0], ports[2]]).await;
    let c = start("node-c", ports[2], &[ports[0], ports[1]]).await;
    let cluster = [&a, &b, &c];
    wait_for(
        Duration::from_secs(20),
        "start-up admission ends on every node",
        || cluster.iter().all(|n| n.store().startup_share().1 == 1),
    )
    .await;
    // Ended because every node heard the others, not by the 10 s bound (MAX_STARTUP_ADMISSION_MS).
    let ended_after = a_started.elapsed();
    assert!(
        ended_after < Duration::from_secs(9),
        "start-up admission ended only after {ended_after:?}: its time bound, not the peers' state"
    );
    let epoch = Window::parse("1h")
        .expect("window")
        .epoch_at(a.clock().now_unix_ms());
    let global = |n: &ClusterHandle| {
        n.store()
            .handle(key, Window::parse("1h").expect("window"))
            .expect("handle")
            .global_at(epoch)
    };
    wait_for(
        Duration::from_secs(20),
        "every node sees node-a's 30",
        || cluster.iter().all(|n| global(n) == LIMIT / 3),
    )
    .await;
    // The rest of the limit, and not one more, once the limit applies in full.
    assert_eq!(admitted(&b, key, 200), LIMIT - LIMIT / 3);
    wait_for(
        Duration::from_secs(20),
        "every node sees the limit reached",
        || cluster.iter().all(|n| global(n) == LIMIT),
    )
    .await;
    assert_eq!(admitted(&a, key, 10) + admitted(&c, key, 10), 0);
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
