//! Wire benchmarks, each beside its baselines in one group (docs/benchmarks.md):
//!
//! - `wire/encode_batch`: encode a delta batch into a frame (header + archive, in place);
//! - `wire/access_batch`: decode it with full validation (header, bytecheck, limits, windows);
//! - `wire/merge_batch`: decode and merge every entry into a store whose values are already as high (duplicates,
//!   the common case under anti-entropy and redundant delivery);
//! - `wire/merge_batch_raising`: the same, where every entry raises its origin's value (fresh deltas): the
//!   per-origin table is updated and the remote sum republished for each entry;
//! - `baseline/serde_json_decode`, `baseline/postcard_decode`: the same batch decoded by serde_json and postcard.
//!
//! Throughput is reported in entries per second.

use std::hint::black_box;
use std::sync::Arc;

use bifrost_cluster::ReplicaId;
use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::replication::{Replicator, ReplicatorOptions};
use bifrost_cluster::wire::{self, DeltaBatch, Entry, Frame, OriginGroup, OriginKind, WireWindow};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const NOW: u64 = 1_795_514_400_000;
const ENTRIES: usize = 1_000;

/// The same batch as plain serde types, for the baselines.
mod mirror {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Window {
        pub count: u32,
        pub unit: u8,
        pub alignment: u8,
        pub phase_ms: u64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Entry {
        pub key: String,
        pub window: Window,
        pub epoch: u64,
        pub value: u64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Group {
        pub origin: u64,
        pub kind: u8,
        pub entries: Vec<Entry>,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Batch {
        pub sender: u64,
        pub sequence: u64,
        pub sent_at_ms: u64,
        pub groups: Vec<Group>,
    }
}

fn batch() -> DeltaBatch {
    batch_with_values(1_000)
}

fn batch_with_values(base: u64) -> DeltaBatch {
    let window = Window::parse("1m").expect("valid window");
    let epoch = window.epoch_at(UnixMs::new(NOW));
    let entries = (0..ENTRIES)
        .map(|i| Entry {
            key: format!("vk/provider-{}/model-{i}", i % 7),
            window: WireWindow::from(window),
            epoch,
            value: base + i as u64,
        })
        .collect();
    DeltaBatch {
        sender: 2,
        sequence: 1,
        sent_at_ms: NOW,
        groups: vec![OriginGroup {
            origin: 2,
            kind: OriginKind::Replica,
            entries,
        }],
    }
}

fn mirror_of(b: &DeltaBatch) -> mirror::Batch {
    mirror::Batch {
        sender: b.sender,
        sequence: b.sequence,
        sent_at_ms: b.sent_at_ms,
        groups: b
            .groups
            .iter()
            .map(|g| mirror::Group {
                origin: g.origin,
                kind: 0,
                entries: g
                    .entries
                    .iter()
                    .map(|e| mirror::Entry {
                        key: e.key.clone(),
                        window: mirror::Window {
                            count: e.window.count,
                            unit: e.window.unit,
                            alignment: e.window.alignment,
                            phase_ms: e.window.phase_ms,
                        },
                        epoch: e.epoch,
                        value: e.value,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn wire_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    let batch = batch();
    let mut buffer = Vec::with_capacity(64 * 1024);
    group.bench_function("wire/encode_batch", |b| {
        b.iter(|| {
            buffer =
                wire::encode_into(black_box(&batch), std::mem::take(&mut buffer)).expect("encodes");
            buffer.len()
        })
    });
    let frame = wire::encode(&batch).expect("encodes");
    group.bench_function("wire/access_batch", |b| {
        b.iter(|| match wire::decode(black_box(&frame)) {
            Ok(Frame::DeltaBatch(archived)) => archived.groups[0].entries.len(),
            _ => unreachable!("a valid batch"),
        })
    });
    let mut replicator = linked_replicator();
    while replicator.poll_transmit().is_some() {}
    group.bench_function("wire/merge_batch", |b| {
        b.iter(|| {
            replicator
                .handle_frame(2, black_box(&frame), NOW)
                .expect("merges")
        })
    });
    // 64 frames whose values grow from one to the next: after an untimed first frame creates the cells, every
    // timed entry raises its origin's value.
    let raising: Vec<Vec<u8>> = (1..=64u64)
        .map(|k| wire::encode(&batch_with_values(k * 10_000)).expect("encodes"))
        .collect();
    group.bench_function("wire/merge_batch_raising", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = std::time::Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut replicator = linked_replicator();
                replicator
                    .handle_frame(2, &raising[0], NOW)
                    .expect("merges");
                let chunk = (iters - done).min(raising.len() as u64 - 1) as usize;
                let start = std::time::Instant::now();
                for frame in &raising[1..=chunk] {
                    replicator
                        .handle_frame(2, black_box(frame), NOW)
                        .expect("merges");
                }
                elapsed += start.elapsed();
                done += chunk as u64;
            }
            elapsed
        })
    });
    let mirror = mirror_of(&batch);
    let json = serde_json::to_vec(&mirror).expect("serializes");
    group.bench_function("baseline/serde_json_decode", |b| {
        b.iter(|| {
            serde_json::from_slice::<mirror::Batch>(black_box(&json))
                .expect("decodes")
                .groups
                .len()
        })
    });
    let post = postcard::to_allocvec(&mirror).expect("serializes");
    group.bench_function("baseline/postcard_decode", |b| {
        b.iter(|| {
            postcard::from_bytes::<mirror::Batch>(black_box(&post))
                .expect("decodes")
                .groups
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, wire_benches);
criterion_main!(benches);

/// Replica 1 with a fresh store at `NOW`, linked to replica 2 as peer 2.
fn linked_replicator() -> Replicator {
    let store = CounterStore::new(StoreOptions {
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let mut replicator = Replicator::new(
        store,
        ReplicaId::new(1),
        ReplicatorOptions::default(),
        7,
        NOW,
    );
    replicator.add_peer(2, ReplicaId::new(2), Some(1200));
    replicator
}
