//! Signed counts on G-counters: refunds of reserved units and in-flight (concurrency) limits.
//!
//! A counter's values only grow, so nothing is ever subtracted from them. What was given back is counted in a
//! second G-counter beside it, its *released* companion (`@released/<key>`, same window): every node adds
//! what it releases under its own origin, and replication max-merges both counters per origin as it does any
//! other. The usage a decision reads is `added − released` (saturating at 0), so merges stay exact in any
//! order, repeated or not: once both counters converged, every node reads the same net count, the sum of all
//! additions minus the sum of all releases (property-tested in `tests/counter_signed.rs`).
//!
//! Guarantees:
//! - **Refunds** ([`CounterStore::release`]): a node releases only from what it counted itself (its own
//!   additions minus its own releases, exact and current on that node), so the releases of all nodes never
//!   exceed the additions once converged, however many nodes release at once; what could not be matched is
//!   reported as `unmatched`. A gateway therefore releases on the node it reserved on (its sidecar or its
//!   embedded store); a release on another node takes from that node's own counts, which is the same for the
//!   sum as long as it counted as much. An acquire decides against `limit + released` on the added counter
//!   (the same `added − released ≤ limit`), one atomic decision as without refunds; a release that has not
//!   arrived yet only makes a decision stricter. Start-up admission's share is taken of `limit` alone and
//!   is the limit the decision reports, as for any decision; the hot keys show `limit` and the net usage.
//! - **In-flight limits** (keys under `@inflight/`, see [`in_flight_key`]): a slot is held from its acquire
//!   until its release, or at most until the end of the window after the one it was taken in (a lease, so a
//!   slot whose release was lost frees itself). The usage is the net count of the current and the previous
//!   window; an acquire reads the clock once, so it decides and counts in the same window, even at a
//!   boundary. When membership declares a member down (or it leaves, or restarts under a new identity), every
//!   node releases that member's outstanding slots ([`CounterStore::release_departed`]) under one synthetic
//!   origin per departed replica, computed from the same converged values on every node: max-merged, so the
//!   nodes that each do it release them once, not once per node. A read counts the larger of a replica's
//!   own releases and the release made for it, not their sum, so the member's own releases that arrive
//!   later (it came back under the same id after a pause, or they were in flight when it crashed) release
//!   nothing twice: the releases of every replica stay within its additions.
//! - A token bucket adds the current window's refunds to its tokens (to every check of `bucket`), not to its
//!   limit, which would raise the refill of every window it reads.
//! - In-flight keys are not written to snapshots: after a restart of the whole cluster nobody holds them.
//! - Pure logic on the store; no I/O.
//!
//! Not covered: a release that reaches a node before the addition it matches (the two counters travel in
//! separate batches) makes that node read a smaller count until the addition arrives; a member declared down
//! that comes back still runs the requests the others released its slots for, so until they end (or their
//! leases do) the limit can be passed by what it held when it was declared down; a sliding window reads the
//! previous window's additions without its releases (stricter, never looser); a refund after its window ended is dropped (that window's budget is over anyway); in the grouped
//! layout of large clusters, a departed member's slots are released only by the nodes that see its own
//! values (its group and whoever receives its group's per-origin values), the others see them expire with
//! their lease.

use super::store::Limit;
use super::{AddOutcome, Algorithm, CounterError, CounterHandle, CounterStore, Decision, Window};

/// Prefix of the released companion of a counter.
pub const RELEASED_PREFIX: &str = "@released/";
/// Prefix of the keys of in-flight (concurrency) limits.
pub const IN_FLIGHT_PREFIX: &str = "@inflight/";

/// The key of the released companion of `key`.
pub fn released_key(key: &str) -> String {
    format!("{RELEASED_PREFIX}{key}")
}

/// The counter key of the in-flight limit named `key`.
pub fn in_flight_key(key: &str) -> String {
    format!("{IN_FLIGHT_PREFIX}{key}")
}

