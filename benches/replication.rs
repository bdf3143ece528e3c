//! Increment-to-visible latency between two nodes over real QUIC on loopback, at the default flush interval.
//!
//! A measuring binary rather than a criterion bench: each sample increments a key on node A and times until
//! node B's store shows it (B is polled every 50 µs), then reports p50, p90, p99 and max.
//!
//! `cargo bench --bench replication` measures 2,000 samples; `cargo bench --bench replication -- --test` (the CI
//! smoke) takes 20. Samples are spaced by a random 0–10 ms so they land at every phase of the flush interval.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::counter::Window;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::TransportOptions;

#[path = "../tests/support/mod.rs"]
mod support;
use support::free_port;

async fn node(name: &str, port: u16, peer: u16) -> ClusterHandle {
    let config = load_from_str(&format!(
        r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": ["127.0.0.1:{peer}"],
              "gossip": {{ "port": {port} }}, "http": {{ "listen": "127.0.0.1:0" }},
              "security": {{ "cluster_secret": "pJBNOIdLLfZXEnvUmCU5IIKyprxgZMSZuFJDa9xdpNQ=" }} }} }}"#
    ))
    .expect("config")
    .config;
    let options = NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides: Default::default(),
    };
    Cluster::start_with(config, options)
        .await
        .expect("node starts")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let samples = if smoke { 20 } else { 2_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (pa, pb) = (free_port(), free_port());
        let a = node("bench-a", pa, pb).await;
        let b = node("bench-b", pb, pa).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while a.peers().is_empty() || b.peers().is_empty() {
            assert!(Instant::now() < deadline, "nodes did not link");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let window = Window::parse("1h").expect("window");
        let on_a = a.store().handle("latency", window).expect("handle");
        let on_b = b.store().handle("latency", window).expect("handle");
        let mut latencies = Vec::with_capacity(samples);
        let mut jitter: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..samples {
            jitter ^= jitter << 13;
            jitter ^= jitter >> 7;
            jitter ^= jitter << 17;
            tokio::time::sleep(Duration::from_micros(jitter % 10_000)).await;
            // Read the epoch the increment goes into, so an hour boundary cannot hide it.
            let epoch = on_a.epoch_now();
            let target = on_b.global_at(epoch) + 1;
            let start = Instant::now();
            on_a.add(1);
            let limit = start + Duration::from_secs(5);
            while on_b.global_at(epoch) < target {
                assert!(Instant::now() < limit, "increment not visible on b after 5 s");
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
            latencies.push(start.elapsed());
        }
        latencies.sort();
        let flush = Duration::from_millis(5);
        let (p50, p90, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.9), percentile(&latencies, 0.99));
        println!(
            "replication/increment_to_visible samples={samples} flush_interval={flush:?} p50={p50:?} p90={p90:?} \
             p99={p99:?} max={:?} target_p99<={:?} {}",
            latencies[latencies.len() - 1],
            flush + Duration::from_millis(5),
            if p99 <= flush + Duration::from_millis(5) { "met" } else { "MISSED" }
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}
