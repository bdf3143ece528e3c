//! Cluster-wide config entries: a replicated key → bytes map, last writer wins by hybrid logical clock.
//!
//! Guarantees:
//! - **Convergence.** Every write carries an HLC [`Timestamp`]; [`ConfigMap::merge`] keeps, per key, the entry
//!   with the greatest timestamp (wall time, then logical counter, then node id). The merge is commutative,
//!   associative and idempotent, so any two maps that have seen the same writes hold the same entries, in any
//!   order of delivery, with losses repaired by anti-entropy.
//! - **Skew cannot win forever.** Receiving an entry advances this node's clock past it ([`Hlc::observe`]), so
//!   the next local write orders after everything this node has seen.
//! - **Deletes are tombstones** (an entry without a value), ordered like writes, so a delete is not undone by
//!   an older put arriving late. Tombstones live **outside** the live budget, under their own bound
//!   ([`ConfigMapOptions::max_tombstones`]), so deleting can never fill the map: a delete always frees the
//!   room its value took, at once, for the next put. A tombstone is collected
//!   [`ConfigMapOptions::tombstone_ttl_ms`] after its write, or earlier when more than `max_tombstones` are
//!   held (the oldest first, counted in [`ConfigMapStats::tombstones_evicted`]); a node that missed a delete
//!   and stays cut off past that point may bring the deleted key back (documented trade-off, see
//!   `docs/state.md`).
//! - **Bounded.** At most `max_entries` live keys holding at most `max_bytes` of keys and values, keys up to
//!   `max_key_bytes`, values up to `max_value_bytes`, at most `max_tombstones` tombstones. A local put past a
//!   bound is refused with a typed [`StateError`] naming the limit; a remote value past one is not stored and
//!   counted ([`ConfigMapStats::refused_full`], [`ConfigMapStats::refused_invalid`]), and the map keeps what
//!   it has. Nothing about the refusal is remembered: the [`digest`](ConfigMap::digest) still differs from
//!   the peer that holds the entry, so anti-entropy offers it again every round and it is stored once room
//!   frees up. Remote deletes are never refused for space.
//! - **Digests cover live entries only**, per bucket of keys ([`ConfigMap::bucket`]): two maps with the same
//!   live entries (key and timestamp) have equal digests whatever tombstones each still holds, so tombstones
//!   collected at different times never cause repairs; a lost delete still shows (one side holds a value the
//!   other does not) and is repaired with the tombstones of that bucket.
//! - **No entry from the far future.** A remote entry written more than [`MAX_DRIFT_MS`] ahead of this node's
//!   clock is refused (it would win over every write for that long); an expired tombstone is not taken back
//!   once collected, so collection converges.
//! - Sans-IO: time comes in as `now_ms`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use super::error::{Limit, StateError};
use super::hlc::{Hlc, MAX_DRIFT_MS, Timestamp};
use crate::UnixMs;

/// Number of key buckets a digest compares (`bucket = hash(key) % DIGEST_BUCKETS`): a difference is repaired by
/// sending the entries of the differing buckets only.
pub const DIGEST_BUCKETS: usize = crate::wire::MAX_CONFIG_DIGEST_BUCKETS;

/// Bounds and timing of the map. Every node of a cluster should use the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapOptions {
    /// Most live keys (tombstones not included). Default: [`ConfigMapOptions::DEFAULT_MAX_ENTRIES`]. Must be
    /// ≥ 1.
    pub max_entries: usize,
    /// Most bytes of live keys and values (the sum of `key.len() + value.len()`; tombstones and bookkeeping not
    /// included). Default: [`ConfigMapOptions::DEFAULT_MAX_BYTES`] (16 MiB). Should be at least
    /// `max_key_bytes + max_value_bytes`, or a largest value can never be stored.
    pub max_bytes: usize,
    /// Most tombstones kept; past it the oldest is collected early. Default:
    /// [`ConfigMapOptions::DEFAULT_MAX_TOMBSTONES`]. Must be ≥ 1.
    pub max_tombstones: usize,
    /// Longest key, in bytes (UTF-8). Default: 256. Range 1..=4 096.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default: 65 536. Range 0..=262 144 (one value must fit one frame).
    pub max_value_bytes: usize,
    /// How long a tombstone is kept after its delete, in ms. Default: 86 400 000 (24 h). Must be ≥ 1.
    pub tombstone_ttl_ms: u64,
}

