//! Counter store behaviour through the public API: handles, limiter decisions, windows, key limits,
//! reclamation, the drain and merge APIs, and exact totals under threads.

use std::sync::Arc;
use std::thread;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{
    AddOutcome, Algorithm, CoarseClock, CounterError, CounterStore, DIRTY_QUEUE_SLOTS, DirtyEntry,
    MergeOutcome, StoreOptions, Window,
};

/// 2026-11-24T10:00:00Z, a minute boundary.
const T0: u64 = 1_795_514_400_000;

fn store_with(max_keys: usize, replica_id: u64) -> CounterStore {
    CounterStore::new(StoreOptions {
        max_keys,
        replica_id,
        clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
        ..StoreOptions::default()
    })
}

fn minute() -> Window {
    Window::parse("1m").unwrap()
}

#[test]
fn fixed_window_acquire_counts_until_the_limit_then_resets_at_the_boundary() {
    let store = store_with(10, 1);
    let h = store.handle("vk/openai/gpt-4o", minute()).unwrap();
    for i in 1..=5 {
        let d = h.try_acquire(5, 1);
        assert!(d.allowed, "request {i}");
        assert_eq!((d.used, d.remaining, d.limit), (i, 5 - i, 5));
        assert_eq!(d.reset_at_ms, T0 + 60_000);
    }
    let refused = h.try_acquire(5, 1);
    assert!(!refused.allowed);
    assert_eq!((refused.used, refused.remaining), (5, 0));
    assert_eq!(h.local(), 5, "a refused request counts nothing");
    // A cost larger than what is left is refused whole.
    store.clock().set_unix_ms(UnixMs::new(T0 + 59_999));
    assert!(!h.try_acquire(5, 1).allowed);
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000));
    let d = h.try_acquire(5, 3);
    assert!(d.allowed);
    assert_eq!(d.used, 3);
    assert!(!h.try_acquire(5, 3).allowed);
    assert_eq!(
        h.check(Algorithm::FixedWindow, 5, 2),
        h.check(Algorithm::FixedWindow, 5, 2)
    );
    assert!(h.check(Algorithm::FixedWindow, 5, 2).allowed);
    assert_eq!(h.local(), 3, "check counts nothing");
}

#[test]
fn an_anchored_window_resets_at_its_anchor_plus_whole_lengths_not_at_midnight() {
    // A daily budget that started at 2026-11-24T10:00:00.250Z (T0 + 250 ms).
    let anchor = T0 + 250;
    let day = Window::parse("1d@2026-11-24T10:00:00.250Z").unwrap();
    let store = store_with(10, 1);
    let h = store.handle("budget/team-a", day).unwrap();
    // Midnight UTC before the anchor's time of day: still the epoch that began a day before the anchor.
    store.clock().set_unix_ms(UnixMs::new(anchor - 1));
    let before = h.try_acquire(3, 3);
    assert!(before.allowed);
    assert_eq!(before.reset_at_ms, anchor);
    assert!(!h.try_acquire(3, 1).allowed);
    // The anchor is a boundary: a fresh budget.
    store.clock().set_unix_ms(UnixMs::new(anchor));
    let d = h.try_acquire(3, 2);
    assert!(d.allowed);
    assert_eq!((d.used, d.reset_at_ms), (2, anchor + 86_400_000));
    // Through the next midnight nothing resets (a calendar day would have).
    store
        .clock()
        .set_unix_ms(UnixMs::new(anchor + 14 * 3_600_000));
    let d = h.try_acquire(3, 1);
    assert_eq!((d.allowed, d.used), (true, 3));
    assert!(
        !h.try_acquire(3, 1).allowed,
        "the next midnight is no boundary"
    );
    store
        .clock()
        .set_unix_ms(UnixMs::new(anchor + 86_400_000 - 1));
    assert!(!h.try_acquire(3, 1).allowed);
    // One length after the anchor: reset again; the lookup-by-string path finds the same counter.
    store.clock().set_unix_ms(UnixMs::new(anchor + 86_400_000));
    let d = h.try_acquire(3, 1);
    assert_eq!((d.allowed, d.used), (true, 1));
    let same_phase = Window::parse("1d@2026-11-30T10:00:00.250Z").unwrap();
    assert_eq!(same_phase, day);
    assert_eq!(
        store.handle("budget/team-a", same_phase).unwrap().local(),
        1
    );
    // Another phase is another counter.
    let other = Window::parse("1d@2026-11-24T10:00:00Z").unwrap();
    assert_eq!(store.handle("budget/team-a", other).unwrap().local(), 0);
}

