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
//!   an older put arriving late. A tombstone is collected [`ConfigMapOptions::tombstone_ttl_ms`] after its
//!   write; a node cut off for longer than that may bring the deleted key back (documented trade-off).
//! - **Bounded.** At most `max_entries` keys (tombstones included), keys up to `max_key_bytes`, values up to
//!   `max_value_bytes`. A local put past a bound is refused with a typed [`StateError`]; a remote value past
//!   one is dropped and counted, and the map keeps what it has. Remote deletes are never refused for space.
//! - **No entry from the far future.** A remote entry written more than [`MAX_DRIFT_MS`] ahead of this node's
//!   clock is refused (it would win over every write for that long); an expired tombstone is not taken back
//!   once collected, so collection converges.
//! - Sans-IO: time comes in as `now_ms`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::error::StateError;
use super::hlc::{Hlc, MAX_DRIFT_MS, Timestamp};

/// Bounds and timing of the map. Every node of a cluster should use the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapOptions {
    /// Most keys held, tombstones included. Default: 10 000. Must be ≥ 1.
    pub max_entries: usize,
    /// Longest key, in bytes (UTF-8). Default: 256. Range 1..=4 096.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default: 65 536. Range 0..=262 144 (one value must fit one frame).
    pub max_value_bytes: usize,
    /// How long a tombstone is kept after its delete, in ms. Default: 86 400 000 (24 h). Must be ≥ 1.
    pub tombstone_ttl_ms: u64,
}