/// Whether `key` is an in-flight count or its released companion (never persisted: see the module docs).
pub fn is_in_flight(key: &str) -> bool {
    key.strip_prefix(RELEASED_PREFIX)
        .unwrap_or(key)
        .starts_with(IN_FLIGHT_PREFIX)
}

/// The synthetic origin under which the nodes release what departed replica `origin` still held: the same
/// on every node (a splitmix64 finalizer of the id; a collision with a live replica id is a 2^-64 chance).
pub fn departed_origin(origin: u64) -> u64 {
    let mut z = origin ^ 0x5245_4c45_4153_4544; // "RELEASED"
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Units released.
    pub released: u64,
    /// Units asked for beyond the net count this node saw: not released.
    pub unmatched: u64,
    /// The net count after the release, as this node sees it.
    pub used: u64,
}

impl CounterStore {
    /// What was released of `(key, window)` in `epoch`, cluster-wide as this node knows it (0 when nothing
    /// was; never creates the companion). Of an in-flight key, a replica's own releases and those made for it
    /// when it departed count as their larger, not their sum (see [`CounterStore::release_departed`]).
    pub fn released_at(&self, key: &str, window: Window, epoch: u64) -> u64 {
        let companion = released_key(key);
        let Some((local, remote)) = self.counts_at(&companion, window, epoch) else {
            return 0;
        };
        let sum = local.saturating_add(remote);
        if !key.starts_with(IN_FLIGHT_PREFIX) || remote == 0 {
            return sum; // no release made for a departed replica: those are remote values
        }
        sum.saturating_sub(self.released_twice(&companion, window, epoch))
    }

    /// What the released companion `companion` (of an in-flight key) holds twice in `epoch`: for every
    /// replica with a release made for it under [`departed_origin`], the smaller of its own releases and
    /// that one (`own + departed − max(own, departed)`).
    fn released_twice(&self, companion: &str, window: Window, epoch: u64) -> u64 {
        let values = self.origin_counts_at(companion, window, epoch);
        if values.len() < 2 {
            return 0;
        }
        let by_origin: std::collections::HashMap<u64, u64> = values.iter().copied().collect();
        values
            .iter()
            .filter_map(|&(origin, own)| {
                by_origin
                    .get(&departed_origin(origin))
                    .map(|&departed| own.min(departed))
            })
            .fold(0, u64::saturating_add)
    }

    /// The net count of `handle`'s counter in its current window: added minus released.
    pub fn net(&self, handle: &CounterHandle) -> u64 {
        let epoch = handle.epoch_now();
        handle.global_at(epoch).saturating_sub(self.released_at(
            handle.key(),
            handle.window(),
            epoch,
        ))
    }

    /// An acquire of `cost` against `limit` on the net count (see the module docs): counted when allowed.
    pub fn acquire_net(
        &self,
        handle: &CounterHandle,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
    ) -> Decision {
        let released = self.released_at(handle.key(), handle.window(), handle.epoch_now());
        if released == 0 {
            return handle.acquire(algorithm, limit, cost);
        }
        if let Algorithm::TokenBucket { burst } = algorithm {
            // Refunds give tokens back; raising the limit would raise the refill of every window.
            return handle.acquire_bucket(burst, limit, cost, released);
        }
        net_decision(
            handle.acquire_limit(algorithm, credited(limit, released), cost),
            released,
        )
    }

    /// [`CounterStore::acquire_net`] on `(key, window)` without a handle (see
    /// [`CounterStore::acquire_by_key`]): while no refund exists in the store, no companion is looked up.
    pub fn acquire_net_by_key(
        &self,
        key: &str,
        window: Window,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
    ) -> Result<Decision, CounterError> {
        if !self.any_released() {
            return self.acquire_by_key(key, window, algorithm, limit, cost);
        }
        let released = self.released_at(key, window, window.epoch_at(self.clock().now_unix_ms()));
        if released == 0 {
            return self.acquire_by_key(key, window, algorithm, limit, cost);
        }
        if let Algorithm::TokenBucket { burst } = algorithm {
            return Ok(self
                .handle(key, window)?
                .acquire_bucket(burst, limit, cost, released));
        }
        Ok(net_decision(
            self.acquire_by_key_limit(key, window, algorithm, credited(limit, released), cost)?,
            released,
        ))
    }

