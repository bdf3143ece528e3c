//! The counter store: `(key, window)` → cell, handles for the hot path, the dirty queue, and the drain and merge
//! APIs that replication uses.
//!
//! Guarantees:
//! - Lookups never block: the map is `papaya`'s lock-free hash map; readers never wait for writers.
//! - [`CounterHandle::add`] and [`CounterHandle::try_acquire`] take no lock, allocate nothing and make no syscall:
//!   a clock load, an epoch computation, one slot load, one CAS, and on the first change of a flush interval one
//!   flag swap and one push onto a preallocated queue of [`DIRTY_QUEUE_SLOTS`] (fewer for a smaller store). When
//!   more distinct keys than that changed since the last drain, the further ones go to an overflow list under a
//!   mutex (counted in [`StoreStats::dirty_overflowed`]): still queued, never lost, but no longer lock-free.
//! - The store never holds more than `max_keys` cells created locally (by an add, an acquire or a handle) plus
//!   `max_remote_keys` cells created by merges of other replicas' values: two budgets, so keys written through
//!   other nodes can never make this node refuse a new local key. At a cap a new key is refused with
//!   [`CounterError::KeyLimit`] (local) or [`CounterError::RemoteKeyLimit`] (merge), counted per kind and logged
//!   once (again after a reclaim freed room); existing keys keep working. Before refusing, a full store frees (at
//!   most once per second) the cells whose every epoch has left the ring and that no handle refers to (see
//!   [`CounterStore::reclaim_idle`]); an add racing with that is either counted in the old cell (which then is
//!   not freed) or refused by it and retried on a fresh cell, never lost or counted twice.
//! - A cell holds at most `max_origins_per_key` relayed remote origins per epoch (values from their own origin
//!   over its direct link are never refused by this cap); a refusal is counted and logged once.
//! - Resets ([`CounterStore::reset`]) set per-origin floors: grow-only, max-merged, never above the value held
//!   for their origin; reads (and the hot path, through the pre-summed remote value and the local value words)
//!   count each origin's value minus its floor, so a reset clears what was counted before it and nothing after.
//! - Every change reaches [`CounterStore::drain_dirty`]: the first add after a drain marks the cell dirty and
//!   queues it (see the handshake in the cell's docs). Nothing scans the keys on a timer.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use papaya::Equivalent;

use super::aggregate::{AggregateId, SumOf};
use super::cell::{
    AddOutcome, Cell, FastTake, FloorOutcome, LimitSeen, MergeOutcome, RING, TakeOutcome,
};
use super::clock::CoarseClock;
use super::error::CounterError;
use super::limiter::{self, Algorithm, Decision};
use super::lookup_cache;
use super::window::Window;
use crate::UnixMs;
use crate::sync::LockClean;

/// Options of a [`CounterStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Maximum number of `(key, window)` cells created locally (adds, acquires, handles). Default 100,000
    /// (`limits.max_keys`). Must be ≥ 1.
    pub max_keys: usize,
    /// Maximum number of cells created by merging other replicas' values (keys used only elsewhere). Default
    /// 100,000 (`limits.max_remote_keys`, which defaults to `limits.max_keys`). Must be ≥ 1.
    pub max_remote_keys: usize,
    /// Most relayed remote origins one cell holds per epoch (values merged with
    /// [`CounterStore::merge_remote`]); values merged with [`CounterStore::merge_from_origin`] are exempt.
    /// Default 4,096 (`limits.max_origins_per_key`). Must be ≥ 1.
    pub max_origins_per_key: usize,
    /// Maximum key length in bytes. Default 256 (`limits.max_key_length`). Must be ≥ 1.
    pub max_key_length: usize,
    /// Stripes given to a cell once it is contended (rounded up to a power of two, at least 2). Default: twice
    /// the available parallelism, at most 64. Uncontended cells use one inline stripe and cost no more memory.
    pub stripes: usize,
    /// This process's replica id: values merged from this origin are ignored (they are our own, echoed).
    /// The node draws a fresh random one per process start, so a restarted process's new increments are never
    /// hidden behind its old, higher values still held by peers (merge is a per-origin max). Default 0.
    pub replica_id: u64,
    /// Seed of the key hash. The node passes a random seed so keys chosen by clients cannot collide on purpose.
    /// Default: a fixed constant.
    pub hash_seed: u64,
    /// The coarse clock the hot path reads. Default: a new clock at 0, to be ticked by its owner.
    pub clock: Arc<CoarseClock>,
    /// Predict the remote count (fixed and sliding windows): values merged with a time
    /// ([`CounterStore::merge_from_origin_at`], the replicator's delta batches) keep each remote origin's
    /// recent rate, and a decision reads the remote count as the last-known one plus that rate × the age of
    /// the values (see `counter::limiter`). Lowers the overshoot of the replication lag; costs 24 bytes per
    /// remote origin and epoch of every key merged with a time, and one more load on the hot path of keys with
    /// remote values. Reserved keys of the bounded mode never predict (a grant is the bound there). Default
    /// false (`replication.predict_remote`).
    pub predict_remote: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        StoreOptions {
            max_keys: 100_000,
            max_remote_keys: 100_000,
            max_origins_per_key: DEFAULT_MAX_ORIGINS_PER_KEY,
            max_key_length: 256,
            stripes: (parallelism * 2).clamp(2, 64),
            replica_id: 0,
            hash_seed: 0x6269_6672_6f73_7421,
            clock: Arc::new(CoarseClock::new(UnixMs::new(0))),
            predict_remote: false,
        }
    }
}

/// Default of [`StoreOptions::max_origins_per_key`]: room for a 1,000-node cluster whose every node restarted
/// three times within one window.
pub const DEFAULT_MAX_ORIGINS_PER_KEY: usize = 4_096;

/// Slots of the preallocated dirty queue (16 bytes each) when `max_keys + max_remote_keys` is larger: 1 MiB,
/// room for 65,536 distinct keys changed between two drains (13 million distinct keys a second at the default
/// 5 ms flush). A store of a million keys would otherwise preallocate 32 bytes per key for a queue that is
/// almost always nearly empty.
pub const DIRTY_QUEUE_SLOTS: usize = 65_536;

/// Every this many new cells of a budget, the inserting thread asks seize (papaya's reclamation) to free what it
/// retired. papaya retires a table it has outgrown through seize, which frees a thread's retired objects in
/// batches of 32: a store that only grows would otherwise keep every table it outgrew (together about as large
/// as the current one, 9 bytes a slot) until that thread had retired 32 objects. One flush costs one heavy
/// barrier (seize's `membarrier`), once per this many new keys.
const RETIRED_FLUSH_EVERY: usize = 4_096;

/// Most floors waiting for [`CounterStore::drain_floors`]; beyond it the oldest are dropped (anti-entropy still
/// carries them: floors are state, the queue only makes them travel at once).
const MAX_PENDING_FLOORS: usize = 65_536;

/// Counters of what the store refused or dropped. All monotone.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// New keys refused at either cap (`refused_local_keys + refused_remote_keys`).
    pub refused_keys: std::sync::atomic::AtomicU64,
    /// New local keys refused at `max_keys`.
    pub refused_local_keys: std::sync::atomic::AtomicU64,
    /// New keys of merged values refused at `max_remote_keys`.
    pub refused_remote_keys: std::sync::atomic::AtomicU64,
    /// Remote values of a new origin refused at `max_origins_per_key`.
    pub refused_origins: std::sync::atomic::AtomicU64,
    /// Floors that lowered an origin's contribution (resets here and floors merged from peers).
    pub floors_raised: std::sync::atomic::AtomicU64,
    /// Resets run on this node ([`CounterStore::reset`]).
    pub resets: std::sync::atomic::AtomicU64,
    /// Floors dropped from the queue for replication because it held its cap (they still travel with
    /// anti-entropy's floor repair).
    pub pending_floors_dropped: std::sync::atomic::AtomicU64,
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
    /// Changed cells queued on the overflow list because the dirty queue was full (more distinct keys changed
    /// between two drains than [`DIRTY_QUEUE_SLOTS`]).
    pub dirty_overflowed: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`StoreStats`] plus the current number of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Cells held now (both budgets).
    pub keys: usize,
    /// Cells held now that merges created (the `max_remote_keys` budget).
    pub remote_keys: usize,
    /// See [`StoreStats::refused_keys`].
    pub refused_keys: u64,
    /// See [`StoreStats::refused_local_keys`].
    pub refused_local_keys: u64,
    /// See [`StoreStats::refused_remote_keys`].
    pub refused_remote_keys: u64,
    /// See [`StoreStats::refused_origins`].
    pub refused_origins: u64,
    /// See [`StoreStats::floors_raised`].
    pub floors_raised: u64,
    /// See [`StoreStats::resets`].
    pub resets: u64,
    /// See [`StoreStats::pending_floors_dropped`].
    pub pending_floors_dropped: u64,
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
    /// See [`StoreStats::dirty_overflowed`].
    pub dirty_overflowed: u64,
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