#[test]
fn sliding_window_weights_the_previous_window_by_its_unexpired_fraction() {
    let store = store_with(10, 1);
    let h = store.handle("k", minute()).unwrap();
    for _ in 0..100 {
        assert!(h.try_acquire(1_000, 1).allowed);
    }
    // 15 s into the next minute: 75% of the previous window is still inside the sliding window.
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000 + 15_000));
    let d = h.check(Algorithm::SlidingWindow, 100, 0);
    assert_eq!(d.used, 75);
    let d = h.acquire(Algorithm::SlidingWindow, 100, 25);
    assert!(d.allowed);
    assert_eq!(d.used, 100);
    assert!(!h.acquire(Algorithm::SlidingWindow, 100, 1).allowed);
    // 45 s in: only 25% of the previous window counts: 25 + 25 = 50.
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000 + 45_000));
    assert_eq!(h.check(Algorithm::SlidingWindow, 100, 0).used, 50);
    // The fixed window sees only the current 25.
    assert_eq!(h.check(Algorithm::FixedWindow, 100, 0).used, 25);
    // Two windows later the old count is gone entirely.
    store.clock().set_unix_ms(UnixMs::new(T0 + 180_000));
    assert_eq!(h.check(Algorithm::SlidingWindow, 100, 0).used, 0);
}

#[test]
fn remote_usage_counts_against_the_limit() {
    let store = store_with(10, 1);
    let h = store.handle("budget/team-a", minute()).unwrap();
    let epoch = h.epoch_now();
    assert_eq!(
        store
            .merge_remote(2, "budget/team-a", minute(), epoch, 7)
            .unwrap(),
        MergeOutcome::Raised
    );
    assert_eq!(
        store
            .merge_remote(3, "budget/team-a", minute(), epoch, 2)
            .unwrap(),
        MergeOutcome::Raised
    );
    assert_eq!(h.remote(), 9);
    assert!(h.try_acquire(10, 1).allowed);
    assert!(!h.try_acquire(10, 1).allowed);
    assert_eq!(h.global(), 10);
    assert_eq!(store.global("budget/team-a", minute()), 10);
    // Our own replica id echoed back is ignored.
    assert_eq!(
        store
            .merge_remote(1, "budget/team-a", minute(), epoch, 1_000)
            .unwrap(),
        MergeOutcome::Unchanged
    );
    assert_eq!(h.global(), 10);
}

#[test]
fn key_limit_refuses_new_keys_and_keeps_existing_ones_working() {
    let store = store_with(3, 1);
    let handles: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|k| store.handle(k, minute()).unwrap())
        .collect();
    let err = store.handle("d", minute()).unwrap_err();
    assert_eq!(
        err,
        CounterError::KeyLimit {
            key: "d".into(),
            max_keys: 3
        }
    );
    assert!(err.to_string().contains("max_keys = 3"), "{err}");
    assert!(store.add("e", minute(), 1).is_err());
    // A merged value of a new key counts in the other budget (limits.max_remote_keys), not in this one.
    assert_eq!(
        store.merge_remote(9, "f", minute(), 1, 1),
        Ok(MergeOutcome::Raised)
    );
    assert_eq!(store.stats().refused_keys, 2);
    assert_eq!(store.stats().refused_local_keys, 2);
    assert_eq!(handles[0].add(1), AddOutcome::Added);
    assert_eq!(store.add("b", minute(), 2).unwrap(), AddOutcome::Added);
    assert_eq!(store.global("b", minute()), 2);
    // The same key with another window is another cell.
    assert!(store.handle("a", Window::parse("1h").unwrap()).is_err());
    assert_eq!(store.stats().keys, 4);
    assert_eq!(store.stats().remote_keys, 1);
}

#[test]
fn key_length_is_checked() {
    let store = CounterStore::new(StoreOptions {
        max_key_length: 8,
        ..StoreOptions::default()
    });
    assert_eq!(
        store.handle("", minute()).unwrap_err(),
        CounterError::EmptyKey
    );
    assert_eq!(
        store.handle("123456789", minute()).unwrap_err(),
        CounterError::KeyTooLong { len: 9, max: 8 }
    );
    assert!(store.handle("12345678", minute()).is_ok());
    assert_eq!(store.stats().invalid_keys, 2);
}