    /// [`CounterStore::acquire_net`] without counting anything.
    pub fn check_net(
        &self,
        handle: &CounterHandle,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
    ) -> Decision {
        let released = self.released_at(handle.key(), handle.window(), handle.epoch_now());
        if let Algorithm::TokenBucket { burst } = algorithm {
            return handle.check_bucket(burst, limit, cost, released);
        }
        net_decision(
            handle.check_limit(algorithm, credited(limit, released), cost),
            released,
        )
    }

    /// Gives back `n` units of `(key, window)` in the current window (a refund of a reserved unit), at most
    /// what this node counted itself and has not released yet.
    pub fn release(&self, key: &str, window: Window, n: u64) -> Result<Released, CounterError> {
        let handle = self.handle(key, window)?;
        let _serial = self.release_guard();
        let epoch = handle.epoch_now();
        let take = n.min(self.own_net(key, window, epoch));
        let released = self.release_in_epoch(key, window, epoch, take)?;
        Ok(Released {
            released,
            unmatched: n - released,
            used: self.net(&handle),
        })
    }

    /// This node's own additions to `(key, window)` in `epoch` minus its own releases.
    fn own_net(&self, key: &str, window: Window, epoch: u64) -> u64 {
        let own = |k: &str| {
            self.counts_at(k, window, epoch)
                .map_or(0, |(local, _)| local)
        };
        own(key).saturating_sub(own(&released_key(key)))
    }

    /// Adds `n` to the released companion of `(key, window)` in `epoch`; returns what was counted.
    fn release_in_epoch(
        &self,
        key: &str,
        window: Window,
        epoch: u64,
        n: u64,
    ) -> Result<u64, CounterError> {
        if n == 0 {
            return Ok(0);
        }
        let companion = self.handle(&released_key(key), window)?;
        Ok(match companion.add_in_epoch(epoch, n) {
            AddOutcome::Added | AddOutcome::Saturated => n,
            AddOutcome::Stale => 0,
        })
    }

    /// The slots held of the in-flight limit counted by `handle` (an [`in_flight_key`]): the net count of
    /// its current and previous window.
    pub fn in_flight(&self, handle: &CounterHandle) -> u64 {
        let (held, _, _) = self.in_flight_parts(handle, handle.epoch_now());
        held
    }

    /// (held, released in `epoch` and the one before, added in the one before), `epoch` being current.
    fn in_flight_parts(&self, handle: &CounterHandle, epoch: u64) -> (u64, u64, u64) {
        let (key, window) = (handle.key(), handle.window());
        let previous = epoch.checked_sub(1);
        let added_before = previous.map_or(0, |e| handle.global_at(e));
        let released = self
            .released_at(key, window, epoch)
            .saturating_add(previous.map_or(0, |e| self.released_at(key, window, e)));
        let held = handle
            .global_at(epoch)
            .saturating_add(added_before)
            .saturating_sub(released);
        (held, released, added_before)
    }

    /// Takes `cost` slots of the in-flight limit counted by `handle` when `held + cost ≤ limit`; counted
    /// when allowed. `reset_at_ms` is when a slot taken now expires at the latest (its lease).
    ///
    /// The decision counts the previous window's slots as used and its releases and the current one's as
    /// credit: `added_before + added + cost ≤ limit + released`, the same `held + cost ≤ limit`, with the
    /// start-up share taken of `limit` alone.
    /// The clock is read once: the decision and the count are in the same window, even at its boundary.
    pub fn acquire_in_flight(&self, handle: &CounterHandle, limit: u64, cost: u64) -> Decision {
        let epoch = handle.epoch_now();
        let (_, released, added_before) = self.in_flight_parts(handle, epoch);
        let decision = handle.acquire_after(epoch, credited(limit, released), added_before, cost);
        in_flight_decision(handle, epoch, decision, released)
    }