/// One of the hottest keys ([`CounterStore::hottest`]) as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// The key.
    pub key: Arc<str>,
    /// The window.
    pub window: Window,
    /// The current window index.
    pub epoch: u64,
    /// When the current window ends (Unix ms).
    pub window_end_ms: u64,
    /// This replica's count in the current window.
    pub local: u64,
    /// The merged count of every other replica in the current window.
    pub remote: u64,
    /// Usage as the last acquire's algorithm counts it (sliding windows weigh in the previous window); the
    /// current window's `local + remote` when the key was never acquired here. Net of the units given back
    /// in the current window (refunds, see `CounterStore::release`), as a decision reads it.
    pub used: u64,
    /// The limit and algorithm of the last acquire on this node, as the caller gave it (not the internal limit
    /// a refund raises); `None` for a key only added to (or merged).
    pub limit: Option<LimitSeen>,
}

/// A candidate of [`CounterStore::hottest`], ordered by count, then by key and window (the smaller first).
struct HotRank {
    global: u64,
    key: std::cmp::Reverse<(Arc<str>, Window)>,
    cell: Arc<Cell>,
    local: u64,
    remote: u64,
    epoch: u64,
}

impl PartialEq for HotRank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for HotRank {}
impl PartialOrd for HotRank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HotRank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.global, &self.key).cmp(&(other.global, &other.key))
    }
}

/// The result of an add.
pub use super::cell::AddOutcome as AddResult;

/// The cell map, pinned: a set of cells keyed by their own key and window (the value is unit).
type CellMap<'a, G> = papaya::HashMapRef<'a, CellEntry, (), foldhash::fast::FixedState, G>;

/// Bytes of a key held inline in its map key ([`KeyHead`]).
const HEAD_BYTES: usize = 16;

/// The first [`HEAD_BYTES`] bytes of a key, zero-padded. Map keys compare it (and the length, which the `Arc`'s
/// fat pointer holds) before the key's bytes, so finding a key of at most `HEAD_BYTES` bytes never reads the
/// key's own allocation: in a large store that read is a cache miss on every lookup, and a replicator looks a
/// key up for every entry it merges. It costs 16 bytes per map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyHead([u8; HEAD_BYTES]);

impl KeyHead {
    fn of(key: &str) -> KeyHead {
        let mut head = [0u8; HEAD_BYTES];
        let n = key.len().min(HEAD_BYTES);
        head[..n].copy_from_slice(&key.as_bytes()[..n]);
        KeyHead(head)
    }
}

/// Map key: owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CellKey {
    pub(super) key: Arc<str>,
    pub(super) window: Window,
    head: KeyHead,
}

impl CellKey {
    pub(super) fn new(key: Arc<str>, window: Window) -> CellKey {
        let head = KeyHead::of(&key);
        CellKey { key, window, head }
    }
}

/// An entry of the cell map: the cell and the head of its key. The key and the window are the cell's own, so the
/// map keeps no second pointer to the key and no second copy of the window (papaya boxes each entry: 24 bytes,
/// where a [`CellKey`] and an `Arc<Cell>` took 48). A lookup compares the head here first, then the window and
/// the key's length in the cell, which the caller reads next anyway: as many cache lines as before.
#[derive(Clone)]
pub(super) struct CellEntry {
    head: KeyHead,
    cell: Arc<Cell>,
}

impl CellEntry {
    fn new(cell: Arc<Cell>) -> CellEntry {
        CellEntry {
            head: KeyHead::of(cell.key()),
            cell,
        }
    }
}

impl Hash for CellEntry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self.cell.key()).hash(state);
        self.cell.window().hash(state);
    }
}

impl PartialEq for CellEntry {
    fn eq(&self, other: &CellEntry) -> bool {
        self.cell.window() == other.cell.window() && self.cell.key() == other.cell.key()
    }
}

impl Eq for CellEntry {}

/// Map key: borrowed, for lookups that allocate nothing. Hashes exactly like [`CellKey`] and [`CellEntry`].
pub(super) struct KeyRef<'a> {
    key: &'a str,
    window: Window,
    head: KeyHead,
}

impl<'a> KeyRef<'a> {
    pub(super) fn new(key: &'a str, window: Window) -> KeyRef<'a> {
        KeyRef {
            key,
            window,
            head: KeyHead::of(key),
        }
    }
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

impl Equivalent<CellEntry> for KeyRef<'_> {
    fn equivalent(&self, entry: &CellEntry) -> bool {
        let key = entry.cell.key();
        self.head == entry.head
            && self.key.len() == key.len()
            && self.window == entry.cell.window()
            // Equal heads and lengths: the keys are equal when they fit the head, else the rest decides.
            && (self.key.len() <= HEAD_BYTES
                || self.key.as_bytes()[HEAD_BYTES..] == key.as_bytes()[HEAD_BYTES..])
    }
}

/// The cell of `(key, window)` in the pinned `map`, borrowed from it.
#[inline]
fn find<'m, G: papaya::Guard>(
    map: &'m CellMap<'_, G>,
    key: &str,
    window: Window,
) -> Option<&'m Arc<Cell>> {
    map.get_key_value(&KeyRef::new(key, window))
        .map(|(entry, ())| &entry.cell)
}

impl Equivalent<CellKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CellKey) -> bool {
        self.window == key.window
            && self.head == key.head
            && self.key.len() == key.key.len()
            // Equal heads and lengths: the keys are equal when they fit the head, else the rest decides.
            && (self.key.len() <= HEAD_BYTES
                || self.key.as_bytes()[HEAD_BYTES..] == key.key.as_bytes()[HEAD_BYTES..])
    }
}

/// Which caps have been logged since they were last reached.
#[derive(Debug, Default)]
struct CapLogs {
    local_keys: std::sync::atomic::AtomicBool,
    remote_keys: std::sync::atomic::AtomicBool,
    origins: std::sync::atomic::AtomicBool,
    pending_floors: std::sync::atomic::AtomicBool,
}

/// Logs `message` unless `flag` says it was logged already (one line per cap, not one per refusal).
#[cold]
fn log_once(flag: &std::sync::atomic::AtomicBool, message: std::fmt::Arguments<'_>) {
    // Relaxed: a log throttle; at worst two racing refusals both log.
    if !flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("{message}");
    }
}

/// Which budget a new cell counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// Created by this node's own traffic: `max_keys`.
    Local,
    /// Created by a merge of another replica's value: `max_remote_keys`.
    Remote,
}

/// What a reset floors (see [`CounterStore::apply_reset_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetScope {
    /// Every origin's value held here, this replica's own included (where a reset is issued, and where it is
    /// heard at once).
    Everything,
    /// This replica's own value only (a reset heard late).
    Own,
}

/// What a reset did (see [`CounterStore::reset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The epoch reset.
    pub epoch: u64,
    /// The global count of the epoch before the reset, as this node saw it.
    pub before: u64,
    /// The global count right after it (0 unless adds raced the reset).
    pub after: u64,
    /// The floors set: `(origin, floor)`, this replica's own included, each the origin's value here.
    pub floors: Vec<(u64, u64)>,
}

/// Start-up admission's `(heard, members)` in one word: members (at least 1, at most `u32::MAX`) in the high
/// 32 bits, heard (clamped to `1..=members`) in the low 32.
fn pack_share(heard: u64, members: u64) -> u64 {
    let members = members.clamp(1, u64::from(u32::MAX));
    (members << 32) | heard.clamp(1, members)
}

/// The inverse of [`pack_share`].
fn unpack_share(word: u64) -> (u64, u64) {
    (word & u64::from(u32::MAX), (word >> 32).max(1))
}

