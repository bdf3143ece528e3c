//! Property tests for the merge laws of the counter plane: per-origin max merge is commutative, associative and
//! idempotent, and once every replica has received every other's values — in any order, with duplicates —
//! each replica's global value equals the exact sum of all increments.

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, DirtyEntry, StoreOptions, Window};
use proptest::prelude::*;

const T0: u64 = 1_795_514_400_000;
const KEYS: [&str; 3] = ["vk/a", "vk/b", "budget/c"];

fn window() -> Window {
    Window::parse("1m").unwrap()
}

fn replica(id: u64, clock: &Arc<CoarseClock>) -> CounterStore {
    CounterStore::new(StoreOptions {
        replica_id: id,
        clock: Arc::clone(clock),
        ..StoreOptions::default()
    })
}

/// The remote sum one store ends with after merging `reports` (origin, value) for one key and epoch in order.
fn merged(reports: &[(u64, u64)]) -> u64 {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let store = replica(0, &clock);
    let epoch = window().epoch_at(UnixMs::new(T0));
    for &(origin, value) in reports {
        store
            .merge_remote(origin, "k", window(), epoch, value)
            .unwrap();
    }
    store.global("k", window())
}

fn reports() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((1u64..6, 0u64..1_000), 0..24)
}

proptest! {
    #[test]
    fn merge_is_commutative(reports in reports(), seed in any::<u64>()) {
        let mut shuffled = reports.clone();
        shuffle(&mut shuffled, seed);
        prop_assert_eq!(merged(&reports), merged(&shuffled));
    }

    #[test]
    fn merge_is_associative(a in reports(), b in reports(), c in reports()) {
        // (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c): merging the per-origin maxima of a group equals merging its members.
        let max_of = |xs: &[(u64, u64)]| -> Vec<(u64, u64)> {
            let mut m = std::collections::BTreeMap::new();
            for &(o, v) in xs { let e = m.entry(o).or_insert(0); *e = (*e).max(v); }
            m.into_iter().collect()
        };
        let left = [max_of(&[a.clone(), b.clone()].concat()), c.clone()].concat();
        let right = [a.clone(), max_of(&[b.clone(), c.clone()].concat())].concat();
        prop_assert_eq!(merged(&left), merged(&right));
        prop_assert_eq!(merged(&left), merged(&[a, b, c].concat()));
    }

    #[test]
    fn merge_is_idempotent(reports in reports()) {
        let twice = [reports.clone(), reports.clone()].concat();
        prop_assert_eq!(merged(&reports), merged(&twice));
        let expected: u64 = {
            let mut m = std::collections::BTreeMap::new();
            for &(o, v) in &reports { let e = m.entry(o).or_insert(0u64); *e = (*e).max(v); }
            m.values().sum()
        };
        prop_assert_eq!(merged(&reports), expected);
    }

    /// Replicas increment keys, drain at random moments (possibly crossing into the next window), and every
    /// drained batch is delivered to every other replica in a random order, with duplicates. Afterwards every
    /// replica's global value of every key and window equals the exact number of increments made.
    #[test]
    fn every_replica_converges_to_the_exact_sum(
        replicas in 2usize..5,
        ops in prop::collection::vec((0usize..5, 0usize..3, 1u64..50, any::<bool>(), prop::bool::weighted(0.05)), 1..200),
        seed in any::<u64>(),
    ) {
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0 + 1_000)));
        let stores: Vec<_> = (0..replicas).map(|i| replica(100 + i as u64, &clock)).collect();
        let handles: Vec<Vec<_>> = stores.iter()
            .map(|s| KEYS.iter().map(|k| s.handle(k, window()).unwrap()).collect())
            .collect();
        let mut expected = std::collections::BTreeMap::new();
        let mut messages: Vec<(u64, DirtyEntry)> = Vec::new();
        let mut moved = false;
        for (r, k, n, drain, next_window) in ops {
            let r = r % replicas;
            if next_window && !moved {
                // Everyone crosses into the next window together (all nodes compute the same boundary).
                clock.set_unix_ms(UnixMs::new(T0 + 60_000 + 5_000));
                moved = true;
            }
            handles[r][k].add(n);
            *expected.entry((KEYS[k], handles[r][k].epoch_now())).or_insert(0u64) += n;
            if drain {
                let mut out = Vec::new();
                stores[r].drain_dirty(usize::MAX, &mut out);
                messages.extend(out.into_iter().map(|e| (100 + r as u64, e)));
            }
        }
        for (r, store) in stores.iter().enumerate() {
            let mut out = Vec::new();
            store.drain_dirty(usize::MAX, &mut out);
            messages.extend(out.into_iter().map(|e| (100 + r as u64, e)));
        }
        // Duplicate a random third of the messages, then shuffle the lot.
        let dupes: Vec<_> = messages.iter().enumerate()
            .filter(|(i, _)| (seed.rotate_left(*i as u32 % 64) & 3) == 0)
            .map(|(_, m)| m.clone()).collect();
        messages.extend(dupes);
        for (r, store) in stores.iter().enumerate() {
            let mut inbox = messages.clone();
            shuffle(&mut inbox, seed ^ r as u64);
            for (origin, e) in inbox {
                if origin != 100 + r as u64 {
                    store.merge_remote(origin, &e.key, e.window, e.epoch, e.value).unwrap();
                }
            }
        }
        for ((key, epoch), total) in &expected {
            for (r, h) in handles.iter().enumerate() {
                let k = KEYS.iter().position(|x| x == key).unwrap();
                prop_assert_eq!(h[k].global_at(*epoch), *total, "replica {} key {} epoch {}", r, key, epoch);
            }
        }
    }
}

/// Deterministic Fisher–Yates driven by a splitmix64 sequence from `seed`.
fn shuffle<T>(xs: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..xs.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        xs.swap(i, j);
    }
}
