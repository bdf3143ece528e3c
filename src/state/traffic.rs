//! Traffic patterns: request counts, error counts and latency histograms per key (a provider, a model), per
//! window, per node and for the whole cluster.
//!
//! Built on the counter plane: each key's errors and every latency bucket are G-counters in the
//! [`CounterStore`] under reserved keys (`@traffic/{key}/errors`, `@traffic/{key}/latency/{bucket}`), so they
//! replicate, merge exactly (per-origin max), carry their window epoch and reach joining nodes like any
//! counter. Every request lands in exactly one latency bucket, so the request count is the histogram's total:
//! no separate counter to pay for on the hot path. Keys starting with `@` are reserved for this plane.
//!
//! Guarantees:
//! - [`TrafficHandle::record`] takes no lock, allocates nothing once the latency's bucket has been seen on this
//!   handle, and does one counter add (two for an error): a few atomic operations.
//! - Cluster-wide histograms are the bucket-wise sum of every node's, so a percentile read from the merged
//!   buckets equals the one of a single histogram fed every sample (the buckets' relative error, ≤ 12.5 %,
//!   is the only approximation: see [`super::histogram`]).
//! - Reads never create keys.

use std::collections::{BTreeMap, BTreeSet};

use crate::UnixMs;
use crate::fixed_hash::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::error::StateError;
use super::histogram::{BUCKETS, Histogram, bucket_of_duration};
use crate::counter::{CoarseClock, CounterHandle, CounterStore, EpochCache, Window};
use crate::sync::LockClean;

/// Prefix of the counter keys of this plane.
pub const TRAFFIC_PREFIX: &str = "@traffic/";

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Served.
    Ok,
    /// Failed (counted in `errors` as well as in `requests`).
    Error,
}

/// The counter keys behind a traffic key.
fn errors_key(key: &str) -> String {
    format!("{TRAFFIC_PREFIX}{key}/errors")
}
fn bucket_key(key: &str, bucket: usize) -> String {
    format!("{TRAFFIC_PREFIX}{key}/latency/{bucket}")
}

/// Records traffic into a counter store, in one window (e.g. `1m`). Cheap to clone; clones share their list of
/// keys.
#[derive(Debug, Clone)]
pub struct TrafficRecorder {
    store: CounterStore,
    window: Window,
    keys: Arc<Mutex<BTreeSet<String>>>,
}

/// Where [`TrafficRecorder::local_requests_since`] left off, per key.
#[derive(Debug, Clone, Default)]
pub struct RequestMark {
    last: HashMap<String, (u64, u64)>,
}

