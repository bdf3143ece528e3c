//! Two-level aggregation through the counter store (issue 13): replicas in groups, per-origin values inside a
//! group, and group aggregates (`CounterStore::group_total` on a publisher, `CounterStore::merge_aggregate` on
//! the receivers) across groups. Properties: whatever publishers saw, whichever of them died, in any delivery
//! order with duplicates, every node's global count stays at or below the exact total and never falls; once the
//! values inside each group and one complete aggregate of every group have arrived, every node counts exactly
//! the total, on the hot path (`global`).

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{
    AggregateId, CoarseClock, CounterStore, MergeOutcome, StoreOptions, SumOf, Window, group_of,
};
use proptest::prelude::*;

const T0: u64 = 1_795_514_400_000;
const KEY: &str = "tenant-7/claude";
const NODES: u64 = 24;
const GROUPS: u32 = 4;

fn minute() -> Window {
    Window::parse("1m").unwrap()
}

fn epoch() -> u64 {
    minute().epoch_at(UnixMs::new(T0))
}

fn nodes(clock: &Arc<CoarseClock>) -> Vec<CounterStore> {
    (1..=NODES)
        .map(|id| {
            CounterStore::new(StoreOptions {
                replica_id: id,
                clock: Arc::clone(clock),
                ..StoreOptions::default()
            })
        })
        .collect()
}

fn id(node: &CounterStore) -> u64 {
    node.options().replica_id
}

fn group(node: &CounterStore) -> AggregateId {
    AggregateId::new(GROUPS, group_of(id(node), GROUPS)).unwrap()
}

/// `from`'s own value, merged into `to` over `from`'s link (inside a group).
fn ship(from: &CounterStore, to: &CounterStore) {
    let (own, _) = from.counts_at(KEY, minute(), epoch()).unwrap_or((0, 0));
    if own > 0 {
        to.merge_from_origin(id(from), KEY, minute(), epoch(), own)
            .unwrap();
    }
}

