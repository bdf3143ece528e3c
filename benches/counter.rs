//! Hot-path benchmarks of the counter plane, each beside its baseline in one group so results read as ratios
//! from the same run (see docs/benchmarks.md):
//!
//! - `floor/atomic_fetch_add`: a bare `AtomicU64::fetch_add`, the physical floor;
//! - `handle/add`, `handle/try_acquire`: the resolved-handle hot path;
//! - `state/record`: one request recorded by the traffic plane (count + latency bucket), latencies of 80–215 ms;
//!   `state/record_seconds` the same with latencies of 1.2–14.7 s;
//! - `by_key/add` against `dashmap/string_add`: lookup by string on every call;
//! - `governor/direct`, `governor/keyed`: the `governor` crate's limiter, what a Rust gateway would use locally;
//! - `contended/handle_add_2threads` against `contended/atomic_2threads`: two threads on one hot key (the
//!   reported time is per increment, summed over both threads, so lower is higher throughput);
//! - `status_page/hottest_100k_keys` (the scan behind `GET /v1/keys/hot`, at most once a second per node) against
//!   `status_page/local_snapshot_100k_keys` (the full state transfer's pass over the same cells).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::state::{Outcome, TrafficRecorder};
use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use governor::{Quota, RateLimiter};

/// 2026-11-24T10:00:00Z.
const T0: u64 = 1_795_514_400_000;
const KEYS: usize = 1024;

fn store() -> CounterStore {
    CounterStore::new(StoreOptions {
        clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
        ..StoreOptions::default()
    })
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("vk/provider-{}/model-{}", i % 7, i))
        .collect()
}

/// Runs `op` `iters` times split over two threads and returns the wall time: per-op time over both threads.
fn two_threads(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters / 2 {
                    op();
                }
            });
        }
    });
    start.elapsed()
}

fn counter(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter");
    let minute = Window::parse("1m").expect("valid window");

    let floor = AtomicU64::new(0);
    group.bench_function("floor/atomic_fetch_add", |b| {
        // Relaxed: the floor is the cheapest correct increment.
        b.iter(|| black_box(&floor).fetch_add(black_box(1), Ordering::Relaxed))
    });

    let s = store();
    let handle = s.handle("vk/openai/gpt-4o", minute).expect("handle");
    group.bench_function("handle/add", |b| {
        b.iter(|| black_box(&handle).add(black_box(1)))
    });
    // Traffic patterns (the shared-state plane): one request with its latency, on a resolved handle. Latencies
    // cycle over 16 values in a few buckets, as real traffic does; target: at most 4x the floor.
    let traffic = TrafficRecorder::new(s.clone(), minute)
        .handle("openai/gpt-4o")
        .expect("traffic handle");
    // `state/record`: 16 latencies of 80–215 ms (the bucket's table path); `state/record_seconds`: 16 of
    // 1.2–14.7 s (long generations: the f64 path).
    let cases = [
        ("state/record", 80_000u64, 9_000u64),
        ("state/record_seconds", 1_200_000, 900_000),
    ];
    for (id, first_us, step_us) in cases {
        let latencies: Vec<Duration> = (0..16u64)
            .map(|i| Duration::from_micros(first_us + i * step_us))
            .collect();
        let mut l = 0usize;
        group.bench_function(id, |b| {
            b.iter(|| {
                l = (l + 1) & 15;
                black_box(&traffic).record(black_box(latencies[l]), Outcome::Ok)
            })
        });
    }
    let limited = s
        .handle("vk/openai/gpt-4o-limited", minute)
        .expect("handle");
    group.bench_function("handle/try_acquire", |b| {
        b.iter(|| black_box(&limited).try_acquire(black_box(u64::MAX), black_box(1)))
    });
    // A key over its limit: every acquire refuses (and counts its refusal).
    let refused = s
        .handle("vk/openai/gpt-4o-refused", minute)
        .expect("handle");
    refused.add(1);
    group.bench_function("handle/try_acquire_refused", |b| {
        b.iter(|| black_box(&refused).try_acquire(black_box(1), black_box(1)))
    });

    let keys = keys();
    for key in &keys {
        s.add(key, minute, 1).expect("key fits");
    }
    let mut i = 0usize;
    group.bench_function("by_key/add", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            s.add(black_box(&keys[i]), minute, black_box(1))
        })
    });

    let dash: DashMap<String, AtomicU64> = keys
        .iter()
        .map(|k| (k.clone(), AtomicU64::new(0)))
        .collect();
    let mut i = 0usize;
    group.bench_function("dashmap/string_add", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            // Relaxed: the baseline's cheapest increment.
            dash.get(black_box(keys[i].as_str()))
                .map(|v| v.fetch_add(black_box(1), Ordering::Relaxed))
        })
    });

    let quota = Quota::per_second(NonZeroU32::MAX);
    let direct = RateLimiter::direct(quota);
    group.bench_function("governor/direct", |b| {
        b.iter(|| black_box(&direct).check().is_ok())
    });
    let keyed = RateLimiter::keyed(quota);
    for key in &keys {
        let _ = keyed.check_key(key);
    }
    let mut i = 0usize;
    group.bench_function("governor/keyed", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            keyed.check_key(black_box(&keys[i])).is_ok()
        })
    });

    // Two threads on one hot key. Warm the cell up under contention and drain once, as the node's flush does
    // every few milliseconds: the drain gives a contended cell its stripes (never the hot path).
    let hot = s.handle("hot", minute).expect("handle");
    two_threads(2_000_000, &|| {
        black_box(&hot).add(1);
    });
    s.drain_dirty(usize::MAX, &mut Vec::new());
    group.bench_function("contended/handle_add_2threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| {
                black_box(&hot).add(black_box(1));
            })
        })
    });
    let shared = AtomicU64::new(0);
    group.bench_function("contended/atomic_2threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| {
                // Relaxed: the baseline's cheapest increment.
                black_box(&shared).fetch_add(black_box(1), Ordering::Relaxed);
            })
        })
    });
    group.finish();
}

fn status_page(c: &mut Criterion) {
    let mut group = c.benchmark_group("status_page");
    group.sample_size(10);
    let minute = Window::parse("1m").expect("valid window");
    let s = CounterStore::new(StoreOptions {
        max_keys: 100_000,
        clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
        ..StoreOptions::default()
    });
    for i in 0..100_000u64 {
        s.add(&format!("tenant-{i}/gpt-4o"), minute, i % 977 + 1)
            .expect("key fits");
    }
    group.bench_function("hottest_100k_keys", |b| {
        b.iter(|| black_box(&s).hottest(black_box(100)))
    });
    group.bench_function("local_snapshot_100k_keys", |b| {
        b.iter(|| black_box(&s).local_snapshot())
    });
    group.finish();
}

criterion_group!(benches, counter, status_page);
criterion_main!(benches);