impl TrafficRecorder {
    /// A recorder over `store` counting in `window`.
    pub fn new(store: CounterStore, window: Window) -> TrafficRecorder {
        TrafficRecorder {
            store,
            window,
            keys: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// The window traffic is counted in.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Every key a handle was resolved for, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock_clean().iter().cloned().collect()
    }

    /// Requests this node recorded since the previous call with the same `mark`, over every key (0 for a key
    /// the first time). Window boundaries are followed through the epochs the store still holds.
    pub fn local_requests_since(&self, mark: &mut RequestMark, now_ms: u64) -> u64 {
        let current = self.window.epoch_at(UnixMs::new(now_ms));
        let mut total = 0u64;
        for key in self.keys() {
            // Requests of this node in `epoch`: its latency buckets' local counts.
            let local = |epoch: u64| {
                (0..BUCKETS)
                    .filter_map(|b| {
                        self.store
                            .counts_at(&bucket_key(&key, b), self.window, epoch)
                    })
                    .fold(0u64, |sum, (local, _)| sum.saturating_add(local))
            };
            let now_value = local(current);
            if let Some(&(epoch, value)) = mark.last.get(&key) {
                let mut seen = 0u64;
                for e in epoch..=current.min(epoch + crate::counter::RING as u64) {
                    seen = seen.saturating_add(if e == current { now_value } else { local(e) });
                }
                total = total.saturating_add(seen.saturating_sub(value));
            }
            mark.last.insert(key, (current, now_value));
        }
        total
    }

    /// Resolves `key` once (the gateway keeps the handle next to its provider or model config).
    pub fn handle(&self, key: &str) -> Result<TrafficHandle, StateError> {
        let handle = TrafficHandle {
            inner: Arc::new(HandleInner {
                clock: Arc::clone(self.store.clock()),
                epochs: EpochCache::new(self.window),
                errors: self.store.handle(&errors_key(key), self.window)?,
                buckets: std::array::from_fn(|_| OnceLock::new()),
                key: key.to_string(),
                store: self.store.clone(),
            }),
        };
        self.keys.lock_clean().insert(key.to_string());
        Ok(handle)
    }

    /// The whole cluster's view of `key` in the window of index `epoch`, and each origin's share.
    pub fn read(&self, key: &str, epoch: u64) -> TrafficView {
        let mut by_origin: BTreeMap<u64, OriginTraffic> = BTreeMap::new();
        fn at(map: &mut BTreeMap<u64, OriginTraffic>, o: u64) -> &mut OriginTraffic {
            map.entry(o).or_insert_with(|| OriginTraffic {
                origin: o,
                ..OriginTraffic::default()
            })
        }
        for (o, n) in self
            .store
            .origin_counts_at(&errors_key(key), self.window, epoch)
        {
            at(&mut by_origin, o).errors += n;
        }
        for b in 0..BUCKETS {
            for (o, n) in self
                .store
                .origin_counts_at(&bucket_key(key, b), self.window, epoch)
            {
                at(&mut by_origin, o).latency.add_bucket(b, n);
            }
        }
        for o in by_origin.values_mut() {
            o.requests = o.latency.count();
        }
        let mut view = TrafficView {
            by_origin: by_origin.into_values().collect(),
            ..TrafficView::default()
        };
        for o in &view.by_origin {
            view.requests += o.requests;
            view.errors += o.errors;
            view.latency.merge(&o.latency);
        }
        view
    }
}

/// One origin's (one node process's) traffic of a key in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginTraffic {
    /// The origin's replica id (map it to a node id with the member table).
    pub origin: u64,
    /// Requests.
    pub requests: u64,
    /// Of which errors.
    pub errors: u64,
    /// Latencies.
    pub latency: Histogram,
}

/// A key's traffic in one window: the cluster-wide sums and each origin's share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficView {
    /// Requests, all origins.
    pub requests: u64,
    /// Errors, all origins.
    pub errors: u64,
    /// Latencies, all origins (bucket-wise sum).
    pub latency: Histogram,
    /// Per origin, sorted by origin.
    pub by_origin: Vec<OriginTraffic>,
}

impl TrafficView {
    /// `errors / requests` (0 when there were no requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

#[derive(Debug)]
struct HandleInner {
    /// The store's clock and the window's epoch of "now", read once per record for every cell it touches.
    clock: Arc<CoarseClock>,
    epochs: EpochCache,
    errors: CounterHandle,
    /// Resolved on the first latency in each bucket (off the common path), then read with one atomic load.
    /// Inline, not boxed: one pointer less between a record and its bucket.
    buckets: [OnceLock<CounterHandle>; BUCKETS],
    key: String,
    store: CounterStore,
}

/// A resolved traffic key: the hot-path API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TrafficHandle {
    inner: Arc<HandleInner>,
}

impl TrafficHandle {
    /// The traffic key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Counts one request that took `latency` and ended with `outcome`: one add to the latency's bucket (the
    /// request count is the buckets' total), and one to `errors` for an error. Lock-free; allocates only the
    /// first time a latency falls in a bucket not seen before on this handle. A bucket the store refuses (at
    /// `limits.max_keys`) loses that sample, counted in the store's `refused_keys`.
    #[inline]
    pub fn record(&self, latency: Duration, outcome: Outcome) {
        let inner = &*self.inner;
        // The fast path makes no call (so it saves no registers): a success, the cached epoch, a bucket already
        // resolved, one uncontended CAS. Anything else, and it counted nothing: `record_full` does it all.
        if outcome == Outcome::Ok
            && let Some(epoch) = inner.epochs.cached_epoch_at(inner.clock.now_unix_ms())
            && let Some(handle) = inner.buckets[bucket_of_duration(latency)].get()
            && handle.try_add_in_epoch_fast(epoch, 1)
        {
            return;
        }
        self.record_full(latency, outcome);
    }