#[test]
fn idle_keys_are_reclaimed_but_not_while_a_handle_or_a_live_epoch_holds_them() {
    let store = store_with(2, 1);
    let held = store.handle("held", minute()).unwrap();
    held.add(1);
    store.add("loose", minute(), 1).unwrap();
    assert_eq!(store.reclaim_idle(), 0, "both have a live epoch");
    let mut out = Vec::new();
    store.drain_dirty(usize::MAX, &mut out);
    // Four minutes later every epoch of both cells has left the ring.
    store.clock().set_unix_ms(UnixMs::new(T0 + 4 * 60_000));
    assert_eq!(
        store.reclaim_idle(),
        1,
        "only the key without a handle goes"
    );
    assert_eq!(store.stats().keys, 1);
    assert_eq!(store.global("loose", minute()), 0);
    // The freed place is usable, and the held handle still counts.
    store.add("new", minute(), 5).unwrap();
    assert_eq!(store.global("new", minute()), 5);
    assert_eq!(held.add(2), AddOutcome::Added);
    assert_eq!(held.local(), 2);
    // A reclaimed key comes back from zero when used again.
    assert!(
        store.add("loose", minute(), 1).is_err(),
        "store is full again"
    );
    drop(held);
    store.drain_dirty(usize::MAX, &mut out);
    store.clock().set_unix_ms(UnixMs::new(T0 + 10 * 60_000));
    assert_eq!(store.reclaim_idle(), 2);
    assert_eq!(store.stats().reclaimed_keys, 3);
    assert_eq!(store.add("loose", minute(), 1).unwrap(), AddOutcome::Added);
}

#[test]
fn an_acquire_by_key_after_its_cached_cell_was_reclaimed_counts_in_the_new_cell() {
    let store = store_with(2, 1);
    let fixed = bifrost_cluster::counter::Algorithm::FixedWindow;
    // Cached on this thread by the first acquire.
    assert!(
        store
            .acquire_by_key("k", minute(), fixed, 1, 1)
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire_by_key("k", minute(), fixed, 1, 1)
            .unwrap()
            .allowed
    );
    let mut out = Vec::new();
    store.drain_dirty(usize::MAX, &mut out);
    store.clock().set_unix_ms(UnixMs::new(T0 + 4 * 60_000));
    assert_eq!(store.reclaim_idle(), 1, "the cache holds no handle");
    // The cached cell is retired: the refusal it gives is no decision, so the acquire resolves again.
    let d = store.acquire_by_key("k", minute(), fixed, 1, 1).unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(store.global("k", minute()), 1);
    assert_eq!(store.stats().keys, 1);
}

#[test]
fn drain_yields_absolute_values_once_per_change() {
    let store = store_with(10, 1);
    let a = store.handle("a", minute()).unwrap();
    a.add(2);
    a.add(3);
    store.add("b", minute(), 1).unwrap();
    let mut out = Vec::new();
    assert_eq!(store.drain_dirty(usize::MAX, &mut out), 2);
    out.sort_by(|x, y| x.key.cmp(&y.key));
    let epoch = a.epoch_now();
    assert_eq!(
        out,
        vec![
            DirtyEntry {
                key: "a".into(),
                window: minute(),
                epoch,
                value: 5
            },
            DirtyEntry {
                key: "b".into(),
                window: minute(),
                epoch,
                value: 1
            },
        ]
    );
    out.clear();
    assert_eq!(
        store.drain_dirty(usize::MAX, &mut out),
        0,
        "nothing changed since"
    );
    // A change in the next window reports both windows (the previous one is still in the ring).
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000));
    a.add(1);
    store.drain_dirty(usize::MAX, &mut out);
    out.sort_by_key(|e| e.epoch);
    assert_eq!(
        out.iter().map(|e| (e.epoch, e.value)).collect::<Vec<_>>(),
        vec![(epoch, 5), (epoch + 1, 1)]
    );
    // Merged remote values are not local changes.
    out.clear();
    store.merge_remote(2, "a", minute(), epoch + 1, 10).unwrap();
    assert_eq!(store.drain_dirty(usize::MAX, &mut out), 0);
}

