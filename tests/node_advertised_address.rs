//! Static peers listed at another address than the one each node advertises: three `bifrost-cluster run`
//! children in one network namespace whose only non-loopback interface has a private address, so each node
//! advertises that address (the default), while every peer list names `127.0.0.1:port`. They must let each
//! other in and count exactly. (An earlier build linked them but never admitted them: the join request named
//! its target by the dialed address, which the target's SWIM did not take as its own.)
//!
//! Needs root (network namespaces): prints SKIPPED otherwise, or fails when `REQUIRE_NETNS=1`. Every packet
//! stays in the test's own namespace; every wait is a bounded poll.

use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::netns::{self, Lab, NsNode, wait_until};

const SECRET: &str = "3QxfbcKX8zFgcTnwA0zN6QyC2mJ8v1xLr9a4eHc0Wq8=";
const NODES: usize = 3;

fn config(i: usize) -> Value {
    let peers: Vec<String> = (0..NODES)
        .filter(|&j| j != i)
        .map(|j| format!("127.0.0.1:{}", 10_101 + j))
        .collect();
    json!({
        "enabled": true,
        "node_id": format!("node-{i}"),
        "peers": peers,
        "gossip": { "port": 10_101 + i },
        "http": { "listen": format!("127.0.0.1:{}", 8_080 + i) },
        "security": { "cluster_secret": SECRET }
    })
}

#[test]
fn nodes_reached_at_loopback_but_advertising_a_lan_address_join_and_count_exactly() {
    if !netns::available("nodes_reached_at_loopback_but_advertising_a_lan_address") {
        return;
    }
    let lab = Lab::new(&["10.81.0.1/24"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<NsNode> = (0..NODES)
        .map(|i| {
            NsNode::start(
                &lab,
                0,
                dir.path(),
                &format!("node-{i}"),
                8_080 + i as u16,
                &config(i),
                "info",
            )
        })
        .collect();
    wait_until(Duration::from_secs(60), "every node healthy", || {
        nodes.iter().all(|node| {
            node.status(&lab).is_some_and(|s| {
                s["members"] == NODES
                    && s["healthy_members"] == NODES
                    && s["cluster_health"] == "HEALTHY"
            })
        })
    });
    for node in &nodes {
        assert!(
            node.log_text().contains("advertised=10.81.0.1:"),
            "{} did not advertise the namespace's LAN address:\n{}",
            node.name,
            node.log_text()
        );
    }
    let mut epoch = 0;
    for (i, node) in nodes.iter().enumerate() {
        epoch = node.add(&lab, "budget", i as u64 + 1);
    }
    let exact = (NODES * (NODES + 1) / 2) as u64;
    wait_until(
        Duration::from_secs(30),
        "exact totals on every node",
        || {
            nodes
                .iter()
                .all(|node| node.global(&lab, "budget", epoch) == Some(exact))
        },
    );
}
