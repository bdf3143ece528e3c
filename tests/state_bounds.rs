//! Bounds of the shared-state plane that converge (issue 14), on the sans-IO map and replicators:
//! - a delete frees room at once: at the cap, deleting and putting again never answers "full", however many
//!   times, and tombstones have their own bound;
//! - two nodes at the cap that refused each other's entries keep noticing the difference (counted), and
//!   converge once room frees up: anti-entropy repairs the entry refused earlier;
//! - a map larger than one frame reaches a new node in chunks that each fit a frame, resumed over rounds, and
//!   one differing entry costs one bucket of keys, not the whole map; a peer that sends digests in a loop gets
//!   one repair budget per pacing window;
//! - a health record that does not come from its own node over its own link is refused, and so is a frame
//!   whose sender is not its link; an own record with more links than a frame holds is cut to fit.
//!
//! Everything runs in virtual time in one thread: no sockets, no sleeps.

use std::collections::VecDeque;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::state::{
    ConfigMap, ConfigMapOptions, LinkHealth, NodeRecord, StateOptions, StateReplicator,
};
use bifrost_cluster::wire::{self, ConfigDigest, ConfigEntries, NodeHealth, WireConfigEntry};
use bytes::Bytes;

const START: u64 = 1_795_514_400_000;

/// Nodes `0..n` (peer id = index, replica id = index + 1, node id `n{index}`), all bound to each other; frames
/// go through a FIFO queue, delivered at once, dropped between disconnected nodes.
struct Net {
    now: u64,
    nodes: Vec<StateReplicator>,
    connected: bool,
    queue: VecDeque<(usize, usize, Bytes)>,
    /// Bytes each node sent (delivered or lost to loss, not to a disconnection), and the largest frame anybody
    /// sent.
    sent: Vec<u64>,
    largest_frame: usize,
}

