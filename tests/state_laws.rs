//! Property tests of the shared-state laws: hybrid logical clocks are monotonic and order writes after what
//! they observed; the config map's last-writer-wins merge is commutative, associative and idempotent, and every
//! delivery order converges to the map the timestamps imply.

use std::collections::BTreeMap;
use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::state::{ConfigEntry, ConfigMap, ConfigMapOptions, Hlc, Timestamp};
use bytes::Bytes;
use proptest::prelude::*;

fn entry(key: u8, value: Option<u8>, wall: u64, logical: u32, node: u8) -> ConfigEntry {
    ConfigEntry {
        key: Arc::from(format!("k{key}").as_str()),
        value: value.map(|v| Bytes::from(vec![v])),
        ts: Timestamp {
            wall_ms: UnixMs::new(wall),
            logical,
            node: Arc::from(format!("n{node}").as_str()),
        },
    }
}

/// Random writes. A timestamp is issued once, by one node, for one write: the same `(key, timestamp)` always
/// carries the same value (or tombstone), so the content is derived from them.
fn entries() -> impl Strategy<Value = Vec<ConfigEntry>> {
    prop::collection::vec(
        (0u8..5, 0u64..50, 0u32..3, 0u8..4).prop_map(|(k, w, l, n)| {
            let h = (u64::from(k) * 31 + w * 7 + u64::from(l) * 3 + u64::from(n)) % 11;
            let value = (h != 0).then_some(h as u8);
            entry(k, value, w, l, n)
        }),
        0..40,
    )
}

/// What a map holds: its digest and its live entries.
type MapState = ((u32, u64), Vec<(String, Vec<u8>)>);

/// The state a map reaches after merging `list` in order.
fn apply(list: &[ConfigEntry]) -> MapState {
    let mut m = ConfigMap::new("observer", ConfigMapOptions::default());
    for e in list {
        m.merge(e.clone(), 1_000);
    }
    state(&m)
}

fn state(m: &ConfigMap) -> MapState {
    (
        m.digest(),
        m.live().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
    )
}

/// What the timestamps imply: per key, the entry with the greatest timestamp.
fn implied(list: &[ConfigEntry]) -> Vec<(String, Vec<u8>)> {
    let mut best: BTreeMap<String, &ConfigEntry> = BTreeMap::new();
    for e in list {
        let k = e.key.to_string();
        if best.get(&k).is_none_or(|b| e.ts > b.ts) {
            best.insert(k, e);
        }
    }
    best.into_iter()
        .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v.to_vec())))
        .collect()
}

proptest! {
    #[test]
    fn any_order_converges_to_the_map_the_timestamps_imply(list in entries(), seed in any::<u64>()) {
        let mut shuffled = list.clone();
        // A seeded Fisher–Yates shuffle, with duplicates appended (redelivery).
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        shuffled.extend(list.iter().take(5).cloned());
        let a = apply(&list);
        let b = apply(&shuffled);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.1, implied(&list));
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(x in entries(), y in entries(), z in entries()) {
        let cat = |parts: &[&Vec<ConfigEntry>]| parts.iter().flat_map(|p| p.iter().cloned()).collect::<Vec<_>>();
        prop_assert_eq!(apply(&cat(&[&x, &y])), apply(&cat(&[&y, &x])));
        prop_assert_eq!(apply(&cat(&[&cat(&[&x, &y]), &z])), apply(&cat(&[&x, &cat(&[&y, &z])])));
        prop_assert_eq!(apply(&cat(&[&x, &x])), apply(&x));
    }

    #[test]
    fn hlc_ticks_are_strictly_increasing_and_follow_what_they_observed(
        steps in prop::collection::vec((any::<bool>(), 0u64..10_000, 0u32..5), 1..100),
    ) {
        let mut clock = Hlc::new("me");
        let mut last: Option<Timestamp> = None;
        let mut max_seen: Option<Timestamp> = None;
        for (observe, wall, logical) in steps {
            if observe {
                let remote = Timestamp { wall_ms: UnixMs::new(wall), logical, node: Arc::from("other") };
                clock.observe(&remote, UnixMs::new(5_000));
                if max_seen.as_ref().is_none_or(|m| remote > *m) { max_seen = Some(remote); }
            } else {
                let t = clock.tick(UnixMs::new(wall));
                prop_assert!(t.wall_ms >= UnixMs::new(wall), "a tick is at least the wall clock");
                if let Some(prev) = &last { prop_assert!(t > *prev, "{} after {}", t, prev); }
                // Within the drift bound, a tick orders after everything observed (ties broken by node id:
                // "me" < "other", so compare wall and logical).
                if let Some(m) = &max_seen { prop_assert!((t.wall_ms, t.logical) > (m.wall_ms, m.logical)); }
                last = Some(t);
            }
        }
    }
}