struct Shared {
    /// Unique per store in this process (keys the per-thread lookup cache).
    id: u64,
    hasher: foldhash::fast::FixedState,
    clock: Arc<CoarseClock>,
    cells: papaya::HashMap<CellEntry, (), foldhash::fast::FixedState>,
    /// Cells held in the local budget, counted exactly (papaya's `len` is approximate under concurrency).
    count: std::sync::atomic::AtomicUsize,
    /// Cells held in the remote budget (created by merges).
    remote_count: std::sync::atomic::AtomicUsize,
    /// Each cap logs once when reached, and again only after a reclaim freed room.
    logged: CapLogs,
    /// Floors set by resets here, waiting for replication to send them.
    pending_floors: std::sync::Mutex<std::collections::VecDeque<(u64, DirtyEntry)>>,
    /// Resets issued here, waiting for replication to pass them on (bounded like `pending_floors`).
    pending_resets: std::sync::Mutex<std::collections::VecDeque<(Arc<str>, Window, u64)>>,
    /// Coarse-clock time of the last reclaim attempted because the store was full.
    last_reclaim_at_cap_ms: std::sync::atomic::AtomicU64,
    /// Start-up admission, both numbers in one word so an acquire never pairs one new with one old: the
    /// members expected in the high 32 bits, the members whose state this node holds (itself included) in the
    /// low 32. While the members are above 1, acquires decide against `limit × heard / members` (rounded up),
    /// because this node has not yet heard every member's state (see `set_startup_share`).
    startup_share: std::sync::atomic::AtomicU64,
    /// Set once a released companion (`@released/…`) exists: until then no count has a refund, and an acquire
    /// by key skips the companion's lookup.
    any_released: std::sync::atomic::AtomicBool,
    /// Serializes this node's releases: each reads its own net count and then adds to the companion, and two
    /// at once must not both give back the same unit. Releases are off the hot path.
    release_lock: std::sync::Mutex<()>,
    dirty: ArrayQueue<Arc<Cell>>,
    /// Changed cells that found the dirty queue full; drained after it. Each cell is here or in the queue at
    /// most once (its dirty flag guards both).
    dirty_overflow: std::sync::Mutex<Vec<Arc<Cell>>>,
    /// The bounded-overshoot mode's keys (see `lease`): empty unless it is used.
    leases: super::lease::LeaseTable,
    options: StoreOptions,
    stats: StoreStats,
}