impl Default for ConfigMapOptions {
    fn default() -> Self {
        ConfigMapOptions {
            max_entries: 10_000,
            max_key_bytes: 256,
            max_value_bytes: 65_536,
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
    /// Remote entries older than (or equal to) what we held.
    pub stale: u64,
    /// Remote entries refused by a bound (map full, key or value too large).
    pub refused: u64,
    /// Tombstones collected.
    pub tombstones_collected: u64,
}

/// The replicated map of one node.
#[derive(Debug, Clone)]
pub struct ConfigMap {
    hlc: Hlc,
    entries: BTreeMap<Arc<str>, ConfigEntry>,
    options: ConfigMapOptions,
    stats: ConfigMapStats,
}

impl ConfigMap {
    /// An empty map whose writes are issued by `node` (the node id).
    pub fn new(node: &str, options: ConfigMapOptions) -> ConfigMap {
        ConfigMap {
            hlc: Hlc::new(node),
            entries: BTreeMap::new(),
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

    fn check(&self, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
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
        if !self.entries.contains_key(key) && self.entries.len() >= self.options.max_entries {
            return Err(StateError::Full {
                max_entries: self.options.max_entries,
            });
        }
        Ok(())
    }

    /// Writes `value` under `key` at wall time `now_ms`. Returns the entry to replicate.
    pub fn put(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<ConfigEntry, StateError> {
        self.write(key, Some(value), now_ms)
    }

    /// Deletes `key` at wall time `now_ms`: writes a tombstone and returns it to replicate. A key this node
    /// never saw gets a tombstone too (a put for it may be on its way).
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<ConfigEntry, StateError> {
        self.write(key, None, now_ms)
    }

    /// A local write (a value, or a tombstone for `None`) stamped with the next HLC timestamp.
    fn write(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<ConfigEntry, StateError> {
        self.check(key, value.as_deref())?;
        let entry = ConfigEntry {
            key: Arc::from(key),
            value,
            ts: self.hlc.tick(now_ms),
        };
        self.entries.insert(Arc::clone(&entry.key), entry.clone());
        Ok(entry)
    }

    /// Merges a remote entry at wall time `now_ms`. Returns the visible change, if the entry won and changed
    /// what a reader sees.
    pub fn merge(&mut self, entry: ConfigEntry, now_ms: u64) -> Option<ConfigChange> {
        if entry.ts.wall_ms > now_ms.saturating_add(MAX_DRIFT_MS) {
            // Written by a clock far ahead: it would beat every write for that long. Refused.
            self.stats.refused += 1;
            return None;
        }
        if entry.value.is_none()
            && entry
                .ts
                .wall_ms
                .saturating_add(self.options.tombstone_ttl_ms)
                <= now_ms
        {
            // A tombstone past its time: every node collects it; taking it back would resurrect it forever.
            self.stats.stale += 1;
            return None;
        }
        self.hlc.observe(&entry.ts, now_ms);
        let current = self.entries.get(&entry.key);
        if let Some(current) = current
            && current.ts >= entry.ts
        {
            self.stats.stale += 1;
            return None;
        }
        // Deletes are never refused for space (they are how space comes back); sizes still apply.
        let refused = match &entry.value {
            Some(value) => self.check(&entry.key, Some(value)).is_err(),
            None => entry.key.is_empty() || entry.key.len() > self.options.max_key_bytes,
        };
        if refused {
            self.stats.refused += 1;
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
        self.entries.insert(Arc::clone(&entry.key), entry);
        change
    }

    /// The value of `key`, if it has one (not deleted).
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// The entry of `key`, tombstone included.
    pub fn entry(&self, key: &str) -> Option<&ConfigEntry> {
        self.entries.get(key)
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &ConfigEntry> {
        self.entries.values()
    }

    /// Keys with a value, and their values, in key order.
    pub fn live(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries
            .values()
            .filter_map(|e| e.value.as_ref().map(|v| (&*e.key, v)))
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(entries, fingerprint)`: equal on two maps that hold the same entries (tombstones included). The
    /// fingerprint is an order-independent hash of each key and timestamp.
    pub fn digest(&self) -> (u32, u64) {
        let mut fingerprint = 0u64;
        for e in self.entries.values() {
            fingerprint ^= entry_hash(e);
        }
        (self.entries.len() as u32, fingerprint)
    }

    /// Collects tombstones older than `tombstone_ttl_ms` at wall time `now_ms`. Returns how many.
    pub fn collect_tombstones(&mut self, now_ms: u64) -> usize {
        let ttl = self.options.tombstone_ttl_ms;
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.value.is_some() || e.ts.wall_ms.saturating_add(ttl) > now_ms);
        let collected = before - self.entries.len();
        self.stats.tombstones_collected += collected as u64;
        collected
    }
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
    eat(&e.ts.wall_ms.to_le_bytes());
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

    #[test]
    fn last_writer_wins_and_a_late_old_put_does_not_undo_a_delete() {
        let (mut a, mut b) = (map("a"), map("b"));
        let put = a
            .put("route/x", Bytes::from_static(b"v1"), 1_000)
            .expect("put");
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
        let mut m = ConfigMap::new(
            "a",
            ConfigMapOptions {
                max_entries: 2,
                max_key_bytes: 8,
                max_value_bytes: 4,
                ..ConfigMapOptions::default()
            },
        );
        m.put("k1", Bytes::from_static(b"1"), 1).expect("put");
        m.put("k2", Bytes::from_static(b"2"), 2).expect("put");
        assert_eq!(
            m.put("k3", Bytes::new(), 3),
            Err(StateError::Full { max_entries: 2 })
        );
        assert!(
            m.put("k1", Bytes::from_static(b"11"), 4).is_ok(),
            "an existing key is replaced"
        );
        assert_eq!(
            m.put("k1", Bytes::from_static(b"12345"), 5),
            Err(StateError::ValueTooLarge { len: 5, max: 4 })
        );
        assert_eq!(
            m.put("123456789", Bytes::new(), 6),
            Err(StateError::KeyTooLong { len: 9, max: 8 })
        );
        assert_eq!(m.put("", Bytes::new(), 6), Err(StateError::EmptyKey));
        let mut other = map("b");
        let remote = other.put("k9", Bytes::from_static(b"9"), 10).expect("put");
        assert_eq!(m.merge(remote, 10), None);
        assert_eq!(m.stats().refused, 1);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn expired_tombstones_and_far_future_entries_are_not_taken() {
        let mut a = ConfigMap::new(
            "a",
            ConfigMapOptions {
                tombstone_ttl_ms: 100,
                ..ConfigMapOptions::default()
            },
        );
        let mut b = ConfigMap::new(
            "b",
            ConfigMapOptions {
                tombstone_ttl_ms: 100,
                ..ConfigMapOptions::default()
            },
        );
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
        let future = c
            .put("k", Bytes::from_static(b"x"), 10_000_000)
            .expect("put");
        assert_eq!(a.merge(future, 10_000_000 - MAX_DRIFT_MS - 1), None);
        assert_eq!(a.stats().refused, 1);
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
        m.put("live", Bytes::from_static(b"x"), 1_000).expect("put");
        m.delete("gone", 1_000).expect("delete");
        assert_eq!(m.collect_tombstones(1_099), 0);
        assert_eq!(m.collect_tombstones(1_100), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("live").map(|v| &v[..]), Some(&b"x"[..]));
    }
}
