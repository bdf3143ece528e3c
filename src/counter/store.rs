//! The counter store: `(key, window)` → cell, handles for the hot path, the dirty queue, and the drain and merge
//! APIs that replication uses.
//!
//! Guarantees:
//! - Lookups never block: the map is `papaya`'s lock-free hash map; readers never wait for writers.
//! - [`CounterHandle::add`] and [`CounterHandle::try_acquire`] take no lock, allocate nothing and make no syscall:
//!   a clock load, an epoch computation, one slot load, one CAS, and on the first change of a flush interval one
//!   flag swap and one push onto a preallocated queue.
//! - The store never holds more than `max_keys` cells. At the cap a new key is refused with
//!   [`CounterError::KeyLimit`] and counted; existing keys keep working. Before refusing, a full store frees (at
//!   most once per second) the cells whose every epoch has left the ring and that no handle refers to (see
//!   [`CounterStore::reclaim_idle`]); an add racing with that is either counted in the old cell (which then is
//!   not freed) or refused by it and retried on a fresh cell, never lost or counted twice.
//! - Every change reaches [`CounterStore::drain_dirty`]: the first add after a drain marks the cell dirty and
//!   queues it (see the handshake in the cell's docs). Nothing scans the keys on a timer.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use papaya::Equivalent;

use super::cell::{AddOutcome, Cell, FastTake, MergeOutcome, RING};
use super::clock::CoarseClock;
use super::error::CounterError;
use super::limiter::{self, Algorithm, Decision};
use super::lookup_cache;
use super::window::Window;

/// Options of a [`CounterStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Maximum number of `(key, window)` cells. Default 100,000 (`limits.max_keys`). Must be ≥ 1.
    pub max_keys: usize,
    /// Maximum key length in bytes. Default 256 (`limits.max_key_length`). Must be ≥ 1.
    pub max_key_length: usize,
    /// Stripes given to a cell once it is contended (rounded up to a power of two, at least 2). Default: twice
    /// the available parallelism, at most 64. Uncontended cells use one inline stripe and cost no more memory.
    pub stripes: usize,
    /// This process's replica id: values merged from this origin are ignored (they are our own, echoed).
    /// The node draws a fresh random one per process start (DESIGN.md, Identity). Default 0.
    pub replica_id: u64,
    /// Seed of the key hash. The node passes a random seed so keys chosen by clients cannot collide on purpose.
    /// Default: a fixed constant.
    pub hash_seed: u64,
    /// The coarse clock the hot path reads. Default: a new clock at 0, to be ticked by its owner.
    pub clock: Arc<CoarseClock>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        StoreOptions {
            max_keys: 100_000,
            max_key_length: 256,
            stripes: (parallelism * 2).clamp(2, 64),
            replica_id: 0,
            hash_seed: 0x6269_6672_6f73_7421,
            clock: Arc::new(CoarseClock::new(0)),
        }
    }
}

/// Counters of what the store refused or dropped. All monotone.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// New keys refused at `max_keys`.
    pub refused_keys: std::sync::atomic::AtomicU64,
    /// Keys refused for their length (or empty).
    pub invalid_keys: std::sync::atomic::AtomicU64,
    /// Adds refused because their epoch had already left the ring (a clock far behind).
    pub stale_adds: std::sync::atomic::AtomicU64,
    /// Adds that hit a value word's maximum.
    pub saturated_adds: std::sync::atomic::AtomicU64,
    /// Remote values for windows that are already over.
    pub expired_merges: std::sync::atomic::AtomicU64,
    /// Remote values for windows more than one window ahead of this node's clock.
    pub future_merges: std::sync::atomic::AtomicU64,
    /// Contended cells given padded stripes by the drain.
    pub inflated_cells: std::sync::atomic::AtomicU64,
    /// Cells freed by [`CounterStore::reclaim_idle`].
    pub reclaimed_keys: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`StoreStats`] plus the current number of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Cells held now.
    pub keys: usize,
    /// See [`StoreStats::refused_keys`].
    pub refused_keys: u64,
    /// See [`StoreStats::invalid_keys`].
    pub invalid_keys: u64,
    /// See [`StoreStats::stale_adds`].
    pub stale_adds: u64,
    /// See [`StoreStats::saturated_adds`].
    pub saturated_adds: u64,
    /// See [`StoreStats::expired_merges`].
    pub expired_merges: u64,
    /// See [`StoreStats::future_merges`].
    pub future_merges: u64,
    /// See [`StoreStats::inflated_cells`].
    pub inflated_cells: u64,
    /// See [`StoreStats::reclaimed_keys`].
    pub reclaimed_keys: u64,
}

