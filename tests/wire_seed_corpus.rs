//! The fuzz seed corpus of `decode_frame` is real encodings, committed under `fuzz/seeds/decode_frame/`.
//! This test checks every seed still decodes (so a format change cannot silently leave the fuzzer with
//! garbage seeds); `BIFROST_WRITE_SEEDS=1 cargo test --test wire_seed_corpus` rewrites them.

use std::path::Path;

use bifrost_cluster::counter::Window;
use bifrost_cluster::wire::{
    self, ConfigBucketDigest, ConfigDigest, ConfigEntries, DataPing, DataPong, DeltaBatch, Digest,
    Entry, Hello, MembershipPacket, NodeHealth, OriginDigest, OriginGroup, OriginKind, StateChunk,
    StateRequest, WireConfigEntry, WireLinkHealth, WireWindow, capabilities,
};

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let entry = |key: &str, w: &str, epoch, value| Entry {
        key: key.into(),
        window: WireWindow::from(Window::parse(w).unwrap()),
        epoch,
        value,
    };
    let groups = vec![
        OriginGroup {
            origin: 11,
            kind: OriginKind::Replica,
            entries: vec![
                entry("vk/openai/gpt-4o", "1m", 29_925_240, 17),
                entry("budget/team-a", "1M", 682, 5_000_000),
                entry("budget/team-b", "30d@2026-12-01T10:00:00Z", 693, 1_200),
            ],
        },
        OriginGroup {
            origin: 12,
            kind: OriginKind::Aggregate,
            entries: vec![entry("rl/x", "1s", 1_795_514_400, 1)],
        },
        OriginGroup {
            origin: 11,
            kind: OriginKind::Floor,
            entries: vec![entry("budget/team-a", "1M", 682, 4_000_000)],
        },
        OriginGroup {
            origin: 12,
            kind: OriginKind::AggregateFloor,
            entries: vec![entry("rl/x", "1s", 1_795_514_400, 1)],
        },
        OriginGroup {
            origin: 11,
            kind: OriginKind::Reset,
            entries: vec![entry("budget/team-a", "1M", 682, 1_795_514_400_000)],
        },
    ];
    vec![
        (
            "hello.bin",
            wire::encode(&Hello {
                node_id: "node-1".into(),
                replica_id: 11,
                protocol_version: u32::from(wire::PROTOCOL_MAJOR) << 16,
                capabilities: capabilities::REPLICATION_V1,
                gossip_addr: "10.0.0.1:10101".into(),
                link_nonce: 0x5eed,
            })
            .unwrap(),
        ),
        (
            "delta_batch.bin",
            wire::encode(&DeltaBatch {
                sender: 11,
                sequence: 3,
                sent_at_ms: 1_795_514_400_000,
                groups: groups.clone(),
            })
            .unwrap(),
        ),
        (
            "digest.bin",
            wire::encode(&Digest {
                sender: 11,
                first: 0,
                last: u64::MAX,
                origins: vec![OriginDigest {
                    origin: 11,
                    entries: 2,
                    fingerprint: 0xdead_beef,
                }],
                floors: 1,
                floor_fingerprint: 0xf100_0f00,
            })
            .unwrap(),
        ),
        (
            "state_request.bin",
            wire::encode(&StateRequest {
                sender: 11,
                request_id: 1,
                origins: vec![],
                rests: true,
            })
            .unwrap(),
        ),
        (
            "state_chunk.bin",
            wire::encode(&StateChunk {
                sender: 11,
                request_id: 1,
                groups,
                index: 0,
                total: 1,
            })
            .unwrap(),
        ),
        (
            "data_ping.bin",
            wire::encode(&DataPing {
                sender: 11,
                nonce: 0x1234_5678,
            })
            .unwrap(),
        ),
        (
            "data_pong.bin",
            wire::encode(&DataPong {
                sender: 12,
                nonce: 0x1234_5678,
            })
            .unwrap(),
        ),
        (
            "config_entries.bin",
            wire::encode(&ConfigEntries {
                sender: 11,
                more: true,
                entries: vec![
                    WireConfigEntry {
                        key: "routing/default".into(),
                        value: Some(b"{\"provider\":\"openai\"}".to_vec()),
                        wall_ms: 1_795_514_400_000,
                        logical: 2,
                        node: "node-1".into(),
                    },
                    WireConfigEntry {
                        key: "deleted".into(),
                        value: None,
                        wall_ms: 1_795_514_400_001,
                        logical: 0,
                        node: "node-2".into(),
                    },
                ],
            })
            .unwrap(),
        ),
        (
            "config_digest.bin",
            wire::encode(&ConfigDigest {
                sender: 11,
                entries: 2,
                fingerprint: 0xdead_beef,
                reply: true,
                buckets: vec![
                    ConfigBucketDigest {
                        index: 3,
                        entries: 1,
                        fingerprint: 0xdead_0000,
                    },
                    ConfigBucketDigest {
                        index: 1_023,
                        entries: 1,
                        fingerprint: 0xbeef,
                    },
                ],
            })
            .unwrap(),
        ),
        (
            "node_health.bin",
            wire::encode(&NodeHealth {
                owner: 11,
                node_id: "node-1".into(),
                version: 7,
                published_ms: 1_795_514_400_000,
                cpu_millicores: 250,
                memory_bytes: 50 << 20,
                memory_total_bytes: 8 << 30,
                open_connections: 2,
                request_rate_milli: 1_500_000,
                links: vec![WireLinkHealth {
                    node_id: "node-2".into(),
                    up: true,
                    rtt_us: 350,
                }],
            })
            .unwrap(),
        ),
        (
            "membership.bin",
            wire::encode(&MembershipPacket {
                payload: b"swim-probe".to_vec(),
            })
            .unwrap(),
        ),
    ]
}

#[test]
fn seed_corpus_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode_frame");
    if std::env::var_os("BIFROST_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        let committed = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            committed, bytes,
            "{name} is stale: rerun with BIFROST_WRITE_SEEDS=1"
        );
        wire::decode(&committed).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
