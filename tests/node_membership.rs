//! The membership plane inside real nodes over real QUIC on 127.0.0.1: joining through static peers, health
//! from data-plane checks, graceful leave seen as "left" (never suspect), a restart replacing the old
//! identity, and a member that answers SWIM but not the data plane turning unhealthy with the reason. Every
//! wait is a bounded poll. (`Ordering::Relaxed` on the test's flag: it orders nothing else.)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bifrost_cluster::ReplicaId;
use bifrost_cluster::config::{ClusterConfig, ClusterSecret, NodeId, load_from_str};
use bifrost_cluster::counter::Window;
use bifrost_cluster::membership::{
    ClusterHealth, LocalIdentity, MemberState, Membership, MembershipOptions,
};
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::{TlsSetup, Transport, TransportOptions};
use bifrost_cluster::wire::{self, DataPong, Frame, Hello, MembershipPacket, capabilities};
use bytes::Bytes;

mod support;
use support::{free_port, wait_for};

const SECRET: &str = "yX6WNpR5zAcJnakRPq9L6iIoXXinL46bZWmv8k92AkU=";

fn config(node: &str, port: u16, peers: &[u16], health: &str) -> ClusterConfig {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}", "peers": [{}],
            "gossip": {{ "port": {port}, "config": {health} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#,
        peers.join(",")
    );
    load_from_str(&text).expect("valid test config").config
}

const DEFAULT_HEALTH: &str =
    r#"{ "timeout_seconds": 10, "success_threshold": 3, "failure_threshold": 3 }"#;

