//! Memory per key and per remote contributor of the counter store, beside two baselines measured in the same run
//! (see docs/benchmarks.md, "Memory per key"):
//!
//! - `std_map`: a `std::collections::HashMap<Arc<str>, AtomicU64>` holding the same keys (the least a keyed
//!   atomic counter costs in Rust);
//! - `store`: a [`CounterStore`] sized for exactly the keys it holds (`max_keys` = keys), one add per key, so
//!   every key has this node's value only;
//! - `store_remote`: the same store after two other origins' values were merged into every key (a three-node
//!   cluster); the growth over `store`, divided by the values merged, is the cost of a key's first remote
//!   contributors (it includes the per-epoch record a key allocates for its first one);
//! - `store_remote4`: four other origins per key (a five-node cluster); its growth over `store_remote`, divided
//!   by the values merged, is what each further contributor costs.
//!
//! Each measurement runs in a child process of its own (this binary re-executed with `--measure NAME`), so no
//! measurement inherits another's freed-but-kept pages. Two figures per measurement: heap bytes live (a counting
//! global allocator: bytes allocated minus bytes freed) and resident set growth (`/proc/self/statm`), both taken
//! after the structure is built and before it is dropped, minus the same figures before it was built.
//!
//! Keys are 16 bytes (`vk-00000000/gpt4`). `cargo bench --bench memory` holds 1,000,000 keys;
//! `cargo bench --bench memory -- --test` (the CI smoke) holds 10,000 and checks only that it runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};

/// A global allocator that counts the bytes it has handed out and not yet taken back.
struct Counting;

/// Bytes allocated minus bytes freed. Relaxed: a total read after the threads that allocate have finished
/// (this program is single threaded while it measures), no ordering with other memory needed.
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged, so `System`'s guarantees hold;
// the counter is only arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract; we pass its layout on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator (so from `System`) with this layout, per the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as in `dealloc`; `new_size` is the caller's, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// 2026-11-24T10:00:00Z.
const T0: u64 = 1_795_514_400_000;
const REMOTE_ORIGINS: [u64; 4] = [0xB0B, 0xCAFE, 0xD00D, 0xF00D];

/// Heap bytes live and resident bytes now.
fn usage() -> (i64, i64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let resident_pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (LIVE.load(Ordering::Relaxed), resident_pages * 4096)
}

fn key(i: usize) -> String {
    format!("vk-{i:08}/gpt4")
}

/// Builds the measured structure in this process and prints `heap_bytes rss_bytes` of its growth.
fn measure(name: &str, keys: usize) {
    let window = Window::parse("1h").expect("a valid window");
    let names: Vec<String> = (0..keys).map(key).collect();
    let before = usage();
    let after;
    match name {
        "std_map" => {
            let mut map: HashMap<Arc<str>, AtomicU64> = HashMap::new();
            for k in &names {
                map.entry(Arc::from(k.as_str()))
                    .or_insert_with(|| AtomicU64::new(0))
                    // Relaxed: a counter read by nobody but this single-threaded measurement.
                    .fetch_add(1, Ordering::Relaxed);
            }
            after = usage();
            std::hint::black_box(&map);
        }
        "store" | "store_remote" | "store_remote4" => {
            let store = CounterStore::new(StoreOptions {
                max_keys: keys,
                max_remote_keys: keys,
                replica_id: 0xA11CE,
                clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
                ..StoreOptions::default()
            });
            for k in &names {
                store.add(k, window, 1).expect("within max_keys");
            }
            let remote = match name {
                "store_remote" => 2,
                "store_remote4" => 4,
                _ => 0,
            };
            if remote > 0 {
                let epoch = window.epoch_at(UnixMs::new(T0));
                for k in &names {
                    for &origin in &REMOTE_ORIGINS[..remote] {
                        store
                            .merge_from_origin(origin, k, window, epoch, 3)
                            .expect("a known key");
                    }
                }
            }
            after = usage();
            std::hint::black_box(&store);
        }
        other => panic!("unknown measurement {other}"),
    }
    println!("{} {}", after.0 - before.0, after.1 - before.1);
}

/// Runs `name` in a child process and returns its `(heap, rss)` growth.
fn run_child(name: &str, keys: usize) -> (f64, f64) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let out = Command::new(exe)
        .args(["--measure", name, "--keys", &keys.to_string()])
        .output()
        .expect("the bench can run itself");
    assert!(
        out.status.success(),
        "measurement {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>());
    match (fields.next(), fields.next()) {
        (Some(Ok(heap)), Some(Ok(rss))) => (heap, rss),
        _ => panic!("measurement {name} printed {text:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let smoke = args.iter().any(|a| a == "--test");
    let keys = arg("--keys")
        .and_then(|k| k.parse().ok())
        .unwrap_or(if smoke { 10_000 } else { 1_000_000 });
    if let Some(name) = arg("--measure") {
        measure(name, keys);
        return;
    }
    let n = keys as f64;
    let (map_heap, map_rss) = run_child("std_map", keys);
    let (store_heap, store_rss) = run_child("store", keys);
    let (remote_heap, remote_rss) = run_child("store_remote", keys);
    let (remote4_heap, remote4_rss) = run_child("store_remote4", keys);
    let values = n * 2.0;
    println!("memory, {keys} keys of 16 bytes (heap bytes live / resident set growth):");
    println!(
        "  std_map (baseline)          {:7.1} B/key heap  {:7.1} B/key RSS",
        map_heap / n,
        map_rss / n
    );
    println!(
        "  store, own value only       {:7.1} B/key heap  {:7.1} B/key RSS  ({:.2}x / {:.2}x the baseline)",
        store_heap / n,
        store_rss / n,
        store_heap / map_heap,
        store_rss / map_rss
    );
    println!(
        "  store, two remote origins   {:7.1} B/key heap  {:7.1} B/key RSS",
        remote_heap / n,
        remote_rss / n
    );
    println!(
        "  store, four remote origins  {:7.1} B/key heap  {:7.1} B/key RSS",
        remote4_heap / n,
        remote4_rss / n
    );
    println!(
        "  per remote contributor, a key's first two   {:7.1} B heap  {:7.1} B RSS",
        (remote_heap - store_heap) / values,
        (remote_rss - store_rss) / values
    );
    println!(
        "  per remote contributor, third and fourth    {:7.1} B heap  {:7.1} B RSS",
        (remote4_heap - remote_heap) / values,
        (remote4_rss - remote_rss) / values
    );
}