    /// [`CounterStore::acquire_in_flight`] without counting anything.
    pub fn check_in_flight(&self, handle: &CounterHandle, limit: u64, cost: u64) -> Decision {
        let epoch = handle.epoch_now();
        let (_, released, added_before) = self.in_flight_parts(handle, epoch);
        let decision = handle.check_after(epoch, credited(limit, released), added_before, cost);
        in_flight_decision(handle, epoch, decision, released)
    }

    /// Gives back `n` slots of the in-flight limit `key` (an [`in_flight_key`]) in `window`: the previous
    /// window's first (the older leases), then the current one's, at most what this node took itself and
    /// has not given back.
    pub fn release_in_flight(
        &self,
        key: &str,
        window: Window,
        n: u64,
    ) -> Result<Released, CounterError> {
        let handle = self.handle(key, window)?;
        let _serial = self.release_guard();
        let epoch = handle.epoch_now();
        let mut left = n;
        let mut released = 0;
        let epochs = epoch.checked_sub(1).into_iter().chain([epoch]);
        for e in epochs {
            let take = left.min(self.own_net(key, window, e));
            let done = self.release_in_epoch(key, window, e, take)?;
            released += done;
            left -= done;
        }
        Ok(Released {
            released,
            unmatched: n - released,
            used: self.in_flight(&handle),
        })
    }

    /// Releases the in-flight slots departed replica `origin` still held, under [`departed_origin`]: for
    /// every in-flight key and window this node holds a value of `origin` for with slots not released by
    /// `origin` itself, `origin`'s additions. A read counts the larger of that and `origin`'s own releases
    /// ([`CounterStore::released_at`]), so releases `origin` made that arrive later (it was paused and comes
    /// back under the same id, or they were in flight when it crashed) give back nothing twice. Returns the
    /// number of (key, window) values released. Called when membership declares the member down, or it
    /// leaves or is replaced.
    pub fn release_departed(&self, origin: u64) -> usize {
        let synthetic = departed_origin(origin);
        let mut released = 0;
        for entry in self.remote_values_of(origin, IN_FLIGHT_PREFIX) {
            let companion = released_key(&entry.key);
            let own_releases = self
                .origin_counts_at(&companion, entry.window, entry.epoch)
                .into_iter()
                .find_map(|(o, v)| (o == origin).then_some(v))
                .unwrap_or(0);
            if entry.value > own_releases
                && self
                    .merge_remote(
                        synthetic,
                        &companion,
                        entry.window,
                        entry.epoch,
                        entry.value,
                    )
                    .is_ok()
            {
                released += 1;
            }
        }
        released
    }
}

/// The caller's `limit` with `released` units to decide on the added counter.
fn credited(limit: u64, released: u64) -> Limit {
    Limit {
        given: limit,
        credit: released,
    }
}

/// `d`, an in-flight decision on the added counters of `epoch` and the one before (see
/// [`CounterStore::acquire_in_flight`]), as the decision on the slots held: `reset_at_ms` is when a slot
/// taken in `epoch` expires at the latest (its lease).
fn in_flight_decision(handle: &CounterHandle, epoch: u64, d: Decision, released: u64) -> Decision {
    let reset_at_ms = handle.window().end_ms(epoch.saturating_add(1));
    Decision {
        reset_at_ms,
        retry_at_ms: reset_at_ms,
        ..net_decision(d, released)
    }
}