/// `publisher`'s aggregate of its group, merged into `to`: its floor sum, then its value sum (the outcome).
fn publish(publisher: &CounterStore, to: &CounterStore) -> MergeOutcome {
    let g = group(publisher);
    let (values, floors) = publisher.group_total(g, KEY, minute(), epoch());
    to.merge_aggregate(g, SumOf::Floors, KEY, minute(), epoch(), floors)
        .unwrap();
    to.merge_aggregate(g, SumOf::Values, KEY, minute(), epoch(), values)
        .unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    Add(usize, u64),
    /// Inside a group: node `from`'s value reaches `to` (ignored across groups).
    Ship(usize, usize),
    /// Node `publisher` publishes its group's aggregate to `to`.
    Publish(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    let n = NODES as usize;
    prop_oneof![
        (0..n, 1..20u64).prop_map(|(a, b)| Step::Add(a, b)),
        (0..n, 0..n).prop_map(|(a, b)| Step::Ship(a, b)),
        (0..n, 0..n).prop_map(|(a, b)| Step::Publish(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn aggregates_never_overcount_and_converge(
        steps in proptest::collection::vec(step(), 0..300),
        dead in proptest::collection::btree_set(0..NODES as usize, 0..8),
    ) {
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
        let nodes = nodes(&clock);
        let mut exact = 0u64;
        let mut last = vec![0u64; nodes.len()];
        for step in steps {
            match step {
                Step::Add(n, k) => {
                    nodes[n].add(KEY, minute(), k).unwrap();
                    exact += k;
                }
                Step::Ship(a, b) if group(&nodes[a]) == group(&nodes[b]) => ship(&nodes[a], &nodes[b]),
                Step::Ship(..) => {}
                Step::Publish(p, to) => {
                    publish(&nodes[p], &nodes[to]);
                }
            }
            for (i, node) in nodes.iter().enumerate() {
                let global = node.global(KEY, minute());
                prop_assert!(global <= exact, "node {i} counts {global} of {exact}");
                prop_assert!(global >= last[i], "node {i} fell from {} to {global}", last[i]);
                last[i] = global;
            }
        }
        // Quiescence: inside each group everyone ships to everyone; then one member of each group that is not
        // dead (the others' publishers died) publishes to every node.
        for a in &nodes {
            for b in &nodes {
                if group(a) == group(b) {
                    ship(a, b);
                }
            }
        }
        for g in 0..GROUPS {
            let publisher = (0..nodes.len())
                .filter(|i| !dead.contains(i))
                .find(|&i| group(&nodes[i]).group() == g);
            if let Some(p) = publisher {
                for to in &nodes {
                    publish(&nodes[p], to);
                }
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            let groups_alive = (0..GROUPS).all(|g| {
                (0..nodes.len()).any(|j| !dead.contains(&j) && group(&nodes[j]).group() == g)
            });
            if groups_alive {
                prop_assert_eq!(node.global(KEY, minute()), exact, "node {}", i);
            }
        }
    }
}

#[test]
fn own_group_aggregates_change_nothing() {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let nodes = nodes(&clock);
    let a = &nodes[0];
    let mate = nodes[1..]
        .iter()
        .find(|n| group(n) == group(a))
        .expect("24 nodes in 4 groups: a mate");
    mate.add(KEY, minute(), 5).unwrap();
    assert_eq!(publish(mate, a), MergeOutcome::Unchanged);
    assert_eq!(
        a.global(KEY, minute()),
        0,
        "its group's values come per origin"
    );
    ship(mate, a);
    assert_eq!(a.global(KEY, minute()), 5);
}

#[test]
fn a_reset_reaches_a_group_known_through_aggregates_by_its_floor_sum() {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let nodes = nodes(&clock);
    let a = &nodes[0];
    let stranger = nodes
        .iter()
        .find(|n| group(n) != group(a))
        .expect("another group");
    stranger.add(KEY, minute(), 40).unwrap();
    assert_eq!(publish(stranger, a), MergeOutcome::Raised);
    assert_eq!(a.global(KEY, minute()), 40);
    a.reset(KEY, minute(), epoch()).expect("the key is held");
    assert_eq!(
        a.global(KEY, minute()),
        40,
        "a holds no value of the stranger's group to floor: the floor comes from that group"
    );
    assert_eq!(
        a.drain_resets().len(),
        1,
        "the reset is queued as a command"
    );
    // The command reaches the stranger, which floors its own value and counts on.
    stranger
        .apply_reset(KEY, minute(), epoch())
        .expect("the key is held");
    assert!(
        stranger.drain_resets().is_empty(),
        "a command heard is not issued again"
    );
    stranger.add(KEY, minute(), 2).unwrap();
    assert_eq!(
        stranger.group_total(group(stranger), KEY, minute(), epoch()),
        (42, 40),
        "value sums keep growing; the floor sum says what the reset took"
    );
    assert_eq!(publish(stranger, a), MergeOutcome::Raised);
    assert_eq!(a.global(KEY, minute()), 2);
    // A stale aggregate from before the reset changes nothing.
    let g = group(stranger);
    assert_eq!(
        a.merge_aggregate(g, SumOf::Values, KEY, minute(), epoch(), 40)
            .unwrap(),
        MergeOutcome::Unchanged
    );
    assert_eq!(a.global(KEY, minute()), 2);
}

#[test]
fn aggregates_stay_in_their_window() {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let nodes = nodes(&clock);
    let a = &nodes[0];
    let stranger = nodes.iter().find(|n| group(n) != group(a)).unwrap();
    stranger.add(KEY, minute(), 9).unwrap();
    publish(stranger, a);
    assert_eq!(a.global(KEY, minute()), 9);
    clock.set_unix_ms(UnixMs::new(T0 + 60_000));
    assert_eq!(a.global(KEY, minute()), 0, "a new window starts from zero");
    let next = minute().epoch_at(UnixMs::new(T0 + 60_000));
    let g = group(stranger);
    assert_eq!(
        a.merge_aggregate(g, SumOf::Values, KEY, minute(), next + 2, 1)
            .unwrap(),
        MergeOutcome::Future
    );
}
