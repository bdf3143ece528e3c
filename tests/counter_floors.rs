//! Merge laws with floors (resets, issue 14). A reset on one node sets, per origin, a floor equal to the value it
//! holds for that origin; floors are max-merged and never exceed the value a node holds for their origin.
//! Properties: floors merged after the values, in any order and with duplicates, are idempotent and
//! commutative; once every node has every value and then every floor (what anti-entropy re-delivers), each node
//! counts exactly `Σ_origin (value − floor)`: everything counted before a reset is cleared, everything after
//! counts — on the node that issued it, on the others, and on the origin of a saturated value.

use std::collections::BTreeMap;
use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{
    AddOutcome, CoarseClock, CounterStore, FloorOutcome, MAX_CELL_VALUE, MergeOutcome,
    StoreOptions, Window,
};
use proptest::prelude::*;

const T0: u64 = 1_795_514_400_000;
const KEY: &str = "tenant-42/gpt-4o";

fn year() -> Window {
    Window::parse("1Y").unwrap()
}

fn nodes(n: u64) -> Vec<CounterStore> {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    (1..=n)
        .map(|id| {
            CounterStore::new(StoreOptions {
                replica_id: id,
                clock: Arc::clone(&clock),
                ..StoreOptions::default()
            })
        })
        .collect()
}

/// `from`'s own value of the key, as it ships it (absolute).
fn shipped(from: &CounterStore) -> Option<u64> {
    from.local_snapshot()
        .into_iter()
        .find(|e| &*e.key == KEY)
        .map(|e| e.value)
}

fn ship(from: &CounterStore, to: &CounterStore) {
    let epoch = year().epoch_at(UnixMs::new(T0));
    if let Some(value) = shipped(from) {
        to.merge_from_origin(from.options().replica_id, KEY, year(), epoch, value)
            .unwrap();
    }
}

/// Every floor `from` holds, merged into `to` (what an anti-entropy floor repair sends).
fn ship_floors(from: &CounterStore, to: &CounterStore) {
    for (origin, e) in from.floor_snapshot() {
        to.merge_floor(origin, &e.key, e.window, e.epoch, e.value);
    }
}

fn global(node: &CounterStore) -> u64 {
    node.global(KEY, year())
}

#[derive(Debug, Clone)]
enum Op {
    Add { node: usize, n: u64 },
    Ship { from: usize, to: usize },
    Reset { node: usize },
    ShipFloors { from: usize, to: usize },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0usize..3, 1u64..1_000).prop_map(|(node, n)| Op::Add { node, n }),
        4 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Ship { from, to }),
        1 => (0usize..3).prop_map(|node| Op::Reset { node }),
        2 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::ShipFloors { from, to }),
    ];
    prop::collection::vec(op, 0..40)
}

/// Runs `ops` on three nodes, then the full repair; returns each node's global count and the exact expectation.
fn run(ops: &[Op]) -> (Vec<u64>, u64) {
    let nodes = nodes(3);
    // What each node holds of each origin (the model), and the highest floor any reset set per origin.
    let mut seen = [[0u64; 3]; 3];
    let mut floor = [0u64; 3];
    for op in ops {
        match *op {
            Op::Add { node, n } => {
                assert_eq!(nodes[node].add(KEY, year(), n), Ok(AddOutcome::Added));
                seen[node][node] += n;
            }
            Op::Ship { from, to } if from != to => {
                ship(&nodes[from], &nodes[to]);
                seen[to][from] = seen[to][from].max(seen[from][from]);
            }
            Op::Reset { node } => {
                if let Some(report) =
                    nodes[node].reset(KEY, year(), year().epoch_at(UnixMs::new(T0)))
                {
                    assert_eq!(report.after, 0, "nothing raced the reset");
                }
                for origin in 0..3 {
                    floor[origin] = floor[origin].max(seen[node][origin]);
                }
            }
            Op::ShipFloors { from, to } if from != to => ship_floors(&nodes[from], &nodes[to]),
            _ => {}
        }
    }
    // Anti-entropy: every value everywhere, then every floor everywhere (twice: a floor may travel two hops).
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                ship(&nodes[from], &nodes[to]);
            }
        }
    }
    for _ in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    ship_floors(&nodes[from], &nodes[to]);
                }
            }
        }
    }
    let expected = (0..3).map(|o| seen[o][o] - floor[o]).sum();
    (nodes.iter().map(global).collect(), expected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_node_converges_to_the_values_minus_the_floors(ops in ops()) {
        let (globals, expected) = run(&ops);
        for (i, g) in globals.iter().enumerate() {
            prop_assert_eq!(*g, expected, "node {} of {:?}", i, globals);
        }
    }

    #[test]
    fn floors_are_idempotent_and_commutative(values in prop::collection::vec(1u64..1_000, 3), order in any::<u64>()) {
        // Three origins merged into one node; floors from two resets seen at different times, delivered in
        // either order, each twice.
        let node = &nodes(4)[3];
        let epoch = year().epoch_at(UnixMs::new(T0));
        for (o, &v) in values.iter().enumerate() {
            node.merge_from_origin(o as u64 + 1, KEY, year(), epoch, v).unwrap();
        }
        let early: Vec<(u64, u64)> = values.iter().enumerate().map(|(o, &v)| (o as u64 + 1, v / 2)).collect();
        let late: Vec<(u64, u64)> = values.iter().enumerate().map(|(o, &v)| (o as u64 + 1, v)).collect();
        let mut deliveries = [early.clone(), late.clone(), early, late];
        if order % 2 == 1 {
            deliveries.reverse();
        }
        for batch in &deliveries {
            for &(origin, f) in batch {
                node.merge_floor(origin, KEY, year(), epoch, f);
            }
        }
        prop_assert_eq!(global(node), 0, "the later reset's floors win whatever the order");
    }
}