impl ConfigMapOptions {
    /// Default `max_entries`: 10 000 live keys.
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
    /// Default `max_bytes`: 16 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
    /// Default `max_tombstones`: 10 000.
    pub const DEFAULT_MAX_TOMBSTONES: usize = 10_000;
    /// Default `max_key_bytes`.
    pub const DEFAULT_MAX_KEY_BYTES: usize = 256;
    /// Default `max_value_bytes`: 64 KiB.
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 65_536;
}

impl Default for ConfigMapOptions {
    fn default() -> Self {
        ConfigMapOptions {
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_tombstones: Self::DEFAULT_MAX_TOMBSTONES,
            max_key_bytes: Self::DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: Self::DEFAULT_MAX_VALUE_BYTES,
            tombstone_ttl_ms: 86_400_000,
        }
    }
}

/// One entry: a value (or a tombstone) and the timestamp of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The key.
    pub key: Arc<str>,
    /// The value; `None` for a delete (tombstone).
    pub value: Option<Bytes>,
    /// When (in HLC order) and by whom it was written.
    pub ts: Timestamp,
}

/// A visible change of the map, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// `key` now holds `value` (a new key or a new value).
    Put {
        /// The key.
        key: Arc<str>,
        /// The new value.
        value: Bytes,
        /// The write's timestamp.
        ts: Timestamp,
    },
    /// `key` was deleted.
    Deleted {
        /// The key.
        key: Arc<str>,
        /// The delete's timestamp.
        ts: Timestamp,
    },
}

/// Counters of the map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigMapStats {
    /// Remote entries that replaced what we held (or added a key).
    pub merged: u64,
    /// Remote entries older than (or equal to) what we held, or tombstones already past their TTL.
    pub stale: u64,
    /// Remote values not stored because the map was at `max_entries` or `max_bytes`. Anti-entropy offers them
    /// again; they are stored once room frees up.
    pub refused_full: u64,
    /// Remote entries refused for good: key empty or too long, value too large, written too far in the future.
    pub refused_invalid: u64,
    /// Tombstones collected after their TTL.
    pub tombstones_collected: u64,
    /// Tombstones collected before their TTL because more than `max_tombstones` were held.
    pub tombstones_evicted: u64,
}

/// What the map holds now, against its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigMapUsage {
    /// Live keys.
    pub live_entries: usize,
    /// Bytes of live keys and values.
    pub live_bytes: usize,
    /// Tombstones.
    pub tombstones: usize,
}

#[derive(Debug, Clone)]
struct Slot {
    entry: ConfigEntry,
    bucket: u16,
}

/// The replicated map of one node.
#[derive(Debug, Clone)]
pub struct ConfigMap {
    hlc: Hlc,
    entries: BTreeMap<Arc<str>, Slot>,
    /// Tombstones by age (timestamp order), for TTL collection and eviction.
    tombstones: BTreeSet<(Timestamp, Arc<str>)>,
    /// Per bucket: live entries and the xor of their hashes.
    buckets: Vec<(u32, u64)>,
    live_bytes: usize,
    options: ConfigMapOptions,
    stats: ConfigMapStats,
}

/// Bytes a live entry counts against `max_bytes`.
fn live_size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

impl ConfigMap {
    /// An empty map whose writes are issued by `node` (the node id).
    pub fn new(node: &str, options: ConfigMapOptions) -> ConfigMap {
        ConfigMap {
            hlc: Hlc::new(node),
            entries: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            buckets: vec![(0, 0); DIGEST_BUCKETS],
            live_bytes: 0,
            options,
            stats: ConfigMapStats::default(),
        }
    }

    /// The bounds in force.
    pub fn options(&self) -> &ConfigMapOptions {
        &self.options
    }

    /// Counters.
    pub fn stats(&self) -> ConfigMapStats {
        self.stats
    }

