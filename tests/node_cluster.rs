//! Real nodes over real QUIC on 127.0.0.1: convergence, restart, trust, hostile frames. Every wait is a bounded
//! poll; every address is on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bifrost_cluster::config::{ClusterSecret, NodeId, load_from_str};
use bifrost_cluster::counter::Window;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::{TlsSetup, Transport, TransportOptions};
use bifrost_cluster::wire::{
    self, DeltaBatch, Entry, Hello, OriginGroup, OriginKind, WireWindow, capabilities,
};
use bytes::Bytes;

mod support;
use support::{free_port, increment_everywhere_and_converge, wait_for};

const SECRET: &str = "pvpvAyeGnDyLxqgsGE1J01X1XyexOyuMWseCUxCT+oE=";

fn config(
    node: &str,
    port: u16,
    peers: &[u16],
    secret: &str,
) -> bifrost_cluster::config::ClusterConfig {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}", "peers": [{}],
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{secret}" }},
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

async fn start(node: &str, port: u16, peers: &[u16], secret: &str) -> ClusterHandle {
    Cluster::start_with(config(node, port, peers, secret), options())
        .await
        .expect("node starts")
}

/// `node`'s global count of `key` in `window`'s epoch `epoch`. Tests read the epoch they wrote into, so a window
/// boundary passing during a test cannot make them read a new, empty window.
fn global_at(node: &ClusterHandle, key: &str, window: Window, epoch: u64) -> u64 {
    node.store()
        .handle(key, window)
        .expect("handle")
        .global_at(epoch)
}

fn epoch_now(node: &ClusterHandle, window: Window) -> u64 {
    window.epoch_at(node.clock().now_unix_ms())
}