    #[inline(never)]
    fn record_full(&self, latency: Duration, outcome: Outcome) {
        let inner = &*self.inner;
        // The epoch comes from the handle itself, not from the bucket's cell: it does not wait for the bucket.
        let epoch = inner.epochs.epoch_at(inner.clock.now_unix_ms());
        if outcome == Outcome::Error {
            inner.errors.add_in_epoch(epoch, 1);
        }
        let b = bucket_of_duration(latency);
        match inner.buckets[b].get() {
            Some(handle) => {
                handle.add_in_epoch(epoch, 1);
            }
            None => self.record_new_bucket(b, epoch),
        }
    }

    #[cold]
    fn record_new_bucket(&self, b: usize, epoch: u64) {
        let inner = &*self.inner;
        if let Ok(handle) = inner
            .store
            .handle(&bucket_key(&inner.key, b), inner.epochs.window())
        {
            handle.add_in_epoch(epoch, 1);
            // Another thread may have resolved the same bucket meanwhile: both handles name the same cell.
            let _ = inner.buckets[b].set(handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::{CoarseClock, StoreOptions};

    const NOW: u64 = 1_795_514_400_000;

    fn store(replica: u64) -> CounterStore {
        CounterStore::new(StoreOptions {
            replica_id: replica,
            clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
            ..StoreOptions::default()
        })
    }

    #[test]
    fn record_counts_requests_errors_and_latency_buckets() {
        let window = Window::parse("1m").expect("window");
        let recorder = TrafficRecorder::new(store(1), window);
        let h = recorder.handle("openai/gpt-4o").expect("handle");
        h.record(Duration::from_millis(120), Outcome::Ok);
        h.record(Duration::from_millis(130), Outcome::Ok);
        h.record(Duration::from_secs(2), Outcome::Error);
        let view = recorder.read("openai/gpt-4o", window.epoch_at(UnixMs::new(NOW)));
        assert_eq!((view.requests, view.errors), (3, 1));
        assert_eq!(view.latency.count(), 3);
        assert_eq!(view.by_origin.len(), 1);
        assert_eq!(view.by_origin[0].origin, 1);
        assert!((view.error_rate() - 1.0 / 3.0).abs() < 1e-9);
        // A key never recorded reads empty and is not created.
        let keys = recorder.store.stats().keys;
        assert_eq!(
            recorder.read("nothing", window.epoch_at(UnixMs::new(NOW))),
            TrafficView::default()
        );
        assert_eq!(recorder.store.stats().keys, keys);
    }

    #[test]
    fn request_rate_follows_window_boundaries() {
        let window = Window::parse("1s").expect("window");
        let store = store(1);
        let recorder = TrafficRecorder::new(store.clone(), window);
        let h = recorder.handle("k").expect("handle");
        let mut mark = RequestMark::default();
        assert_eq!(recorder.local_requests_since(&mut mark, NOW), 0);
        for _ in 0..5 {
            h.record(Duration::from_millis(1), Outcome::Ok);
        }
        assert_eq!(recorder.local_requests_since(&mut mark, NOW), 5);
        store.clock().set_unix_ms(UnixMs::new(NOW + 1_000)); // the next window
        for _ in 0..3 {
            h.record(Duration::from_millis(1), Outcome::Ok);
        }
        assert_eq!(recorder.local_requests_since(&mut mark, NOW + 1_000), 3);
        assert_eq!(recorder.local_requests_since(&mut mark, NOW + 1_000), 0);
    }
}