    /// What the map holds against its bounds.
    pub fn usage(&self) -> ConfigMapUsage {
        ConfigMapUsage {
            live_entries: self.entries.len() - self.tombstones.len(),
            live_bytes: self.live_bytes,
            tombstones: self.tombstones.len(),
        }
    }

    /// Key and value sizes; not the room left.
    fn check_sizes(&self, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
        if key.is_empty() {
            return Err(StateError::EmptyKey);
        }
        if key.len() > self.options.max_key_bytes {
            return Err(StateError::KeyTooLong {
                len: key.len(),
                max: self.options.max_key_bytes,
            });
        }
        if let Some(v) = value
            && v.len() > self.options.max_value_bytes
        {
            return Err(StateError::ValueTooLarge {
                len: v.len(),
                max: self.options.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Whether `key` may hold `value`: room among the live entries, counting what `key` holds now as freed.
    fn check_room(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let held = self
            .entries
            .get(key)
            .and_then(|s| s.entry.value.as_ref())
            .map(|v| live_size(key, v));
        let usage = self.usage();
        if held.is_none() && usage.live_entries >= self.options.max_entries {
            return Err(StateError::Full {
                limit: Limit::Entries,
                max: self.options.max_entries,
            });
        }
        let after = self.live_bytes - held.unwrap_or(0) + live_size(key, value);
        // Shrinking a value is always allowed, even over the bound (after the bounds were lowered).
        if after > self.options.max_bytes && after > self.live_bytes {
            return Err(StateError::Full {
                limit: Limit::Bytes,
                max: self.options.max_bytes,
            });
        }
        Ok(())
    }

    /// Writes `value` under `key` at wall time `now_ms`. Returns the entry to replicate.
    pub fn put(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<ConfigEntry, StateError> {
        self.check_sizes(key, Some(&value))?;
        self.check_room(key, &value)?;
        Ok(self.write(key, Some(value), now_ms))
    }

    /// Deletes `key` at wall time `now_ms`: writes a tombstone and returns it to replicate. A key this node
    /// never saw gets a tombstone too (a put for it may be on its way). Never refused for space: the value's
    /// room is free at once, and at `max_tombstones` the oldest tombstone is collected.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<ConfigEntry, StateError> {
        self.check_sizes(key, None)?;
        Ok(self.write(key, None, now_ms))
    }

    /// A local write (a value, or a tombstone for `None`) stamped with the next HLC timestamp; bounds checked.
    fn write(&mut self, key: &str, value: Option<Bytes>, now_ms: u64) -> ConfigEntry {
        let entry = ConfigEntry {
            key: Arc::from(key),
            value,
            ts: self.hlc.tick(UnixMs::new(now_ms)),
        };
        self.store(entry.clone());
        entry
    }

    /// Replaces what `entry.key` holds by `entry`, keeping the counters, buckets and tombstone index right, and
    /// collects the oldest tombstones past `max_tombstones`. Bounds are the caller's.
    fn store(&mut self, entry: ConfigEntry) {
        let bucket = bucket_of(&entry.key);
        if let Some(old) = self.entries.remove(&entry.key) {
            self.unindex(&old);
        }
        let slot = Slot { entry, bucket };
        self.index(&slot);
        self.entries.insert(Arc::clone(&slot.entry.key), slot);
        while self.tombstones.len() > self.options.max_tombstones.max(1) {
            let Some((_, key)) = self.tombstones.pop_first() else {
                break;
            };
            self.entries.remove(&key);
            self.stats.tombstones_evicted += 1;
        }
    }

    fn index(&mut self, slot: &Slot) {
        match &slot.entry.value {
            Some(v) => {
                self.live_bytes += live_size(&slot.entry.key, v);
                let b = &mut self.buckets[usize::from(slot.bucket)];
                b.0 += 1;
                b.1 ^= entry_hash(&slot.entry);
            }
            None => {
                self.tombstones
                    .insert((slot.entry.ts.clone(), Arc::clone(&slot.entry.key)));
            }
        }
    }

    fn unindex(&mut self, slot: &Slot) {
        match &slot.entry.value {
            Some(v) => {
                self.live_bytes -= live_size(&slot.entry.key, v);
                let b = &mut self.buckets[usize::from(slot.bucket)];
                b.0 -= 1;
                b.1 ^= entry_hash(&slot.entry);
            }
            None => {
                self.tombstones
                    .remove(&(slot.entry.ts.clone(), Arc::clone(&slot.entry.key)));
            }
        }
    }

    /// Merges a remote entry at wall time `now_ms`. Returns the visible change, if the entry won and changed
    /// what a reader sees. An entry refused for space is counted in [`ConfigMapStats::refused_full`] and not
    /// remembered: the next anti-entropy round offers it again.
    pub fn merge(&mut self, entry: ConfigEntry, now_ms: u64) -> Option<ConfigChange> {
        if entry.ts.wall_ms.get() > now_ms.saturating_add(MAX_DRIFT_MS) {
            // Written by a clock far ahead: it would beat every write for that long. Refused.
            self.stats.refused_invalid += 1;
            return None;
        }
        if entry.value.is_none()
            && entry
                .ts
                .wall_ms
                .get()
                .saturating_add(self.options.tombstone_ttl_ms)
                <= now_ms
        {
            // A tombstone past its time: every node collects it; taking it back would resurrect it forever.
            self.stats.stale += 1;
            return None;
        }
        self.hlc.observe(&entry.ts, UnixMs::new(now_ms));
        let current = self.entries.get(&entry.key).map(|s| &s.entry);
        if let Some(current) = current
            && current.ts >= entry.ts
        {
            self.stats.stale += 1;
            return None;
        }
        if self
            .check_sizes(&entry.key, entry.value.as_deref())
            .is_err()
        {
            self.stats.refused_invalid += 1;
            return None;
        }
        // Deletes are never refused for space (they are how space comes back).
        if let Some(value) = &entry.value
            && self.check_room(&entry.key, value).is_err()
        {
            self.stats.refused_full += 1;
            return None;
        }
        let was_visible = current.and_then(|c| c.value.clone());
        self.stats.merged += 1;
        let change = match (&entry.value, was_visible) {
            (Some(v), Some(old)) if *v == old => None,
            (Some(v), _) => Some(ConfigChange::Put {
                key: Arc::clone(&entry.key),
                value: v.clone(),
                ts: entry.ts.clone(),
            }),
            (None, Some(_)) => Some(ConfigChange::Deleted {
                key: Arc::clone(&entry.key),
                ts: entry.ts.clone(),
            }),
            (None, None) => None,
        };
        self.store(entry);
        change
    }

    /// The value of `key`, if it has one (not deleted).
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.get(key).and_then(|s| s.entry.value.as_ref())
    }

    /// The entry of `key`, tombstone included.
    pub fn entry(&self, key: &str) -> Option<&ConfigEntry> {
        self.entries.get(key).map(|s| &s.entry)
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &ConfigEntry> {
        self.entries.values().map(|s| &s.entry)
    }

    /// Every entry, tombstones included, in key order, with its digest bucket.
    pub fn entries_with_bucket(&self) -> impl Iterator<Item = (u16, &ConfigEntry)> {
        self.entries.values().map(|s| (s.bucket, &s.entry))
    }

    /// Keys with a value, and their values, in key order.
    pub fn live(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries
            .values()
            .filter_map(|s| s.entry.value.as_ref().map(|v| (&*s.entry.key, v)))
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(live entries, fingerprint)`: equal on two maps that hold the same live entries (key and timestamp),
    /// whatever tombstones each holds. The fingerprint is an order-independent hash of each key and timestamp.
    pub fn digest(&self) -> (u32, u64) {
        let live = self.usage().live_entries;
        let fingerprint = self.buckets.iter().fold(0, |f, b| f ^ b.1);
        (u32::try_from(live).unwrap_or(u32::MAX), fingerprint)
    }

    /// `(live entries, fingerprint)` of one bucket of keys (`bucket < DIGEST_BUCKETS`; others read as empty).
    pub fn bucket(&self, bucket: u16) -> (u32, u64) {
        self.buckets
            .get(usize::from(bucket))
            .copied()
            .unwrap_or((0, 0))
    }

    /// Collects tombstones older than `tombstone_ttl_ms` at wall time `now_ms`. Returns how many.
    pub fn collect_tombstones(&mut self, now_ms: u64) -> usize {
        let ttl = self.options.tombstone_ttl_ms;
        let mut collected = 0;
        while let Some((ts, _)) = self.tombstones.first()
            && ts.wall_ms.get().saturating_add(ttl) <= now_ms
        {
            if let Some((_, key)) = self.tombstones.pop_first() {
                self.entries.remove(&key);
                collected += 1;
            }
        }
        self.stats.tombstones_collected += collected as u64;
        collected
    }
}

/// The digest bucket of `key`: the same on every node and every build.
pub fn bucket_of(key: &str) -> u16 {
    let h = fnv(key.as_bytes());
    // Below DIGEST_BUCKETS (1 024), so it fits in u16.
    (h % DIGEST_BUCKETS as u64) as u16
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A fixed-seed 64-bit hash (FNV-1a, then a final mix) of an entry's key and timestamp: the same on every node
/// and every build.
fn entry_hash(e: &ConfigEntry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(e.key.as_bytes());
    eat(&[0xff]);
    eat(&e.ts.wall_ms.get().to_le_bytes());
    eat(&e.ts.logical.to_le_bytes());
    eat(e.ts.node.as_bytes());
    eat(&[u8::from(e.value.is_some())]);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &str) -> ConfigMap {
        ConfigMap::new(node, ConfigMapOptions::default())
    }

    fn small(node: &str, max_entries: usize, max_bytes: usize, max_tombstones: usize) -> ConfigMap {
        ConfigMap::new(
            node,
            ConfigMapOptions {
                max_entries,
                max_bytes,
                max_tombstones,
                max_key_bytes: 8,
                max_value_bytes: 16,
                ..ConfigMapOptions::default()
            },
        )
    }

    fn v(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn last_writer_wins_and_a_late_old_put_does_not_undo_a_delete() {
        let (mut a, mut b) = (map("a"), map("b"));
        let put = a.put("route/x", v("v1"), 1_000).expect("put");
        assert!(b.merge(put.clone(), 1_000).is_some());
        let del = b.delete("route/x", 2_000).expect("delete");
        assert_eq!(
            a.merge(del.clone(), 2_000),
            Some(ConfigChange::Deleted {
                key: Arc::from("route/x"),
                ts: del.ts.clone()
            })
        );
        // The old put arrives again, late: ignored.
        assert_eq!(a.merge(put, 3_000), None);
        assert_eq!(a.get("route/x"), None);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn bounds_are_typed_errors_locally_and_counted_remotely() {
        let mut m = small("a", 2, 1_000, 10);
        m.put("k1", v("1"), 1).expect("put");
        m.put("k2", v("2"), 2).expect("put");
        assert_eq!(
            m.put("k3", Bytes::new(), 3),
            Err(StateError::Full {
                limit: Limit::Entries,
                max: 2
            })
        );
        assert!(
            m.put("k1", v("11"), 4).is_ok(),
            "an existing key is replaced"
        );
        assert_eq!(
            m.put("k1", Bytes::from(vec![0; 17]), 5),
            Err(StateError::ValueTooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            m.put("123456789", Bytes::new(), 6),
            Err(StateError::KeyTooLong { len: 9, max: 8 })
        );
        assert_eq!(m.put("", Bytes::new(), 6), Err(StateError::EmptyKey));
        let mut other = map("b");
        let remote = other.put("k9", v("9"), 10).expect("put");
        assert_eq!(m.merge(remote, 10), None);
        assert_eq!(m.stats().refused_full, 1);
        let invalid = other.put("too-long-key", v("9"), 10).expect("put");
        assert_eq!(m.merge(invalid, 10), None);
        assert_eq!(m.stats().refused_invalid, 1);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_delete_frees_room_at_once_and_tombstones_never_fill_the_live_budget() {
        let mut m = small("a", 3, 1_000, 2);
        for round in 0..10u64 {
            let keys = [
                format!("a{round}"),
                format!("b{round}"),
                format!("c{round}"),
            ];
            for k in &keys {
                m.put(k, v("x"), round * 10 + 1)
                    .expect("room after the deletes");
            }
            assert!(m.put("extra", v("x"), round * 10 + 2).is_err(), "full");
            for k in &keys {
                m.delete(k, round * 10 + 3)
                    .expect("a delete is never refused");
            }
        }
        let usage = m.usage();
        assert_eq!(usage.live_entries, 0);
        assert_eq!(usage.live_bytes, 0);
        assert_eq!(usage.tombstones, 2, "tombstones have their own bound");
        assert_eq!(m.stats().tombstones_evicted, 28, "the oldest went first");
        assert!(m.entry("c9").is_some() && m.entry("b9").is_some());
    }

    #[test]
    fn total_bytes_are_bounded_and_a_smaller_value_always_fits() {
        let mut m = small("a", 100, 20, 10);
        m.put("k1", v("0123456789abcdef"), 1).expect("18 bytes");
        assert_eq!(
            m.put("k2", v("x"), 2),
            Err(StateError::Full {
                limit: Limit::Bytes,
                max: 20
            })
        );
        m.put("k1", v("0123"), 3).expect("smaller");
        m.put("k2", v("0123456789"), 4).expect("room again");
        assert_eq!(m.usage().live_bytes, 18);
        m.delete("k1", 5).expect("delete");
        assert_eq!(m.usage().live_bytes, 12);
        // A remote value that does not fit is refused and counted; the same entry is taken once room frees.
        let mut other = map("b");
        let remote = other.put("k3", v("0123456789"), 6).expect("put");
        assert_eq!(m.merge(remote.clone(), 6), None);
        assert_eq!(m.stats().refused_full, 1);
        m.delete("k2", 7).expect("delete");
        assert!(m.merge(remote, 8).is_some(), "stored once room frees up");
        assert_eq!(m.get("k3").map(|b| &b[..]), Some(&b"0123456789"[..]));
    }

    #[test]
    fn digests_compare_live_entries_only() {
        let (mut a, mut b) = (map("a"), map("b"));
        let put = a.put("k", v("1"), 1).expect("put");
        b.merge(put, 1);
        assert_eq!(a.digest(), b.digest());
        a.delete("gone", 2)
            .expect("a tombstone for a key b never saw");
        assert_eq!(a.digest(), b.digest(), "tombstones do not count");
        let del = a.delete("k", 3).expect("delete");
        assert_ne!(a.digest(), b.digest(), "a missed delete shows");
        let bucket = bucket_of("k");
        assert_ne!(a.bucket(bucket), b.bucket(bucket));
        b.merge(del, 3);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.bucket(bucket), (0, 0));
    }

    #[test]
    fn expired_tombstones_and_far_future_entries_are_not_taken() {
        let options = ConfigMapOptions {
            tombstone_ttl_ms: 100,
            ..ConfigMapOptions::default()
        };
        let mut a = ConfigMap::new("a", options.clone());
        let mut b = ConfigMap::new("b", options);
        let tombstone = b.delete("gone", 1_000).expect("delete");
        assert_eq!(a.merge(tombstone.clone(), 1_050), None);
        assert_eq!(a.len(), 1, "a fresh tombstone is kept");
        a.collect_tombstones(1_100);
        assert_eq!(a.len(), 0);
        assert_eq!(
            a.merge(tombstone, 1_200),
            None,
            "an expired tombstone does not come back"
        );
        assert_eq!(a.len(), 0);
        let mut c = ConfigMap::new("c", ConfigMapOptions::default());
        let future = c.put("k", v("x"), 10_000_000).expect("put");
        assert_eq!(a.merge(future, 10_000_000 - MAX_DRIFT_MS - 1), None);
        assert_eq!(a.stats().refused_invalid, 1);
    }

    #[test]
    fn tombstones_are_collected_after_their_ttl() {
        let mut m = ConfigMap::new(
            "a",
            ConfigMapOptions {
                tombstone_ttl_ms: 100,
                ..ConfigMapOptions::default()
            },
        );
        m.put("live", v("x"), 1_000).expect("put");
        m.delete("gone", 1_000).expect("delete");
        assert_eq!(m.collect_tombstones(1_099), 0);
        assert_eq!(m.collect_tombstones(1_100), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("live").map(|v| &v[..]), Some(&b"x"[..]));
        assert_eq!(m.usage().tombstones, 0);
    }
}
