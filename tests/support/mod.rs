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