/// `d`, decided on the added counter against `share(limit) + released`, as the net decision against the
/// limit applied, `share(limit)` (the start-up share while it applies, as every decision reports it).
fn net_decision(d: Decision, released: u64) -> Decision {
    let limit = d.limit.saturating_sub(released);
    let used = d.used.saturating_sub(released);
    Decision {
        allowed: d.allowed,
        used,
        limit,
        remaining: limit.saturating_sub(used),
        reset_at_ms: d.reset_at_ms,
        retry_at_ms: d.retry_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnixMs;
    use crate::counter::StoreOptions;

    fn store(replica: u64) -> CounterStore {
        CounterStore::new(StoreOptions {
            replica_id: replica,
            clock: std::sync::Arc::new(crate::counter::CoarseClock::new(UnixMs::new(
                1_795_514_400_000,
            ))),
            ..StoreOptions::default()
        })
    }

    #[test]
    fn an_acquire_by_key_decides_on_the_same_counter_as_a_handle_and_sees_refunds() {
        let s = store(1);
        let w = Window::parse("1h").unwrap();
        let h = s.handle("k", w).unwrap();
        assert!(!s.any_released());
        for _ in 0..2 {
            assert!(
                s.acquire_net_by_key("k", w, Algorithm::FixedWindow, 3, 1)
                    .unwrap()
                    .allowed
            );
        }
        assert!(s.acquire_net(&h, Algorithm::FixedWindow, 3, 1).allowed);
        let full = s
            .acquire_net_by_key("k", w, Algorithm::FixedWindow, 3, 1)
            .unwrap();
        assert!(!full.allowed, "{full:?}");
        assert_eq!(full.used, 3);
        // A refund makes room for one more, by key as by handle.
        assert_eq!(s.release("k", w, 1).unwrap().released, 1);
        assert!(s.any_released());
        let again = s
            .acquire_net_by_key("k", w, Algorithm::FixedWindow, 3, 1)
            .unwrap();
        assert!(again.allowed, "{again:?}");
        assert_eq!((again.used, again.remaining), (3, 0));
        assert!(
            !s.acquire_net_by_key("k", w, Algorithm::FixedWindow, 3, 1)
                .unwrap()
                .allowed
        );
        assert_eq!(s.net(&h), 3);
        // Keys the store refuses are refused by key too, with nothing counted.
        assert!(matches!(
            s.acquire_by_key("", w, Algorithm::FixedWindow, 3, 1),
            Err(CounterError::EmptyKey)
        ));
    }

    #[test]
    fn a_reset_drops_the_refunds_with_the_units_so_the_limit_holds_after_it() {
        let s = store(1);
        let w = Window::parse("1h").unwrap();
        let h = s.handle("k", w).unwrap();
        for _ in 0..4 {
            assert!(s.acquire_net(&h, Algorithm::FixedWindow, 4, 1).allowed);
        }
        assert_eq!(s.release("k", w, 2).unwrap().released, 2);
        assert!(s.reset("k", w, h.epoch_now()).is_some());
        let allowed = (0..8)
            .filter(|_| s.acquire_net(&h, Algorithm::FixedWindow, 4, 1).allowed)
            .count();
        assert_eq!(
            allowed, 4,
            "the limit after a reset, not the limit plus the old refunds"
        );
        // Refunds of units taken after the reset are whole again.
        assert_eq!(s.release("k", w, 4).unwrap().released, 4);
    }

    #[test]
    fn concurrent_releases_on_one_node_never_give_back_more_than_it_added() {
        let w = Window::parse("1h").unwrap();
        for round in 0..200 {
            let s = std::sync::Arc::new(store(1));
            let key = format!("k{round}");
            s.add(&key, w, 1).unwrap();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (s, key) = (std::sync::Arc::clone(&s), key.clone());
                    std::thread::spawn(move || s.release(&key, w, 1).unwrap().released)
                })
                .collect();
            let released: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(released, 1, "round {round}");
        }
    }

    #[test]
    fn a_refund_gives_the_unit_back_and_never_takes_more_than_the_net_count() {
        let s = store(1);
        let w = Window::parse("1h").unwrap();
        let h = s.handle("k", w).unwrap();
        for _ in 0..3 {
            assert!(s.acquire_net(&h, Algorithm::FixedWindow, 3, 1).allowed);
        }
        assert!(!s.acquire_net(&h, Algorithm::FixedWindow, 3, 1).allowed);
        let r = s.release("k", w, 1).unwrap();
        assert_eq!((r.released, r.unmatched, r.used), (1, 0, 2));
        let d = s.acquire_net(&h, Algorithm::FixedWindow, 3, 1);
        assert!(d.allowed);
        assert_eq!((d.used, d.limit, d.remaining), (3, 3, 0));
        assert!(!s.check_net(&h, Algorithm::FixedWindow, 3, 1).allowed);
        let r = s.release("k", w, 10).unwrap();
        assert_eq!((r.released, r.unmatched, r.used), (3, 7, 0));
        assert_eq!(s.net(&h), 0);
    }

    #[test]
    fn in_flight_slots_are_held_until_released_and_expire_after_the_next_window() {
        let s = store(1);
        let w = Window::parse("1m").unwrap();
        let key = in_flight_key("model/gpt");
        let h = s.handle(&key, w).unwrap();
        assert!(s.acquire_in_flight(&h, 2, 1).allowed);
        assert!(s.acquire_in_flight(&h, 2, 1).allowed);
        assert!(!s.acquire_in_flight(&h, 2, 1).allowed);
        // The next window: both slots still held.
        s.clock()
            .set_unix_ms(UnixMs::new(1_795_514_400_000 + 60_000));
        assert_eq!(s.in_flight(&h), 2);
        assert!(!s.acquire_in_flight(&h, 2, 1).allowed);
        // One ends: its slot is free, taken again in this window.
        let r = s.release_in_flight(&key, w, 1).unwrap();
        assert_eq!((r.released, r.used), (1, 1));
        let d = s.acquire_in_flight(&h, 2, 1);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.used, 2);
        // Two windows on, the lease of the first window's slot ran out; this window's one is held.
        s.clock()
            .set_unix_ms(UnixMs::new(1_795_514_400_000 + 120_000));
        assert_eq!(s.in_flight(&h), 1);
        let r = s.release_in_flight(&key, w, 5).unwrap();
        assert_eq!((r.released, r.unmatched, r.used), (1, 4, 0));
    }

    #[test]
    fn every_node_releases_a_departed_members_slots_once_between_them() {
        let (a, b) = (store(1), store(2));
        let w = Window::parse("1h").unwrap();
        let key = in_flight_key("k");
        let epoch = w.epoch_at(UnixMs::new(1_795_514_400_000));
        // Replica 3 held 5 slots and released 2 of them; then it was declared down.
        for s in [&a, &b] {
            s.merge_remote(3, &key, w, epoch, 5).unwrap();
            s.merge_remote(3, &released_key(&key), w, epoch, 2).unwrap();
            assert_eq!(s.in_flight(&s.handle(&key, w).unwrap()), 3);
            assert_eq!(s.release_departed(3), 1);
            assert_eq!(s.in_flight(&s.handle(&key, w).unwrap()), 0);
            assert_eq!(
                s.release_departed(3),
                1,
                "again: the same value, max-merged"
            );
        }
        // Each node's synthetic release reaches the other: still released once.
        let synthetic = departed_origin(3);
        b.merge_remote(synthetic, &released_key(&key), w, epoch, 3)
            .unwrap();
        assert_eq!(b.in_flight(&b.handle(&key, w).unwrap()), 0);
        assert_eq!(b.released_at(&key, w, epoch), 5);
        // Normal keys are not touched.
        a.merge_remote(3, "plain", w, epoch, 4).unwrap();
        assert_eq!(a.release_departed(3), 1);
        assert_eq!(a.released_at("plain", w, epoch), 0);
    }

    #[test]
    fn the_hot_keys_show_the_limit_the_caller_gave_not_the_one_raised_by_refunds() {
        let s = store(1);
        let w = Window::parse("1h").unwrap();
        let fixed = Algorithm::FixedWindow;
        let shown = |s: &CounterStore, key: &str| {
            let hot = s.hottest(10);
            let h = hot.iter().find(|h| &*h.key == key).expect("a hot key");
            (h.used, h.limit.map(|l| l.limit))
        };
        // By handle: 3 taken, 1 given back, 1 taken again: 3 held of 3 (added 4, released 1).
        let h = s.handle("k", w).unwrap();
        for _ in 0..3 {
            assert!(s.acquire_net(&h, fixed, 3, 1).allowed);
        }
        assert_eq!(s.release("k", w, 1).unwrap().released, 1);
        assert!(s.acquire_net(&h, fixed, 3, 1).allowed);
        assert_eq!(shown(&s, "k"), (3, Some(3)));
        // By key, the same.
        for _ in 0..3 {
            assert!(s.acquire_net_by_key("j", w, fixed, 3, 1).unwrap().allowed);
        }
        assert_eq!(s.release("j", w, 2).unwrap().released, 2);
        assert!(s.acquire_net_by_key("j", w, fixed, 3, 1).unwrap().allowed);
        assert_eq!(shown(&s, "j"), (2, Some(3)));
        // An in-flight limit (not listed among the hot keys, but noted as given).
        let key = in_flight_key("m");
        let f = s.handle(&key, w).unwrap();
        assert!(s.acquire_in_flight(&f, 2, 1).allowed);
        assert_eq!(s.release_in_flight(&key, w, 1).unwrap().released, 1);
        assert!(s.acquire_in_flight(&f, 2, 1).allowed);
        assert_eq!(f.limit_seen().map(|l| l.limit), Some(2));
    }

    #[test]
    fn a_member_declared_down_that_comes_back_releases_its_slots_once_with_the_others() {
        let w = Window::parse("1h").unwrap();
        let key = in_flight_key("k");
        let companion = released_key(&key);
        let epoch = w.epoch_at(UnixMs::new(1_795_514_400_000));
        // Both orders: the member releases before it hears of the others' release for it, and after.
        for learns_first in [false, true] {
            let (a, x) = (store(1), store(3));
            // Replica 3 takes 3 slots of 4 and releases 1; node 1 holds its values.
            let hx = x.handle(&key, w).unwrap();
            for _ in 0..3 {
                assert!(x.acquire_in_flight(&hx, 4, 1).allowed);
            }
            assert_eq!(x.release_in_flight(&key, w, 1).unwrap().released, 1);
            a.merge_remote(3, &key, w, epoch, 3).unwrap();
            a.merge_remote(3, &companion, w, epoch, 1).unwrap();
            // Declared down (a pause): node 1 releases the 2 slots it still held.
            assert_eq!(a.release_departed(3), 1);
            let ha = a.handle(&key, w).unwrap();
            assert_eq!(a.in_flight(&ha), 0);
            let synthetic = |s: &CounterStore| {
                s.origin_counts_at(&companion, w, epoch)
                    .into_iter()
                    .find_map(|(o, v)| (o == departed_origin(3)).then_some(v))
            };
            if learns_first {
                let v = synthetic(&a).expect("the release for replica 3");
                x.merge_remote(departed_origin(3), &companion, w, epoch, v)
                    .unwrap();
                assert_eq!(x.in_flight(&hx), 0, "released by the others");
            }
            // It comes back under the same replica id, and its two requests end.
            let r = x.release_in_flight(&key, w, 2).unwrap();
            assert_eq!((r.released, r.used), (2, 0), "learns first: {learns_first}");
            let own = x.counts_at(&companion, w, epoch).map(|(own, _)| own);
            a.merge_remote(3, &companion, w, epoch, own.unwrap_or(0))
                .unwrap();
            if !learns_first {
                let v = synthetic(&a).expect("the release for replica 3");
                x.merge_remote(departed_origin(3), &companion, w, epoch, v)
                    .unwrap();
            }
            // Each slot was released once: 3 taken, 3 given back, on both nodes; the limit holds again.
            for s in [&a, &x] {
                assert_eq!(
                    s.released_at(&key, w, epoch),
                    3,
                    "learns first: {learns_first}"
                );
                let h = s.handle(&key, w).unwrap();
                assert_eq!(s.in_flight(&h), 0);
                let taken = (0..10)
                    .filter(|_| s.acquire_in_flight(&h, 4, 1).allowed)
                    .count();
                assert_eq!(taken, 4, "learns first: {learns_first}");
            }
        }
    }

    #[test]
    fn the_start_up_share_applies_to_the_callers_limit_and_is_the_limit_reported() {
        let s = store(1);
        // One member of two heard: the share of a limit of 4 is 2.
        s.set_startup_share(1, 2);
        let w = Window::parse("1m").unwrap();
        let fixed = Algorithm::FixedWindow;
        // Refunds: 2 taken (the share), both given back: 2 may be taken again (not the share of 4 + 2, 3).
        let h = s.handle("k", w).unwrap();
        for _ in 0..2 {
            assert!(s.acquire_net(&h, fixed, 4, 1).allowed);
        }
        assert!(!s.acquire_net(&h, fixed, 4, 1).allowed);
        assert_eq!(s.release("k", w, 2).unwrap().released, 2);
        let check = s.check_net(&h, fixed, 4, 1);
        assert!(check.allowed, "{check:?}");
        assert_eq!((check.used, check.limit, check.remaining), (0, 2, 2));
        for used in 1..=2 {
            let d = s.acquire_net(&h, fixed, 4, 1);
            assert!(d.allowed, "{d:?}");
            assert_eq!(
                (d.used, d.limit, d.remaining),
                (used, 2, 2 - used),
                "the share"
            );
        }
        let d = s.acquire_net_by_key("k", w, fixed, 4, 1).unwrap();
        assert!(!d.allowed, "{d:?}");
        assert_eq!((d.used, d.limit), (2, 2));
        // In-flight: 2 slots taken (the share), still held in the next window: none more (not the share
        // of 4 − 2, 1).
        let key = in_flight_key("m");
        let f = s.handle(&key, w).unwrap();
        for _ in 0..2 {
            assert!(s.acquire_in_flight(&f, 4, 1).allowed);
        }
        s.clock()
            .set_unix_ms(UnixMs::new(1_795_514_400_000 + 60_000));
        let check = s.check_in_flight(&f, 4, 1);
        assert!(!check.allowed, "{check:?}");
        let d = s.acquire_in_flight(&f, 4, 1);
        assert!(!d.allowed, "{d:?}");
        assert_eq!((d.used, d.limit, d.remaining), (2, 2, 0), "the share");
        // Heard from everyone: the whole limit.
        s.set_startup_share(2, 2);
        let d = s.acquire_in_flight(&f, 4, 1);
        assert!(d.allowed, "{d:?}");
        assert_eq!((d.used, d.limit, d.remaining), (3, 4, 1));
    }

    #[test]
    fn an_in_flight_acquire_at_a_window_boundary_decides_and_counts_in_one_window() {
        // All 3 slots are taken in one window, so they are held in it and in the next: an acquire that reads
        // either window must refuse. One thread moves the clock back and forth over the boundary while
        // another acquires; an acquire that read the parts of one window and counted in the other admitted.
        let s = store(1);
        let w = Window::parse("1m").unwrap();
        let key = in_flight_key("m");
        let h = s.handle(&key, w).unwrap();
        let (before, after) = (1_795_514_400_000 + 59_999, 1_795_514_400_000 + 60_000);
        s.clock().set_unix_ms(UnixMs::new(before));
        for _ in 0..3 {
            assert!(s.acquire_in_flight(&h, 3, 1).allowed);
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let admitted = std::thread::scope(|scope| {
            scope.spawn(|| {
                // Relaxed: a stop flag; nothing is published through it.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.clock().set_unix_ms(UnixMs::new(after));
                    s.clock().set_unix_ms(UnixMs::new(before));
                }
            });
            let admitted = (0..200_000).find(|_| s.acquire_in_flight(&h, 3, 1).allowed);
            // Relaxed: see above.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            admitted
        });
        assert_eq!(admitted, None, "an acquire admitted a 4th slot of 3");
    }

    #[test]
    fn in_flight_keys_and_their_companions_are_recognized() {
        assert!(is_in_flight(&in_flight_key("x")));
        assert!(is_in_flight(&released_key(&in_flight_key("x"))));
        assert!(!is_in_flight(&released_key("x")));
        assert!(!is_in_flight("x"));
    }
}