#[test]
fn more_changed_keys_than_the_dirty_queue_holds_are_all_drained_once() {
    let keys = DIRTY_QUEUE_SLOTS + 4_000;
    let store = store_with(keys, 1);
    for i in 0..keys {
        store
            .add(&format!("k{i}"), minute(), 1 + i as u64 % 7)
            .unwrap();
    }
    // Already queued (on the queue or the overflow list): a second add queues nothing more.
    store.add("k0", minute(), 1).unwrap();
    store.add(&format!("k{}", keys - 1), minute(), 1).unwrap();
    assert_eq!(store.dirty_len(), keys);
    assert_eq!(store.stats().dirty_overflowed, 4_000);
    let mut out = Vec::new();
    assert_eq!(store.drain_dirty(usize::MAX, &mut out), keys);
    let mut seen: Vec<(String, u64)> = out.iter().map(|e| (e.key.to_string(), e.value)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), keys, "every key drained exactly once");
    let value = |key: &str| seen.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    assert_eq!(value("k0"), Some(2));
    assert_eq!(
        value(&format!("k{}", keys - 1)),
        Some(1 + (keys as u64 - 1) % 7 + 1)
    );
    assert_eq!(store.dirty_len(), 0);
    // Overflowed cells were unmarked by the drain: their next change queues them again.
    store.add(&format!("k{}", keys - 1), minute(), 1).unwrap();
    out.clear();
    assert_eq!(store.drain_dirty(usize::MAX, &mut out), 1);
}

#[test]
fn late_adds_for_a_window_that_left_the_ring_are_refused_and_counted() {
    let store = store_with(10, 1);
    let h = store.handle("k", minute()).unwrap();
    store.clock().set_unix_ms(UnixMs::new(T0 + 8 * 60_000));
    h.add(1);
    // A clock stepped far back (tests only; the node's ticker never does this): T0's ring position now holds
    // the epoch 8 minutes later, so the add is refused rather than counted into the wrong window.
    store.clock().set_unix_ms(UnixMs::new(T0));
    assert_eq!(h.add(1), AddOutcome::Stale);
    assert_eq!(store.stats().stale_adds, 1);
    store.clock().set_unix_ms(UnixMs::new(T0 + 8 * 60_000));
    assert_eq!(h.local(), 1);
}

#[test]
fn threads_times_increments_give_the_exact_total() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 50_000;
    let store = store_with(100, 1);
    let handle = store.handle("hot", minute()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A drainer runs meanwhile, as the node's flush would, and inflates the contended cell mid-run.
    let drainer = {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut out = Vec::new();
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                out.clear();
                store.drain_dirty(usize::MAX, &mut out);
                for e in &out {
                    assert!(e.value >= last, "drained values are monotone");
                    last = e.value;
                }
                thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = handle.clone();
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    if (i + t) % 4 == 0 {
                        assert_eq!(store.add("hot", minute(), 1).unwrap(), AddOutcome::Added);
                    } else {
                        assert_eq!(handle.add(1), AddOutcome::Added);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drainer.join().unwrap();
    assert_eq!(handle.local(), THREADS * PER_THREAD);
    let mut out = Vec::new();
    store.drain_dirty(usize::MAX, &mut out);
    let drained: Vec<_> = out.iter().map(|e| e.value).collect();
    assert!(
        drained.is_empty() || drained == vec![THREADS * PER_THREAD],
        "{drained:?}"
    );
    assert_eq!(store.local_snapshot()[0].value, THREADS * PER_THREAD);
}

#[test]
fn concurrent_acquires_never_overshoot_more_than_one_cost_per_stripe() {
    const LIMIT: u64 = 10_000;
    let store = store_with(10, 1);
    let handle = store.handle("limited", minute()).unwrap();
    let stripes = store.options().stripes.next_power_of_two() as u64;
    // Phase 1: contend with plain adds and drain (as the node's flush does) until the cell has its stripes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.stats().inflated_cells == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "two threads never collided on one key in 20 s"
        );
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| (0..100_000).for_each(|_| assert_eq!(handle.add(1), AddOutcome::Added)));
            }
        });
        store.drain_dirty(usize::MAX, &mut Vec::new());
    }
    // Phase 2: race acquires in the next window, on the striped cell.
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000));
    let allowed: u64 = thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..LIMIT)
                        .filter(|_| handle.try_acquire(LIMIT, 1).allowed)
                        .count() as u64
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(
        allowed,
        handle.local(),
        "every allowed request is counted, refused ones are not"
    );
    assert!(allowed >= LIMIT, "the limit is reachable: {allowed}");
    assert!(
        allowed <= LIMIT + stripes,
        "overshoot bounded by one cost per other stripe: {allowed}"
    );
}

