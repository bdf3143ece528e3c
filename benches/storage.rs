//! Benchmarks of the storage plane (counter snapshots, see docs/storage.md), each beside its baseline in one
//! group so results read as ratios from the same run (see docs/benchmarks.md):
//!
//! - `snapshot_100k` / `snapshot_1m`: a store of 100,000 / 1,000,000 keys (window 1 h), each with this node's
//!   value and two remote origins' (what a three-node cluster holds):
//!   - `state_transfer_pass`: the baseline, `local_snapshot` + `remote_snapshot`, the pass a state transfer makes;
//!   - `write`: one forced snapshot (collect, encode, checksum, write, fsync, rename) into a temporary directory;
//!   - `load`: read the file, verify and decode it, max-merge it into an empty store (the start-up cost).
//!
//!   The snapshot's size (bytes, bytes per value) is printed once per store.
//! - `hot_path`: `handle/add` alone against `handle/add` while another thread writes a snapshot of a 100,000-key
//!   store in a loop: the hot path must not pay for the writer (on two cores the writer owns the other one).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::storage::{Snapshotter, WriteOutcome, format, snapshot};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// 2026-11-24T10:00:00Z.
const T0: u64 = 1_795_514_400_000;
const REMOTE_ORIGINS: [u64; 2] = [0xB0B, 0xCAFE];

fn empty_store(keys: usize) -> CounterStore {
    CounterStore::new(StoreOptions {
        max_keys: keys + 1024,
        max_remote_keys: keys + 1024,
        replica_id: 0xA11CE,
        clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
        ..StoreOptions::default()
    })
}

/// A store of `keys` keys, each with an own value and one value per remote origin.
fn filled_store(keys: usize) -> CounterStore {
    let store = empty_store(keys);
    let window = Window::parse("1h").expect("a valid window");
    let epoch = window.epoch_at(UnixMs::new(T0));
    for i in 0..keys {
        let key = format!("vk-{i:08}/gpt-4o");
        store
            .add(&key, window, 1 + (i as u64 % 97))
            .expect("within max_keys");
        for (n, origin) in REMOTE_ORIGINS.iter().enumerate() {
            store
                .merge_from_origin(*origin, &key, window, epoch, 3 + n as u64 + i as u64 % 89)
                .expect("within max_remote_keys");
        }
    }
    store
}

fn snapshots(c: &mut Criterion, keys: usize, name: &str) {
    let store = filled_store(keys);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut snapshotter = Snapshotter::open(dir.path(), store.clone(), "bench-node", 0)
        .expect("an open data directory");
    match snapshotter.write(T0, true).expect("a snapshot") {
        WriteOutcome::Written { bytes, entries } => eprintln!(
            "{name}: {keys} keys, {entries} values, {bytes} bytes ({:.1} bytes per value, {:.1} per key)",
            bytes as f64 / entries as f64,
            bytes as f64 / keys as f64
        ),
        WriteOutcome::Unchanged => unreachable!("a forced write always writes"),
    }
    let file = snapshotter.dir().snapshot_path();

    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("state_transfer_pass", |b| {
        b.iter(|| {
            black_box(store.local_snapshot().len());
            black_box(store.remote_snapshot().len());
        })
    });
    group.bench_function("write", |b| {
        b.iter(|| black_box(snapshotter.write(T0, true).expect("a snapshot")))
    });
    group.bench_function("load", |b| {
        b.iter_batched(
            || empty_store(keys),
            |fresh| black_box(load_into(&file, &fresh)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn load_into(file: &Path, store: &CounterStore) -> u64 {
    let bytes = std::fs::read(file).expect("the snapshot file");
    let body = format::decode(&bytes).expect("a valid snapshot");
    snapshot::restore(store, body).values
}

fn snapshot_100k(c: &mut Criterion) {
    snapshots(c, 100_000, "snapshot_100k");
}

fn snapshot_1m(c: &mut Criterion) {
    snapshots(c, 1_000_000, "snapshot_1m");
}

fn hot_path(c: &mut Criterion) {
    let store = filled_store(100_000);
    let handle = store
        .handle(
            "vk-00000042/gpt-4o",
            Window::parse("1h").expect("a valid window"),
        )
        .expect("a handle");
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("handle_add", |b| b.iter(|| black_box(handle.add(1))));

    let stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut snapshotter = Snapshotter::open(dir.path(), store.clone(), "bench-node", 0)
        .expect("an open data directory");
    std::thread::scope(|s| {
        s.spawn(|| {
            // Relaxed: a stop flag; nothing else is published through it.
            while !stop.load(Ordering::Relaxed) {
                black_box(snapshotter.write(T0, true).expect("a snapshot"));
            }
        });
        group.bench_function("handle_add_while_snapshotting", |b| {
            b.iter(|| black_box(handle.add(1)))
        });
        // Relaxed: see the load above.
        stop.store(true, Ordering::Relaxed);
    });
    group.finish();
}

criterion_group!(benches, snapshot_100k, snapshot_1m, hot_path);
criterion_main!(benches);