impl Shared {
    /// `limit` under start-up admission: `limit × heard / members`, rounded up (`limit` when it is off).
    fn startup_limit(&self, limit: u64) -> u64 {
        // Relaxed: see `CounterStore::set_startup_share`.
        let (heard, members) = unpack_share(
            self.startup_share
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if members <= 1 {
            return limit;
        }
        let share = (u128::from(limit) * u128::from(heard)).div_ceil(u128::from(members));
        u64::try_from(share).unwrap_or(limit)
    }

    /// What an acquire against `limit` decides against: the share of the caller's limit plus the credit.
    fn decide_limit(&self, limit: Limit) -> u64 {
        self.startup_limit(limit.given).saturating_add(limit.credit)
    }

    /// Whether start-up admission applies (one load, for the acquire's fast path).
    #[inline]
    fn in_startup(&self) -> bool {
        // Relaxed: see `CounterStore::set_startup_share`.
        self.startup_share
            .load(std::sync::atomic::Ordering::Relaxed)
            >> 32
            > 1
    }

    /// A refusal on `cell`: a store that predicts remote counts marks it dirty, so the next flush ships its
    /// value unchanged with a newer time and the peers stop extrapolating this node (see
    /// `StoreOptions::predict_remote`); any other store does nothing.
    #[inline]
    fn refused(&self, cell: &Arc<Cell>) {
        if self.options.predict_remote {
            self.changed(cell);
        }
    }

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
            // The queue holds at most one entry per cell (the dirty flag guards it); when more cells changed
            // since the last drain than it has slots, the cell waits on the overflow list instead.
            if let Err(cell) = self.dirty.push(Arc::clone(cell)) {
                self.overflow(cell);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn overflow(&self, cell: Arc<Cell>) {
        // Relaxed: statistics.
        let before = self
            .stats
            .dirty_overflowed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(
                slots = self.dirty.capacity(),
                "more keys changed between two replication flushes than the dirty queue holds; the further \
                 ones wait on an overflow list (counted in dirty_overflowed; logged once)"
            );
        }
        self.dirty_overflow.lock_clean().push(cell);
    }

    /// The next changed cell: from the queue, then from the overflow list.
    fn pop_dirty(&self) -> Option<Arc<Cell>> {
        self.dirty
            .pop()
            .or_else(|| self.dirty_overflow.lock_clean().pop())
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

/// The limit of one acquire: the caller's, and the units a signed count adds to it to decide on its added
/// counter (see `signed`). An acquire decides against `share(given) + credit`, where `share` is start-up
/// admission's (`CounterStore::set_startup_share`; the identity when it is off), and the hot keys show
/// `given`: the raised limit is no limit of the caller's, and the share applies to the caller's limit only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The limit the caller gave.
    pub(crate) given: u64,
    /// Units released (refunds, in-flight slots given back), added to the share of `given`.
    pub(crate) credit: u64,
}

impl Limit {
    /// The caller's `limit`, with nothing released.
    #[inline(always)]
    pub(crate) fn given(limit: u64) -> Limit {
        Limit {
            given: limit,
            credit: 0,
        }
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
        let max_remote_keys = options.max_remote_keys.max(1);
        let hasher = foldhash::fast::FixedState::with_seed(options.hash_seed);
        let cells = papaya::HashMap::builder().hasher(hasher.clone()).build();
        CounterStore {
            shared: Arc::new(Shared {
                id: lookup_cache::new_store_id(),
                hasher,
                clock: Arc::clone(&options.clock),
                cells,
                count: std::sync::atomic::AtomicUsize::new(0),
                remote_count: std::sync::atomic::AtomicUsize::new(0),
                logged: CapLogs::default(),
                pending_floors: std::sync::Mutex::new(std::collections::VecDeque::new()),
                pending_resets: std::sync::Mutex::new(std::collections::VecDeque::new()),
                last_reclaim_at_cap_ms: std::sync::atomic::AtomicU64::new(0),
                startup_share: std::sync::atomic::AtomicU64::new(pack_share(1, 1)),
                any_released: std::sync::atomic::AtomicBool::new(false),
                release_lock: std::sync::Mutex::new(()),
                // Every cell, of either budget, can be dirty (a local add to a key a merge created); beyond
                // `DIRTY_QUEUE_SLOTS` the overflow list takes them.
                dirty: ArrayQueue::new((max_keys + max_remote_keys + 64).min(DIRTY_QUEUE_SLOTS)),
                dirty_overflow: std::sync::Mutex::new(Vec::new()),
                leases: super::lease::LeaseTable::default(),
                options: StoreOptions {
                    max_keys,
                    max_remote_keys,
                    max_origins_per_key: options.max_origins_per_key.max(1),
                    max_key_length: options.max_key_length.max(1),
                    ..options
                },
                stats: StoreStats::default(),
            }),
        }
    }

    /// The bounded-overshoot mode's table (see `lease`).
    pub(super) fn leases(&self) -> &super::lease::LeaseTable {
        &self.shared.leases
    }

    /// The coarse clock the store reads.
    pub fn clock(&self) -> &Arc<CoarseClock> {
        &self.shared.clock
    }

    /// Start-up admission: with `members` above 1, every acquire and check decides against the share of the
    /// limit of the members whose state this node holds, `limit × heard / members` (rounded up, `heard` at
    /// least 1 and at most `members`): the members it has not heard yet may each admit their share, so the
    /// cluster as a whole stays within the limit plus rounding. `members` 0 or 1 turns it off. The node sets it
    /// while it starts (see `node::machine::startup`); decisions report the share as their `limit`.
    pub fn set_startup_share(&self, heard: u64, members: u64) {
        // Relaxed: a policy switch with no data published through it, both numbers in one word.
        self.shared.startup_share.store(
            pack_share(heard, members),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `(heard, members)` of start-up admission; `members` 1: off.
    pub fn startup_share(&self) -> (u64, u64) {
        // Relaxed: see `set_startup_share`.
        unpack_share(
            self.shared
                .startup_share
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The options the store was built with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.options
    }

    /// Resolves `(key, window)` to a handle, creating the cell if needed. Do this once and keep the handle.
    pub fn handle(&self, key: &str, window: Window) -> Result<CounterHandle, CounterError> {
        loop {
            let cell = self.cell(key, window, Budget::Local)?;
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

    /// Looks up or creates the cell of `(key, window)`; a new cell counts in `budget`.
    fn cell(&self, key: &str, window: Window, budget: Budget) -> Result<Arc<Cell>, CounterError> {
        self.check_key(key)?;
        let map = self.shared.cells.pin();
        if let Some(cell) = find(&map, key, window) {
            return Ok(Arc::clone(cell));
        }
        self.insert(&map, key, window, budget)
    }

    /// The cell of `(key, window)` if it exists (never creates one).
    fn existing(&self, key: &str, window: Window) -> Option<Arc<Cell>> {
        let map = self.shared.cells.pin();
        find(&map, key, window).map(Arc::clone)
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
        map: &CellMap<'_, G>,
        key: &str,
        window: Window,
        budget: Budget,
    ) -> Result<Arc<Cell>, CounterError> {
        let shared = &self.shared;
        let (count, max) = match budget {
            Budget::Local => (&shared.count, shared.options.max_keys),
            Budget::Remote => (&shared.remote_count, shared.options.max_remote_keys),
        };
        let mut reclaimed = false;
        // Each pass reserves a place and inserts a new cell; a pass that lost the insert to a cell a reclaim
        // removed before it could be looked up starts over.
        loop {
            let reserved = loop {
                // Reserve a place first so concurrent inserts can never exceed the cap. Relaxed: a counter
                // whose only job is the cap; the map insert publishes the cell.
                let reserved = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if reserved < max {
                    break reserved;
                }
                count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(cell) = find(map, key, window) {
                    return Ok(Arc::clone(cell)); // inserted meanwhile by someone else
                }
                if !reclaimed && self.reclaim_at_cap() > 0 {
                    reclaimed = true;
                    continue;
                }
                return Err(self.refuse_key(key, budget, max));
            };
            if key.starts_with(super::signed::RELEASED_PREFIX) {
                // Release, paired with the Acquire in `any_released`: stored before the companion is
                // published. An acquire that does not see the flag decides without the refund, as it would if
                // it ran before the release; one that sees it looks the companion up (and may still find it
                // absent for an instant, the same stricter decision).
                shared
                    .any_released
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            let cell = Arc::new(Cell::with_budget(
                Arc::from(key),
                window,
                budget == Budget::Remote,
            ));
            if map
                .try_insert(CellEntry::new(Arc::clone(&cell)), ())
                .is_ok()
            {
                if (reserved + 1) % RETIRED_FLUSH_EVERY == 0 {
                    papaya::Guard::flush(&shared.cells.guard());
                }
                return Ok(cell);
            }
            // Lost a race with another insert of the same key: give the reservation back and take the winner's
            // cell. A reclaim may have removed it since (a new cell is idle until its first add): then the next
            // pass inserts again.
            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(cell) = find(map, key, window) {
                return Ok(Arc::clone(cell));
            }
        }
    }

    /// Counts a key refused at its budget's cap, logs the first refusal, and builds the error.
    #[cold]
    fn refuse_key(&self, key: &str, budget: Budget, max: usize) -> CounterError {
        let stats = &self.shared.stats;
        // Relaxed: statistics.
        stats
            .refused_keys
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match budget {
            Budget::Local => {
                stats
                    .refused_local_keys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log_once(
                    &self.shared.logged.local_keys,
                    format_args!(
                        "counter store full: limits.max_keys = {max} local keys held; new local keys are refused \
                         (counted in bifrost_counter_refused_keys_by_kind_total{{kind=\"local\"}})"
                    ),
                );
                CounterError::KeyLimit {
                    key: key.to_string(),
                    max_keys: max,
                }
            }
            Budget::Remote => {
                stats
                    .refused_remote_keys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log_once(
                    &self.shared.logged.remote_keys,
                    format_args!(
                        "counter store full for replicated keys: limits.max_remote_keys = {max} held; values of \
                         new keys from other nodes are refused (counted in \
                         bifrost_counter_refused_keys_by_kind_total{{kind=\"remote\"}}); local keys are unaffected"
                    ),
                );
                CounterError::RemoteKeyLimit {
                    key: key.to_string(),
                    max_remote_keys: max,
                }
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
            let cell = self.cell(key, window, Budget::Local)?;
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

    /// Holds this node's release lock (see `Shared::release_lock`).
    pub(crate) fn release_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // Poison policy (crate::sync): the lock guards no data.
        self.shared.release_lock.lock_clean()
    }

    /// Whether any released companion exists in this store (see [`CounterStore::acquire_net`]).
    pub(crate) fn any_released(&self) -> bool {
        // Acquire: pairs with the Release store made before the first companion was inserted.
        self.shared
            .any_released
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// [`CounterHandle::acquire`] on `(key, window)` without a handle: the per-thread cache of resolved cells
    /// answers repeated keys without entering the map (the path of a sidecar's per-request check). Creates the
    /// key if needed.
    pub fn acquire_by_key(
        &self,
        key: &str,
        window: Window,
        algorithm: Algorithm,
        limit: u64,
        cost: u64,
    ) -> Result<Decision, CounterError> {
        self.acquire_by_key_limit(key, window, algorithm, Limit::given(limit), cost)
    }

    /// [`CounterStore::acquire_by_key`] against a [`Limit`].
    #[inline]
    pub(crate) fn acquire_by_key_limit(
        &self,
        key: &str,
        window: Window,
        algorithm: Algorithm,
        limit: Limit,
        cost: u64,
    ) -> Result<Decision, CounterError> {
        self.check_key(key)?;
        let hash = lookup_cache::hash(&self.shared.hasher, key, window);
        let shared = &self.shared;
        let mut counted = false;
        let cached = lookup_cache::with_cached(shared.id, hash, key, window, |cell| {
            let decision = acquire_on(cell, &shared.clock, shared, algorithm, limit, cost);
            if !decision.allowed && cell.is_retired() {
                // No decision (a retired cell takes nothing and refuses everything), but the call is
                // counted: evict and decide through a handle, which must not count it again.
                counted = true;
                return None;
            }
            Some(decision)
        });
        if let Some(decision) = cached {
            if !decision.allowed {
                super::calls::count_refusal();
            }
            return Ok(decision);
        }
        self.acquire_uncached(key, window, hash, algorithm, limit, cost, counted)
    }

    /// The acquire of [`CounterStore::acquire_by_key`] through a handle; `counted`: the call was counted
    /// already (by a try on a retired cached cell).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn acquire_uncached(
        &self,
        key: &str,
        window: Window,
        hash: u64,
        algorithm: Algorithm,
        limit: Limit,
        cost: u64,
        counted: bool,
    ) -> Result<Decision, CounterError> {
        let handle = self.handle(key, window)?;
        if !counted {
            super::calls::count_acquire();
        }
        let decision = handle.acquire_counted(algorithm, limit, cost);
        lookup_cache::remember(self.shared.id, hash, &handle.cell);
        Ok(decision)
    }

    /// The global (local + merged remote) count of `(key, window)` in the current window; 0 for an unknown key.
    pub fn global(&self, key: &str, window: Window) -> u64 {
        let epoch = window.epoch_at(self.shared.clock.now_unix_ms());
        let map = self.shared.cells.pin();
        find(&map, key, window).map_or(0, |cell| {
            cell.local(epoch).saturating_add(cell.remote(epoch))
        })
    }

    /// This replica's own count and the merged remote count of `(key, window)` in `epoch`, read without
    /// creating the key: `None` for an unknown key, zeros for an epoch no longer in the ring.
    pub fn counts_at(&self, key: &str, window: Window, epoch: u64) -> Option<(u64, u64)> {
        let map = self.shared.cells.pin();
        find(&map, key, window).map(|cell| (cell.local(epoch), cell.remote(epoch)))
    }

    /// Every origin's count of `(key, window)` in `epoch`, read without creating the key: this replica's own
    /// (under its replica id) first when non-zero, then each remote origin merged here. Empty for an unknown
    /// key.
    pub fn origin_counts_at(&self, key: &str, window: Window, epoch: u64) -> Vec<(u64, u64)> {
        let map = self.shared.cells.pin();
        let Some(cell) = find(&map, key, window) else {
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
            let Some(cell) = self.shared.pop_dirty() else {
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
        self.shared.dirty.len() + self.shared.dirty_overflow.lock_clean().len()
    }

    /// Merges a value reported by replica `origin` for `(key, window, epoch)`: per-origin max, then the cell's
    /// pre-summed remote value is republished for the hot path. Values from this replica's own id are ignored.
    /// A new key counts in `max_remote_keys`; a new origin beyond `max_origins_per_key` for the epoch is refused
    /// ([`MergeOutcome::OriginLimit`], counted). Use this for values relayed by a node other than their origin.
    pub fn merge_remote(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
    ) -> Result<MergeOutcome, CounterError> {
        self.merge(origin, key, window, epoch, value, true, None)
    }

    /// [`CounterStore::merge_remote`] for a value that came from its own origin over that origin's
    /// authenticated link: exempt from `max_origins_per_key` (a live member always has room for its values).
    pub fn merge_from_origin(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
    ) -> Result<MergeOutcome, CounterError> {
        self.merge(origin, key, window, epoch, value, false, None)
    }

    /// [`CounterStore::merge_from_origin`] of a value the origin took at `as_of_ms` (Unix ms, its flush time;
    /// the caller clamps it to its own clock): a store that predicts ([`StoreOptions::predict_remote`]) updates
    /// the origin's rate and the key's prediction from it; any other store merges as `merge_from_origin`.
    pub fn merge_from_origin_at(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
        as_of_ms: u64,
    ) -> Result<MergeOutcome, CounterError> {
        let timed = (self.shared.options.predict_remote && !super::lease::is_lease_key(key))
            .then_some(as_of_ms);
        self.merge(origin, key, window, epoch, value, false, timed)
    }

    /// Merges `value`, the aggregate `id` for `(key, window, epoch)` (the large-cluster mode: a group's members,
    /// or everyone outside a group), a sum of their values or of their floors as `sum` says: the largest of each
    /// per id is kept, and the key's remote count becomes their estimate (never above the exact sum of the other
    /// replicas' counts net of the floors held here; see `counter::aggregate`). A group aggregate of this
    /// replica's own group, and a rest aggregate of another group, are ignored ([`MergeOutcome::Unchanged`]); a
    /// value for a window that has not started here is dropped as in [`CounterStore::merge_remote`].
    pub fn merge_aggregate(
        &self,
        id: AggregateId,
        sum: SumOf,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
    ) -> Result<MergeOutcome, CounterError> {
        let own = self.shared.options.replica_id;
        self.merge_into_cell(key, window, epoch, |cell| {
            cell.merge_aggregate(own, id, sum, epoch, value)
        })
    }

    /// [`CounterStore::merge_aggregate`] for each `(key, window, epoch, value)` of `entries` (one frame's), in
    /// order, with the map pinned and the clock read once for all of them; `merged` gets each entry's outcome.
    pub fn merge_aggregates<'e>(
        &self,
        id: AggregateId,
        sum: SumOf,
        entries: impl IntoIterator<Item = (&'e str, Window, u64, u64)>,
        mut merged: impl FnMut(&'e str, Window, u64, Result<MergeOutcome, CounterError>),
    ) {
        let own = self.shared.options.replica_id;
        let map = self.shared.cells.pin();
        let now_ms = self.shared.clock.now_unix_ms();
        for (key, window, epoch, value) in entries {
            let outcome = self.merge_into_cell_in(&map, now_ms, key, window, epoch, |cell| {
                cell.merge_aggregate(own, id, sum, epoch, value)
            });
            merged(key, window, epoch, outcome);
        }
    }

    /// What a publisher of group `id` sends for `(key, window, epoch)`, `(values, floors)`: the sum of the
    /// values held here for the group's members and the sum of their floors, this replica's own included when
    /// it is one (receivers take the floors off). `(0, 0)` for an unknown key.
    pub fn group_total(
        &self,
        id: AggregateId,
        key: &str,
        window: Window,
        epoch: u64,
    ) -> (u64, u64) {
        self.existing(key, window).map_or((0, 0), |cell| {
            cell.group_total(self.shared.options.replica_id, id, epoch)
        })
    }

    /// What a publisher sends for `(key, window, epoch)` as the rest aggregate `id` of its group, `(values,
    /// floors)`: what it holds for every replica outside the group (see `counter::aggregate`). `(0, 0)` for an
    /// unknown key.
    pub fn rest_total(&self, id: AggregateId, key: &str, window: Window, epoch: u64) -> (u64, u64) {
        self.existing(key, window)
            .map_or((0, 0), |cell| cell.rest_total(id, epoch))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the value's coordinates plus how to merge it"
    )]
    fn merge(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        value: u64,
        capped: bool,
        as_of_ms: Option<u64>,
    ) -> Result<MergeOutcome, CounterError> {
        if origin == self.shared.options.replica_id {
            return Ok(MergeOutcome::Unchanged);
        }
        if key.starts_with(super::lease::WANT_PREFIX) {
            // A bounded key wanted elsewhere: its owner must know it even without local traffic.
            self.note_want_key(key, window);
        }
        let max_origins = if capped {
            self.shared.options.max_origins_per_key
        } else {
            usize::MAX
        };
        let outcome = self.merge_into_cell(key, window, epoch, |cell| {
            cell.merge_remote_at(origin, epoch, value, max_origins, as_of_ms)
        })?;
        if outcome == MergeOutcome::OriginLimit {
            self.refuse_origin(key, max_origins);
        }
        Ok(outcome)
    }

    /// Runs `merge` on the cell of `(key, window)` (created in the remote key budget if missing) for a value of
    /// `epoch`, and counts what it dropped: [`CounterStore::merge_into_cell_in`] with the map pinned and the clock
    /// read for this one value.
    fn merge_into_cell(
        &self,
        key: &str,
        window: Window,
        epoch: u64,
        merge: impl Fn(&Cell) -> MergeOutcome,
    ) -> Result<MergeOutcome, CounterError> {
        let map = self.shared.cells.pin();
        let now_ms = self.shared.clock.now_unix_ms();
        self.merge_into_cell_in(&map, now_ms, key, window, epoch, merge)
    }

    /// Runs `merge` on the cell of `(key, window)` in the pinned `map`, as of `now_ms`. A value for a
    /// window that has not started here (the sender's clock is ahead by more than one window, or the epoch is
    /// garbage) would roll our slots into the future and refuse every local add of the current window: it is
    /// dropped as [`MergeOutcome::Future`] and merged once our clock gets there (later batches, anti-entropy). A
    /// cell reclaimed under the merge is resolved again.
    fn merge_into_cell_in<G: papaya::Guard>(
        &self,
        map: &CellMap<'_, G>,
        now_ms: UnixMs,
        key: &str,
        window: Window,
        epoch: u64,
        merge: impl Fn(&Cell) -> MergeOutcome,
    ) -> Result<MergeOutcome, CounterError> {
        let current = window.epoch_at(now_ms);
        if epoch > current.saturating_add(1) {
            // Relaxed: statistics.
            self.shared
                .stats
                .future_merges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(MergeOutcome::Future);
        }
        self.check_key(key)?;
        loop {
            // The cell is borrowed from the pinned map (no reference count taken), or inserted.
            let inserted;
            let cell = match find(map, key, window) {
                Some(cell) => cell,
                None => {
                    inserted = self.insert(map, key, window, Budget::Remote)?;
                    &inserted
                }
            };
            let outcome = merge(cell);
            match outcome {
                MergeOutcome::Expired if cell.is_retired() => continue,
                MergeOutcome::Expired => {
                    // Relaxed: statistics.
                    self.shared
                        .stats
                        .expired_merges
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
            return Ok(outcome);
        }
    }

    #[cold]
    fn refuse_origin(&self, key: &str, max: usize) {
        // Relaxed: statistics.
        self.shared
            .stats
            .refused_origins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log_once(
            &self.shared.logged.origins,
            format_args!(
                "key {key:?} holds limits.max_origins_per_key = {max} relayed origins for one window; values of \
                 further origins are refused (counted in bifrost_counter_refused_origins_total)"
            ),
        );
    }

    /// Merges a floor of `origin` for `(key, window, epoch)` (see [`CounterStore::reset`]): the origin's counted
    /// contribution becomes its value minus the highest floor seen, and a floor never exceeds the value held for
    /// its origin here. This replica's own floor lowers its value words instead (what it ships does not change).
    /// Never creates a key: a floor for a key or origin not held here is dropped ([`FloorOutcome::NoValue`]);
    /// anti-entropy offers it again.
    pub fn merge_floor(
        &self,
        origin: u64,
        key: &str,
        window: Window,
        epoch: u64,
        floor: u64,
    ) -> FloorOutcome {
        let Some(cell) = self.existing(key, window) else {
            return FloorOutcome::NoValue;
        };
        let outcome = if origin == self.shared.options.replica_id {
            cell.merge_own_floor(epoch, floor)
        } else {
            cell.merge_floor(origin, epoch, floor)
        };
        if outcome == FloorOutcome::Raised {
            // Relaxed: statistics.
            self.shared
                .stats
                .floors_raised
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        outcome
    }

    /// Resets `(key, window)` in `epoch`: every origin's floor (this replica's own included) becomes its value
    /// as this node holds it, so the epoch's count here drops to what is counted from now on. The floors are
    /// queued for replication ([`CounterStore::drain_floors`]), which makes every node converge on them: values
    /// counted after the floor (anywhere) keep counting. `None` when the key is unknown here or the epoch is not
    /// in its ring.
    ///
    /// The reset is also queued as a command ([`CounterStore::drain_resets`]): in a grouped layout, where no
    /// node holds every origin's values, replication passes it to every node, and each one floors what it holds
    /// when it hears it ([`CounterStore::apply_reset`]).
    pub fn reset(&self, key: &str, window: Window, epoch: u64) -> Option<ResetReport> {
        let report = self.apply_reset(key, window, epoch)?;
        // Relaxed: statistics.
        self.shared
            .stats
            .resets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Poison policy (crate::sync): a panic while pushing leaves a queue of whole entries. Replication drains
        // the queue at every flush; without replication the oldest give way (a node without peers has no one
        // to send them to).
        let mut pending = self.shared.pending_resets.lock_clean();
        if pending.len() == MAX_PENDING_FLOORS {
            pending.pop_front();
        }
        pending.push_back((Arc::from(key), window, epoch));
        Some(report)
    }

    /// Takes the resets issued on this node since the last call, as `(key, window, epoch)`, for replication to
    /// pass on as commands (grouped layouts).
    pub fn drain_resets(&self) -> Vec<(Arc<str>, Window, u64)> {
        let mut pending = self.shared.pending_resets.lock_clean();
        pending.drain(..).collect()
    }

    /// A reset heard from another node: floors every value held for `(key, window)` in `epoch` as
    /// [`CounterStore::reset`] does, and queues the floors, but queues no command (replication passes on the
    /// one it heard). `None` when the key is unknown here or the epoch is not in its ring.
    pub fn apply_reset(&self, key: &str, window: Window, epoch: u64) -> Option<ResetReport> {
        self.apply_reset_of(key, window, epoch, ResetScope::Everything)
    }

    /// [`CounterStore::apply_reset`] for what `scope` names: every value held, or this replica's own only (a
    /// reset heard late, after this node may have merged values counted after their origins applied it).
    pub fn apply_reset_of(
        &self,
        key: &str,
        window: Window,
        epoch: u64,
        scope: ResetScope,
    ) -> Option<ResetReport> {
        let cell = self.existing(key, window)?;
        if !key.starts_with(super::signed::RELEASED_PREFIX) {
            // Refunds of the units the reset drops go with them: the net count restarts from zero too, and
            // the companion's floors replicate with the key's.
            let _ = self.apply_reset_of(&super::signed::released_key(key), window, epoch, scope);
        }
        let before = cell.local(epoch).saturating_add(cell.remote(epoch));
        let floors = match scope {
            ResetScope::Everything => cell.reset_epoch(epoch)?,
            ResetScope::Own => cell.reset_own_epoch(epoch)?,
        };
        let floors: Vec<(u64, u64)> = floors
            .into_iter()
            .map(|(origin, floor)| (origin.unwrap_or(self.shared.options.replica_id), floor))
            .collect();
        let after = cell.local(epoch).saturating_add(cell.remote(epoch));
        let stats = &self.shared.stats;
        // Relaxed: statistics.
        stats
            .floors_raised
            .fetch_add(floors.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Poison policy (crate::sync): a panic while pushing leaves a queue of whole entries.
        let mut pending = self.shared.pending_floors.lock_clean();
        for &(origin, floor) in &floors {
            if pending.len() == MAX_PENDING_FLOORS {
                pending.pop_front();
                // Relaxed: statistics.
                stats
                    .pending_floors_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log_once(
                    &self.shared.logged.pending_floors,
                    format_args!(
                        "{MAX_PENDING_FLOORS} reset floors wait for replication (none is running, or resets come \
                         faster than flushes); the oldest are dropped from the queue and travel with \
                         anti-entropy instead"
                    ),
                );
            }
            pending.push_back((
                origin,
                DirtyEntry {
                    key: Arc::clone(cell.key()),
                    window,
                    epoch,
                    value: floor,
                },
            ));
        }
        Some(ResetReport {
            epoch,
            before,
            after,
            floors,
        })
    }

    /// Takes the floors that resets on this node set since the last call, as `(origin, entry)` with the floor in
    /// `entry.value`, for replication to send at once.
    pub fn drain_floors(&self) -> Vec<(u64, DirtyEntry)> {
        let mut pending = self.shared.pending_floors.lock_clean();
        pending.drain(..).collect()
    }

    /// Every non-zero floor held for epochs still in the ring, as `(origin, entry)` with the floor in
    /// `entry.value` (this replica's own under its replica id), for anti-entropy.
    pub fn floor_snapshot(&self) -> Vec<(u64, DirtyEntry)> {
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            for (origin, epoch, floor) in cell.floor_values() {
                out.push((
                    origin.unwrap_or(self.shared.options.replica_id),
                    DirtyEntry {
                        key: Arc::clone(cell.key()),
                        window: cell.window(),
                        epoch,
                        value: floor,
                    },
                ));
            }
        }
        out
    }

    /// Frees every cell whose epochs have all left the ring, that no handle refers to and that is not waiting
    /// to be drained. Returns how many were freed. This walks the whole map, so nothing calls it on a timer: an
    /// insert that finds the store full calls it (at most once per second), and an owner may call it at will.
    pub fn reclaim_idle(&self) -> usize {
        let now = self.shared.clock.now_unix_ms();
        let map = self.shared.cells.pin();
        let mut freed = 0;
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            let oldest = cell.window().epoch_at(now).saturating_sub(RING as u64 - 1);
            if cell.try_retire(oldest) {
                map.remove(entry);
                let count = if cell.remote_created() {
                    &self.shared.remote_count
                } else {
                    &self.shared.count
                };
                // Relaxed: the cap counter (see `insert`).
                count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                freed += 1;
            }
        }
        if freed > 0 {
            // The removed entries (and the cells they hold) are freed with this thread's retired batch.
            papaya::Guard::flush(&self.shared.cells.guard());
            // Room again: a cap reached later is logged again. Relaxed: log throttles.
            let logged = &self.shared.logged;
            for flag in [&logged.local_keys, &logged.remote_keys] {
                flag.store(false, std::sync::atomic::Ordering::Relaxed);
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
        let now = self.shared.clock.now_unix_ms().get();
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
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            let oldest = cell.window().epoch_at(now).saturating_sub(RING as u64 - 1);
            for (epoch, value) in cell.local_values(oldest) {
                out.push(DirtyEntry {
                    key: Arc::clone(cell.key()),
                    window: cell.window(),
                    epoch,
                    value,
                });
            }
        }
        out
    }

    /// The values of remote `origin` for keys starting with `prefix` (other keys are skipped before their
    /// values are read).
    pub(crate) fn remote_values_of(&self, origin: u64, prefix: &str) -> Vec<DirtyEntry> {
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            if !cell.key().starts_with(prefix) {
                continue;
            }
            for (o, epoch, value) in cell.remote_values() {
                if o == origin {
                    out.push(DirtyEntry {
                        key: Arc::clone(cell.key()),
                        window: cell.window(),
                        epoch,
                        value,
                    });
                }
            }
        }
        out
    }

    /// Every `(origin, key, window, epoch, value)` merged from other replicas, for a full state transfer.
    pub fn remote_snapshot(&self) -> Vec<(u64, DirtyEntry)> {
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            for (origin, epoch, value) in cell.remote_values() {
                out.push((
                    origin,
                    DirtyEntry {
                        key: Arc::clone(cell.key()),
                        window: cell.window(),
                        epoch,
                        value,
                    },
                ));
            }
        }
        out
    }

    /// Every rest aggregate this replica would send for the rest `id` of its group, as `(entry with the value
    /// sum, floor sum)`: one per key and epoch held with aggregates of `id`'s group count (see
    /// [`CounterStore::rest_total`]), zeros left out. For a group peer's state transfer (large clusters).
    pub fn rest_snapshot(&self, id: AggregateId) -> Vec<(DirtyEntry, u64)> {
        let map = self.shared.cells.pin();
        let mut out = Vec::new();
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            for (epoch, values, floors) in cell.rest_totals(id) {
                out.push((
                    DirtyEntry {
                        key: Arc::clone(cell.key()),
                        window: cell.window(),
                        epoch,
                        value: values,
                    },
                    floors,
                ));
            }
        }
        out
    }

    /// The `n` keys with the highest global count in their current window (ties: by key, then window), read
    /// without creating or touching any key. Keys starting with `@` (the traffic plane's) are left out. One pass
    /// over every cell held, keeping at most `n` in a heap: O(keys × log n), for the status page and
    /// `GET /v1/keys/hot`, which bound `n` and how often it runs.
    pub fn hottest(&self, n: usize) -> Vec<HotKey> {
        if n == 0 {
            return Vec::new();
        }
        let now = self.shared.clock.now_unix_ms();
        let map = self.shared.cells.pin();
        // Min-heap on (global, reversed order) of the best `n` so far.
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<HotRank>> =
            std::collections::BinaryHeap::with_capacity(n + 1);
        for (entry, ()) in map.iter() {
            let cell = &entry.cell;
            if cell.key().starts_with('@') {
                continue;
            }
            let epoch = cell.window().epoch_at(now);
            let (local, remote) = (cell.local(epoch), cell.remote(epoch));
            let global = local.saturating_add(remote);
            // Below the lowest kept: skipped before anything is cloned.
            if global == 0
                || (heap.len() == n && heap.peek().is_some_and(|low| global < low.0.global))
            {
                continue;
            }
            let rank = HotRank {
                global,
                key: std::cmp::Reverse((Arc::clone(cell.key()), cell.window())),
                cell: Arc::clone(cell),
                local,
                remote,
                epoch,
            };
            if heap.len() < n {
                heap.push(std::cmp::Reverse(rank));
            } else if heap.peek().is_some_and(|low| rank > low.0) {
                heap.pop();
                heap.push(std::cmp::Reverse(rank));
            }
        }
        let mut ranked: Vec<HotRank> = heap.into_iter().map(|r| r.0).collect();
        ranked.sort_by(|a, b| b.cmp(a));
        let any_released = self.any_released();
        ranked
            .into_iter()
            .map(|r| {
                let limit = r.cell.limit_seen();
                let used = match limit {
                    Some(seen) => limiter::peek(&r.cell, seen.algorithm, now, seen.limit, 0).used,
                    None => r.global,
                };
                // Net of the refunds, as a decision reads it (see `signed`): at most `n` lookups.
                let used = if any_released {
                    used.saturating_sub(self.released_at(&r.key.0.0, r.cell.window(), r.epoch))
                } else {
                    used
                };
                HotKey {
                    key: Arc::clone(&r.key.0.0),
                    window: r.cell.window(),
                    epoch: r.epoch,
                    window_end_ms: r.cell.end_ms(r.epoch),
                    local: r.local,
                    remote: r.remote,
                    used,
                    limit,
                }
            })
            .collect()
    }

    /// The store's counters and its current number of keys.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        // Relaxed: statistics.
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let local = self.shared.count.load(std::sync::atomic::Ordering::Relaxed);
        let remote = self
            .shared
            .remote_count
            .load(std::sync::atomic::Ordering::Relaxed);
        StatsSnapshot {
            keys: local + remote,
            remote_keys: remote,
            refused_keys: load(&s.refused_keys),
            refused_local_keys: load(&s.refused_local_keys),
            refused_remote_keys: load(&s.refused_remote_keys),
            refused_origins: load(&s.refused_origins),
            floors_raised: load(&s.floors_raised),
            resets: load(&s.resets),
            pending_floors_dropped: load(&s.pending_floors_dropped),
            invalid_keys: load(&s.invalid_keys),
            stale_adds: load(&s.stale_adds),
            saturated_adds: load(&s.saturated_adds),
            expired_merges: load(&s.expired_merges),
            future_merges: load(&s.future_merges),
            inflated_cells: load(&s.inflated_cells),
            reclaimed_keys: load(&s.reclaimed_keys),
            dirty_overflowed: load(&s.dirty_overflowed),
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

/// One acquire on `cell` (see [`CounterHandle::acquire`]), counting the call but not a refusal (the caller
/// does, once it knows the refusal is a decision: a cell being retired refuses everything).
#[inline]
fn acquire_on(
    cell: &Arc<Cell>,
    clock: &CoarseClock,
    shared: &Shared,
    algorithm: Algorithm,
    limit: Limit,
    cost: u64,
) -> Decision {
    super::calls::count_acquire();
    decide_on(cell, clock, shared, algorithm, limit, cost)
}

/// [`acquire_on`] without counting the call (its caller counted it).
#[inline(always)]
fn decide_on(
    cell: &Arc<Cell>,
    clock: &CoarseClock,
    shared: &Shared,
    algorithm: Algorithm,
    limit: Limit,
    cost: u64,
) -> Decision {
    // For the status page's hot keys: one load, a store only when the limit changed.
    cell.note_limit(limit.given, algorithm);
    if shared.in_startup() {
        return acquire_full(
            cell,
            clock,
            shared,
            algorithm,
            shared.decide_limit(limit),
            cost,
        );
    }
    let limit = limit.given.saturating_add(limit.credit);
    // The fast path makes no call, as in `add`: a fixed window, the cached epoch, an uncontended cell, one
    // decision and at most one CAS. Anything else, and it decided and counted nothing.
    let now = clock.now_unix_ms();
    if matches!(algorithm, Algorithm::FixedWindow)
        && let Some(epoch) = cell.cached_epoch_at(now)
        && let Some(outcome) = cell.try_take_fast_at(epoch, cost, limit, Some(now.get()))
    {
        let reset_at = cell.cached_end_ms(epoch);
        return match outcome {
            FastTake::Taken { used } => {
                if cost > 0 && !cell.is_dirty() {
                    shared.queue_changed(cell);
                }
                Decision::new(true, used, limit, reset_at)
            }
            // The slot held the epoch, so the cell was not being retired: the refusal is a real decision.
            FastTake::Refused { used } => {
                shared.refused(cell);
                Decision::new(false, used, limit, reset_at)
            }
        };
    }
    acquire_full(cell, clock, shared, algorithm, limit, cost)
}

#[inline(never)]
fn acquire_full(
    cell: &Arc<Cell>,
    clock: &CoarseClock,
    shared: &Shared,
    algorithm: Algorithm,
    limit: u64,
    cost: u64,
) -> Decision {
    let (decision, counted) = limiter::acquire(cell, algorithm, clock.now_unix_ms(), limit, cost);
    if counted {
        shared.changed(cell);
    } else if !decision.allowed {
        shared.refused(cell);
    }
    decision
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
        self.acquire_limit(algorithm, Limit::given(limit), cost)
    }

    /// [`CounterHandle::acquire`] against a [`Limit`].
    #[inline]
    pub(crate) fn acquire_limit(&self, algorithm: Algorithm, limit: Limit, cost: u64) -> Decision {
        super::calls::count_acquire();
        self.acquire_counted(algorithm, limit, cost)
    }

    /// [`CounterHandle::acquire_limit`] of a call its caller counted already (`calls::count_acquire`); a
    /// refusal is counted here.
    #[inline]
    pub(crate) fn acquire_counted(
        &self,
        algorithm: Algorithm,
        limit: Limit,
        cost: u64,
    ) -> Decision {
        let mut decision = decide_on(
            &self.cell,
            &self.clock,
            &self.shared,
            algorithm,
            limit,
            cost,
        );
        if !decision.allowed && self.cell.is_retired() {
            decision = self.acquire_refused(algorithm, limit, cost, decision);
        }
        if !decision.allowed {
            super::calls::count_refusal();
        }
        decision
    }

    /// A refusal from a cell being retired is no decision: this handle holds the cell, so the retire will be
    /// undone. Retry until it is (see `add_slow`).
    #[cold]
    fn acquire_refused(
        &self,
        algorithm: Algorithm,
        limit: Limit,
        cost: u64,
        mut decision: Decision,
    ) -> Decision {
        // The same limit as the first try: the start-up share while it applies.
        let limit = self.shared.decide_limit(limit);
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

    /// A token-bucket acquire with `credit` units given back in the current epoch (refunds, see `signed`):
    /// as [`CounterHandle::acquire`] of [`Algorithm::TokenBucket`], with the refunds added to every check.
    pub(crate) fn acquire_bucket(
        &self,
        burst: std::num::NonZeroU64,
        limit: u64,
        cost: u64,
        credit: u64,
    ) -> Decision {
        self.cell
            .note_limit(limit, Algorithm::TokenBucket { burst });
        super::calls::count_acquire();
        let limit = self.shared.startup_limit(limit);
        self.until_decided(|| {
            let now = self.clock.now_unix_ms();
            super::bucket::acquire(&self.cell, burst, now, limit, cost, credit)
        })
    }

    /// Runs `attempt` (a decision, and whether it counted something) until it decides: queues the cell for
    /// replication when it counted, retries a refusal from a cell being retired (no decision, see
    /// `acquire_refused`), and counts a refusal.
    #[inline]
    fn until_decided(&self, mut attempt: impl FnMut() -> (Decision, bool)) -> Decision {
        loop {
            let (decision, counted) = attempt();
            if counted {
                self.shared.changed(&self.cell);
            }
            if decision.allowed || !self.cell.is_retired() {
                if !decision.allowed {
                    super::calls::count_refusal();
                }
                return decision;
            }
            std::hint::spin_loop();
        }
    }

    /// [`CounterHandle::acquire_bucket`] without counting anything.
    pub(crate) fn check_bucket(
        &self,
        burst: std::num::NonZeroU64,
        limit: u64,
        cost: u64,
        credit: u64,
    ) -> Decision {
        super::bucket::peek(
            &self.cell,
            burst,
            self.clock.now_unix_ms(),
            self.shared.startup_limit(limit),
            cost,
            credit,
        )
    }

    /// The decision an acquire of `cost` would get now, without counting anything.
    pub fn check(&self, algorithm: Algorithm, limit: u64, cost: u64) -> Decision {
        self.check_limit(algorithm, Limit::given(limit), cost)
    }

    /// [`CounterHandle::check`] against a [`Limit`].
    pub(crate) fn check_limit(&self, algorithm: Algorithm, limit: Limit, cost: u64) -> Decision {
        limiter::peek(
            &self.cell,
            algorithm,
            self.clock.now_unix_ms(),
            self.shared.decide_limit(limit),
            cost,
        )
    }

    /// A fixed-window acquire of `cost` in `epoch` that counts `before` as used besides that epoch's count
    /// (an in-flight limit's previous window, see `signed`): allowed, and counted in `epoch`, when
    /// `before + count + cost ≤ share(limit.given) + limit.credit`. The caller read `epoch` from this
    /// handle's clock once and computed `before` and the credit in it, so the decision and the count use
    /// the same window even when the clock crosses a boundary meanwhile (an epoch that left the ring is
    /// refused). The decision's `used` includes `before` and its `limit` is the one decided against.
    pub(crate) fn acquire_after(
        &self,
        epoch: u64,
        limit: Limit,
        before: u64,
        cost: u64,
    ) -> Decision {
        self.cell.note_limit(limit.given, Algorithm::FixedWindow);
        super::calls::count_acquire();
        let decide = self.shared.decide_limit(limit);
        let reset_at = self.cell.end_ms(epoch);
        self.until_decided(|| match self.cell.take(epoch, cost, decide, before) {
            TakeOutcome::Taken { used } => (Decision::new(true, used, decide, reset_at), cost > 0),
            TakeOutcome::Refused { used } => (Decision::new(false, used, decide, reset_at), false),
            // As `limiter::acquire`: the clock is a whole ring behind the cell's newest epoch.
            TakeOutcome::Stale => (Decision::new(false, decide, decide, reset_at), false),
        })
    }

    /// [`CounterHandle::acquire_after`] without counting anything.
    pub(crate) fn check_after(&self, epoch: u64, limit: Limit, before: u64, cost: u64) -> Decision {
        let decide = self.shared.decide_limit(limit);
        let used = before.saturating_add(self.global_at(epoch));
        Decision::new(
            used.saturating_add(cost) <= decide,
            used,
            decide,
            self.cell.end_ms(epoch),
        )
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

    /// The limit and algorithm of the last acquire on this node (as the hot keys show it).
    #[cfg(test)]
    pub(crate) fn limit_seen(&self) -> Option<LimitSeen> {
        self.cell.limit_seen()
    }

    /// Local + remote in `epoch` (0 if it is not in the ring).
    pub fn global_at(&self, epoch: u64) -> u64 {
        self.cell
            .local(epoch)
            .saturating_add(self.cell.remote(epoch))
    }

    /// The merged remote count in `epoch`.
    pub(crate) fn remote_at(&self, epoch: u64) -> u64 {
        self.cell.remote(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::calls::{CallCounts, thread_call_counts};

    /// 2026-11-24T10:00:00Z, a minute boundary.
    const T0: u64 = 1_795_514_400_000;

    /// The calls this thread counted while `f` ran (other threads' calls are not in them).
    fn calls_of<R>(f: impl FnOnce() -> R) -> (R, CallCounts) {
        let before = thread_call_counts();
        let r = f();
        let after = thread_call_counts();
        let delta = CallCounts {
            adds: after.adds - before.adds,
            acquires: after.acquires - before.acquires,
            refusals: after.refusals - before.refusals,
        };
        (r, delta)
    }

    /// Caches `key`'s cell on this thread, then lets its epochs leave the ring and reclaims it: the cache
    /// holds a retired cell.
    fn retire_cached(store: &CounterStore, key: &str, window: Window) {
        let fixed = Algorithm::FixedWindow;
        assert!(
            store
                .acquire_by_key(key, window, fixed, 10, 1)
                .unwrap()
                .allowed
        );
        store.drain_dirty(usize::MAX, &mut Vec::new());
        let now = store.clock().now_unix_ms().get();
        store
            .clock()
            .set_unix_ms(UnixMs::new(now + RING as u64 * 60_000));
        assert_eq!(store.reclaim_idle(), 1, "the cache holds no handle");
    }

    #[test]
    fn an_acquire_by_key_that_falls_back_from_a_retired_cell_counts_one_call() {
        let store = CounterStore::new(StoreOptions {
            replica_id: 1,
            clock: Arc::new(CoarseClock::new(UnixMs::new(T0))),
            ..StoreOptions::default()
        });
        let w = Window::parse("1m").expect("a window");
        let fixed = Algorithm::FixedWindow;
        // Allowed through the fallback: one acquire, no refusal.
        retire_cached(&store, "k", w);
        let (d, calls) = calls_of(|| store.acquire_by_key("k", w, fixed, 1, 1).unwrap());
        assert!(d.allowed, "{d:?}");
        assert_eq!((calls.acquires, calls.refusals), (1, 0), "{calls:?}");
        assert_eq!(store.global("k", w), 1);
        // Refused through the fallback (a real refusal, by the new cell): one acquire, one refusal.
        retire_cached(&store, "k", w);
        let (d, calls) = calls_of(|| store.acquire_by_key("k", w, fixed, 0, 1).unwrap());
        assert!(!d.allowed, "{d:?}");
        assert_eq!((calls.acquires, calls.refusals), (1, 1), "{calls:?}");
        // The same by key on the net count, with a refund present.
        retire_cached(&store, "k", w);
        let epoch = w.epoch_at(store.clock().now_unix_ms());
        store
            .merge_remote(2, &super::super::signed::released_key("k"), w, epoch, 2)
            .unwrap();
        let (d, calls) = calls_of(|| store.acquire_net_by_key("k", w, fixed, 1, 1).unwrap());
        assert!(d.allowed, "{d:?}");
        assert_eq!((d.used, d.limit), (0, 1), "{d:?}");
        assert_eq!((calls.acquires, calls.refusals), (1, 0), "{calls:?}");
        assert_eq!(store.global("k", w), 1, "counted once, in the new cell");
    }

    #[test]
    fn a_predicting_store_counts_the_extrapolated_remote_and_ships_its_refusals() {
        let w = Window::parse("1s").expect("a window");
        let now = T0 + 110;
        let make = |predict_remote| {
            CounterStore::new(StoreOptions {
                replica_id: 1,
                clock: Arc::new(CoarseClock::new(UnixMs::new(now))),
                predict_remote,
                ..StoreOptions::default()
            })
        };
        let epoch = w.epoch_at(UnixMs::new(now));
        let (plain, predicting) = (make(false), make(true));
        for store in [&plain, &predicting] {
            let handle = store.handle("k", w).unwrap();
            // Origin 2 at 5 per ms: 500 taken at +100 ms, 550 at +110 (the clock's now).
            store
                .merge_from_origin_at(2, "k", w, epoch, 500, T0 + 100)
                .unwrap();
            store
                .merge_from_origin_at(2, "k", w, epoch, 550, T0 + 110)
                .unwrap();
            // A lease key merged with a time predicts nothing.
            let grant = super::super::lease::grant_key("k", 1);
            store
                .merge_from_origin_at(2, &grant, w, epoch, 500, T0 + 100)
                .unwrap();
            store
                .merge_from_origin_at(2, &grant, w, epoch, 550, T0 + 110)
                .unwrap();
            assert_eq!(
                store.existing(&grant, w).unwrap().predicted_at(epoch, now),
                0
            );
            let mut drained = Vec::new();
            store.drain_dirty(usize::MAX, &mut drained);
            assert!(handle.try_acquire(1_000, 1).allowed);
        }
        // 5 per ms × 0.5 ms (the clock shows +110, the value's own time): 2 predicted, so 551 + 2 + 447 fits
        // and one more does not; the plain store admits up to 1,000 − 551.
        let p = predicting.handle("k", w).unwrap();
        assert_eq!(p.try_acquire(1_000, 448).used, 553);
        assert!(!p.try_acquire(1_000, 448).allowed);
        assert!(p.try_acquire(1_000, 447).allowed);
        assert!(
            plain
                .handle("k", w)
                .unwrap()
                .try_acquire(1_000, 449)
                .allowed
        );
        // Its refusal marked the cell dirty: the next flush ships its value, unchanged.
        let mut drained = Vec::new();
        predicting.drain_dirty(usize::MAX, &mut drained);
        assert!(!p.try_acquire(1_000, 1).allowed);
        drained.clear();
        predicting.drain_dirty(usize::MAX, &mut drained);
        assert_eq!(drained.len(), 1, "{drained:?}");
        assert_eq!(drained[0].value, 448);
        // The plain store ships nothing on a refusal.
        let q = plain.handle("k", w).unwrap();
        drained.clear();
        plain.drain_dirty(usize::MAX, &mut drained);
        assert!(!q.try_acquire(1_000, 1).allowed);
        drained.clear();
        plain.drain_dirty(usize::MAX, &mut drained);
        assert!(drained.is_empty(), "{drained:?}");
    }
}
