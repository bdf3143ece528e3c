//! Helpers shared by the tests (and `benches/replication.rs`) that start real nodes on loopback.
#![allow(dead_code)] // each test crate uses a different subset

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// A port free on 127.0.0.1 for both UDP and TCP (the gossip port and its TCP health listener).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback");
}

pub mod dns_server;
pub mod http;

/// Polls `done` every 10 ms until it holds, for at most `limit` (then panics naming `what`); returns the time it
/// took. Every wait of the tests is bounded this way.
pub async fn wait_for(
    limit: std::time::Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    start.elapsed()
}
pub mod netns;
pub mod process;

/// Every node increments every key `per_thread` times, one thread per node and key, in the current window of
/// one hour; then waits (bounded by `limit`) until every node holds the exact total of every key. Returns the
/// window's epoch and how long convergence took after the last increment. Fails if an hour boundary passes.
pub async fn increment_everywhere_and_converge(
    nodes: &[bifrost_cluster::node::ClusterHandle],
    keys: &[&'static str],
    per_thread: u64,
    limit: std::time::Duration,
) -> (u64, std::time::Duration) {
    let hour = bifrost_cluster::counter::Window::parse("1h").expect("window");
    let epoch = hour.epoch_at(nodes[0].clock().now_unix_ms());
    let threads: Vec<_> = nodes
        .iter()
        .flat_map(|node| {
            keys.iter().map(move |key| {
                let handle = node.store().handle(key, hour).expect("handle");
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        assert_eq!(
                            handle.epoch_now(),
                            epoch,
                            "an hour boundary passed during the test"
                        );
                        handle.add(1);
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("incrementing thread");
    }
    let total = per_thread * nodes.len() as u64;
    let global = |n: &bifrost_cluster::node::ClusterHandle, k: &str| {
        n.store().handle(k, hour).expect("handle").global_at(epoch)
    };
    let took = wait_for(limit, "every node to hold the exact totals", || {
        nodes
            .iter()
            .all(|n| keys.iter().all(|k| global(n, k) == total))
    })
    .await;
    for node in nodes {
        for key in keys {
            assert_eq!(global(node, key), total, "{} {key}", node.node_id());
        }
    }
    (epoch, took)
}
pub mod sim;