#[test]
fn a_full_store_reclaims_idle_keys_by_itself_at_most_once_per_second() {
    let store = store_with(2, 1);
    store.add("a", minute(), 1).unwrap();
    store.add("b", minute(), 1).unwrap();
    store.drain_dirty(usize::MAX, &mut Vec::new());
    assert!(store.add("c", minute(), 1).is_err(), "a and b are live");
    // Four minutes on, a and b are idle: the next new key gets a place without anyone calling reclaim.
    store.clock().set_unix_ms(UnixMs::new(T0 + 4 * 60_000));
    assert_eq!(store.add("c", minute(), 1).unwrap(), AddOutcome::Added);
    assert_eq!(store.stats().reclaimed_keys, 2);
    store.add("d", minute(), 1).unwrap();
    store.drain_dirty(usize::MAX, &mut Vec::new());
    // Full again with c and d; four more minutes make them idle and the last reclaim is long past: e gets in.
    store.clock().set_unix_ms(UnixMs::new(T0 + 8 * 60_000));
    assert_eq!(store.add("e", minute(), 1).unwrap(), AddOutcome::Added);
    assert_eq!(store.stats().reclaimed_keys, 4);
    // The rate limit: fill the store with keys that are already idle half a second after that reclaim (written
    // with the clock stepped back, which only a test can do). The store refuses instead of walking the map again
    // within the same second; a second after the last reclaim it walks it and frees them.
    store.clock().set_unix_ms(UnixMs::new(T0));
    store.add("f", minute(), 1).unwrap();
    store.drain_dirty(usize::MAX, &mut Vec::new());
    store
        .clock()
        .set_unix_ms(UnixMs::new(T0 + 8 * 60_000 + 500));
    let refused_before = store.stats().refused_keys;
    assert!(
        store.add("g", minute(), 1).is_err(),
        "no second reclaim within one second"
    );
    assert_eq!(store.stats().reclaimed_keys, 4);
    assert_eq!(store.stats().refused_keys, refused_before + 1);
    store
        .clock()
        .set_unix_ms(UnixMs::new(T0 + 8 * 60_000 + 1_000));
    assert_eq!(store.add("g", minute(), 1).unwrap(), AddOutcome::Added);
    assert_eq!(
        store.stats().reclaimed_keys,
        5,
        "f was idle; e is live and stays"
    );
    assert_eq!(store.global("e", minute()), 1);
}

#[test]
fn merges_from_the_future_are_refused_and_counted() {
    let store = store_with(10, 1);
    let h = store.handle("k", minute()).unwrap();
    let now = h.epoch_now();
    assert_eq!(
        store.merge_remote(2, "k", minute(), now + 1, 5).unwrap(),
        MergeOutcome::Raised,
        "one window ahead is skew we accept"
    );
    assert_eq!(
        store.merge_remote(2, "k", minute(), now + 4, 5).unwrap(),
        MergeOutcome::Future
    );
    assert_eq!(
        store.merge_remote(2, "k", minute(), u64::MAX, 5).unwrap(),
        MergeOutcome::Future
    );
    assert_eq!(store.stats().future_merges, 2);
    // The current window was not pushed out: local adds still count.
    assert_eq!(h.add(1), AddOutcome::Added);
    assert!(h.try_acquire(10, 1).allowed);
    assert_eq!(h.local(), 2);
}

#[test]
fn a_handle_clone_keeps_its_cell_through_reclaim_passes() {
    let store = store_with(4, 1);
    let h = store.handle("k", minute()).unwrap();
    h.add(1);
    store.drain_dirty(usize::MAX, &mut Vec::new());
    store.clock().set_unix_ms(UnixMs::new(T0 + 10 * 60_000));
    let clone = h.clone();
    drop(h);
    assert_eq!(store.reclaim_idle(), 0, "the clone still holds the cell");
    assert_eq!(clone.add(3), AddOutcome::Added);
    assert_eq!(
        store.global("k", minute()),
        3,
        "the clone and the map see the same cell"
    );
}