async fn start(node: &str, port: u16, peers: &[u16], health: &str) -> ClusterHandle {
    let options = NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A restart in one process may find the previous endpoint's socket not yet released.
        match Cluster::start_with(config(node, port, peers, health), options.clone()).await {
            Ok(node) => return node,
            Err(error) if Instant::now() < deadline => {
                eprintln!("start not ready yet: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("start failed: {error}"),
        }
    }
}

fn state_of(node: &ClusterHandle, other: &str) -> Option<(MemberState, bool, ReplicaId)> {
    let table = node.members()?;
    table
        .members
        .iter()
        .filter(|m| m.node_id() == other)
        .max_by_key(|m| m.id.started_ms())
        .map(|m| (m.state, m.healthy, m.replica_id()))
}

fn alive_and_healthy(node: &ClusterHandle, others: &[&str]) -> bool {
    others
        .iter()
        .all(|o| matches!(state_of(node, o), Some((MemberState::Alive, true, _))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_turn_healthy_and_a_graceful_leave_is_seen_as_left_never_suspect() {
    let ports = [free_port(), free_port(), free_port()];
    // Only a knows nobody's address but b's; c knows a. SWIM spreads the rest.
    let a = start("node-a", ports[0], &[ports[1]], DEFAULT_HEALTH).await;
    let b = start("node-b", ports[1], &[ports[0]], DEFAULT_HEALTH).await;
    let c = start("node-c", ports[2], &[ports[0]], DEFAULT_HEALTH).await;
    let nodes = [&a, &b, &c];
    let names = ["node-a", "node-b", "node-c"];
    // Healthy needs 3 answered data-plane checks (one per second).
    wait_for(
        Duration::from_secs(20),
        "every member alive and healthy everywhere",
        || {
            nodes.iter().zip(names).all(|(n, me)| {
                let others: Vec<&str> = names.iter().copied().filter(|o| *o != me).collect();
                alive_and_healthy(n, &others) && n.cluster_health() == ClusterHealth::Healthy
            })
        },
    )
    .await;
    for node in nodes {
        let table = node.members().expect("cluster mode");
        assert_eq!(table.healthy_count(), 3);
        for member in &table.members {
            assert!(member.incarnation < 100);
            assert!(member.last_seen_ms.is_some(), "{member:?}");
            assert!(
                member.health_reason.contains("data-plane check answered"),
                "{member:?}"
            );
        }
        assert_eq!(node.peers().len(), 2, "a link to each member");
    }

    // c leaves: a and b must report it left within one dissemination round (8 retransmissions × 200 ms),
    // and must never show it suspect or down on the way.
    let leave = tokio::spawn({
        let c = c.clone();
        async move { c.shutdown().await }
    });
    let started = Instant::now();
    loop {
        let states = [state_of(&a, "node-c"), state_of(&b, "node-c")];
        for s in states.iter().flatten() {
            assert!(
                !matches!(s.0, MemberState::Suspect | MemberState::Down),
                "c was seen {:?} while leaving",
                s.0
            );
        }
        if states
            .iter()
            .all(|s| matches!(s, Some((MemberState::Left, false, _))))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a and b did not mark c left: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen_left_after = started.elapsed();
    leave.await.expect("shutdown task");
    eprintln!("c seen left after {seen_left_after:?} (shutdown includes the final flush)");
    // Two of three (one left: it does not count) are healthy.
    wait_for(Duration::from_secs(5), "a and b still HEALTHY", || {
        a.cluster_health() == ClusterHealth::Healthy && b.cluster_health() == ClusterHealth::Healthy
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replaces_its_old_identity_and_its_counting_continues() {
    let ports = [free_port(), free_port(), free_port()];
    let peers_of =
        |port: u16| -> Vec<u16> { ports.iter().copied().filter(|&p| p != port).collect() };
    let a = start("node-a", ports[0], &peers_of(ports[0]), DEFAULT_HEALTH).await;
    let b = start("node-b", ports[1], &peers_of(ports[1]), DEFAULT_HEALTH).await;
    let c = start("node-c", ports[2], &peers_of(ports[2]), DEFAULT_HEALTH).await;
    wait_for(Duration::from_secs(20), "c alive everywhere", || {
        [&a, &b].iter().all(|n| alive_and_healthy(n, &["node-c"]))
    })
    .await;
    let window = Window::parse("1h").expect("window");
    let epoch = window.epoch_at(a.clock().now_unix_ms());
    c.store().add("budget/r", window, 40).expect("add");
    let old_replica = c.replica_id();
    wait_for(Duration::from_secs(10), "40 at a and b", || {
        [&a, &b].iter().all(|n| {
            n.store()
                .handle("budget/r", window)
                .expect("handle")
                .global_at(epoch)
                == 40
        })
    })
    .await;
    c.shutdown().await;
    drop(c);
    let c = start("node-c", ports[2], &peers_of(ports[2]), DEFAULT_HEALTH).await;
    assert_ne!(c.replica_id(), old_replica);
    wait_for(
        Duration::from_secs(20),
        "the new c alive everywhere",
        || {
            [&a, &b].iter().all(|n| {
            matches!(state_of(n, "node-c"), Some((MemberState::Alive, _, r)) if r == c.replica_id())
        })
        },
    )
    .await;
    c.store().add("budget/r", window, 2).expect("add");
    wait_for(Duration::from_secs(10), "42 everywhere", || {
        [&a, &b, &c].iter().all(|n| {
            n.store()
                .handle("budget/r", window)
                .expect("handle")
                .global_at(epoch)
                == 42
        })
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A member that speaks SWIM to `target` over a real link and answers data-plane checks only while
/// `answer_checks` is true: afterwards its replication path is "broken" while it still answers probes.
/// Runs until the returned task is aborted.
async fn spawn_swim_member(
    target: SocketAddr,
    answer_checks: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let secret = ClusterSecret::new(SECRET).expect("secret");
    let tls = TlsSetup::from_secret(&secret, &NodeId::new("swim-only").expect("id")).expect("tls");
    let transport = Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        tls,
        TransportOptions::default(),
    )
    .expect("bind");
    let own = transport.local_addr();
    let link = transport.connect(target).await.expect("connect");
    let hello = wire::encode(&Hello {
        node_id: "swim-only".into(),
        replica_id: 0x5_0000_0001,
        protocol_version: u32::from(wire::PROTOCOL_MAJOR) << 16,
        capabilities: capabilities::REPLICATION_V1,
        gossip_addr: own.to_string(),
        link_nonce: 7,
    })
    .expect("encode");
    let (mut send, mut recv) = link.open_stream().await.expect("stream");
    send.write_all(&hello).await.expect("write");
    send.finish().expect("finish");
    let answer = recv.read_to_end(4096).await.expect("hello answer");
    assert!(matches!(wire::decode(&answer), Ok(Frame::Hello(_))));
    let mut membership = Membership::new(
        LocalIdentity::new("swim-only", ReplicaId::new(0x5_0000_0001), own),
        MembershipOptions::default(),
        99,
        unix_ms(),
    )
    .expect("membership");
    membership.join(target, unix_ms()).expect("join");
    tokio::spawn(async move {
        let _transport = transport;
        loop {
            while let Some((to, payload)) = membership.poll_transmit() {
                if to == target {
                    let frame = wire::encode(&MembershipPacket { payload }).expect("encode");
                    let _ = link.send_datagram(Bytes::from(frame));
                }
            }
            let wait = membership
                .poll_timeout()
                .map_or(100, |t| t.saturating_sub(unix_ms()).min(100));
            tokio::select! {
                datagram = link.read_datagram() => {
                    let Ok(bytes) = datagram else { return };
                    if let Ok(Frame::Membership(p)) = wire::decode(&bytes) {
                        let _ = membership.handle_packet(target, p.payload.as_slice(), unix_ms());
                    }
                }
                // Data-plane checks arrive on streams: answered only while `answer_checks` holds.
                stream = link.accept_stream() => {
                    let Ok((_send, mut recv)) = stream else { return };
                    let Ok(bytes) = recv.read_to_end(1 << 20).await else { continue };
                    if let Ok(Frame::DataPing(ping)) = wire::decode(&bytes)
                        && answer_checks.load(Ordering::Relaxed)
                    {
                        let pong = wire::encode(&DataPong {
                            sender: 0x5_0000_0001,
                            nonce: ping.nonce.to_native(),
                        })
                        .expect("encode");
                        let link = link.clone();
                        tokio::spawn(async move {
                            if let Ok((mut send, _recv)) = link.open_stream().await {
                                let _ = send.write_all(&pong).await;
                                let _ = send.finish();
                            }
                        });
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(wait)) => {
                    membership.handle_timeout(unix_ms());
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_answers_probes_but_not_the_data_plane_is_unhealthy_with_the_reason() {
    let ports = [free_port(), free_port()];
    let fast = r#"{ "timeout_seconds": 1, "success_threshold": 2, "failure_threshold": 2 }"#;
    let a = start("node-a", ports[0], &[ports[1]], fast).await;
    let b = start("node-b", ports[1], &[ports[0]], fast).await;
    let answer_checks = Arc::new(AtomicBool::new(true));
    let rogue = spawn_swim_member(
        SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0])),
        Arc::clone(&answer_checks),
    )
    .await;
    // Healthy takes two answered checks 1 s apart, each within the 1 s timeout: 2-4 s on an idle machine, up
    // to 13 s measured with the whole suite running on 2 cores (an answer later than 1 s resets the count).
    // The bound is for the setup, not the behaviour under test.
    wait_for(
        Duration::from_secs(30),
        "b and the hand-driven member healthy at a",
        || alive_and_healthy(&a, &["node-b", "swim-only"]),
    )
    .await;
    // Its data plane breaks; it keeps answering probes (alive) and turns unhealthy after 2 silent timeouts.
    answer_checks.store(false, Ordering::Relaxed);
    let took = wait_for(
        Duration::from_secs(10),
        "swim-only alive but unhealthy",
        || {
            matches!(
                state_of(&a, "swim-only"),
                Some((MemberState::Alive, false, _))
            )
        },
    )
    .await;
    eprintln!("unhealthy {took:?} after its data plane stopped answering");
    let table = a.members().expect("cluster mode");
    let member = table
        .members
        .iter()
        .find(|m| m.node_id() == "swim-only")
        .expect("listed");
    assert_eq!(member.state, MemberState::Alive);
    assert!(!member.healthy);
    assert!(
        member
            .health_reason
            .contains("no data-plane answer within 1000 ms"),
        "reason: {}",
        member.health_reason
    );
    // Its neighbour with a working data plane stays healthy all along.
    assert!(alive_and_healthy(&a, &["node-b"]));
    rogue.abort();
    a.shutdown().await;
    b.shutdown().await;
}