/// Counts against a window that cannot roll over during a test.
fn hour() -> Window {
    Window::parse("1h").expect("window")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_to_the_exact_totals_under_concurrent_increments() {
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let others: Vec<u16> = ports.iter().copied().filter(|&p| p != port).collect();
        nodes.push(start(&format!("node-{i}"), port, &others, SECRET).await);
    }
    wait_for(Duration::from_secs(15), "a full mesh", || {
        nodes.iter().all(|n| n.peers().len() == 2)
    })
    .await;
    increment_everywhere_and_converge(
        &nodes,
        &["vk/a", "vk/b", "budget/c"],
        20_000,
        Duration::from_secs(15),
    )
    .await;
    // The status is refreshed every 50 ms: wait for it to show the traffic.
    wait_for(
        Duration::from_secs(5),
        "replication stats to show batches",
        || {
            nodes
                .iter()
                .all(|n| n.replication_stats().batches_received > 0)
        },
    )
    .await;
    for node in &nodes {
        assert_eq!(node.replication_stats().decode_errors, 0);
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_counting_without_hiding_its_new_increments() {
    let ports = [free_port(), free_port(), free_port()];
    let peers_of =
        |port: u16| -> Vec<u16> { ports.iter().copied().filter(|&p| p != port).collect() };
    let a = start("node-a", ports[0], &peers_of(ports[0]), SECRET).await;
    let b = start("node-b", ports[1], &peers_of(ports[1]), SECRET).await;
    let c = start("node-c", ports[2], &peers_of(ports[2]), SECRET).await;
    wait_for(Duration::from_secs(15), "a full mesh", || {
        [&a, &b, &c].iter().all(|n| n.peers().len() == 2)
    })
    .await;
    let key = "budget/restart";
    let epoch = epoch_now(&c, hour());
    c.store().add(key, hour(), 100).expect("add");
    wait_for(Duration::from_secs(10), "100 everywhere", || {
        [&a, &b]
            .iter()
            .all(|n| global_at(n, key, hour(), epoch) == 100)
    })
    .await;
    let old_replica = c.replica_id();
    c.shutdown().await;
    drop(c);
    // Same node id, same port, new process life: a new replica id. In one process the previous endpoint's socket
    // is released asynchronously, so retry the bind briefly, as a supervisor restarting the node would.
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        match Cluster::start_with(
            config("node-c", ports[2], &peers_of(ports[2]), SECRET),
            options(),
        )
        .await
        {
            Ok(node) => break node,
            Err(error) if Instant::now() < deadline => {
                eprintln!("restart not ready yet: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("restart failed: {error}"),
        }
    };
    assert_ne!(c.replica_id(), old_replica);
    wait_for(Duration::from_secs(15), "c to relink", || {
        c.peers().len() == 2
    })
    .await;
    // The state transfer brings c its previous life's 100; its new increments add on top. With node names as
    // origins, the peers' max-merge would keep the old 100 and hide these 50.
    assert_eq!(
        epoch_now(&c, hour()),
        epoch,
        "an hour boundary passed during the test"
    );
    c.store().add(key, hour(), 50).expect("add");
    wait_for(Duration::from_secs(15), "150 everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|n| global_at(n, key, hour(), epoch) == 150)
    })
    .await;
    for node in [&a, &b, &c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_cannot_join_and_nothing_of_it_is_merged() {
    let ports = [free_port(), free_port(), free_port()];
    let a = start("node-a", ports[0], &[ports[1]], SECRET).await;
    let b = start("node-b", ports[1], &[ports[0]], SECRET).await;
    let intruder = start(
        "intruder",
        ports[2],
        &[ports[0], ports[1]],
        "wNRfMlkgJupNQzhaqDM4acnlKMjR5/BrmVG9bbXot8A=",
    )
    .await;
    wait_for(Duration::from_secs(15), "a and b linked", || {
        a.peers().len() == 1 && b.peers().len() == 1
    })
    .await;
    let epoch = epoch_now(&a, hour());
    intruder.store().add("stolen", hour(), 1_000).expect("add");
    a.store().add("honest", hour(), 1).expect("add");
    // Give the intruder several dial attempts (backoff starts at 100 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for(Duration::from_secs(10), "b to see a's increment", || {
        global_at(&b, "honest", hour(), epoch) == 1
    })
    .await;
    for node in [&a, &b] {
        let peers = node.peers();
        assert_eq!(peers.len(), 1, "only the honest peer is linked: {peers:?}");
        assert_ne!(peers[0].node_id, "intruder");
        assert_eq!(
            global_at(node, "stolen", hour(), epoch),
            0,
            "nothing of the intruder is merged"
        );
    }
    assert!(intruder.peers().is_empty());
    assert_eq!(global_at(&intruder, "honest", hour(), epoch), 0);
    assert_eq!(intruder.replication_stats().batches_received, 0);
    for node in [&a, &b, &intruder] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_from_a_trusted_peer_are_dropped_and_the_link_survives() {
    let port = free_port();
    // Cluster mode needs a peer: give it one that never answers (a free loopback port).
    let node = start("node-a", port, &[free_port()], SECRET).await;
    // A trusted peer that we drive by hand: same secret, real hello, then hostile frames.
    let secret = ClusterSecret::new(SECRET).expect("secret");
    let tls = TlsSetup::from_secret(&secret, &NodeId::new("rogue").expect("id")).expect("tls");
    let rogue = Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        tls,
        TransportOptions::default(),
    )
    .expect("bind");
    let target: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
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

    // Garbage datagrams, a truncated frame, a frame with an unknown major version.
    link.send_datagram(Bytes::from_static(b"not a frame at all"))
        .expect("datagram");
    let window = hour();
    let epoch = epoch_now(&node, window);
    let batch = |value| {
        wire::encode(&DeltaBatch {
            sender: 0xbad,
            sequence: 1,
            sent_at_ms: 0,
            groups: vec![OriginGroup {
                origin: 0xbad,
                kind: OriginKind::Replica,
                entries: vec![Entry {
                    key: "from-rogue".into(),
                    window: WireWindow::from(window),
                    epoch,
                    value,
                }],
            }],
        })
        .expect("encode")
    };
    let good = batch(7);
    link.send_datagram(Bytes::copy_from_slice(&good[..good.len() - 5]))
        .expect("datagram");
    let mut future_version = batch(9);
    future_version[2] = 9;
    link.send_datagram(Bytes::from(future_version))
        .expect("datagram");
    // An oversized stream frame: more than the 1 MiB limit.
    let (mut big, _) = link.open_stream().await.expect("stream");
    let _ = big.write_all(&vec![0u8; wire::MAX_FRAME_BYTES + 100]).await;
    let _ = big.finish();
    wait_for(Duration::from_secs(5), "three decode errors", || {
        node.replication_stats().decode_errors >= 3
    })
    .await;
    assert_eq!(
        global_at(&node, "from-rogue", window, epoch),
        0,
        "nothing from a refused frame is merged"
    );

    // The link survived: a valid frame still merges.
    link.send_datagram(Bytes::from(good)).expect("datagram");
    wait_for(Duration::from_secs(5), "the valid frame to merge", || {
        global_at(&node, "from-rogue", window, epoch) == 7
    })
    .await;
    assert_eq!(node.peers().len(), 1, "the link is still up");
    link.close("done");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_join_and_nothing_of_it_is_merged() {
    let port = free_port();
    let node = start("node-a", port, &[free_port()], SECRET).await;
    // A raw QUIC client that trusts the cluster CA but presents no certificate.
    let secret = ClusterSecret::new(SECRET).expect("secret");
    let anchor = TlsSetup::from_secret(&secret, &NodeId::new("x").expect("id"))
        .expect("tls")
        .ca_certificates()[0]
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor).expect("anchor");
    let mut crypto = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![bifrost_cluster::transport::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic crypto");
    let client =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let connecting = client
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(crypto)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            bifrost_cluster::transport::SERVER_NAME,
        )
        .expect("connect");
    let window = hour();
    let epoch = epoch_now(&node, window);
    // With TLS 1.3 the client's side of the handshake may complete before the server rejects it: try everything.
    if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
        let hello = wire::encode(&Hello {
            node_id: "anonymous".into(),
            replica_id: 0xa11,
            protocol_version: u32::from(wire::PROTOCOL_MAJOR) << 16,
            capabilities: capabilities::REPLICATION_V1,
            gossip_addr: String::new(),
            link_nonce: 0,
        })
        .expect("encode");
        let batch = wire::encode(&DeltaBatch {
            sender: 0xa11,
            sequence: 1,
            sent_at_ms: 0,
            groups: vec![OriginGroup {
                origin: 0xa11,
                kind: OriginKind::Replica,
                entries: vec![Entry {
                    key: "anonymous".into(),
                    window: WireWindow::from(window),
                    epoch,
                    value: 99,
                }],
            }],
        })
        .expect("encode");
        let attempt = async {
            let (mut send, _recv) = connection.open_bi().await.ok()?;
            send.write_all(&hello).await.ok()?;
            send.finish().ok()?;
            connection.send_datagram(Bytes::from(batch)).ok()
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), attempt).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(node.peers().is_empty(), "no link without a certificate");
    assert_eq!(
        global_at(&node, "anonymous", window, epoch),
        0,
        "nothing merged"
    );
    assert_eq!(node.replication_stats().batches_received, 0);
    assert_eq!(node.replication_stats().bytes_received, 0);
    node.shutdown().await;
}