#[test]
fn hottest_ranks_keys_by_current_count_with_the_limit_of_their_last_acquire() {
    use bifrost_cluster::counter::{LimitSeen, call_counts};
    let store = store_with(100, 1);
    let second = Window::parse("1s").unwrap();
    // Counts: a=5 (acquired with a limit of 3, so 3 admitted and 2 refused), b=7 (added only), c=1 (sliding
    // acquire), @traffic=100 (the traffic plane's, never listed).
    let a = store.handle("a", minute()).unwrap();
    let before = call_counts();
    for _ in 0..5 {
        a.try_acquire(3, 1);
    }
    let after = call_counts();
    assert!(
        after.refusals - before.refusals >= 2,
        "{before:?} {after:?}"
    );
    store.add("b", second, 7).unwrap();
    store
        .handle("c", minute())
        .unwrap()
        .acquire(Algorithm::SlidingWindow, 10, 1);
    store.add("@traffic", minute(), 100).unwrap();
    // Remote usage counts: d gets 4 from another replica.
    store.add("d", minute(), 1).unwrap();
    let epoch = minute().epoch_at(UnixMs::new(T0));
    store.merge_remote(2, "d", minute(), epoch, 3).unwrap();

    let hot = store.hottest(10);
    let names: Vec<&str> = hot.iter().map(|h| &*h.key).collect();
    assert_eq!(names, ["b", "d", "a", "c"]);
    assert_eq!((hot[0].used, hot[0].limit), (7, None));
    assert_eq!(hot[0].window, second);
    assert_eq!(hot[0].window_end_ms, T0 + 1_000);
    assert_eq!((hot[1].local, hot[1].remote, hot[1].used), (1, 3, 4));
    assert_eq!(
        hot[2].limit,
        Some(LimitSeen {
            limit: 3,
            algorithm: Algorithm::FixedWindow
        })
    );
    assert_eq!(hot[2].used, 3, "refused acquires count nothing");
    assert_eq!(
        hot[3].limit.map(|l| l.algorithm),
        Some(Algorithm::SlidingWindow)
    );
    // Bounded by n; ties go to the smaller key.
    assert_eq!(store.hottest(2).len(), 2);
    assert!(store.hottest(0).is_empty());
    store.add("a2", minute(), 3).unwrap();
    let top: Vec<String> = store.hottest(4).iter().map(|h| h.key.to_string()).collect();
    assert_eq!(top, ["b", "d", "a", "a2"]);
    // A later acquire with another limit replaces the one shown.
    a.try_acquire(50, 1);
    let a_now = store
        .hottest(10)
        .into_iter()
        .find(|h| &*h.key == "a")
        .unwrap();
    assert_eq!(a_now.limit.map(|l| l.limit), Some(50));
    // The next window starts from zero: nothing is hot.
    store.clock().set_unix_ms(UnixMs::new(T0 + 60_000));
    assert!(store.hottest(10).is_empty());
}

#[test]
fn inserts_racing_each_other_and_a_reclaimer_count_every_add_once() {
    // Fresh cells are idle until their first add, so a reclaimer running meanwhile can remove the cell another
    // insert just lost to: the loser must find the winner again or insert anew, and no add may be lost or
    // counted twice. Every thread adds to the same fresh keys, in a different order.
    const THREADS: u64 = 4;
    const KEYS: u64 = 2_000;
    const ROUNDS: u64 = 3;
    let store = store_with(10_000, 1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reclaimer = {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.reclaim_idle();
                thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    for i in 0..KEYS {
                        // A multiplier coprime to KEYS: each round visits every key once.
                        let k = (i * [1, 3, 7, 9][t as usize] + round) % KEYS;
                        assert_eq!(
                            store.add(&format!("race-{k}"), minute(), 1).unwrap(),
                            AddOutcome::Added
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reclaimer.join().unwrap();
    for k in 0..KEYS {
        assert_eq!(
            store.global(&format!("race-{k}"), minute()),
            THREADS * ROUNDS,
            "key race-{k}"
        );
    }
    assert_eq!(store.stats().keys, KEYS as usize);
}
