//! Property tests of signed counts (refunds and in-flight limits, `counter::signed`): a counter and its released
//! companion are two G-counters merged per origin by max, so whatever order the replicas' values arrive in,
//! repeated or not, every replica ends with the same net count, the sum of all additions minus the sum of all
//! releases; and however many replicas release at once, the releases never exceed the additions (each
//! releases only from its own counts).

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{
    Algorithm, CoarseClock, CounterStore, StoreOptions, Window, departed_origin, in_flight_key,
    released_key,
};
use proptest::prelude::*;

const T0: u64 = 1_795_514_400_000;
const REPLICAS: u64 = 3;

fn window() -> Window {
    Window::parse("1h").unwrap()
}

fn replicas(clock: &Arc<CoarseClock>) -> Vec<CounterStore> {
    (1..=REPLICAS)
        .map(|id| {
            CounterStore::new(StoreOptions {
                replica_id: id,
                clock: Arc::clone(clock),
                ..StoreOptions::default()
            })
        })
        .collect()
}

/// One step: replica `r` acquires `n` (limit 1,000), releases `n`, or sends its own values of `key` and its
/// companion to replica `to` (a delta batch that may repeat an earlier one or overtake nothing).
#[derive(Debug, Clone)]
enum Step {
    Acquire { r: usize, n: u64 },
    Release { r: usize, n: u64 },
    Send { r: usize, to: usize },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let r = 0..REPLICAS as usize;
    prop::collection::vec(
        prop_oneof![
            (r.clone(), 1u64..20).prop_map(|(r, n)| Step::Acquire { r, n }),
            (r.clone(), 1u64..20).prop_map(|(r, n)| Step::Release { r, n }),
            (r.clone(), r).prop_map(|(r, to)| Step::Send { r, to }),
        ],
        0..80,
    )
}

/// Replica `from`'s own values of `key` (and its companion) merged into `to`.
fn send(stores: &[CounterStore], from: usize, to: usize, key: &str) {
    if from == to {
        return;
    }
    let origin = stores[from].options().replica_id;
    let epoch = window().epoch_at(UnixMs::new(T0));
    for k in [key.to_owned(), released_key(key)] {
        if let Some((own, _)) = stores[from].counts_at(&k, window(), epoch) {
            stores[to]
                .merge_remote(origin, &k, window(), epoch, own)
                .unwrap();
        }
    }
}

proptest! {
    #[test]
    fn refunds_converge_to_the_exact_net_count_in_any_merge_order(steps in steps(), tail in prop::collection::vec((0..3usize, 0..3usize), 0..12)) {
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
        let stores = replicas(&clock);
        let key = "budget/team";
        let (mut added, mut released) = (0u64, 0u64);
        for step in &steps {
            match *step {
                Step::Acquire { r, n } => {
                    let h = stores[r].handle(key, window()).unwrap();
                    if stores[r].acquire_net(&h, Algorithm::FixedWindow, 1_000, n).allowed {
                        added += n;
                    }
                }
                Step::Release { r, n } => {
                    let done = stores[r].release(key, window(), n).unwrap();
                    prop_assert_eq!(done.released + done.unmatched, n);
                    released += done.released;
                    prop_assert!(released <= added, "released {released} of {added}");
                }
                Step::Send { r, to } => send(&stores, r, to, key),
            }
        }
        // Some more batches in any order, then every replica's values to every other (a repeat of earlier
        // batches changes nothing).
        for &(r, to) in &tail {
            send(&stores, r, to, key);
        }
        for from in 0..stores.len() {
            for to in 0..stores.len() {
                send(&stores, from, to, key);
            }
        }
        prop_assert!(released <= added);
        for s in &stores {
            let h = s.handle(key, window()).unwrap();
            prop_assert_eq!(s.net(&h), added - released);
        }
    }

    #[test]
    fn a_departed_replicas_slots_are_released_once_whichever_nodes_release_them(
        held in 1u64..50, own_release in 0u64..50, releasing in prop::collection::vec(any::<bool>(), 3),
        exchange in any::<bool>(), late in 0u64..50,
    ) {
        // Replica 9 held `held` slots, gave back some itself, and was declared down. Each of the three nodes
        // may or may not have run its release, and their synthetic releases may or may not have been
        // exchanged; then `late` more of replica 9's own releases arrive (it was paused and came back under
        // the same id, or they were in flight when it crashed): the slots are released exactly once wherever
        // the release ran, and never more.
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
        let stores = replicas(&clock);
        let key = in_flight_key("model/gpt");
        let epoch = window().epoch_at(UnixMs::new(T0));
        let own_release = own_release.min(held);
        for s in &stores {
            s.merge_remote(9, &key, window(), epoch, held).unwrap();
            if own_release > 0 {
                s.merge_remote(9, &released_key(&key), window(), epoch, own_release).unwrap();
            }
        }
        for (s, run) in stores.iter().zip(&releasing) {
            if *run {
                s.release_departed(9);
            }
        }
        if exchange {
            let synthetic = departed_origin(9);
            let values: Vec<u64> = stores
                .iter()
                .filter_map(|s| s.origin_counts_at(&released_key(&key), window(), epoch)
                    .into_iter()
                    .find_map(|(o, v)| (o == synthetic).then_some(v)))
                .collect();
            for s in &stores {
                for &v in &values {
                    s.merge_remote(synthetic, &released_key(&key), window(), epoch, v).unwrap();
                }
            }
        }
        let own_release = own_release + late.min(held - own_release);
        for s in &stores {
            if own_release > 0 {
                s.merge_remote(9, &released_key(&key), window(), epoch, own_release).unwrap();
            }
        }
        for (i, s) in stores.iter().enumerate() {
            let h = s.handle(&key, window()).unwrap();
            let released_here = releasing[i] || (exchange && releasing.iter().any(|r| *r));
            let expected = if released_here { 0 } else { held - own_release };
            prop_assert_eq!(s.in_flight(&h), expected);
            prop_assert!(s.released_at(&key, window(), epoch) <= held, "never more than was taken");
        }
    }
}