impl Net {
    fn new(n: usize, options: StateOptions) -> Net {
        let mut nodes: Vec<StateReplicator> = (0..n)
            .map(|i| {
                StateReplicator::new(
                    &format!("n{i}"),
                    ReplicaId::new(i as u64 + 1),
                    options.clone(),
                    i as u64,
                    START,
                )
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for j in (0..n).filter(|&j| j != i) {
                node.bind_peer(j as u64, ReplicaId::new(j as u64 + 1), &format!("n{j}"));
                node.add_peer(j as u64);
            }
        }
        let mut net = Net {
            now: START,
            nodes,
            connected: false,
            queue: VecDeque::new(),
            sent: vec![0; n],
            largest_frame: 0,
        };
        // The first digests are lost: the nodes start apart.
        net.pump();
        net.connected = true;
        net
    }

    /// Delivers until nothing is in flight.
    fn pump(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    self.largest_frame = self.largest_frame.max(t.frame.len());
                    assert!(t.frame.len() <= wire::MAX_FRAME_BYTES);
                    if self.connected {
                        self.sent[i] += t.frame.len() as u64;
                        self.queue.push_back((t.peer as usize, i, t.frame));
                    }
                }
                while self.nodes[i].poll_change().is_some() {}
            }
            let Some((to, from, frame)) = self.queue.pop_front() else {
                return;
            };
            self.nodes[to]
                .handle_frame(from as u64, &frame, self.now)
                .expect("a valid frame");
        }
    }

    /// Advances virtual time by `ms`, firing every timer due on the way (in 100 ms steps).
    fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            self.now += 100;
            for node in &mut self.nodes {
                if node.poll_timeout() <= self.now {
                    node.handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }

    fn put(&mut self, i: usize, key: &str, value: &[u8]) {
        self.nodes[i]
            .put(key, Bytes::copy_from_slice(value), self.now)
            .unwrap_or_else(|e| panic!("put {key} on n{i}: {e}"));
        self.pump();
    }

    fn live(&self, i: usize) -> Vec<(String, Vec<u8>)> {
        self.nodes[i]
            .map()
            .live()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn converged(&self) -> bool {
        (1..self.nodes.len()).all(|i| self.live(i) == self.live(0))
    }
}

fn options(max_entries: usize) -> StateOptions {
    StateOptions {
        config: ConfigMapOptions {
            max_entries,
            ..ConfigMapOptions::default()
        },
        digest_interval_ms: 1_000,
        ..StateOptions::default()
    }
}

#[test]
fn at_the_cap_a_delete_always_frees_room_for_a_new_put_on_every_node() {
    let options = ConfigMapOptions {
        max_entries: 50,
        ..ConfigMapOptions::default()
    };
    let mut writer = ConfigMap::new("writer", options.clone());
    let mut replica = ConfigMap::new("replica", options);
    let mut now = START;
    // Twenty rounds of "fill to the cap, delete everything": 1 000 tombstones, far more than the cap.
    for round in 0..20 {
        let keys: Vec<String> = (0..50).map(|k| format!("r{round}/k{k}")).collect();
        for key in &keys {
            now += 1;
            let entry = writer
                .put(key, Bytes::from_static(b"value"), now)
                .unwrap_or_else(|e| panic!("round {round}: {key}: {e}"));
            assert!(
                replica.merge(entry, now).is_some(),
                "round {round}: {key} refused by the replica"
            );
        }
        assert!(
            writer
                .put("one-too-many", Bytes::from_static(b"x"), now)
                .is_err(),
            "the cap holds"
        );
        for key in &keys {
            now += 1;
            let tombstone = writer.delete(key, now).expect("a delete is never refused");
            replica.merge(tombstone, now);
        }
        assert_eq!(writer.live().count(), 0);
        assert_eq!(replica.live().count(), 0);
    }
    assert_eq!(writer.digest(), replica.digest());
}

#[test]
fn two_nodes_at_the_cap_converge_once_room_frees_and_the_refused_entry_is_repaired() {
    let mut net = Net::new(2, options(3));
    // Apart, each fills up: n0 to the cap, n1 with one entry of its own.
    net.connected = false;
    for k in ["a1", "a2", "a3"] {
        net.put(0, k, b"from n0");
    }
    net.put(1, "b1", b"from n1");
    net.connected = true;
    net.advance(10_000);
    // Together they cannot hold the union (4 entries, cap 3): what does not fit is refused and counted, on
    // every round, and the maps differ (the nodes say so, they do not silently agree to differ).
    let refused = |net: &Net| {
        net.nodes
            .iter()
            .map(|n| n.stats().map.refused_full)
            .collect::<Vec<_>>()
    };
    let early = refused(&net);
    assert!(early[0] > 0, "n0 refused b1: {early:?}");
    assert!(early[1] > 0, "n1 refused one of n0's: {early:?}");
    assert!(!net.converged());
    net.advance(10_000);
    let later = refused(&net);
    assert!(
        later[0] > early[0] && later[1] > early[1],
        "anti-entropy keeps offering the refused entries: {early:?} then {later:?}"
    );
    assert!(!net.converged());
    // n0 deletes one of its entries: both have room for the union now.
    net.nodes[0].delete("a1", net.now).expect("delete");
    net.pump();
    net.advance(5_000);
    assert!(net.converged(), "n0 {:?} n1 {:?}", net.live(0), net.live(1));
    let keys: Vec<String> = net.live(0).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a2", "a3", "b1"]);
    assert_eq!(net.nodes[0].map().digest(), net.nodes[1].map().digest());
    // And it stays put: no more refusals once converged.
    let settled = refused(&net);
    net.advance(5_000);
    assert_eq!(refused(&net), settled);
}

#[test]
fn a_map_larger_than_one_frame_reaches_a_new_node_in_chunks_resumed_over_rounds() {
    let mut net = Net::new(
        2,
        StateOptions {
            repair_bytes_per_round: 1 << 20,
            digest_interval_ms: 1_000,
            ..StateOptions::default()
        },
    );
    // 48 values of 60 KiB: 2.9 MB, almost three frames' worth, written while n1 was away.
    net.connected = false;
    for k in 0..48u8 {
        net.put(0, &format!("big/{k:02}"), &vec![k; 60 * 1024]);
    }
    net.connected = true;
    let mut rounds = 0;
    while !net.converged() {
        rounds += 1;
        assert!(rounds <= 60, "not converged after {rounds} s");
        net.advance(1_000);
    }
    assert_eq!(net.live(1).len(), 48);
    eprintln!(
        "2.9 MB map: converged in {rounds} digest rounds, largest frame {} bytes, {:?} bytes sent",
        net.largest_frame, net.sent
    );
    assert!(
        net.largest_frame <= wire::MAX_FRAME_BYTES,
        "{}",
        net.largest_frame
    );
    let transfer: u64 = net.sent.iter().sum();
    assert!(
        transfer < 3_300_000,
        "the 2.9 MB map crossed once, not both ways: {:?}",
        net.sent
    );
    assert!(
        net.nodes[0].stats().repairs_resumed >= 2,
        "a 2.9 MB transfer with a 1 MiB budget per round resumes: {:?}",
        net.nodes[0].stats()
    );

    // One entry more, missed by n1: the repair costs the entries of its bucket, not the map.
    net.connected = false;
    net.put(0, "small", b"x");
    net.connected = true;
    let before: u64 = net.sent.iter().sum();
    net.advance(3_000);
    assert!(net.converged());
    let repair: u64 = net.sent.iter().sum::<u64>() - before;
    eprintln!("one differing entry: {repair} bytes for the repair");
    assert!(
        repair < 400_000,
        "one differing entry cost {repair} bytes of a 2.9 MB map"
    );
}

#[test]
fn a_peer_sending_digests_in_a_loop_gets_one_budget_per_pacing_window() {
    let options = StateOptions {
        repair_bytes_per_round: 1 << 20,
        digest_interval_ms: 10_000,
        ..StateOptions::default()
    };
    let mut node = StateReplicator::new("n0", ReplicaId::new(1), options, 1, START);
    for k in 0..48u8 {
        node.put(
            &format!("big/{k:02}"),
            Bytes::from(vec![k; 60 * 1024]),
            START,
        )
        .expect("put");
    }
    node.bind_peer(7, ReplicaId::new(2), "n1");
    let empty = wire::encode(&ConfigDigest {
        sender: 2,
        entries: 0,
        fingerprint: 0,
        reply: false,
        buckets: Vec::new(),
    })
    .expect("encode");
    let drain = |node: &mut StateReplicator| {
        let mut bytes = 0;
        while let Some(t) = node.poll_transmit() {
            bytes += t.frame.len();
        }
        bytes
    };
    // 100 digests in the same millisecond: one answer of at most 1 MiB, 99 deferred to one pending answer.
    for _ in 0..100 {
        node.handle_frame(7, &empty, START).expect("decodes");
    }
    let first = drain(&mut node);
    assert!(
        (900_000..=1 << 20).contains(&first),
        "{first} bytes for 100 digests"
    );
    assert_eq!(node.stats().repairs_deferred, 99);
    // The pending answer goes out when the window (a tenth of the digest interval) ends, and goes on from
    // where the first stopped.
    assert_eq!(node.poll_timeout(), START + 1_000);
    node.handle_timeout(START + 1_000);
    let second = drain(&mut node);
    assert!((900_000..=1 << 20).contains(&second), "{second} bytes");
    assert!(node.poll_timeout() > START + 1_000, "nothing more is owed");
}

fn record(owner: u64, node_id: &str, links: usize) -> NodeRecord {
    NodeRecord {
        owner,
        node_id: node_id.to_string(),
        version: 1,
        published_ms: UnixMs::new(START),
        cpu_millicores: 100,
        memory_bytes: 1 << 20,
        memory_total_bytes: 1 << 30,
        open_connections: 1,
        request_rate_milli: 0,
        links: (0..links)
            .map(|i| LinkHealth {
                node_id: format!("{i:0>100}"),
                up: i % 3 != 0,
                rtt_us: 1,
            })
            .collect(),
    }
}

fn health_frame(owner: u64, node_id: &str) -> Vec<u8> {
    wire::encode(&NodeHealth {
        owner,
        node_id: node_id.to_string(),
        version: 1,
        published_ms: START,
        cpu_millicores: 999_999,
        memory_bytes: 1,
        memory_total_bytes: 1,
        open_connections: 0,
        request_rate_milli: 0,
        links: Vec::new(),
    })
    .expect("encode")
}

#[test]
fn a_health_record_is_taken_only_from_its_own_node_over_its_own_link() {
    let mut node = StateReplicator::new("n0", ReplicaId::new(1), StateOptions::default(), 1, START);
    node.bind_peer(7, ReplicaId::new(2), "n1");
    node.add_peer(7);
    // n1 forges records for n2 (another replica and node id), for n2's node id with its own replica id, and
    // for its own node id with another replica id: all refused.
    for (owner, id) in [(3, "n2"), (2, "n2"), (3, "n1")] {
        node.handle_frame(7, &health_frame(owner, id), START)
            .expect("decodes");
    }
    assert!(node.records().view(START, 60_000).is_empty());
    assert_eq!(node.stats().records_refused, 3);
    // An unbound link cannot publish anything.
    node.handle_frame(8, &health_frame(4, "n3"), START)
        .expect("decodes");
    assert!(node.records().view(START, 60_000).is_empty());
    assert_eq!(node.stats().frames_refused, 1);
    // Its own record is taken.
    node.handle_frame(7, &health_frame(2, "n1"), START)
        .expect("decodes");
    let view = node.records().view(START, 60_000);
    assert_eq!(view.len(), 1);
    assert_eq!(
        (view[0].record.owner, view[0].record.node_id.as_str()),
        (2, "n1")
    );
}

#[test]
fn config_frames_naming_another_sender_than_their_link_are_refused() {
    let mut node = StateReplicator::new("n0", ReplicaId::new(1), StateOptions::default(), 1, START);
    node.bind_peer(7, ReplicaId::new(2), "n1");
    let entries = |sender| {
        wire::encode(&ConfigEntries {
            sender,
            more: false,
            entries: vec![WireConfigEntry {
                key: format!("from/{sender}"),
                value: Some(b"v".to_vec()),
                wall_ms: START,
                logical: 0,
                node: "n2".into(),
            }],
        })
        .expect("encode")
    };
    node.handle_frame(7, &entries(3), START).expect("decodes");
    assert!(node.map().get("from/3").is_none());
    assert_eq!(node.stats().frames_refused, 1);
    // Relayed entries (written by n2, sent by n1 as itself) are taken: config entries are cluster-wide.
    node.handle_frame(7, &entries(2), START).expect("decodes");
    assert!(node.map().get("from/2").is_some());
}

#[test]
fn an_own_health_record_with_more_links_than_a_frame_holds_is_cut_to_fit() {
    let mut node = StateReplicator::new("n0", ReplicaId::new(1), StateOptions::default(), 1, START);
    node.bind_peer(7, ReplicaId::new(2), "n1");
    node.add_peer(7);
    while node.poll_transmit().is_some() {}
    // 20 000 links with 100-byte node ids: about 2.6 MB, more than twice the frame limit.
    node.publish(record(1, "n0", 20_000), START);
    let sent = node.poll_transmit().expect("the record is still sent");
    assert!(sent.frame.len() <= wire::MAX_FRAME_BYTES);
    let wire::Frame::NodeHealth(h) = wire::decode(&sent.frame).expect("decodes") else {
        panic!("not a health record");
    };
    assert!(h.links.len() > 1_000, "{} links kept", h.links.len());
    assert!(h.links.len() < 20_000);
    assert!(
        h.links.iter().take(6_000).all(|l| !l.up),
        "down links are kept first"
    );
    assert_eq!(node.stats().records_truncated, 1);
    assert_eq!(node.stats().encode_errors, 0);
}
