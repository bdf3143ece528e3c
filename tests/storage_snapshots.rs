//! Snapshots through the public API: what a store holds comes back in a fresh store (a new process with a new
//! replica id) exactly, loading is idempotent and never double counts (twice, stale, or on top of what peers
//! sent), short windows are left out, and a damaged file is moved aside with its reason.

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions, Window};
use bifrost_cluster::storage::{LoadOutcome, Snapshotter, WriteOutcome};
use proptest::prelude::*;

/// 2026-12-06 12:00:00 UTC, in the middle of a day, a month and a minute.
const T0: u64 = 1_796_558_400_000;

fn store(replica_id: u64, clock: &Arc<CoarseClock>) -> CounterStore {
    CounterStore::new(StoreOptions {
        replica_id,
        clock: Arc::clone(clock),
        ..StoreOptions::default()
    })
}

fn w(text: &str) -> Window {
    Window::parse(text).expect("window")
}

/// Loads the snapshot in `dir` into `store` and returns what it reported.
fn load(dir: &std::path::Path, store: &CounterStore) -> LoadOutcome {
    let mut snapshotter = Snapshotter::open(dir, store.clone(), "n1", 60_000).expect("open");
    snapshotter.load(T0).expect("load")
}

#[test]
fn values_floors_and_remote_origins_come_back_exactly_and_short_windows_do_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let (day, month, minute, second) = (w("1d"), w("1M"), w("1m"), w("10s"));
    let before = store(1, &clock);
    before.add("budget/a", day, 500).expect("add");
    before.add("budget/a", month, 9_000).expect("add");
    before.add("rpm/a", minute, 40).expect("add");
    before.add("rps/a", second, 3).expect("add");
    // A refund is kept with its counter; in-flight slots (and their releases) are not.
    before.add("budget/r", day, 10).expect("add");
    before.release("budget/r", day, 4).expect("release");
    let slots = bifrost_cluster::counter::in_flight_key("model/x");
    before.add(&slots, w("1h"), 2).expect("add");
    before
        .release_in_flight(&slots, w("1h"), 1)
        .expect("release");
    let epoch = day.epoch_at(UnixMs::new(T0));
    before
        .merge_from_origin(2, "budget/a", day, epoch, 300)
        .expect("merge");
    before
        .merge_remote(3, "budget/a", day, epoch, 200)
        .expect("merge");
    // A reset: every origin's floor is its value now; what is counted later counts.
    before.reset("budget/a", day, epoch).expect("reset");
    before.add("budget/a", day, 7).expect("add");
    before
        .merge_from_origin(2, "budget/a", day, epoch, 311)
        .expect("merge");
    assert_eq!(before.global("budget/a", day), 18);

    {
        let mut writer = Snapshotter::open(tmp.path(), before.clone(), "n1", 60_000).expect("open");
        assert!(matches!(
            writer.write(T0, false),
            Ok(WriteOutcome::Written { .. })
        ));
        assert_eq!(
            writer.write(T0 + 1, false).ok(),
            Some(WriteOutcome::Unchanged)
        );
        assert!(matches!(
            writer.write(T0 + 2, true),
            Ok(WriteOutcome::Written { .. })
        ));
    }

    let after = store(10, &clock);
    let LoadOutcome::Restored(report) = load(tmp.path(), &after) else {
        panic!("the snapshot must load");
    };
    assert_eq!(report.origins, 3, "{report:?}");
    assert_eq!(after.global("budget/a", day), 18, "{report:?}");
    assert_eq!(after.global("budget/a", month), 9_000);
    assert_eq!(
        after.global("rpm/a", minute),
        40,
        "1m is not below min_window"
    );
    assert_eq!(
        after.global("rps/a", second),
        0,
        "10s is below min_window: not persisted"
    );
    let refunded = after.handle("budget/r", day).expect("handle");
    assert_eq!(
        after.net(&refunded),
        6,
        "the refund came back with its counter"
    );
    let slots = after.handle(&slots, w("1h")).expect("handle");
    assert_eq!(
        after.in_flight(&slots),
        0,
        "no process holds a slot after a restart"
    );
    assert_eq!(after.global(slots.key(), w("1h")), 0);
    // The old process's values are an origin of their own here: new increments add to them.
    after.add("budget/a", month, 1).expect("add");
    assert_eq!(after.global("budget/a", month), 9_001);

    // Loading again, or a peer sending the same values, changes nothing.
    let LoadOutcome::Restored(again) = load(tmp.path(), &after) else {
        panic!("the snapshot must load again");
    };
    assert_eq!(again.values, 0, "{again:?}");
    after
        .merge_from_origin(1, "budget/a", month, month.epoch_at(UnixMs::new(T0)), 9_000)
        .expect("merge");
    assert_eq!(after.global("budget/a", day), 18);
    assert_eq!(after.global("budget/a", month), 9_001);
}

#[test]
fn a_damaged_snapshot_is_moved_aside_and_nothing_is_loaded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
    let before = store(1, &clock);
    before.add("budget/a", w("1d"), 5).expect("add");
    Snapshotter::open(tmp.path(), before, "n1", 60_000)
        .expect("open")
        .write(T0, true)
        .expect("write");
    let path = tmp.path().join(bifrost_cluster::storage::SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).expect("damage");

    let after = store(2, &clock);
    match load(tmp.path(), &after) {
        LoadOutcome::MovedAside { reason, moved_to } => {
            assert!(reason.contains("checksum"), "{reason}");
            assert!(moved_to.exists() && !path.exists(), "{moved_to:?}");
            assert_eq!(
                std::fs::read(&moved_to).expect("kept"),
                bytes,
                "moved, not altered"
            );
        }
        other => panic!("expected the file moved aside, got {other:?}"),
    }
    assert_eq!(after.global("budget/a", w("1d")), 0);
    assert!(matches!(load(tmp.path(), &after), LoadOutcome::Missing));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Restarts in any order (each a new replica id loading the previous snapshot, possibly a stale one, possibly
    /// twice) never count above what was counted, and the latest snapshot gives exactly what was counted.
    #[test]
    fn restarts_never_double_count(
        rounds in prop::collection::vec((1u64..50, any::<bool>(), any::<bool>()), 1..8),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stale_dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(CoarseClock::new(UnixMs::new(T0)));
        let month = w("1M");
        let mut counted = 0;
        let mut replica = 100;
        let mut current = store(replica, &clock);
        for (n, keep_stale, load_twice) in rounds {
            current.add("budget", month, n).expect("add");
            counted += n;
            let mut writer = Snapshotter::open(tmp.path(), current.clone(), "n1", 0).expect("open");
            writer.write(T0, true).expect("write");
            drop(writer);
            if keep_stale {
                std::fs::copy(
                    tmp.path().join(bifrost_cluster::storage::SNAPSHOT_FILE),
                    stale_dir.path().join(bifrost_cluster::storage::SNAPSHOT_FILE),
                ).expect("copy");
            }
            replica += 1;
            let next = store(replica, &clock);
            let _ = load(tmp.path(), &next);
            if load_twice {
                let _ = load(tmp.path(), &next);
            }
            if stale_dir.path().join(bifrost_cluster::storage::SNAPSHOT_FILE).exists() {
                let _ = load(stale_dir.path(), &next);
            }
            prop_assert_eq!(next.global("budget", month), counted);
            current = next;
        }
    }
}