/// One changed value, as the drain hands it to replication: this replica's absolute count for a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyEntry {
    /// The key.
    pub key: Arc<str>,
    /// The window.
    pub window: Window,
    /// The window index.
    pub epoch: u64,
    /// This replica's absolute count in that window (not a difference), so merging is a per-origin max.
    pub value: u64,
}

/// The result of an add.
pub use super::cell::AddOutcome as AddResult;

/// Map key: owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CellKey {
    key: Arc<str>,
    window: Window,
}

/// Map key: borrowed, for lookups that allocate nothing. Hashes exactly like [`CellKey`].
struct KeyRef<'a> {
    key: &'a str,
    window: Window,
}

impl Hash for CellKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.key).hash(state);
        self.window.hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.window.hash(state);
    }
}

impl Equivalent<CellKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CellKey) -> bool {
        self.window == key.window && *key.key == *self.key
    }
}

struct Shared {
    /// Unique per store in this process (keys the per-thread lookup cache).
    id: u64,
    hasher: foldhash::fast::FixedState,
    clock: Arc<CoarseClock>,
    cells: papaya::HashMap<CellKey, Arc<Cell>, foldhash::fast::FixedState>,
    /// Cells held, counted exactly (papaya's `len` is approximate under concurrency).
    count: std::sync::atomic::AtomicUsize,
    /// Coarse-clock time of the last reclaim attempted because the store was full.
    last_reclaim_at_cap_ms: std::sync::atomic::AtomicU64,
    dirty: ArrayQueue<Arc<Cell>>,
    options: StoreOptions,
    stats: StoreStats,
}

impl Shared {
    /// Marks `cell` dirty after a change and queues it on the first change since the last drain.
    #[inline]
    fn changed(&self, cell: &Arc<Cell>) {
        // Already queued (the common case between two drains): one load.
        if cell.is_dirty() {
            return;
        }
        self.queue_changed(cell);
    }

    #[cold]
    #[inline(never)]
    fn queue_changed(&self, cell: &Arc<Cell>) {
        if cell.mark_dirty() {
            // The queue holds at most one entry per cell (the dirty flag guards it) and has room for `max_keys`
            // cells plus slack, so this push cannot fail. Were it ever to, clearing the flag lets the next add
            // queue the cell again rather than leave it marked and never drained.
            if self.dirty.push(Arc::clone(cell)).is_err() {
                cell.clear_dirty();
            }
        }
    }

    #[cold]
    fn count_add_outcome(&self, outcome: AddOutcome) {
        // Relaxed: statistics.
        let counter = match outcome {
            AddOutcome::Added => return,
            AddOutcome::Saturated => &self.stats.saturated_adds,
            AddOutcome::Stale => &self.stats.stale_adds,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The store of counters. Cheap to clone (an `Arc`); share it between threads.
#[derive(Clone)]
pub struct CounterStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterStore")
            .field("stats", &self.stats())
            .finish()
    }
}

impl CounterStore {
    /// A new, empty store.
    pub fn new(options: StoreOptions) -> CounterStore {
        let max_keys = options.max_keys.max(1);
        let hasher = foldhash::fast::FixedState::with_seed(options.hash_seed);
        let cells = papaya::HashMap::builder().hasher(hasher.clone()).build();
        CounterStore {
            shared: Arc::new(Shared {
                id: lookup_cache::new_store_id(),
                hasher,
                clock: Arc::clone(&options.clock),
                cells,
                count: std::sync::atomic::AtomicUsize::new(0),
                last_reclaim_at_cap_ms: std::sync::atomic::AtomicU64::new(0),
                dirty: ArrayQueue::new(max_keys + 64),
                options: StoreOptions {
                    max_keys,
                    max_key_length: options.max_key_length.max(1),
                    ..options
                },
                stats: StoreStats::default(),
            }),
        }
    }