/// The attack: n = u64::MAX added to `tenant-42/gpt-4o` in window 1Y saturates the key until the end of
/// the year. Reset on another node; the floors reach every node; later adds count everywhere, the poisoned
/// node's own included (its saturated word is emptied into its offset, so it counts again).
#[test]
fn a_saturated_key_reset_elsewhere_counts_again_everywhere() {
    let nodes = nodes(3);
    let (poisoned, resetter, other) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(
        poisoned.add(KEY, year(), u64::MAX),
        Ok(AddOutcome::Saturated)
    );
    other.add(KEY, year(), 5).unwrap();
    for from in &nodes {
        for to in &nodes {
            ship(from, to);
        }
    }
    for node in &nodes {
        assert!(global(node) >= MAX_CELL_VALUE, "saturated everywhere");
    }
    let report = resetter
        .reset(KEY, year(), year().epoch_at(UnixMs::new(T0)))
        .expect("the key is held");
    assert_eq!(report.floors.len(), 2, "the poisoned origin and the other");
    assert_eq!(
        report.before, MAX_CELL_VALUE,
        "the remote sum read by the hot path saturates at the cell maximum"
    );
    assert_eq!((report.after, global(resetter)), (0, 0));
    let floors = resetter.drain_floors();
    assert_eq!(floors.len(), 2, "queued for replication");
    for node in [poisoned, other] {
        for (origin, e) in &floors {
            assert_eq!(
                node.merge_floor(*origin, &e.key, e.window, e.epoch, e.value),
                FloorOutcome::Raised
            );
        }
        assert_eq!(global(node), 0);
    }
    // Later adds count, the poisoned node's too.
    assert_eq!(poisoned.add(KEY, year(), 3), Ok(AddOutcome::Added));
    resetter.add(KEY, year(), 4).unwrap();
    other.add(KEY, year(), 5).unwrap();
    for from in &nodes {
        for to in &nodes {
            ship(from, to);
        }
    }
    for node in &nodes {
        assert_eq!(global(node), 12);
    }
    // What the poisoned node ships stayed monotone (saturated value + 3): its peers' max-merge takes it.
    assert_eq!(shipped(poisoned), Some(MAX_CELL_VALUE + 3));
}

/// A floor can take back what an origin counted, never what it counts later: a floor above the value held for
/// its origin (forged, or from a node ahead of this one) is clamped to that value, and a floor for a value not
/// held here is dropped (anti-entropy offers it again once the value is here).
#[test]
fn a_floor_never_exceeds_the_value_held_for_its_origin() {
    let node = &nodes(2)[1];
    let epoch = year().epoch_at(UnixMs::new(T0));
    assert_eq!(
        node.merge_floor(9, KEY, year(), epoch, 100),
        FloorOutcome::NoValue
    );
    assert_eq!(
        node.merge_from_origin(9, KEY, year(), epoch, 10),
        Ok(MergeOutcome::Raised)
    );
    assert_eq!(
        node.merge_floor(9, KEY, year(), epoch, u64::MAX),
        FloorOutcome::Raised
    );
    assert_eq!(global(node), 0);
    node.merge_from_origin(9, KEY, year(), epoch, 17).unwrap();
    assert_eq!(global(node), 7, "counted after the floor: counts");
    // This node's own floor from a peer is clamped to what it ships.
    node.add(KEY, year(), 30).unwrap();
    assert_eq!(
        node.merge_floor(2, KEY, year(), epoch, u64::MAX),
        FloorOutcome::Raised
    );
    assert_eq!(global(node), 7);
    node.add(KEY, year(), 1).unwrap();
    assert_eq!(global(node), 8);
    let floors: BTreeMap<u64, u64> = node
        .floor_snapshot()
        .into_iter()
        .map(|(o, e)| (o, e.value))
        .collect();
    assert_eq!(floors, BTreeMap::from([(2, 30), (9, 10)]));
}
