//! The counter store's bounds that peers can reach (issue 14): keys created by other nodes' values have their
//! own budget, so they can never make this node refuse a new local key; a cell holds a bounded number of
//! relayed origins per window. Each refusal is counted.

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{
    AddOutcome, CoarseClock, CounterError, CounterStore, MergeOutcome, StoreOptions, Window,
};

const NOW: u64 = 1_795_514_400_000;

fn minute() -> Window {
    Window::parse("1m").unwrap()
}

fn store(options: StoreOptions) -> CounterStore {
    CounterStore::new(StoreOptions {
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..options
    })
}

/// The attack: 3,000 new keys written through one node fill every other node's store, and a
/// legitimate new local key elsewhere gets 503. With today's default both budgets are `max_keys`.
#[test]
fn three_thousand_replicated_keys_never_refuse_a_new_local_key() {
    let store = store(StoreOptions {
        max_keys: 3_000,
        ..StoreOptions::default()
    });
    let epoch = minute().epoch_at(UnixMs::new(NOW));
    for i in 0..3_000 {
        let merged = store.merge_remote(7, &format!("flood/{i}"), minute(), epoch, 1);
        assert_eq!(merged, Ok(MergeOutcome::Raised), "flood/{i}");
    }
    // The legitimate new local key, through every local entry point.
    assert_eq!(
        store.add("tenant-1/gpt-4o", minute(), 1),
        Ok(AddOutcome::Added)
    );
    let handle = store.handle("tenant-2/gpt-4o", minute()).expect("handle");
    assert!(handle.try_acquire(10, 1).allowed);
    assert_eq!(store.stats().refused_keys, 0);
}

#[test]
fn each_budget_refuses_at_its_own_cap_and_counts_by_kind() {
    let store = store(StoreOptions {
        max_keys: 2,
        max_remote_keys: 3,
        ..StoreOptions::default()
    });
    let epoch = minute().epoch_at(UnixMs::new(NOW));
    for i in 0..3 {
        store
            .merge_remote(7, &format!("remote/{i}"), minute(), epoch, 1)
            .unwrap();
    }
    assert_eq!(
        store.merge_remote(7, "remote/3", minute(), epoch, 1),
        Err(CounterError::RemoteKeyLimit {
            key: "remote/3".into(),
            max_remote_keys: 3
        })
    );
    // Local keys are untouched by the full remote budget, and have their own cap.
    store.add("local/0", minute(), 1).unwrap();
    store.add("local/1", minute(), 1).unwrap();
    assert!(matches!(
        store.add("local/2", minute(), 1),
        Err(CounterError::KeyLimit { max_keys: 2, .. })
    ));
    // A key a merge created is usable locally (it exists), without taking room from the local budget.
    assert_eq!(store.add("remote/0", minute(), 5), Ok(AddOutcome::Added));
    assert_eq!(store.global("remote/0", minute()), 6);
    let stats = store.stats();
    assert_eq!(
        (
            stats.keys,
            stats.remote_keys,
            stats.refused_local_keys,
            stats.refused_remote_keys,
            stats.refused_keys
        ),
        (5, 3, 1, 1, 2)
    );
}

#[test]
fn reclaiming_idle_remote_keys_frees_the_remote_budget() {
    let clock = Arc::new(CoarseClock::new(UnixMs::new(NOW)));
    let store = CounterStore::new(StoreOptions {
        max_keys: 10,
        max_remote_keys: 1,
        replica_id: 1,
        clock: Arc::clone(&clock),
        ..StoreOptions::default()
    });
    let epoch = minute().epoch_at(UnixMs::new(NOW));
    store.merge_remote(7, "old", minute(), epoch, 1).unwrap();
    assert!(store.merge_remote(7, "new", minute(), epoch, 1).is_err());
    // Four minutes later "old" has left the ring: the full remote budget reclaims it for "new".
    clock.set_unix_ms(UnixMs::new(NOW + 4 * 60_000));
    let epoch = minute().epoch_at(UnixMs::new(NOW + 4 * 60_000));
    assert_eq!(
        store.merge_remote(7, "new", minute(), epoch, 1),
        Ok(MergeOutcome::Raised)
    );
    assert_eq!(store.stats().remote_keys, 1);
}

/// 100,000 made-up origins on one key were merged (the issue): a cell now holds at most
/// `max_origins_per_key` relayed origins per window; values from an origin over its own link are exempt.
#[test]
fn a_key_holds_a_bounded_number_of_relayed_origins_per_window() {
    let store = store(StoreOptions {
        max_origins_per_key: 100,
        ..StoreOptions::default()
    });
    let epoch = minute().epoch_at(UnixMs::new(NOW));
    let mut refused = 0;
    for origin in 1_000..1_500u64 {
        match store.merge_remote(origin, "k", minute(), epoch, 1).unwrap() {
            MergeOutcome::Raised => {}
            MergeOutcome::OriginLimit => refused += 1,
            other => panic!("origin {origin}: {other:?}"),
        }
    }
    assert_eq!(refused, 400);
    assert_eq!(store.global("k", minute()), 100);
    assert_eq!(store.stats().refused_origins, 400);
    // Known origins keep merging (their values rise), and a live member's own values are never refused.
    assert_eq!(
        store.merge_remote(1_000, "k", minute(), epoch, 5),
        Ok(MergeOutcome::Raised)
    );
    assert_eq!(
        store.merge_from_origin(42, "k", minute(), epoch, 10),
        Ok(MergeOutcome::Raised)
    );
    assert_eq!(store.global("k", minute()), 100 + 4 + 10);
    // The cap is per window: the next epoch has room again.
    assert_eq!(
        store.merge_remote(2_000, "k", minute(), epoch + 1, 1),
        Ok(MergeOutcome::Raised)
    );
}