    /// The coarse clock the store reads.
    pub fn clock(&self) -> &Arc<CoarseClock> {
        &self.shared.clock
    }

    /// The options the store was built with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.options
    }

    /// Resolves `(key, window)` to a handle, creating the cell if needed. Do this once and keep the handle.
    pub fn handle(&self, key: &str, window: Window) -> Result<CounterHandle, CounterError> {
        loop {
            let cell = self.cell(key, window)?;
            if cell.register_handle() {
                return Ok(CounterHandle {
                    cell,
                    clock: Arc::clone(&self.shared.clock),
                    shared: Arc::clone(&self.shared),
                });
            }
            // The cell is being reclaimed: it is about to leave the map (or to be given back). Resolve again.
            std::thread::yield_now();
        }
    }

    /// Looks up or creates the cell of `(key, window)`.
    fn cell(&self, key: &str, window: Window) -> Result<Arc<Cell>, CounterError> {
        self.check_key(key)?;
        let map = self.shared.cells.pin();
        if let Some(cell) = map.get(&KeyRef { key, window }) {
            return Ok(Arc::clone(cell));
        }
        self.insert(&map, key, window)
    }

    fn check_key(&self, key: &str) -> Result<(), CounterError> {
        let max = self.shared.options.max_key_length;
        let error = if key.is_empty() {
            CounterError::EmptyKey
        } else if key.len() > max {
            CounterError::KeyTooLong {
                len: key.len(),
                max,
            }
        } else {
            return Ok(());
        };
        // Relaxed: statistics.
        self.shared
            .stats
            .invalid_keys
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(error)
    }

