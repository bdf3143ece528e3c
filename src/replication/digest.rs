//! Per-origin fingerprints for anti-entropy.
//!
//! A node's digest has, for each origin it holds values of, the number of recent `(key, window, epoch)` values
//! and the XOR of a 64-bit hash of each `(key, window, epoch, value)`. Two nodes that hold the same recent values
//! of an origin produce the same fingerprint, in any order; a difference in any value changes it (up to hash
//! collisions, 2^-64 per comparison). "Recent" is the current and the previous epoch of each window at `now`,
//! so nodes whose rings differ by an expired epoch do not see a difference.
//!
//! Floors (set by resets) get one fingerprint for the whole store: their number and the XOR of a hash of each
//! recent `(origin, key, window, epoch, floor)`. They are few (one per origin of each reset key) and a
//! difference makes the receiver send all of them.
//!
//! The hash uses a fixed seed: it must agree across nodes (unlike the store's map hash, which is per process).

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use crate::UnixMs;
use crate::counter::{CounterStore, DirtyEntry, Window};
use crate::wire::{OriginDigest, WireWindow};

const FINGERPRINT_SEED: u64 = 0x6466_7270_7269_6e74;

/// The fingerprint hash of one value.
pub fn value_hash(key: &str, window: Window, epoch: u64, value: u64) -> u64 {
    let key_hash = foldhash::fast::FixedState::with_seed(FINGERPRINT_SEED).hash_one(key.as_bytes());
    let w = WireWindow::from(window);
    let window_code =
        (u64::from(w.count) << 16) | (u64::from(w.unit) << 8) | u64::from(w.alignment);
    // An anchored window's phase is part of its identity (0 for the other alignments).
    mix(key_hash ^ mix(window_code ^ mix(w.phase_ms ^ mix(epoch ^ mix(value)))))
}

/// The fingerprint hash of one floor of `origin`.
pub fn floor_hash(origin: u64, key: &str, window: Window, epoch: u64, floor: u64) -> u64 {
    mix(origin ^ mix(value_hash(key, window, epoch, floor) ^ 0x0066_6c6f_6f72))
}

/// Every recent floor this node holds, by origin (see [`CounterStore::floor_snapshot`]).
pub fn floors_by_origin(store: &CounterStore, now_ms: u64) -> BTreeMap<u64, Vec<DirtyEntry>> {
    let mut by_origin: BTreeMap<u64, Vec<DirtyEntry>> = BTreeMap::new();
    for (origin, entry) in store.floor_snapshot() {
        if is_recent(entry.window, entry.epoch, now_ms) {
            by_origin.entry(origin).or_default().push(entry);
        }
    }
    by_origin
}

/// `(count, fingerprint)` of `floors` (as produced by [`floors_by_origin`]).
pub fn floor_digest(floors: &BTreeMap<u64, Vec<DirtyEntry>>) -> (u32, u64) {
    let mut count: u64 = 0;
    let mut fingerprint = 0;
    for (&origin, entries) in floors {
        for e in entries {
            count += 1;
            fingerprint ^= floor_hash(origin, &e.key, e.window, e.epoch, e.value);
        }
    }
    (u32::try_from(count).unwrap_or(u32::MAX), fingerprint)
}

/// splitmix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether `epoch` is recent for `window` at `now_ms`: the current or the previous epoch.
pub fn is_recent(window: Window, epoch: u64, now_ms: u64) -> bool {
    let current = window.epoch_at(UnixMs::new(now_ms));
    epoch + 1 >= current && epoch <= current
}

/// Every recent value this node holds, by origin: its own values under `own_replica`, merged ones under their
/// origin. Walks the store once.
pub fn values_by_origin(
    store: &CounterStore,
    own_replica: u64,
    now_ms: u64,
) -> BTreeMap<u64, Vec<DirtyEntry>> {
    let mut by_origin: BTreeMap<u64, Vec<DirtyEntry>> = BTreeMap::new();
    for entry in store.local_snapshot() {
        if is_recent(entry.window, entry.epoch, now_ms) {
            by_origin.entry(own_replica).or_default().push(entry);
        }
    }
    for (origin, entry) in store.remote_snapshot() {
        if is_recent(entry.window, entry.epoch, now_ms) {
            by_origin.entry(origin).or_default().push(entry);
        }
    }
    by_origin
}

/// The digest of `values` (as produced by [`values_by_origin`]).
pub fn digest_of(values: &BTreeMap<u64, Vec<DirtyEntry>>) -> Vec<OriginDigest> {
    values
        .iter()
        .map(|(&origin, entries)| OriginDigest {
            origin,
            entries: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            fingerprint: entries.iter().fold(0, |acc, e| {
                acc ^ value_hash(&e.key, e.window, e.epoch, e.value)
            }),
        })
        .collect()
}