    #[cold]
    fn insert<G: papaya::Guard>(
        &self,
        map: &papaya::HashMapRef<'_, CellKey, Arc<Cell>, foldhash::fast::FixedState, G>,
        key: &str,
        window: Window,
    ) -> Result<Arc<Cell>, CounterError> {
        let max_keys = self.shared.options.max_keys;
        let mut reclaimed = false;
        loop {
            // Reserve a place first so concurrent inserts can never exceed the cap. Relaxed: a counter whose
            // only job is the cap; the map insert publishes the cell.
            let reserved = self
                .shared
                .count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if reserved < max_keys {
                break;
            }
            self.shared
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(cell) = map.get(&KeyRef { key, window }) {
                return Ok(Arc::clone(cell)); // inserted meanwhile by someone else
            }
            if !reclaimed && self.reclaim_at_cap() > 0 {
                reclaimed = true;
                continue;
            }
            self.shared
                .stats
                .refused_keys
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(CounterError::KeyLimit {
                key: key.to_string(),
                max_keys,
            });
        }
        let key: Arc<str> = Arc::from(key);
        let cell = Arc::new(Cell::new(Arc::clone(&key), window));
        match map.try_insert(CellKey { key, window }, Arc::clone(&cell)) {
            Ok(_) => Ok(cell),
            Err(occupied) => {
                // Lost a race with another insert of the same key: give the reservation back.
                self.shared
                    .count
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Arc::clone(occupied.current))
            }
        }
    }

    /// Adds `n` to `(key, window)` in the current window: the convenience path (a hash per call; a per-thread
    /// cache of resolved cells answers repeated keys without entering the map). Never blocks; creates the key if
    /// needed.
    pub fn add(&self, key: &str, window: Window, n: u64) -> Result<AddResult, CounterError> {
        self.check_key(key)?;
        super::calls::count_add();
        let epoch = window.epoch_at(self.shared.clock.now_unix_ms());
        let hash = lookup_cache::hash(&self.shared.hasher, key, window);
        let shared = &self.shared;
        let cached = lookup_cache::with_cached(shared.id, hash, key, window, |cell| {
            let outcome = cell.add(epoch, n);
            if outcome != AddOutcome::Stale {
                shared.changed(cell);
            } else if cell.is_retired() {
                return None; // nothing was counted; evict and resolve through the map
            }
            Some(outcome)
        });
        let outcome = match cached {
            Some(outcome) => outcome,
            None => self.add_uncached(key, window, epoch, hash, n)?,
        };
        if outcome != AddOutcome::Added {
            shared.count_add_outcome(outcome);
        }
        Ok(outcome)
    }

    #[cold]
    fn add_uncached(
        &self,
        key: &str,
        window: Window,
        epoch: u64,
        hash: u64,
        n: u64,
    ) -> Result<AddResult, CounterError> {
        loop {
            let cell = self.cell(key, window)?;
            let outcome = cell.add(epoch, n);
            if outcome == AddOutcome::Stale && cell.is_retired() {
                std::thread::yield_now();
                continue; // refused by a cell being reclaimed: nothing was counted; resolve again
            }
            if outcome != AddOutcome::Stale {
                self.shared.changed(&cell);
            }
            lookup_cache::remember(self.shared.id, hash, &cell);
            return Ok(outcome);
        }
    }

    /// The global (local + merged remote) count of `(key, window)` in the current window; 0 for an unknown key.
    pub fn global(&self, key: &str, window: Window) -> u64 {
        let epoch = window.epoch_at(self.shared.clock.now_unix_ms());
        let map = self.shared.cells.pin();
        map.get(&KeyRef { key, window }).map_or(0, |cell| {
            cell.local(epoch).saturating_add(cell.remote(epoch))
        })
    }

    /// This replica's own count and the merged remote count of `(key, window)` in `epoch`, read without
    /// creating the key: `None` for an unknown key, zeros for an epoch no longer in the ring.
    pub fn counts_at(&self, key: &str, window: Window, epoch: u64) -> Option<(u64, u64)> {
        let map = self.shared.cells.pin();
        map.get(&KeyRef { key, window })
            .map(|cell| (cell.local(epoch), cell.remote(epoch)))
    }

    /// Every origin's count of `(key, window)` in `epoch`, read without creating the key: this replica's own
    /// (under its replica id) first when non-zero, then each remote origin merged here. Empty for an unknown
    /// key.
    pub fn origin_counts_at(&self, key: &str, window: Window, epoch: u64) -> Vec<(u64, u64)> {
        let map = self.shared.cells.pin();
        let Some(cell) = map.get(&KeyRef { key, window }) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let local = cell.local(epoch);
        if local > 0 {
            out.push((self.shared.options.replica_id, local));
        }
        out.extend(
            cell.remote_values()
                .into_iter()
                .filter(|&(_, e, v)| e == epoch && v > 0)
                .map(|(origin, _, v)| (origin, v)),
        );
        out
    }

    /// Drains up to `max_cells` dirty cells into `out`: for each, every epoch still in the ring with this
    /// replica's absolute value (zero values skipped). Returns the number of cells drained. Also gives
    /// contended cells their stripes (this is the only place that allocates them, off the hot path).
    pub fn drain_dirty(&self, max_cells: usize, out: &mut Vec<DirtyEntry>) -> usize {
        let now = self.shared.clock.now_unix_ms();
        let mut drained = 0;
        while drained < max_cells {
            let Some(cell) = self.shared.dirty.pop() else {
                break;
            };
            drained += 1;
            cell.clear_dirty();
            if cell.is_retired() {
                continue;
            }
            if cell.is_contended() {
                cell.inflate(self.shared.options.stripes);
                if cell.is_inflated() {
                    // Relaxed: statistics.
                    self.shared
                        .stats
                        .inflated_cells
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let window = cell.window();
            let oldest = window.epoch_at(now).saturating_sub(RING as u64 - 1);
            for (epoch, value) in cell.local_values(oldest) {
                out.push(DirtyEntry {
                    key: Arc::clone(cell.key()),
                    window,
                    epoch,
                    value,
                });
            }
        }
        drained
    }

    /// Number of cells waiting in the dirty queue.
    pub fn dirty_len(&self) -> usize {
        self.shared.dirty.len()
    }

    /// Merges a value reported by replica `origin` for `(key, window, epoch)`: per-origin max, then the cell's
    /// pre-summed remote value is republished for the hot path. Values from this replica's own id are ignored.
    pub fn merge_remote(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
    ) -> Result<MergeOutcome, CounterError> {
        if origin == self.shared.options.replica_id {
            return Ok(MergeOutcome::Unchanged);
        }
        // A value for a window that has not started here (the sender's clock is ahead by more than one
        // window, or the epoch is garbage) would roll our slots into the future and refuse every local add of
        // the current window. Drop it; it is merged once our clock gets there (later batches, anti-entropy).
        let current = window.epoch_at(self.shared.clock.now_unix_ms());
        if epoch > current.saturating_add(1) {
            // Relaxed: statistics.
            self.shared
                .stats
                .future_merges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(MergeOutcome::Future);
        }
        loop {
            let cell = self.cell(key, window)?;
            let outcome = cell.merge_remote(origin, epoch, value);
            if outcome == MergeOutcome::Expired {
                if cell.is_retired() {
                    continue;
                }
                // Relaxed: statistics.
                self.shared
                    .stats
                    .expired_merges
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(outcome);
        }
    }

    /// Frees every cell whose epochs have all left the ring, that no handle refers to and that is not waiting
    /// to be drained. Returns how many were freed. This walks the whole map, so nothing calls it on a timer: an
    /// insert that finds the store full calls it (at most once per second), and an owner may call it at will.
    pub fn reclaim_idle(&self) -> usize {
        let now = self.shared.clock.now_unix_ms();
        let map = self.shared.cells.pin();
        let mut freed = 0;
        for (key, cell) in map.iter() {
            let oldest = key.window.epoch_at(now).saturating_sub(RING as u64 - 1);
            if cell.try_retire(oldest) {
                map.remove(key);
                // Relaxed: the cap counter (see `insert`).
                self.shared
                    .count
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                freed += 1;
            }
        }
        // Relaxed: statistics.
        self.shared
            .stats
            .reclaimed_keys
            .fetch_add(freed as u64, std::sync::atomic::Ordering::Relaxed);
        freed
    }

    /// At the cap, frees idle cells — at most once per second of the coarse clock, so a flood of new keys cannot
    /// make every refused insert walk the map. Returns how many were freed (0 when it was not this caller's turn).
    #[cold]
    fn reclaim_at_cap(&self) -> usize {
        let now = self.shared.clock.now_unix_ms();
        let last = &self.shared.last_reclaim_at_cap_ms;
        // Relaxed: a rate limiter on a standalone timestamp; the CAS picks one caller per second.
        let previous = last.load(std::sync::atomic::Ordering::Relaxed);
        if now < previous.saturating_add(1_000)
            || last
                .compare_exchange(
                    previous,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return 0;
        }
        self.reclaim_idle()
    }

    /// Every `(key, window, epoch, value)` this replica holds for itself, for a full state transfer.
    pub fn local_snapshot(&self) -> Vec<DirtyEntry> {
        let now = self.shared.clock.now_unix_ms();
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (key, cell) in map.iter() {
            let oldest = key.window.epoch_at(now).saturating_sub(RING as u64 - 1);
            for (epoch, value) in cell.local_values(oldest) {
                out.push(DirtyEntry {
                    key: Arc::clone(&key.key),
                    window: key.window,
                    epoch,
                    value,
                });
            }
        }
        out
    }

    /// Every `(origin, key, window, epoch, value)` merged from other replicas, for a full state transfer.
    pub fn remote_snapshot(&self) -> Vec<(u64, DirtyEntry)> {
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (key, cell) in map.iter() {
            for (origin, epoch, value) in cell.remote_values() {
                out.push((
                    origin,
                    DirtyEntry {
                        key: Arc::clone(&key.key),
                        window: key.window,
                        epoch,
                        value,
                    },
                ));
            }
        }
        out
    }

    /// The store's counters and its current number of keys.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        // Relaxed: statistics.
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        StatsSnapshot {
            keys: self.shared.count.load(std::sync::atomic::Ordering::Relaxed),
            refused_keys: load(&s.refused_keys),
            invalid_keys: load(&s.invalid_keys),
            stale_adds: load(&s.stale_adds),
            saturated_adds: load(&s.saturated_adds),
            expired_merges: load(&s.expired_merges),
            future_merges: load(&s.future_merges),
            inflated_cells: load(&s.inflated_cells),
            reclaimed_keys: load(&s.reclaimed_keys),
        }
    }
}

/// A resolved `(key, window)`: the hot-path entry point. Clone it freely (each clone is one refcount).
pub struct CounterHandle {
    cell: Arc<Cell>,
    /// The store's clock, held directly: the hot path reads it one pointer away instead of two.
    clock: Arc<CoarseClock>,
    shared: Arc<Shared>,
}

impl Clone for CounterHandle {
    fn clone(&self) -> CounterHandle {
        self.cell.register_clone();
        CounterHandle {
            cell: Arc::clone(&self.cell),
            clock: Arc::clone(&self.clock),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for CounterHandle {
    fn drop(&mut self) {
        self.cell.release_handle();
    }
}

impl std::fmt::Debug for CounterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterHandle")
            .field("key", self.cell.key())
            .field("window", &self.cell.window())
            .finish()
    }
}

impl CounterHandle {
    /// The key.
    pub fn key(&self) -> &str {
        self.cell.key()
    }

    /// The window.
    pub fn window(&self) -> Window {
        self.cell.window()
    }

    /// The current epoch by the coarse clock.
    #[inline]
    pub fn epoch_now(&self) -> u64 {
        self.cell.epoch_at(self.clock.now_unix_ms())
    }

    /// Adds `n` to the current window. Lock-free, allocation-free.
    #[inline(always)]
    pub fn add(&self, n: u64) -> AddResult {
        // The fast path makes no call (so it saves no registers): a registered thread, the cached epoch, and
        // one uncontended CAS. Anything else, and it counted nothing: the full path handles every case.
        if let Some(epoch) = self.cell.cached_epoch_at(self.clock.now_unix_ms())
            && self.try_add_in_epoch_fast(epoch, n)
        {
            super::calls::count_add();
            return AddOutcome::Added;
        }
        self.add_full(n)
    }

    #[inline(never)]
    fn add_full(&self, n: u64) -> AddResult {
        super::calls::count_add();
        self.add_in_epoch(self.epoch_now(), n)
    }

    /// One attempt at adding `n` to `epoch` with no call but the dirty queueing after it (see
    /// `Cell::try_add_fast`); `false` means nothing was counted and the caller must take a full path.
    #[inline(always)]
    pub(crate) fn try_add_in_epoch_fast(&self, epoch: u64, n: u64) -> bool {
        if !self.cell.try_add_fast(epoch, n) {
            return false;
        }
        if !self.cell.is_dirty() {
            self.shared.queue_changed(&self.cell);
        }
        true
    }

    /// Adds `n` to `epoch`, which the caller read from this store's clock for this window (the traffic plane
    /// resolves it once for every bucket of a key). Not counted in the hot-path call counts: the traffic plane's
    /// own request counts say how often it records.
    #[inline(always)]
    pub(crate) fn add_in_epoch(&self, epoch: u64, n: u64) -> AddResult {
        let outcome = self.cell.add(epoch, n);
        if outcome == AddOutcome::Added {
            self.shared.changed(&self.cell);
            outcome
        } else {
            self.add_slow(outcome, n)
        }
    }

    #[cold]
    fn add_slow(&self, mut outcome: AddOutcome, n: u64) -> AddOutcome {
        // A reclaimer may be retiring the cell right now (its pre-check raced this handle). It will see this
        // handle and undo the retire; until then every add is refused without counting anything: retry.
        while outcome == AddOutcome::Stale && self.cell.is_retired() {
            std::hint::spin_loop();
            outcome = self.cell.add(self.epoch_now(), n);
        }
        if outcome != AddOutcome::Stale {
            self.shared.changed(&self.cell);
        }
        self.shared.count_add_outcome(outcome);
        outcome
    }

    /// Fixed-window acquire: counts `cost` and allows the request if the global usage of the current window
    /// stays within `limit`; otherwise counts nothing and refuses.
    #[inline]
    pub fn try_acquire(&self, limit: u64, cost: u64) -> Decision {
        self.acquire(Algorithm::FixedWindow, limit, cost)
    }

    /// Acquire with a chosen algorithm (see [`Algorithm`]).
    #[inline]
    pub fn acquire(&self, algorithm: Algorithm, limit: u64, cost: u64) -> Decision {
        // The fast path makes no call, as in `add`: a fixed window, the cached epoch, an uncontended cell, one
        // decision and at most one CAS. Anything else, and it decided and counted nothing.
        if algorithm == Algorithm::FixedWindow
            && let Some(epoch) = self.cell.cached_epoch_at(self.clock.now_unix_ms())
            && let Some(outcome) = self.cell.try_take_fast(epoch, cost, limit)
        {
            super::calls::count_acquire();
            let reset_at = self.cell.cached_end_ms(epoch);
            return match outcome {
                FastTake::Taken { used } => {
                    if cost > 0 && !self.cell.is_dirty() {
                        self.shared.queue_changed(&self.cell);
                    }
                    Decision::new(true, used, limit, reset_at)
                }
                // The slot held the epoch, so the cell was not being retired: the refusal is a real decision.
                FastTake::Refused { used } => Decision::new(false, used, limit, reset_at),
            };
        }
        self.acquire_full(algorithm, limit, cost)
    }

    #[inline(never)]
    fn acquire_full(&self, algorithm: Algorithm, limit: u64, cost: u64) -> Decision {
        super::calls::count_acquire();
        let now = self.clock.now_unix_ms();
        let (decision, counted) = limiter::acquire(&self.cell, algorithm, now, limit, cost);
        if counted {
            self.shared.changed(&self.cell);
        }
        if !decision.allowed && self.cell.is_retired() {
            return self.acquire_refused(algorithm, limit, cost, decision);
        }
        decision
    }

    /// A refusal from a cell being retired is no decision: this handle holds the cell, so the retire will be
    /// undone. Retry until it is (see `add_slow`).
    #[cold]
    fn acquire_refused(
        &self,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
        mut decision: Decision,
    ) -> Decision {
        while !decision.allowed && self.cell.is_retired() {
            std::hint::spin_loop();
            let now = self.clock.now_unix_ms();
            let counted;
            (decision, counted) = limiter::acquire(&self.cell, algorithm, now, limit, cost);
            if counted {
                self.shared.changed(&self.cell);
            }
        }
        decision
    }

    /// The decision an acquire of `cost` would get now, without counting anything.
    pub fn check(&self, algorithm: Algorithm, limit: u64, cost: u64) -> Decision {
        limiter::peek(&self.cell, algorithm, self.clock.now_unix_ms(), limit, cost)
    }

    /// This replica's own count in the current window.
    pub fn local(&self) -> u64 {
        self.cell.local(self.epoch_now())
    }

    /// The merged count of every other replica in the current window.
    pub fn remote(&self) -> u64 {
        self.cell.remote(self.epoch_now())
    }

    /// Local + remote in the current window.
    pub fn global(&self) -> u64 {
        let epoch = self.epoch_now();
        self.cell
            .local(epoch)
            .saturating_add(self.cell.remote(epoch))
    }

    /// Local + remote in `epoch` (0 if it is not in the ring).
    pub fn global_at(&self, epoch: u64) -> u64 {
        self.cell
            .local(epoch)
            .saturating_add(self.cell.remote(epoch))
    }
}
