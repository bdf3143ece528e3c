//! The lock-free counter cell: one `(key, window)`, a ring of [`RING`] epochs, striped local slots and a pre-summed
//! remote value per epoch.
//!
//! # Layout
//! - `slots[i]` packs `(epoch: 48 bits, gen: 16 bits)` for ring position `i = epoch % RING`. Moving a position to
//!   a newer epoch ("rolling") is one CAS that increments `gen`.
//! - Each stripe holds one *value word* per ring position, packing `(gen: 16 bits, value: 48 bits)`. A value word
//!   counts for the slot's epoch only while its `gen` equals the slot's `gen`; readers skip the others.
//! - `remote[i]` packs `(gen, sum of the remote origins' values)` for the slot's epoch, written only by the
//!   replication side (under the `origins` mutex, which the hot path never takes).
//!
//! # Guarantees
//! - An add is attributed exactly to the epoch the caller computed, or refused as stale when that epoch has left
//!   the ring: the CAS that adds compares the whole word, generation included, so an add can never land in a
//!   later epoch that reused the ring position, and a roll never loses an add of the new epoch.
//! - Rolling is lock-free: whoever first sees an older epoch in a slot CASes it forward and then sweeps the old
//!   value words to the new generation (a word already at the new generation is never touched, so the sweep
//!   cannot erase a fresh add). A writer that meets a word not yet swept resets it itself in its CAS.
//! - Values are G-counters: the hot path only ever increases a value word within its generation, so what
//!   replication ships is monotone per `(origin, epoch)` and max-merge is exact. The one exception is a reset's
//!   floor of this replica's own origin, which the replication side moves out of the value words into a
//!   per-epoch offset under the origins mutex; what it ships is words + offset, which stays monotone.
//! - Floors (resets) are max-merged per `(origin, epoch)` and never exceed the value held for their origin; the
//!   pre-summed remote value is `Σ (value − floor)` over remote origins, so the hot path reads it as before.
//! - Per value word (one stripe, one epoch) the value saturates at [`MAX_CELL_VALUE`] (2^48 − 1, about 2.8 × 10^14
//!   units); saturation is reported to the caller. Epochs must be below 2^48 (true for every window until the
//!   year 8 million).
//! - Memory: the origin table allocates nothing until a remote value, floor or aggregate arrives; then one record
//!   per live epoch and 16 bytes per remote origin (a quarter more at most while its list grows). A cell in a
//!   single-node store stays at its own size, at most `CELL_BYTES` (192, checked when the crate compiles; see
//!   `benches/memory.rs`): the extra stripes are one packed word until a contended cell gets them, the handle
//!   count 32 bits beside the flags, the origin table a boxed slice.
//! - Dirty tracking publishes with `SeqCst` on both sides (add: CAS then flag load; drain: flag store then value
//!   loads), so an add is either seen by the drain that clears the flag or re-marks the cell: no change is ever
//!   stranded. On x86 the `SeqCst` CASes and loads are the same instructions as the weaker orderings (a
//!   `lock cmpxchg`, a plain `mov`); the drain's `SeqCst` flag store is not free (an `xchg`, a full barrier), but
//!   it runs once per dirty cell per flush, off the hot path.

use crossbeam_utils::CachePadded;

use crate::UnixMs;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, LockClean, Mutex, Ordering, seqcst_handshake};

use super::aggregate::{AggregateId, AggregateOutcome, GroupSums, Held, SumOf};
use super::epoch_cache::EpochCache;
use super::window::Window;

/// Epochs kept per cell: the current one, the previous one (sliding windows, late merges) and two more so a slow
/// replication round still finds the window it reports on.
pub const RING: usize = 4;

/// The largest value one value word (one stripe, one epoch) can hold: 2^48 − 1.
pub const MAX_CELL_VALUE: u64 = (1 << 48) - 1;

/// The most a [`Cell`] takes inline (its `Arc` adds 16 bytes), checked when the crate compiles: 192 bytes and
/// the 8 of the prediction's pointer ([`PredictWords`]).
#[cfg(not(bifrost_loom))]
const CELL_BYTES: usize = 200;

/// The longest a store that predicts the remote sum extrapolates it (ms): a remote value older than this (an
/// origin that went quiet, or a clock far off) adds nothing. Default 30 ms: a 10 ms one-way latency plus a few
/// 5 ms flushes.
pub const PREDICT_MAX_AGE_MS: u64 = 30;
/// The time constant (ms) of each remote origin's rate average in a store that predicts. Default 100 ms.
pub const PREDICT_RATE_TIME_CONSTANT_MS: f64 = 100.0;
/// Fixed-point scale of a prediction's packed rate: units per ms × 16.
const PREDICT_RATE_SCALE: f64 = 16.0;
const PREDICT_FIELD: u64 = (1 << 24) - 1;

/// A prediction word: `(generation: 16 bits, as-of time mod 2^24 ms: 24 bits, rate × 16 per ms: 24 bits)`; a
/// rate of 0 means no prediction.
#[inline]
fn pack_prediction(generation: u16, as_of_ms: u64, rate_q: u64) -> u64 {
    (u64::from(generation) << 48) | ((as_of_ms & PREDICT_FIELD) << 24) | rate_q.min(PREDICT_FIELD)
}

/// Most padded stripes a contended cell gets, whatever `StoreOptions::stripes` asks for.
pub const MAX_STRIPES: usize = 256;

const SLOT_EMPTY: u64 = u64::MAX;
const EPOCH_MASK: u64 = (1 << 48) - 1;
/// A slot of a cell being reclaimed: its epoch is above every real epoch, so every add and merge sees it as
/// "newer" and refuses with `Stale`/`Expired`, and the caller resolves the key again.
const SLOT_RETIRED: u64 = (EPOCH_MASK << 16) | 0xFFFE;

#[inline]
fn pack_slot(epoch: u64, generation: u16) -> u64 {
    ((epoch & EPOCH_MASK) << 16) | u64::from(generation)
}
#[inline]
fn slot_epoch(slot: u64) -> u64 {
    slot >> 16
}
#[inline]
fn slot_gen(slot: u64) -> u16 {
    slot as u16
}
#[inline]
fn pack_word(generation: u16, value: u64) -> u64 {
    (u64::from(generation) << 48) | value
}
#[inline]
fn word_gen(word: u64) -> u16 {
    (word >> 48) as u16
}
#[inline]
fn word_value(word: u64) -> u64 {
    word & MAX_CELL_VALUE
}
/// The word an add of `n` at `generation` turns `current` into, and the outcome, when the fast path of
/// [`Cell::add`] does not apply: a word not swept yet (an older generation, reset by this add), or a value that
/// saturates. `None` when the word already belongs to a newer generation.
#[cold]
#[inline(never)]
fn next_word(current: u64, generation: u16, n: u64) -> Option<(u64, AddOutcome)> {
    let base = if word_gen(current) == generation {
        word_value(current)
    } else if older(word_gen(current), generation) {
        0 // not swept yet: this CAS resets it
    } else {
        return None;
    };
    Some(match base.checked_add(n) {
        Some(v) if v <= MAX_CELL_VALUE => (pack_word(generation, v), AddOutcome::Added),
        _ => (pack_word(generation, MAX_CELL_VALUE), AddOutcome::Saturated),
    })
}

/// `a` is an older generation than `b` (wrapping; valid while they are less than 2^15 rolls apart).
#[inline]
fn older(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}
#[inline]
fn ring_index(epoch: u64) -> usize {
    (epoch % RING as u64) as usize
}

/// One stripe: a value word per ring position.
pub(crate) struct Stripe {
    words: [AtomicU64; RING],
}

impl Stripe {
    fn new() -> Stripe {
        Stripe {
            words: std::array::from_fn(|_| AtomicU64::new(pack_word(0, 0))),
        }
    }
}

/// A contended cell's padded stripes, set at most once: one word packing the address of a
/// `Box<[CachePadded<Stripe>]>` of `1 << k` stripes (taken with `Box::into_raw`) with `k` in its low bits, which
/// the stripes' alignment leaves zero; 0 before. 8 bytes in every cell, where a `OnceLock<Box<[_]>>` took 24.
/// A `std` atomic under loom as well (the `OnceLock` it replaces was `std`'s there too).
struct ExtraStripes(std::sync::atomic::AtomicUsize);

/// The low bits of an [`ExtraStripes`] word that hold `k` (`1 << k` stripes, `k <= 8` for [`MAX_STRIPES`]).
const STRIPES_LOG_BITS: usize = 0b1111;
const _: () = assert!(std::mem::align_of::<CachePadded<Stripe>>() > STRIPES_LOG_BITS);
const _: () = assert!(MAX_STRIPES.trailing_zeros() as usize <= STRIPES_LOG_BITS);

impl ExtraStripes {
    const fn new() -> ExtraStripes {
        ExtraStripes(std::sync::atomic::AtomicUsize::new(0))
    }

    /// The address and length a non-zero word packs.
    #[inline(always)]
    fn unpack(word: usize) -> (*mut CachePadded<Stripe>, usize) {
        (
            (word & !STRIPES_LOG_BITS) as *mut CachePadded<Stripe>,
            1 << (word & STRIPES_LOG_BITS),
        )
    }

    /// The stripes, once set.
    #[inline(always)]
    fn get(&self) -> Option<&[CachePadded<Stripe>]> {
        // Acquire: pairs with the Release in `set`, so the stripes' initial words are seen.
        let word = self.0.load(std::sync::atomic::Ordering::Acquire);
        if word == 0 {
            return None;
        }
        let (ptr, len) = ExtraStripes::unpack(word);
        // SAFETY: a non-zero word was stored by `set` from `Box::into_raw` of a boxed slice of exactly `len`
        // stripes (its address aligned, so the low bits held only `k`); it never changes afterwards and the
        // slice is freed only by `drop`, which takes `&mut self`: the slice is valid and initialised for the
        // lifetime of `&self`, and only shared references to it are ever made (its words are atomics).
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// Sets the stripes (`stripes.len()` a power of two, at most [`MAX_STRIPES`]) unless already set; a
    /// second set drops its stripes.
    fn set(&self, stripes: Box<[CachePadded<Stripe>]>) {
        let len = stripes.len();
        // A hard check, not a debug one: `get` and `drop` rebuild the slice from the logarithm alone, so any other
        // length would be unsound. Off the hot path (once per inflated cell).
        assert!(
            len.is_power_of_two() && len <= MAX_STRIPES,
            "{len} extra stripes: a power of two at most {MAX_STRIPES} expected"
        );
        let ptr = Box::into_raw(stripes).cast::<CachePadded<Stripe>>();
        let word = ptr as usize | len.trailing_zeros() as usize;
        // Release: publishes the stripes' initial words to `get`. Relaxed on failure: nothing is read then.
        if self
            .0
            .compare_exchange(
                0,
                word,
                std::sync::atomic::Ordering::Release,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_err()
        {
            // SAFETY: the CAS failed, so `ptr` was never published: we still own the allocation `into_raw`
            // gave us, a boxed slice of `len` stripes, and rebuild it exactly to free it.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }
}

impl Drop for ExtraStripes {
    fn drop(&mut self) {
        let word = *self.0.get_mut();
        if word != 0 {
            let (ptr, len) = ExtraStripes::unpack(word);
            // SAFETY: as in `get`, the word packs a boxed slice of `len` stripes from `Box::into_raw`; with
            // `&mut self` no reference to it is left, and it is freed exactly once, here.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }
}

/// The prediction words of a cell ([`Cell::predicted`]): a pointer to a boxed `[AtomicU64; RING]` (taken with
/// `Box::into_raw`), null until the first timed merge installs it; 8 bytes in every cell, where a
/// `OnceLock<Box<_>>` took 16. A `std` atomic under loom as well, as [`ExtraStripes`].
struct PredictWords(std::sync::atomic::AtomicPtr<[AtomicU64; RING]>);

impl PredictWords {
    const fn new() -> PredictWords {
        PredictWords(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
    }

    /// The words, once installed.
    #[inline(always)]
    fn get(&self) -> Option<&[AtomicU64; RING]> {
        // Acquire: pairs with the Release in `get_or_init`, so the words' initial zeros are seen.
        let ptr = self.0.load(std::sync::atomic::Ordering::Acquire);
        // SAFETY: a non-null pointer was stored by `get_or_init` from `Box::into_raw`; it never changes afterwards
        // and is freed only by `drop`, which takes `&mut self`: valid for the lifetime of `&self`, and only shared
        // references to it are made (its words are atomics).
        unsafe { ptr.as_ref() }
    }

    /// The words, installed (all zero) if they were not.
    fn get_or_init(&self) -> &[AtomicU64; RING] {
        if let Some(words) = self.get() {
            return words;
        }
        let fresh = Box::into_raw(Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        // Release: publishes the words' zeros to `get`. Acquire on failure: the winner's words are read next.
        let installed = match self.0.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            std::sync::atomic::Ordering::Release,
            std::sync::atomic::Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: the CAS failed, so `fresh` was never published: we still own what `into_raw` gave us.
                drop(unsafe { Box::from_raw(fresh) });
                winner
            }
        };
        // SAFETY: `installed` is the non-null pointer now stored (ours or the winner's, from `Box::into_raw`),
        // which is never changed nor freed before `drop` (see `get`).
        unsafe { &*installed }
    }
}

impl Drop for PredictWords {
    fn drop(&mut self) {
        let ptr = *self.0.get_mut();
        if !ptr.is_null() {
            // SAFETY: as in `get`, a non-null pointer came from `Box::into_raw`; with `&mut self` no reference to
            // it is left, and it is freed exactly once, here.
            drop(unsafe { Box::from_raw(ptr) });
        }
    }
}

// Not under loom, whose atomics and mutexes are larger.
#[cfg(not(bifrost_loom))]
const _: () = assert!(std::mem::size_of::<Cell>() <= CELL_BYTES);

/// What happened to an add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Counted in full.
    Added,
    /// Counted, but the value word reached [`MAX_CELL_VALUE`] and the excess was dropped.
    Saturated,
    /// Not counted: the epoch has already left the ring (the caller's clock is behind the cell's newest epoch).
    Stale,
}

/// The outcome of a conditional take (the limiter's acquire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TakeOutcome {
    /// Taken; `used` includes the cost.
    Taken { used: u64 },
    /// Not taken: `used + cost` would exceed the limit (or a value word would saturate).
    Refused { used: u64 },
    /// Not taken: the epoch has already left the ring.
    Stale,
}

/// What the origin table holds for the epoch at one ring position.
#[derive(Debug, Default)]
struct Position {
    /// The epoch.
    epoch: u64,
    /// Σ over remote origins of `value − floor` (a floor never exceeds its value): what the hot path reads.
    /// u128, so the sum of any number of u64 values is exact and can be lowered again by a floor.
    sum: u128,
    /// This replica's own floor: how much was moved out of its value words by resets (see
    /// [`Cell::merge_own_floor`]). What it ships is its value words plus this, so it stays monotone.
    own_offset: u64,
    /// `(origin, value)` sorted by origin: the max of everything each remote origin reported for the epoch.
    /// Its length is what `limits.max_origins_per_key` bounds. 16 bytes per origin (see [`insert_sorted`]).
    values: Vec<(u64, u64)>,
    /// `(origin, floor)` sorted by origin: the max of every reset's view of that origin, never above its value
    /// here. Allocated by the first reset of the epoch, so a position without one pays one pointer.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in every position instead of a Vec's 24, for a list nearly every position leaves empty"
    )]
    floors: Option<Box<Vec<(u64, u64)>>>,
    /// The aggregates of other groups merged for the epoch (large-cluster mode); allocated when the first one
    /// arrives, so a position in a small cluster pays one pointer.
    grouped: Option<Box<GroupSums>>,
    /// Per remote origin, its recent rate and the time of its last value (stores that predict the remote sum,
    /// see [`Cell::predicted`]); allocated by the first value merged with a time, so a position of a store that
    /// does not predict pays one pointer.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in every position instead of a Vec's 24, for a list only predicting stores fill"
    )]
    rates: Option<Box<Vec<OriginRate>>>,
}

/// One remote origin's rate, as a store that predicts the remote sum keeps it (see [`Cell::predicted`]).
#[derive(Debug, Clone, Copy)]
struct OriginRate {
    origin: u64,
    /// When its last value was taken (Unix ms, the sender's flush time, at most the merge time here).
    as_of_ms: u64,
    /// Its value then.
    value: u64,
    /// Units per ms, exponentially weighted over [`PREDICT_RATE_TIME_CONSTANT_MS`], while it admits.
    per_ms: f64,
    /// Its rate between its last two values: the prediction takes the lower of the two, so an origin that
    /// starts refusing near the limit (admitting less than its average) is extrapolated at what it admits now.
    last: f64,
    /// Its last value came again unchanged (it refused everything since): it adds nothing until it rises.
    idle: bool,
}

impl Position {
    /// The remote count the hot path reads: the per-origin sum, or when aggregates of other groups arrived the
    /// estimate they give (see `aggregate`: raised by their value sums, lowered only by floors).
    fn counted(&self) -> u128 {
        match self.grouped.as_deref() {
            Some(sums) => sums.estimate(self.sum),
            None => self.sum,
        }
    }

    /// Remote `origin`'s value or floor changed from `before` to `after`: the group sums follow.
    fn origin_changed(&mut self, origin: u64, before: Held, after: Held) {
        if let Some(sums) = self.grouped.as_deref_mut() {
            sums.origin_changed(origin, before, after);
        }
    }

    /// Origin `origin` reported `value` taken at `as_of_ms` (its previous value here was lower): its rate
    /// follows (the increase over the time between its two values, averaged over
    /// [`PREDICT_RATE_TIME_CONSTANT_MS`]; its first value of the epoch starts from `carried`, its rate in the
    /// previous epoch, or else from its value over the time since `start_ms`, the window's start). Returns the
    /// position's prediction: the rate-weighted mean as-of time of the origins heard within
    /// [`PREDICT_MAX_AGE_MS`] of the newest and their summed rate × 16, or `None` when they sum to no rate.
    fn note_rate(
        &mut self,
        origin: u64,
        value: u64,
        as_of_ms: u64,
        start_ms: u64,
        carried: Option<f64>,
    ) -> Option<(u64, u64)> {
        let rates = self.rates.get_or_insert_with(Default::default);
        match rates.binary_search_by_key(&origin, |r| r.origin) {
            Ok(k) => {
                let r = &mut rates[k];
                if as_of_ms > r.as_of_ms {
                    // After an idle spell the increase spans the pause: the rate it had resumes instead.
                    if r.idle {
                        r.last = r.per_ms;
                    } else {
                        let dt = (as_of_ms - r.as_of_ms) as f64;
                        let sample = value.saturating_sub(r.value) as f64 / dt;
                        let weight = 1.0 - (-dt / PREDICT_RATE_TIME_CONSTANT_MS).exp();
                        r.per_ms += weight * (sample - r.per_ms);
                        r.last = sample;
                    }
                    r.idle = false;
                    r.as_of_ms = as_of_ms;
                }
                // A reordered older batch raised the value: keep the time of the newer one.
                r.value = r.value.max(value);
            }
            Err(k) => {
                let per_ms = carried.unwrap_or_else(|| {
                    let since = as_of_ms.saturating_sub(start_ms).max(1);
                    value as f64 / since as f64
                });
                rates.insert(
                    k,
                    OriginRate {
                        origin,
                        as_of_ms,
                        value,
                        per_ms,
                        last: per_ms,
                        idle: false,
                    },
                );
            }
        }
        self.prediction()
    }

    /// Origin `origin` reported the value it had, taken again at `as_of_ms`: it admitted nothing since, so it
    /// adds nothing to the prediction until its value rises again. `None` when that changes nothing (no rate
    /// kept for the origin, or a time not newer); else the position's new prediction (see
    /// [`Position::note_rate`]).
    fn note_idle(&mut self, origin: u64, as_of_ms: u64) -> Option<Option<(u64, u64)>> {
        let rates = self.rates.as_deref_mut()?;
        let k = rates.binary_search_by_key(&origin, |r| r.origin).ok()?;
        let r = &mut rates[k];
        if as_of_ms <= r.as_of_ms {
            return None;
        }
        r.as_of_ms = as_of_ms;
        r.idle = true;
        Some(self.prediction())
    }

    /// The rate-weighted mean as-of time of the origins that are not idle and were heard within
    /// [`PREDICT_MAX_AGE_MS`] of the newest, and their summed rate × 16; `None` when they sum to no rate.
    fn prediction(&self) -> Option<(u64, u64)> {
        let rates = self.rates.as_deref()?;
        let newest = rates.iter().map(|r| r.as_of_ms).max()?;
        let (mut rate, mut weighted_age) = (0.0f64, 0.0f64);
        for r in rates
            .iter()
            .filter(|r| !r.idle && r.as_of_ms.saturating_add(PREDICT_MAX_AGE_MS) >= newest)
        {
            let per_ms = r.per_ms.min(r.last);
            rate += per_ms;
            weighted_age += per_ms * (newest - r.as_of_ms) as f64;
        }
        let rate_q = (rate * PREDICT_RATE_SCALE).round();
        if rate_q < 1.0 {
            return None;
        }
        // Saturating float-to-int conversions; the age is below the cap.
        let as_of = newest.saturating_sub((weighted_age / rate).round() as u64);
        Some((as_of, rate_q as u64))
    }

    /// Every remote origin's value and floor.
    fn held(&self) -> impl Iterator<Item = (u64, Held)> + '_ {
        held(&self.values, self.floors())
    }

    /// The floors, sorted by origin (empty before the first reset).
    fn floors(&self) -> &[(u64, u64)] {
        self.floors.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// The value `list` (sorted by origin) holds for `origin`.
fn lookup(list: &[(u64, u64)], origin: u64) -> Option<u64> {
    list.binary_search_by_key(&origin, |&(o, _)| o)
        .ok()
        .map(|k| list[k].1)
}

/// Sets `origin`'s value in `list` (sorted by origin). A full list grows by a quarter (at least one entry), not
/// by doubling: a cell's few remote origins cost 16 bytes each, a hot key's thousands at most a quarter more, and
/// a list of `n` origins is reallocated O(log n) times.
fn insert_sorted(list: &mut Vec<(u64, u64)>, origin: u64, value: u64) {
    match list.binary_search_by_key(&origin, |&(o, _)| o) {
        Ok(k) => list[k].1 = value,
        Err(k) => {
            if list.len() == list.capacity() {
                list.reserve_exact((list.len() / 4).max(1));
            }
            list.insert(k, (origin, value));
        }
    }
}

/// The per-origin values and floors merged into one cell, kept by the replication side only: one [`Position`]
/// per ring position that holds anything, so a cell without remote values, floors or aggregates allocates
/// nothing here, and one with a single live epoch allocates one position.
#[derive(Default)]
struct OriginTable {
    /// At most [`RING`], each at a distinct ring position (`ring_index(epoch)`), in no particular order. A boxed
    /// slice (16 bytes in every cell, a `Vec` took 24) grown by one position at a time, as the `Vec` was.
    positions: Box<[Position]>,
}

impl OriginTable {
    /// The position of `epoch` (ring position `i`), emptied first if it held another epoch.
    fn position(&mut self, i: usize, epoch: u64) -> &mut Position {
        let k = match self.positions.iter().position(|p| ring_index(p.epoch) == i) {
            Some(k) => {
                if self.positions[k].epoch != epoch {
                    // The ring moved on: what the table kept for the older epoch here is over.
                    self.positions[k] = Position {
                        epoch,
                        ..Position::default()
                    };
                }
                k
            }
            None => {
                let mut positions = std::mem::take(&mut self.positions).into_vec();
                positions.reserve_exact(1);
                positions.push(Position {
                    epoch,
                    ..Position::default()
                });
                self.positions = positions.into_boxed_slice();
                self.positions.len() - 1
            }
        };
        &mut self.positions[k]
    }

    /// The position of `epoch` if the table holds that epoch (at its ring position).
    fn held(&self, epoch: u64) -> Option<&Position> {
        self.positions.iter().find(|p| p.epoch == epoch)
    }

    /// The position of `epoch` if the table holds that epoch, to change.
    fn held_mut(&mut self, epoch: u64) -> Option<&mut Position> {
        self.positions.iter_mut().find(|p| p.epoch == epoch)
    }
}

/// Every remote origin's value and floor, from one position's lists (a free function, so a caller can borrow
/// them while it holds the position's group sums mutably).
fn held<'a>(
    values: &'a [(u64, u64)],
    floors: &'a [(u64, u64)],
) -> impl Iterator<Item = (u64, Held)> + 'a {
    values.iter().map(move |&(origin, value)| {
        let floor = lookup(floors, origin).unwrap_or(0);
        (origin, Held { value, floor })
    })
}

/// A u128 sum as the u64 the wire carries: `u64::MAX` when it does not fit.
fn saturate(sum: u128) -> u64 {
    u64::try_from(sum).unwrap_or(u64::MAX)
}

/// Result of merging one floor (see [`Cell::merge_floor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorOutcome {
    /// The floor rose: the origin's counted contribution fell.
    Raised,
    /// The floor was not higher than the one held (or than the origin's value here): nothing changed.
    Unchanged,
    /// No value of that origin is held for the epoch here, so there is nothing to lower (yet): dropped. Anti-entropy
    /// brings the floor again once the value is here.
    NoValue,
    /// The epoch is not in the ring (over, or not started here): dropped.
    Expired,
}

/// The decision of [`Cell::try_take_fast`] (it never finds the epoch stale: then it declines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastTake {
    /// Taken; `used` includes the cost.
    Taken { used: u64 },
    /// Not taken: `used + cost` would exceed the limit (or the value word would saturate).
    Refused { used: u64 },
}

/// Result of merging one remote value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The value was larger than what this origin had reported for the epoch: the remote sum changed.
    Raised,
    /// The value was not larger: nothing changed (duplicates and reordered batches land here).
    Unchanged,
    /// The epoch has left the ring: the value belongs to a window that is over and is dropped.
    Expired,
    /// The epoch is more than one window ahead of this node's clock: dropped, so a peer's fast clock cannot
    /// push our windows forward (see `CounterStore::merge_remote`).
    Future,
    /// A new origin for the epoch, but the cell already holds `limits.max_origins_per_key` remote origins for it:
    /// dropped (counted by the store).
    OriginLimit,
}

/// A counter cell. Shared by the store, the handles and the dirty queue through `Arc`.
pub struct Cell {
    slots: [AtomicU64; RING],
    /// The cell's window, and the epoch of "now" without a division on the hot path.
    epochs: EpochCache,
    inline: Stripe,
    remote: [AtomicU64; RING],
    extra: ExtraStripes,
    /// Per ring position, the extrapolation of the remote sum (see [`Cell::predicted`]): `(gen, as-of time,
    /// summed rate)` packed by [`pack_prediction`], 0 when none. Allocated by the first merge with a time (a
    /// store that predicts, `StoreOptions::predict_remote`), so any other cell pays one null pointer;
    /// written only by the replication side, under the `origins` mutex.
    predict: PredictWords,
    dirty: AtomicBool,
    contended: AtomicBool,
    /// Live handles (see [`Cell::register_handle`]); 4 bytes, beside the flags.
    handles: AtomicU32,
    origins: Mutex<OriginTable>,
    key: std::sync::Arc<str>,
    /// Created by a merge (counted in `limits.max_remote_keys`) rather than by a local add or handle (counted in
    /// `limits.max_keys`). Set once at creation.
    remote_created: bool,
    /// The limit and algorithm of the last acquire on this node (see [`LimitSeen`]), for the status page; written
    /// only when it changes, so a key acquired with one limit costs its hot path one load of this word.
    limit_seen: std::sync::atomic::AtomicU64,
    /// The burst of the last token-bucket acquire on this node (status page), written only by token-bucket
    /// acquires and only when it changes.
    burst_seen: std::sync::atomic::AtomicU64,
}

/// Most live handles one cell counts (see `Cell::count_handle`).
const MAX_HANDLES: u32 = 1 << 31;

/// What `Cell::limit_seen` packs: `limit.min(LIMIT_SEEN_MAX) << 2 | tag` (0 fixed window, 1 sliding window,
/// 2 token bucket), or [`LIMIT_SEEN_NONE`] before the first acquire.
const LIMIT_SEEN_NONE: u64 = u64::MAX;
/// Largest limit `Cell::limit_seen` reports exactly (2^61); larger limits read as this value.
pub(crate) const LIMIT_SEEN_MAX: u64 = 1 << 61;

/// The limit and algorithm the last acquire of a cell used on this node: a display of what the gateway
/// enforces (the store itself never keeps limits; every acquire brings its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSeen {
    /// The limit (at most 2^61: larger limits read as 2^61).
    pub limit: u64,
    /// The algorithm (a token bucket's burst as its last token-bucket acquire gave it).
    pub algorithm: super::limiter::Algorithm,
}

#[inline(always)]
fn pack_limit_seen(limit: u64, algorithm: super::limiter::Algorithm) -> u64 {
    use super::limiter::Algorithm;
    let tag = match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::TokenBucket { .. } => 2,
    };
    (limit.min(LIMIT_SEEN_MAX) << 2) | tag
}

thread_local! {
    /// This thread's preferred stripe; moved on each CAS conflict so contending threads spread out.
    static STRIPE_HINT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}
/// Hands out starting stripe hints round robin.
static NEXT_STRIPE_HINT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[inline]
fn stripe_hint() -> usize {
    STRIPE_HINT.with(|h| {
        let v = h.get();
        if v != usize::MAX {
            return v;
        }
        // Relaxed: a round-robin ticket; any value is correct, distinct values just spread threads.
        let v = NEXT_STRIPE_HINT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.set(v);
        v
    })
}

#[cold]
fn bump_stripe_hint() -> usize {
    // A thread that never needed a hint (its cells had no extra stripes) takes its round-robin ticket first.
    let v = stripe_hint().wrapping_add(1);
    STRIPE_HINT.with(|h| h.set(v));
    v
}

impl Cell {
    /// A cell in the local budget (tests and loom models; the store says which budget).
    #[cfg(test)]
    pub(crate) fn new(key: std::sync::Arc<str>, window: Window) -> Cell {
        Cell::with_budget(key, window, false)
    }

    /// A cell counted in the local (`remote_created == false`) or in the remote key budget.
    pub(crate) fn with_budget(
        key: std::sync::Arc<str>,
        window: Window,
        remote_created: bool,
    ) -> Cell {
        Cell {
            slots: std::array::from_fn(|_| AtomicU64::new(SLOT_EMPTY)),
            epochs: EpochCache::new(window),
            inline: Stripe::new(),
            remote: std::array::from_fn(|_| AtomicU64::new(pack_word(0, 0))),
            extra: ExtraStripes::new(),
            predict: PredictWords::new(),
            dirty: AtomicBool::new(false),
            contended: AtomicBool::new(false),
            handles: AtomicU32::new(0),
            origins: Mutex::new(OriginTable::default()),
            key,
            remote_created,
            limit_seen: std::sync::atomic::AtomicU64::new(LIMIT_SEEN_NONE),
            burst_seen: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Records the limit and algorithm of an acquire (a store only when they changed).
    #[inline(always)]
    pub(crate) fn note_limit(&self, limit: u64, algorithm: super::limiter::Algorithm) {
        let packed = pack_limit_seen(limit, algorithm);
        if let super::limiter::Algorithm::TokenBucket { burst } = algorithm {
            self.note_burst(burst.get());
        }
        // Relaxed: a display value; nothing is published through it and racing acquires with different limits
        // may leave either.
        if self.limit_seen.load(std::sync::atomic::Ordering::Relaxed) != packed {
            self.limit_seen
                .store(packed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records the burst of a token-bucket acquire (a store only when it changed).
    #[cold]
    fn note_burst(&self, burst: u64) {
        // Relaxed: a display value, as `limit_seen`; a reader may pair it with another acquire's limit.
        if self.burst_seen.load(std::sync::atomic::Ordering::Relaxed) != burst {
            self.burst_seen
                .store(burst, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The limit and algorithm of the last acquire on this node, `None` before the first.
    pub(crate) fn limit_seen(&self) -> Option<LimitSeen> {
        use super::limiter::Algorithm;
        // Relaxed: a display value (see `note_limit`).
        let packed = self.limit_seen.load(std::sync::atomic::Ordering::Relaxed);
        let algorithm = match packed & 3 {
            0 => Algorithm::FixedWindow,
            1 => Algorithm::SlidingWindow,
            _ => {
                // Relaxed: a display value (see `note_burst`).
                let burst = self.burst_seen.load(std::sync::atomic::Ordering::Relaxed);
                Algorithm::TokenBucket {
                    burst: std::num::NonZeroU64::new(burst).unwrap_or(std::num::NonZeroU64::MIN),
                }
            }
        };
        (packed != LIMIT_SEEN_NONE).then_some(LimitSeen {
            limit: packed >> 2,
            algorithm,
        })
    }

    /// Whether a merge created the cell (it counts in the remote key budget).
    pub(crate) fn remote_created(&self) -> bool {
        self.remote_created
    }

    /// The cell's key.
    pub fn key(&self) -> &std::sync::Arc<str> {
        &self.key
    }

    /// The cell's window.
    pub fn window(&self) -> Window {
        self.epochs.window()
    }

    /// The epoch of the cell's window containing `unix_ms` (`Window::epoch_at`, without a division).
    #[inline(always)]
    pub(crate) fn epoch_at(&self, unix_ms: UnixMs) -> u64 {
        self.epochs.epoch_at(unix_ms)
    }

    /// `epoch_at` if the cached epoch answers it, with no call (see `EpochCache::cached_epoch_at`).
    #[inline(always)]
    pub(crate) fn cached_epoch_at(&self, unix_ms: UnixMs) -> Option<u64> {
        self.epochs.cached_epoch_at(unix_ms)
    }

    /// `end_ms` for an epoch from [`Cell::cached_epoch_at`], with no call.
    #[inline(always)]
    pub(crate) fn cached_end_ms(&self, epoch: u64) -> u64 {
        self.epochs.cached_end_ms(epoch)
    }

    /// The first millisecond after `epoch` (`Window::end_ms`).
    #[inline(always)]
    pub(crate) fn end_ms(&self, epoch: u64) -> u64 {
        self.epochs.end_ms(epoch)
    }

    /// The generation of `epoch`'s slot, rolling the slot forward if it holds an older epoch; `None` if the slot
    /// already holds a newer epoch (then `epoch` has left the ring).
    #[inline(always)]
    fn generation_for(&self, epoch: u64) -> Option<u16> {
        if epoch >= EPOCH_MASK {
            return None; // beyond the representable range (and the retired sentinel's epoch)
        }
        let i = ring_index(epoch);
        // Acquire: synchronizes with the roll's CAS (a release), so the roll happens before this writer's word
        // CAS: a reader that sees the word at the new generation (with an Acquire or stronger load) and then
        // loads the slot sees the roll or a later value, never the older epoch.
        let slot = self.slots[i].load(Ordering::Acquire);
        // An empty (or retired) slot reads as epoch `EPOCH_MASK`, which `epoch` is below: it never matches here.
        if slot_epoch(slot) == epoch {
            return Some(slot_gen(slot)); // the common case: the slot already holds this epoch
        }
        self.roll_for(epoch, slot)
    }

    /// `generation_for` when the slot does not hold `epoch` yet: rolls it forward, or finds it newer.
    #[cold]
    #[inline(never)]
    fn roll_for(&self, epoch: u64, mut slot: u64) -> Option<u16> {
        let i = ring_index(epoch);
        loop {
            if slot != SLOT_EMPTY {
                let current = slot_epoch(slot);
                if current == epoch & EPOCH_MASK {
                    return Some(slot_gen(slot));
                }
                if current > epoch & EPOCH_MASK {
                    return None;
                }
            }
            let generation = if slot == SLOT_EMPTY {
                0
            } else {
                slot_gen(slot).wrapping_add(1)
            };
            let rolled = pack_slot(epoch, generation);
            // SeqCst: the roll is part of the dirty handshake (a drain that misses this add must leave the
            // flag for it to see; a drain that follows must see the rolled slot); it also orders the winner's
            // sweep and every later writer after the roll.
            match self.slots[i].compare_exchange(slot, rolled, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => {
                    self.sweep(i, generation);
                    return Some(generation);
                }
                Err(actual) => slot = actual,
            }
        }
    }

    /// Moves every value word at ring position `i` that is older than `generation` to `(generation, 0)`.
    #[cold]
    fn sweep(&self, i: usize, generation: u16) {
        let sweep_word = |word: &AtomicU64| {
            // Relaxed: the sweep only prevents generation wrap-around; values are judged by their own word.
            let mut current = word.load(Ordering::Relaxed);
            while older(word_gen(current), generation) {
                match word.compare_exchange(
                    current,
                    pack_word(generation, 0),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        };
        sweep_word(&self.inline.words[i]);
        if let Some(extra) = self.extra.get() {
            for stripe in extra.iter() {
                sweep_word(&stripe.words[i]);
            }
        }
        // The position's remote sum follows the same generation rule, so it can never reappear after the 16-bit
        // generation wraps. A merge that raced this roll may store an older generation once more; the next
        // roll's sweep moves it again.
        sweep_word(&self.remote[i]);
    }

    #[inline]
    fn stripe(&self, hint: usize) -> &Stripe {
        self.stripe_in(self.extra_stripes(), hint)
    }

    /// The cell's extra stripes, once a contended cell got them.
    #[inline(always)]
    fn extra_stripes(&self) -> Option<&[CachePadded<Stripe>]> {
        self.extra.get()
    }

    /// The stripe for `hint` given the cell's extra stripes as read by the caller.
    #[inline(always)]
    fn stripe_in<'a>(
        &'a self,
        extra: Option<&'a [CachePadded<Stripe>]>,
        hint: usize,
    ) -> &'a Stripe {
        match extra {
            None => &self.inline,
            // The length is a power of two (see `inflate`).
            Some(extra) => &extra[hint & (extra.len() - 1)],
        }
    }

    #[cold]
    fn note_contention(&self) -> usize {
        // Relaxed: a hint for the drain side; nothing is published through it.
        if !self.contended.load(Ordering::Relaxed) {
            self.contended.store(true, Ordering::Relaxed);
        }
        bump_stripe_hint()
    }

    /// The generation and ring position of `epoch` when the leaf fast paths apply: the slot already holds
    /// `epoch` and the cell has no extra stripes (so the inline stripe is the one to write).
    #[inline(always)]
    fn fast_position(&self, epoch: u64) -> Option<(u16, usize)> {
        let i = ring_index(epoch);
        // Acquire: as in `generation_for`.
        let slot = self.slots[i].load(Ordering::Acquire);
        // `epoch < EPOCH_MASK`: an empty or retired slot reads as epoch `EPOCH_MASK`, never a match.
        if slot_epoch(slot) != epoch || epoch >= EPOCH_MASK || self.extra.get().is_some() {
            return None;
        }
        Some((slot_gen(slot), i))
    }

    /// The common case of [`Cell::add`] as one attempt with no call, for leaf fast paths: the slot already holds
    /// `epoch`, the cell has no extra stripes, and the value word is of this generation with room for `n`. Then
    /// one CAS, with the same orderings as `add`. `false` means nothing was counted (one of those did not hold,
    /// or the CAS lost a race): the caller runs `add`, which handles every case.
    #[inline(always)]
    pub(crate) fn try_add_fast(&self, epoch: u64, n: u64) -> bool {
        let Some((generation, i)) = self.fast_position(epoch) else {
            return false;
        };
        let word = &self.inline.words[i];
        // Relaxed: the CAS below validates what we read.
        let current = word.load(Ordering::Relaxed);
        if word_gen(current) != generation || n > MAX_CELL_VALUE - word_value(current) {
            return false;
        }
        // SeqCst: the first half of the dirty-flag handshake (see module docs), as in `add`.
        word.compare_exchange(current, current + n, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// The common case of [`Cell::take`] (with no sliding-window weight) as one attempt with no call, under the
    /// same conditions as [`Cell::try_add_fast`]: then the decision against `limit` and, when taken, one CAS,
    /// with the same orderings as `take`. `None` means nothing was decided or counted: the caller runs `take`.
    #[cfg_attr(
        not(bifrost_loom),
        allow(dead_code, reason = "the store calls the predicting variant")
    )]
    #[inline(always)]
    pub(crate) fn try_take_fast(&self, epoch: u64, cost: u64, limit: u64) -> Option<FastTake> {
        self.try_take_fast_at(epoch, cost, limit, None)
    }

    /// [`Cell::try_take_fast`], counting the remote sum's extrapolation to `now_ms` as used when `now_ms` is given
    /// ([`Cell::predicted`]; nothing when the store does not predict).
    #[inline(always)]
    pub(crate) fn try_take_fast_at(
        &self,
        epoch: u64,
        cost: u64,
        limit: u64,
        now_ms: Option<u64>,
    ) -> Option<FastTake> {
        let (generation, i) = self.fast_position(epoch)?;
        let word = &self.inline.words[i];
        // SeqCst: as in `take`; this read is validated by the CAS.
        let current = word.load(Ordering::SeqCst);
        if word_gen(current) != generation {
            return None;
        }
        let own = word_value(current);
        // With no extra stripes there is no other local value: the rest is the remote sum.
        let remote = self.remote_value(i, generation);
        let ahead = self.ahead_of(i, generation, remote, now_ms);
        let used = remote.saturating_add(ahead).saturating_add(own);
        let after = used.saturating_add(cost);
        if after > limit || cost > MAX_CELL_VALUE - own {
            return Some(FastTake::Refused { used });
        }
        if cost == 0 {
            return Some(FastTake::Taken { used });
        }
        // SeqCst: the first half of the dirty-flag handshake, as in `take`. `own + cost <= MAX_CELL_VALUE`.
        word.compare_exchange(current, current + cost, Ordering::SeqCst, Ordering::Relaxed)
            .ok()
            .map(|_| FastTake::Taken { used: after })
    }

    /// Adds `n` to `epoch`. Lock-free; one CAS when uncontended.
    #[inline(always)]
    pub(crate) fn add(&self, epoch: u64, n: u64) -> AddOutcome {
        let Some(generation) = self.generation_for(epoch) else {
            return AddOutcome::Stale;
        };
        let i = ring_index(epoch);
        // The stripe hint is a thread-local read: only a contended cell, which has extra stripes, needs it.
        let mut extra = self.extra_stripes();
        let mut hint = if extra.is_some() { stripe_hint() } else { 0 };
        loop {
            let word = &self.stripe_in(extra, hint).words[i];
            // Relaxed: the CAS below validates what we read.
            let current = word.load(Ordering::Relaxed);
            // The common case, a word of this generation with room for `n`, adds to the packed word directly
            // (the generation bits cannot change): one addition between the load and the CAS.
            let (new, outcome) =
                if word_gen(current) == generation && n <= MAX_CELL_VALUE - word_value(current) {
                    (current + n, AddOutcome::Added)
                } else {
                    match next_word(current, generation, n) {
                        Some(next) => next,
                        None => return AddOutcome::Stale, // the position already moved on to a newer epoch
                    }
                };
            // SeqCst: the first half of the dirty-flag handshake (see module docs).
            match word.compare_exchange(current, new, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return outcome,
                Err(_) => {
                    hint = self.note_contention();
                    extra = self.extra_stripes();
                }
            }
        }
    }

    /// Takes `cost` from `epoch` if `extra + local + remote + cost <= limit`, where `extra` is a caller-supplied
    /// weight (the sliding window's share of the previous epoch). Exact against every other writer of the same
    /// value word; across stripes concurrent takes may overshoot by at most one `cost` per other stripe.
    #[inline]
    pub(crate) fn take(&self, epoch: u64, cost: u64, limit: u64, extra: u64) -> TakeOutcome {
        self.take_at(epoch, cost, limit, extra, None)
    }

    /// [`Cell::take`], counting the remote sum's extrapolation to `now_ms` as used when `now_ms` is given
    /// ([`Cell::predicted`]; nothing when the store does not predict).
    #[inline]
    pub(crate) fn take_at(
        &self,
        epoch: u64,
        cost: u64,
        limit: u64,
        extra: u64,
        now_ms: Option<u64>,
    ) -> TakeOutcome {
        let Some(generation) = self.generation_for(epoch) else {
            return TakeOutcome::Stale;
        };
        let i = ring_index(epoch);
        let mut hint = stripe_hint();
        loop {
            let stripe = self.stripe(hint);
            let word = &stripe.words[i];
            // SeqCst: see `add`; this read is validated by the CAS.
            let current = word.load(Ordering::SeqCst);
            let own = if word_gen(current) == generation {
                word_value(current)
            } else if older(word_gen(current), generation) {
                0
            } else {
                return TakeOutcome::Stale;
            };
            let remote = self.remote_value(i, generation);
            let ahead = self.ahead_of(i, generation, remote, now_ms);
            let others = remote + self.local_except(i, generation, Some(stripe));
            let used = extra
                .saturating_add(ahead)
                .saturating_add(others)
                .saturating_add(own);
            let after = used.saturating_add(cost);
            if after > limit || cost > MAX_CELL_VALUE - own {
                return TakeOutcome::Refused { used };
            }
            if cost == 0 {
                return TakeOutcome::Taken { used };
            }
            // SeqCst: the first half of the dirty-flag handshake.
            match word.compare_exchange(
                current,
                pack_word(generation, own + cost), // ≤ MAX_CELL_VALUE: checked above
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return TakeOutcome::Taken { used: after },
                Err(_) => hint = self.note_contention(),
            }
        }
    }

    /// Sum of the value words at position `i` with generation `generation`, skipping the stripe `skip`.
    #[inline]
    fn local_except(&self, i: usize, generation: u16, skip: Option<&Stripe>) -> u64 {
        let read = |stripe: &Stripe| -> u64 {
            if skip.is_some_and(|skip| std::ptr::eq(stripe, skip)) {
                return 0;
            }
            // SeqCst: the second half of the dirty-flag handshake when called from the drain.
            let w = stripe.words[i].load(Ordering::SeqCst);
            if word_gen(w) == generation {
                word_value(w)
            } else {
                0
            }
        };
        let mut sum = read(&self.inline);
        if let Some(extra) = self.extra.get() {
            for stripe in extra.iter() {
                sum += read(stripe);
            }
        }
        sum
    }

    #[inline(always)]
    fn remote_value(&self, i: usize, generation: u16) -> u64 {
        // Acquire: pairs with the Release store in `publish_remote`: a reader that sees a published sum also sees
        // what the replication side wrote before publishing it (a reset lowers this replica's own value words,
        // then publishes the remote sum net of the floors), so the value-word loads that follow are not older
        // than the sum. (Any atomic load reads the word whole; that needs no ordering.)
        let w = self.remote[i].load(Ordering::Acquire);
        if word_gen(w) == generation {
            word_value(w)
        } else {
            0
        }
    }

    /// How much the remote origins of ring position `i` (generation `generation`) have likely added since the
    /// values merged here were taken, at `now_ms`: their summed recent rate × (the age of their values + half a
    /// ms, the part of the current millisecond a coarse clock does not show), 0 beyond
    /// [`PREDICT_MAX_AGE_MS`] or when none was published (a store that does not predict, an epoch without
    /// timed values). An estimate, never a count: the limiter counts it as used, so it only refuses sooner.
    #[inline(always)]
    fn predicted(&self, i: usize, generation: u16, now_ms: u64) -> u64 {
        let Some(words) = self.predict.get() else {
            return 0;
        };
        // Relaxed: an estimate written whole by the replication side; no other memory is read through it.
        let w = words[i].load(Ordering::Relaxed);
        let rate_q = w & PREDICT_FIELD;
        if rate_q == 0 || word_gen(w) != generation {
            return 0;
        }
        let as_of = (w >> 24) & PREDICT_FIELD;
        // Modulo 2^24 ms: a value from the future (a peer's clock ahead) wraps to a huge age, beyond the cap.
        let age = now_ms.wrapping_sub(as_of) & PREDICT_FIELD;
        if age > PREDICT_MAX_AGE_MS {
            return 0;
        }
        // rate × 16 × (2 × age + 1) / 32 = rate × (age + 1/2); both factors < 2^24: no overflow.
        (rate_q * (2 * age + 1)) >> 5
    }

    /// The extrapolation of `epoch`'s remote sum to `now_ms` ([`Cell::predicted`]); 0 for an epoch not held.
    pub(crate) fn predicted_at(&self, epoch: u64, now_ms: u64) -> u64 {
        let Some(generation) = self.generation_if_present(epoch) else {
            return 0;
        };
        let i = ring_index(epoch);
        self.ahead_of(
            i,
            generation,
            self.remote_value(i, generation),
            Some(now_ms),
        )
    }

    /// The extrapolation of position `i`'s remote sum `remote` to `now_ms` ([`Cell::predicted`]), 0 without a
    /// time. A prediction exists only beside a remote value: a store alone pays one comparison.
    #[inline(always)]
    fn ahead_of(&self, i: usize, generation: u16, remote: u64, now_ms: Option<u64>) -> u64 {
        match now_ms {
            Some(now) if remote > 0 => self.predicted(i, generation, now),
            _ => 0,
        }
    }

    /// The generation of `epoch` if its slot currently holds it.
    #[inline]
    fn generation_if_present(&self, epoch: u64) -> Option<u16> {
        // SeqCst: the drain's side of the dirty handshake reads slots after clearing the flag.
        let slot = self.slots[ring_index(epoch)].load(Ordering::SeqCst);
        (slot != SLOT_EMPTY && slot_epoch(slot) == epoch & EPOCH_MASK).then(|| slot_gen(slot))
    }

    /// This replica's own count for `epoch` (0 if the epoch is not in the ring).
    pub(crate) fn local(&self, epoch: u64) -> u64 {
        match self.generation_if_present(epoch) {
            Some(g) => self.local_except(ring_index(epoch), g, None),
            None => 0,
        }
    }

    /// The merged count of every other replica for `epoch` (0 if the epoch is not in the ring).
    pub(crate) fn remote(&self, epoch: u64) -> u64 {
        match self.generation_if_present(epoch) {
            Some(g) => self.remote_value(ring_index(epoch), g),
            None => 0,
        }
    }

    /// The global (local + remote) counts of the `RING - 1` epochs before `epoch`, newest first, for the token
    /// bucket: `Some(0)` for an epoch whose ring position holds an older epoch (nothing was counted or merged
    /// for it here), `None` for one whose position already moved on to a newer epoch (its count is lost here)
    /// or that precedes epoch 0.
    pub(crate) fn prior_counts(&self, epoch: u64) -> [Option<u64>; RING - 1] {
        std::array::from_fn(|k| {
            let earlier = epoch.checked_sub(k as u64 + 1)?;
            // SeqCst: as in `generation_if_present` (the same load, read for its epoch as well).
            let slot = self.slots[ring_index(earlier)].load(Ordering::SeqCst);
            if slot == SLOT_EMPTY || slot_epoch(slot) < earlier {
                return Some(0);
            }
            if slot_epoch(slot) > earlier {
                return None; // a newer epoch (or the retired sentinel) holds the position
            }
            let generation = slot_gen(slot);
            let i = ring_index(earlier);
            Some(
                self.local_except(i, generation, None)
                    .saturating_add(self.remote_value(i, generation)),
            )
        })
    }

    /// Whether the cell is marked dirty (queued for the next drain). The same load as `mark_dirty`'s first step,
    /// so a caller that sees `true` may skip `mark_dirty`.
    #[inline(always)]
    pub(crate) fn is_dirty(&self) -> bool {
        // SeqCst: the second half of the add side of the handshake (after the word CAS), as in `mark_dirty`.
        seqcst_handshake();
        self.dirty.load(Ordering::SeqCst)
    }

    /// Marks the cell dirty; returns true when the caller must push it onto the dirty queue (first change since
    /// the last drain).
    #[inline]
    pub(crate) fn mark_dirty(&self) -> bool {
        // SeqCst: the load is the second half of the add side of the handshake (after the word CAS); the swap
        // makes exactly one of concurrent markers the one that enqueues.
        seqcst_handshake();
        !self.dirty.load(Ordering::SeqCst) && !self.dirty.swap(true, Ordering::SeqCst)
    }

    /// Clears the dirty flag before the drain reads the values.
    pub(crate) fn clear_dirty(&self) {
        // SeqCst: first half of the drain side of the handshake (before the value loads).
        self.dirty.store(false, Ordering::SeqCst);
        seqcst_handshake();
    }

    /// Every epoch in the ring not older than `oldest`, with this replica's local value (zero values skipped).
    ///
    /// The value is what this replica ships: its value words plus the offset its own floor moved out of them
    /// (read under the origins mutex, so a reset moving value into the offset is seen whole).
    pub(crate) fn local_values(&self, oldest: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let table = self.table();
        let values: [Option<(u64, u64)>; RING] = std::array::from_fn(|i| {
            // SeqCst: the drain's side of the dirty handshake (flag store, then slot and value loads).
            let slot = self.slots[i].load(Ordering::SeqCst);
            if slot == SLOT_EMPTY || slot == SLOT_RETIRED || slot_epoch(slot) < oldest {
                return None;
            }
            let epoch = slot_epoch(slot);
            let offset = table.held(epoch).map_or(0, |p| p.own_offset);
            let value = self
                .local_except(i, slot_gen(slot), None)
                .saturating_add(offset);
            (value > 0).then_some((epoch, value))
        });
        drop(table);
        values.into_iter().flatten()
    }

    /// Whether a reclaimer has retired (or is retiring) this cell.
    #[inline]
    pub(crate) fn is_retired(&self) -> bool {
        // SeqCst: pairs with `try_retire` (Dekker: slot CAS then handle count, vs. handle count then slot load).
        self.slots[0].load(Ordering::SeqCst) == SLOT_RETIRED
    }

    /// Registers a handle; false if the cell is being retired (the caller must resolve the key again).
    pub(crate) fn register_handle(&self) -> bool {
        self.count_handle();
        seqcst_handshake();
        if self.is_retired() {
            self.release_handle();
            return false;
        }
        true
    }

    /// Registers one more handle beside a live one. The live handle keeps `handles > 0`, so a retire in
    /// progress fails and is undone: no retired check is needed, and none must be made (it could fail spuriously
    /// while the retire is being undone).
    pub(crate) fn register_clone(&self) {
        self.count_handle();
    }

    /// One more handle. The count is 32 bits: past [`MAX_HANDLES`] (which only leaked handles reach, each live
    /// handle holding the cell's `Arc`) this panics, leaving the count as it was, as `Arc` aborts past
    /// `isize::MAX`.
    fn count_handle(&self) {
        // SeqCst: the increment must be ordered before the retired check (see `try_retire`).
        let before = self.handles.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_HANDLES {
            self.release_handle();
            panic!("more than {MAX_HANDLES} live handles to one counter cell (leaked handles)");
        }
    }

    /// Unregisters a handle.
    pub(crate) fn release_handle(&self) {
        // SeqCst: pairs with the handle-count load in `try_retire`.
        self.handles.fetch_sub(1, Ordering::SeqCst);
    }

    /// Retires the cell if no epoch at or after `oldest` is in its ring, no handle refers to it and it is not
    /// dirty. On success every slot holds the retired sentinel: no add or merge can succeed on it any more, and
    /// the caller removes it from the map. On failure the cell is left exactly as it was.
    pub(crate) fn try_retire(&self, oldest: u64) -> bool {
        // Cheap pre-check, so a cell held by a handle or waiting to be drained is not retired even briefly (its
        // adds would be refused while the slots are retired); the check after retiring is the exact one.
        // SeqCst: same handshake as below.
        if self.handles.load(Ordering::SeqCst) != 0 || self.dirty.load(Ordering::SeqCst) {
            return false;
        }
        let mut saved = [SLOT_EMPTY; RING];
        let restore = |saved: &[u64], upto: usize| {
            for (i, &slot) in saved.iter().enumerate().take(upto) {
                // A plain store, not a CAS: nobody else writes a retired slot (it looks newer than every epoch),
                // so it gives the slot back exactly. SeqCst: like every access of the retire handshake (see
                // `register_handle`).
                self.slots[i].store(slot, Ordering::SeqCst);
            }
        };
        for i in 0..RING {
            // SeqCst: Dekker with `register_handle` and with the adders' rolls.
            let slot = self.slots[i].load(Ordering::SeqCst);
            let idle = slot == SLOT_EMPTY || (slot != SLOT_RETIRED && slot_epoch(slot) < oldest);
            if !idle
                || self.slots[i]
                    .compare_exchange(slot, SLOT_RETIRED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                restore(&saved, i);
                return false;
            }
            saved[i] = slot;
        }
        // SeqCst: after the slots are retired; see `register_handle` and `mark_dirty`.
        seqcst_handshake();
        if self.handles.load(Ordering::SeqCst) != 0 || self.dirty.load(Ordering::SeqCst) {
            restore(&saved, RING);
            return false;
        }
        true
    }

    /// Whether a CAS conflict was seen since the cell was last inflated.
    pub(crate) fn is_contended(&self) -> bool {
        // Relaxed: a hint.
        self.contended.load(Ordering::Relaxed) && self.extra.get().is_none()
    }

    /// Gives the cell `stripes` padded stripes (a power of two ≥ 2) so contending threads stop sharing one cache
    /// line. Called from the drain side, never from the hot path. No effect if already inflated.
    pub(crate) fn inflate(&self, stripes: usize) {
        // Start each word at its slot's current generation so it counts at once; a roll racing with this is
        // harmless (the word is then older and is reset by its first writer or the next sweep). A slot read as
        // retired has no real generation to copy: give up; a later drain inflates the cell if it stays in use.
        let mut generations = [0u16; RING];
        for (i, generation) in generations.iter_mut().enumerate() {
            // Acquire: pairs with the roll.
            let slot = self.slots[i].load(Ordering::Acquire);
            if slot == SLOT_RETIRED {
                return;
            }
            if slot != SLOT_EMPTY {
                *generation = slot_gen(slot);
            }
        }
        let stripes = stripes.clamp(2, MAX_STRIPES).next_power_of_two();
        let extra: Box<[CachePadded<Stripe>]> = (0..stripes)
            .map(|_| {
                let stripe = Stripe::new();
                for (word, &generation) in stripe.words.iter().zip(&generations) {
                    // Relaxed: the stripe is not shared yet; `ExtraStripes::set` publishes it.
                    word.store(pack_word(generation, 0), Ordering::Relaxed);
                }
                CachePadded::new(stripe)
            })
            .collect();
        self.extra.set(extra);
    }

    /// Whether the cell has its padded stripes.
    pub(crate) fn is_inflated(&self) -> bool {
        self.extra.get().is_some()
    }

    /// Locks the origin table under the crate's poison policy (`crate::sync`): a panic elsewhere while merging
    /// leaves the table consistent (every update is a few inserts followed by one published sum).
    fn table(&self) -> impl std::ops::DerefMut<Target = OriginTable> + '_ {
        self.origins.lock_clean()
    }

    /// Publishes the prediction of position `i` for the hot path (see [`Cell::predicted`]); called with the
    /// origins mutex held.
    fn publish_prediction(&self, i: usize, generation: u16, as_of_ms: u64, rate_q: u64) {
        let words = self.predict.get_or_init();
        // Relaxed: an estimate (see `predicted`); the origins mutex serialises the writers.
        words[i].store(
            pack_prediction(generation, as_of_ms, rate_q),
            Ordering::Relaxed,
        );
    }

    /// Publishes the remote sum of position `i` for the hot path.
    fn publish_remote(&self, i: usize, generation: u16, sum: u128) {
        let value = u64::try_from(sum).unwrap_or(u64::MAX).min(MAX_CELL_VALUE);
        // Release: pairs with the Acquire in `remote_value`. Only the replication side writes here, serialised
        // by the origins mutex.
        self.remote[i].store(pack_word(generation, value), Ordering::Release);
    }

    /// Merges `value` reported by `origin` for `epoch` (per-origin max) and republishes the remote sum. A new
    /// origin is refused with [`MergeOutcome::OriginLimit`] when the epoch already has `max_origins` remote
    /// origins here.
    #[cfg(test)]
    pub(crate) fn merge_remote(
        &self,
        origin: u64,
        epoch: u64,
        value: u64,
        max_origins: usize,
    ) -> MergeOutcome {
        self.merge_remote_at(origin, epoch, value, max_origins, None)
    }

    /// [`Cell::merge_remote`] of a value taken at `as_of_ms` (Unix ms; a store that predicts the remote sum):
    /// when it raises the origin's value, the origin's rate follows and the prediction of the position is
    /// republished (see [`Cell::predicted`]).
    pub(crate) fn merge_remote_at(
        &self,
        origin: u64,
        epoch: u64,
        value: u64,
        max_origins: usize,
        as_of_ms: Option<u64>,
    ) -> MergeOutcome {
        let mut table = self.table();
        let Some(generation) = self.generation_for(epoch) else {
            return MergeOutcome::Expired;
        };
        let i = ring_index(epoch);
        // The origin's rate in the previous epoch, to start this one's from (read before `position` may reuse
        // a ring position).
        let carried = as_of_ms.and_then(|_| {
            let previous = table.held(epoch.checked_sub(1)?)?;
            let rates = previous.rates.as_deref()?;
            let k = rates.binary_search_by_key(&origin, |r| r.origin).ok()?;
            Some(rates[k].per_ms)
        });
        // The position now holds `epoch`: `position` forgets what the table kept for the epoch it held before.
        let position = table.position(i, epoch);
        let old = lookup(&position.values, origin);
        match old {
            Some(v) if value <= v => {
                // The same value taken later: the origin admitted nothing meanwhile (a predicting node ships
                // its value when it refuses, so its peers stop extrapolating it).
                if let Some(as_of_ms) = as_of_ms
                    && value == v
                    && let Some(prediction) = position.note_idle(origin, as_of_ms)
                {
                    let (as_of, rate_q) = prediction.unwrap_or((0, 0));
                    self.publish_prediction(i, generation, as_of, rate_q);
                }
                return MergeOutcome::Unchanged;
            }
            None if value == 0 => return MergeOutcome::Unchanged,
            None if position.values.len() >= max_origins => return MergeOutcome::OriginLimit,
            _ => {}
        }
        let floor = lookup(position.floors(), origin).unwrap_or(0);
        insert_sorted(&mut position.values, origin, value);
        let before = u128::from(old.unwrap_or(0).saturating_sub(floor));
        let after = u128::from(value.saturating_sub(floor));
        // `sum` includes `before`: no underflow.
        position.sum = position.sum - before + after;
        position.origin_changed(
            origin,
            Held {
                value: old.unwrap_or(0),
                floor,
            },
            Held { value, floor },
        );
        self.publish_remote(i, generation, position.counted());
        if let Some(as_of_ms) = as_of_ms {
            let start_ms = self.window().start_ms(epoch);
            let prediction = position.note_rate(origin, value, as_of_ms, start_ms, carried);
            let (as_of, rate_q) = prediction.unwrap_or((0, 0));
            self.publish_prediction(i, generation, as_of, rate_q);
        }
        MergeOutcome::Raised
    }

    /// Merges `value`, the aggregate `id` for `epoch` (large-cluster mode: a group's members, or everyone outside
    /// the node's own group; a sum of their values or of their floors, as `heard` says), as seen by
    /// `own_replica` (this node): the largest value sum and the largest floor sum per id are kept, and the
    /// remote count the hot path reads becomes the estimate of `aggregate::GroupSums` (never above the exact
    /// remote count net of the floors held here). A group aggregate of this node's own group, or a rest
    /// aggregate of another group, changes nothing.
    pub(crate) fn merge_aggregate(
        &self,
        own_replica: u64,
        id: AggregateId,
        heard: SumOf,
        epoch: u64,
        value: u64,
    ) -> MergeOutcome {
        let mut table = self.table();
        let Some(generation) = self.generation_for(epoch) else {
            return MergeOutcome::Expired;
        };
        let i = ring_index(epoch);
        // The position now holds `epoch` (and the group sums of an older epoch there are gone).
        let position = table.position(i, epoch);
        let Position {
            values,
            floors,
            grouped,
            ..
        } = &mut *position;
        // The per-origin values and floors are read only when this aggregate's group count is new here.
        let outcome =
            grouped
                .get_or_insert_with(Box::default)
                .merge(own_replica, id, heard, value, || {
                    held(values, floors.as_deref().map_or(&[], Vec::as_slice))
                });
        match outcome {
            AggregateOutcome::Raised => {
                self.publish_remote(i, generation, position.counted());
                MergeOutcome::Raised
            }
            AggregateOutcome::Unchanged
            | AggregateOutcome::OwnGroup
            | AggregateOutcome::ForeignRest => MergeOutcome::Unchanged,
        }
    }

    /// What a publisher of group `id` sends for `epoch`, `(values, floors)`: the sum of the values this node
    /// holds for the group's members and the sum of their floors, its own (as `own_replica`: what it ships and
    /// its own floor) included when it is a member. Receivers take the second off the first.
    pub(crate) fn group_total(&self, own_replica: u64, id: AggregateId, epoch: u64) -> (u64, u64) {
        let table = self.table();
        let Some(generation) = self.generation_if_present(epoch) else {
            return (0, 0);
        };
        let position = table.held(epoch);
        let (mut values, mut floors) = position.map_or((0u128, 0u128), |position| {
            position
                .held()
                .filter(|&(origin, _)| id.contains(origin))
                .fold((0, 0), |(v, f), (_, h)| {
                    (v + u128::from(h.value), f + u128::from(h.floor))
                })
        });
        if id.contains(own_replica) {
            let (shipped, own_floor) = self.shipped_in(&table, epoch, generation);
            values += u128::from(shipped);
            floors += u128::from(own_floor);
        }
        (saturate(values), saturate(floors))
    }

    /// What a publisher sends for `epoch` as the rest aggregate `id` of its own group (`id.is_rest()`),
    /// `(values, floors)`: what it holds for every replica outside the group under `id`'s group count (see
    /// `aggregate::GroupSums`), `(0, 0)` before it has heard any aggregate of that count.
    pub(crate) fn rest_total(&self, id: AggregateId, epoch: u64) -> (u64, u64) {
        let table = self.table();
        if self.generation_if_present(epoch).is_none() {
            return (0, 0);
        }
        let (values, floors) = table
            .held(epoch)
            .and_then(|position| position.grouped.as_deref())
            .map_or((0, 0), |sums| sums.rest_total(id.groups()));
        (saturate(values), saturate(floors))
    }

    /// [`Cell::rest_total`] for every epoch still in the ring that holds aggregates, as `(epoch, values,
    /// floors)` with a value sum above 0.
    pub(crate) fn rest_totals(&self, id: AggregateId) -> Vec<(u64, u64, u64)> {
        let table = self.table();
        table
            .positions
            .iter()
            .filter(|p| self.generation_if_present(p.epoch).is_some())
            .filter_map(|p| {
                let (values, floors) = p.grouped.as_deref()?.rest_total(id.groups());
                (values > 0).then(|| (p.epoch, saturate(values), saturate(floors)))
            })
            .collect()
    }

    /// Raises the floor of remote `origin` in `epoch` to `floor`, but never above the value held for it here (so
    /// a floor can take back what an origin counted, never what it counts later). Republishes the remote sum.
    pub(crate) fn merge_floor(&self, origin: u64, epoch: u64, floor: u64) -> FloorOutcome {
        let mut table = self.table();
        let Some(generation) = self.generation_if_present(epoch) else {
            return FloorOutcome::Expired;
        };
        let i = ring_index(epoch);
        let Some(position) = table.held_mut(epoch) else {
            return FloorOutcome::NoValue;
        };
        let Some(value) = lookup(&position.values, origin) else {
            return FloorOutcome::NoValue;
        };
        let floor = floor.min(value);
        let old = lookup(position.floors(), origin).unwrap_or(0);
        if floor <= old {
            return FloorOutcome::Unchanged;
        }
        insert_sorted(
            position.floors.get_or_insert_with(Box::default),
            origin,
            floor,
        );
        // Contribution `value − old` becomes `value − floor`: the sum includes the former, no underflow.
        position.sum -= u128::from(floor - old);
        position.origin_changed(origin, Held { value, floor: old }, Held { value, floor });
        self.publish_remote(i, generation, position.counted());
        FloorOutcome::Raised
    }

    /// Raises this replica's own floor in `epoch` to `floor` (never above what it ships for the epoch): the
    /// difference is moved out of its value words into the position's offset, so the hot path reads the value
    /// net of the floor with no extra work, while what replication ships (words + offset) stays the same and
    /// grows with every later add. A word that saturated before the reset counts again after it.
    pub(crate) fn merge_own_floor(&self, epoch: u64, floor: u64) -> FloorOutcome {
        let mut table = self.table();
        let Some(generation) = self.generation_if_present(epoch) else {
            return FloorOutcome::Expired;
        };
        let i = ring_index(epoch);
        let offset = table.held(epoch).map_or(0, |p| p.own_offset);
        if floor <= offset {
            return FloorOutcome::Unchanged;
        }
        let moved = self.lower_local(i, generation, floor - offset);
        if moved == 0 {
            return FloorOutcome::Unchanged;
        }
        table.position(i, epoch).own_offset = offset.saturating_add(moved);
        FloorOutcome::Raised
    }

    /// Takes up to `amount` out of the value words of position `i` at `generation`; returns what it took.
    fn lower_local(&self, i: usize, generation: u16, amount: u64) -> u64 {
        let mut left = amount;
        let mut lower = |word: &AtomicU64| {
            // Relaxed: the CAS validates the read; the origins mutex (held by the caller and by every reader of
            // the offset) orders this change before the offset that compensates it.
            let mut current = word.load(Ordering::Relaxed);
            while left > 0 && word_gen(current) == generation && word_value(current) > 0 {
                let take = word_value(current).min(left);
                match word.compare_exchange(
                    current,
                    current - take, // the value bits only: `take <= word_value(current)`
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        left -= take;
                        break;
                    }
                    Err(actual) => current = actual,
                }
            }
        };
        lower(&self.inline.words[i]);
        if let Some(extra) = self.extra.get() {
            for stripe in extra.iter() {
                lower(&stripe.words[i]);
            }
        }
        amount - left
    }

    /// Resets `epoch`: every origin's floor becomes its value as this cell holds it (this replica's own: what it
    /// ships). Returns the floors set, `None` standing for this replica itself, or `None` if the epoch is not in
    /// the ring.
    pub(crate) fn reset_epoch(&self, epoch: u64) -> Option<Vec<(Option<u64>, u64)>> {
        let values: Vec<(u64, u64)> = {
            let table = self.table();
            self.generation_if_present(epoch)?;
            table
                .held(epoch)
                .map_or_else(Vec::new, |position| position.values.clone())
        };
        let mut floors = self.reset_own_epoch(epoch)?;
        for (origin, value) in values {
            self.merge_floor(origin, epoch, value);
            floors.push((Some(origin), value));
        }
        Some(floors)
    }

    /// Resets this replica's own value only in `epoch`: its floor becomes what it ships. Returns the floor set
    /// (`None` standing for this replica, as in [`Cell::reset_epoch`]; empty when it ships nothing), or `None`
    /// if the epoch is not in the ring.
    pub(crate) fn reset_own_epoch(&self, epoch: u64) -> Option<Vec<(Option<u64>, u64)>> {
        self.generation_if_present(epoch)?;
        let own = self.shipped(epoch);
        if own == 0 {
            return Some(Vec::new());
        }
        self.merge_own_floor(epoch, own);
        Some(vec![(None, own)])
    }

    /// What this replica ships for `epoch`: its value words plus its own floor's offset (0 if not in the ring).
    pub(crate) fn shipped(&self, epoch: u64) -> u64 {
        let table = self.table();
        let Some(generation) = self.generation_if_present(epoch) else {
            return 0;
        };
        self.shipped_in(&table, epoch, generation).0
    }

    /// `(what this replica ships, its own floor)` for `epoch` at `generation`, read under the origins mutex
    /// (`table`), which orders a reset's move of the words into the offset.
    fn shipped_in(&self, table: &OriginTable, epoch: u64, generation: u16) -> (u64, u64) {
        let offset = table.held(epoch).map_or(0, |p| p.own_offset);
        let words = self.local_except(ring_index(epoch), generation, None);
        (words.saturating_add(offset), offset)
    }

    /// Every `(origin, epoch, value)` merged into this cell for epochs still in the ring.
    pub(crate) fn remote_values(&self) -> Vec<(u64, u64, u64)> {
        let table = self.table();
        table
            .positions
            .iter()
            .filter(|p| self.generation_if_present(p.epoch).is_some())
            .flat_map(|p| {
                p.values
                    .iter()
                    .map(move |&(origin, value)| (origin, p.epoch, value))
            })
            .collect()
    }

    /// Every non-zero floor for epochs still in the ring, as `(origin, epoch, floor)`; `None` is this replica.
    pub(crate) fn floor_values(&self) -> Vec<(Option<u64>, u64, u64)> {
        let table = self.table();
        let mut out = Vec::new();
        for p in table
            .positions
            .iter()
            .filter(|p| self.generation_if_present(p.epoch).is_some())
        {
            out.extend(
                p.floors()
                    .iter()
                    .filter(|&&(_, f)| f > 0)
                    .map(|&(origin, f)| (Some(origin), p.epoch, f)),
            );
            if p.own_offset > 0 {
                out.push((None, p.epoch, p.own_offset));
            }
        }
        out
    }
}

#[cfg(all(test, not(bifrost_loom)))]
mod tests {
    use super::*;

    fn cell() -> Cell {
        Cell::new("k".into(), Window::parse("1s").unwrap())
    }

    #[test]
    fn the_extra_stripes_take_one_word() {
        assert_eq!(std::mem::size_of::<ExtraStripes>(), 8);
    }

    #[test]
    fn extra_stripes_are_set_once_with_their_length() {
        for stripes in [2usize, 4, 64, MAX_STRIPES] {
            let extra = ExtraStripes::new();
            assert!(extra.get().is_none());
            extra.set(
                (0..stripes)
                    .map(|_| CachePadded::new(Stripe::new()))
                    .collect(),
            );
            assert_eq!(extra.get().map(<[_]>::len), Some(stripes));
            // A second set keeps the first stripes (and frees its own).
            extra.set((0..2).map(|_| CachePadded::new(Stripe::new())).collect());
            assert_eq!(extra.get().map(<[_]>::len), Some(stripes));
        }
        let c = cell();
        c.add(1, 3);
        c.inflate(8);
        assert_eq!(c.extra.get().map(<[_]>::len), Some(8));
        c.inflate(64);
        assert_eq!(c.extra.get().map(<[_]>::len), Some(8), "inflated once");
        assert_eq!(c.add(1, 4), AddOutcome::Added);
        assert_eq!(c.local(1), 7);
    }

    #[test]
    fn handles_are_counted_exactly() {
        let c = cell();
        assert!(c.register_handle());
        c.register_clone();
        assert!(!c.try_retire(u64::MAX));
        c.release_handle();
        c.release_handle();
        assert!(c.try_retire(u64::MAX), "no handle left");
    }

    #[test]
    fn origin_lists_stay_sorted_and_grow_by_a_quarter() {
        let mut list = Vec::new();
        for origin in [9u64, 3, 7, 1, 5, 3] {
            insert_sorted(&mut list, origin, origin * 10);
        }
        assert_eq!(list, vec![(1, 10), (3, 30), (5, 50), (7, 70), (9, 90)]);
        assert_eq!(lookup(&list, 7), Some(70));
        assert_eq!(lookup(&list, 4), None);
        insert_sorted(&mut list, 3, 31);
        assert_eq!(lookup(&list, 3), Some(31));
        let mut big = Vec::new();
        for origin in 0..1000u64 {
            insert_sorted(&mut big, origin.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1);
        }
        assert!(big.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(
            big.capacity() <= 1000 + 1000 / 4,
            "capacity {}",
            big.capacity()
        );
    }

    #[test]
    fn a_cell_without_remote_state_keeps_no_position_and_a_roll_reuses_one() {
        let c = cell();
        assert_eq!(c.add(100, 5), AddOutcome::Added);
        assert_eq!(c.local_values(0).count(), 1);
        assert!(c.table().positions.is_empty());
        assert_eq!(c.merge_remote(7, 100, 3, 16), MergeOutcome::Raised);
        assert_eq!(c.merge_remote(8, 100, 4, 16), MergeOutcome::Raised);
        assert_eq!(c.table().positions.len(), 1);
        // Epoch 104 takes ring position 0 from epoch 100: the older epoch's origins are gone.
        assert_eq!(c.add(104, 1), AddOutcome::Added);
        assert_eq!(c.merge_remote(9, 104, 2, 16), MergeOutcome::Raised);
        assert_eq!(c.table().positions.len(), 1);
        assert_eq!(c.remote_values(), vec![(9, 104, 2)]);
        assert_eq!(c.merge_remote(7, 105, 1, 16), MergeOutcome::Raised);
        assert_eq!(c.table().positions.len(), 2);
    }

    #[test]
    fn adds_land_in_their_epoch_and_rolls_reset() {
        let c = cell();
        assert_eq!(c.add(100, 5), AddOutcome::Added);
        assert_eq!(c.add(100, 2), AddOutcome::Added);
        assert_eq!(c.local(100), 7);
        assert_eq!(c.add(101, 1), AddOutcome::Added);
        assert_eq!((c.local(100), c.local(101)), (7, 1));
        // 104 reuses 100's position: 100 is gone, 104 starts at zero.
        assert_eq!(c.add(104, 3), AddOutcome::Added);
        assert_eq!((c.local(100), c.local(104)), (0, 3));
        // A late add for 100 is refused, not counted into 104.
        assert_eq!(c.add(100, 9), AddOutcome::Stale);
        assert_eq!(c.local(104), 3);
    }

    #[test]
    fn take_respects_the_limit_including_remote_and_extra() {
        let c = cell();
        assert_eq!(c.merge_remote(7, 50, 6, usize::MAX), MergeOutcome::Raised);
        assert_eq!(c.take(50, 3, 10, 0), TakeOutcome::Taken { used: 9 });
        assert_eq!(c.take(50, 2, 10, 0), TakeOutcome::Refused { used: 9 });
        assert_eq!(c.take(50, 1, 10, 0), TakeOutcome::Taken { used: 10 });
        assert_eq!(c.take(51, 1, 10, 10), TakeOutcome::Refused { used: 10 });
        assert_eq!(c.local(50), 4);
    }

    #[test]
    fn merge_is_a_per_origin_max() {
        let c = cell();
        assert_eq!(c.merge_remote(1, 10, 5, usize::MAX), MergeOutcome::Raised);
        assert_eq!(
            c.merge_remote(1, 10, 3, usize::MAX),
            MergeOutcome::Unchanged
        );
        assert_eq!(c.merge_remote(2, 10, 4, usize::MAX), MergeOutcome::Raised);
        assert_eq!(
            c.merge_remote(1, 10, 5, usize::MAX),
            MergeOutcome::Unchanged
        );
        assert_eq!(c.remote(10), 9);
        c.add(14, 1); // position reused: epoch 10 expires with its origins
        assert_eq!(c.merge_remote(1, 10, 50, usize::MAX), MergeOutcome::Expired);
        assert_eq!(c.merge_remote(1, 14, 2, usize::MAX), MergeOutcome::Raised);
        assert_eq!(c.remote(14), 2);
        assert_eq!(c.remote_values(), vec![(1, 14, 2)]);
    }

    #[test]
    fn saturates_instead_of_overflowing_into_the_generation() {
        let c = cell();
        assert_eq!(c.add(1, MAX_CELL_VALUE - 1), AddOutcome::Added);
        assert_eq!(c.add(1, 5), AddOutcome::Saturated);
        assert_eq!(c.local(1), MAX_CELL_VALUE);
        assert_eq!(c.add(2, u64::MAX), AddOutcome::Saturated);
        assert_eq!(c.local(2), MAX_CELL_VALUE);
        assert_eq!(
            c.local(1),
            MAX_CELL_VALUE,
            "the neighbour epoch is untouched"
        );
        // Exactly up to the maximum is still a plain add; one more saturates.
        assert_eq!(c.add(3, MAX_CELL_VALUE - 2), AddOutcome::Added);
        assert_eq!(c.add(3, 2), AddOutcome::Added);
        assert_eq!(c.local(3), MAX_CELL_VALUE);
        assert_eq!(c.add(3, 1), AddOutcome::Saturated);
        assert_eq!(c.add(3, 0), AddOutcome::Added);
        assert_eq!(c.local(3), MAX_CELL_VALUE);
    }

    #[test]
    fn inflated_cells_keep_counting_across_rolls() {
        let c = cell();
        c.add(1, 1);
        c.inflate(4);
        c.add(1, 1);
        assert_eq!(c.local(1), 2);
        c.add(5, 10);
        assert_eq!((c.local(1), c.local(5)), (0, 10));
    }

    #[test]
    fn remote_sums_do_not_reappear_when_the_generation_wraps() {
        let c = cell();
        assert_eq!(
            c.merge_remote(9, 0, 1_000, usize::MAX),
            MergeOutcome::Raised
        );
        // Peers stop reporting; local traffic rolls position 0 past a full 16-bit generation cycle.
        for k in 1..=70_000u64 {
            let epoch = k * RING as u64;
            c.add(epoch, 1);
            assert_eq!(c.remote(epoch), 0, "phantom remote sum at roll {k}");
        }
    }

    #[test]
    fn take_never_overflows_or_lowers_a_value() {
        let c = cell();
        assert!(matches!(
            c.take(1, 10, u64::MAX, 0),
            TakeOutcome::Taken { used: 10 }
        ));
        assert!(matches!(
            c.take(1, u64::MAX - 5, u64::MAX, 0),
            TakeOutcome::Refused { used: 10 }
        ));
        assert!(matches!(
            c.take(1, MAX_CELL_VALUE - 10, u64::MAX, 0),
            TakeOutcome::Taken { .. }
        ));
        assert!(matches!(
            c.take(1, 1, u64::MAX, 0),
            TakeOutcome::Refused { .. }
        ));
        assert_eq!(c.local(1), MAX_CELL_VALUE);
    }

    #[test]
    fn epochs_beyond_the_representable_range_are_refused() {
        let c = cell();
        assert_eq!(c.add(EPOCH_MASK, 1), AddOutcome::Stale);
        assert_eq!(c.add(u64::MAX, 1), AddOutcome::Stale);
        assert_eq!(
            c.merge_remote(9, u64::MAX, 1, usize::MAX),
            MergeOutcome::Expired
        );
        assert_eq!(
            c.add(5, 1),
            AddOutcome::Added,
            "nothing was rolled by the refused epochs"
        );
    }

    #[test]
    fn inflate_gives_up_on_a_cell_being_retired_and_a_restored_cell_keeps_counting() {
        let c = cell();
        c.add(1, 1);
        assert!(c.try_retire(100));
        c.inflate(4);
        assert!(
            !c.is_inflated(),
            "no generation to copy from a retired slot"
        );
        // A retire that is undone (a handle appeared) gives the slots back exactly.
        let d = cell();
        d.add(1, 1);
        assert!(d.register_handle());
        assert!(!d.try_retire(100));
        d.inflate(4);
        assert!(d.is_inflated());
        assert_eq!(d.add(1, 1), AddOutcome::Added);
        assert_eq!(d.local(1), 2);
    }

    #[test]
    fn generations_survive_wrap_around() {
        let c = cell();
        // 70,000 rolls of one position: the 16-bit generation wraps and old values never reappear.
        for k in 0..70_000u64 {
            let epoch = k * RING as u64;
            assert_eq!(c.add(epoch, 1), AddOutcome::Added);
            assert_eq!(c.local(epoch), 1, "epoch {epoch}");
        }
    }

    #[test]
    fn a_timed_merge_predicts_the_remote_sum_by_rate_and_age() {
        let w = Window::parse("1s").unwrap();
        let c = Cell::new("k".into(), w);
        let start = w.start_ms(50);
        // Origin 7 at 5 per ms: 500 at +100 ms (its first value: 500 over 100 ms), 550 at +110 ms.
        assert_eq!(c.add(50, 0), AddOutcome::Added);
        assert_eq!(
            c.merge_remote_at(7, 50, 500, 16, Some(start + 100)),
            MergeOutcome::Raised
        );
        assert_eq!(
            c.merge_remote_at(7, 50, 550, 16, Some(start + 110)),
            MergeOutcome::Raised
        );
        // 4 ms (and the half ms the coarse clock hides) after its value was taken: 5 × 4.5, rounded down.
        assert_eq!(c.predicted_at(50, start + 114), 22);
        // Older than the cap, or from the future: nothing.
        assert_eq!(c.predicted_at(50, start + 111 + PREDICT_MAX_AGE_MS), 0);
        assert_eq!(c.predicted_at(50, start + 109), 0);
        // The decision counts the prediction as used: 550 + 22 + 28 = 600 fits, one more does not; without it
        // (a take that does not predict), 50 more fit.
        assert_eq!(
            c.take_at(50, 29, 600, 0, Some(start + 114)),
            TakeOutcome::Refused { used: 572 }
        );
        assert_eq!(
            c.try_take_fast_at(50, 29, 600, Some(start + 114)),
            Some(FastTake::Refused { used: 572 })
        );
        assert_eq!(c.take(50, 50, 600, 0), TakeOutcome::Taken { used: 600 });
        // A second origin, also at 5 per ms, heard at +100: the rate-weighted as-of time is +105 and the
        // summed rate 10 per ms, so at +114, 10 × 9.5.
        let d = Cell::new("k".into(), w);
        assert_eq!(d.add(50, 0), AddOutcome::Added);
        d.merge_remote_at(7, 50, 500, 16, Some(start + 100));
        d.merge_remote_at(7, 50, 550, 16, Some(start + 110));
        d.merge_remote_at(9, 50, 500, 16, Some(start + 100));
        assert_eq!(d.predicted_at(50, start + 114), 95);
        // An origin not heard for longer than the cap before the newest value drops out of the sum.
        d.merge_remote_at(7, 50, 550 + 5 * 40, 16, Some(start + 150));
        assert_eq!(
            d.predicted_at(50, start + 150),
            2,
            "origin 7 alone, 5 × 0.5"
        );
        // A merge without a time (a state transfer, a relay) leaves the prediction as it was; a cell merged
        // only without times predicts nothing.
        d.merge_remote(9, 50, 900, 16);
        assert_eq!(d.predicted_at(50, start + 150), 2);
        let e = Cell::new("k".into(), w);
        assert_eq!(e.add(50, 0), AddOutcome::Added);
        e.merge_remote(7, 50, 500, 16);
        assert_eq!(e.predicted_at(50, start + 150), 0);
        // The same value again, taken later: the origin admitted nothing (it refused), so it adds nothing
        // until its value rises; then its rate resumes (not the rise over the pause).
        let f = Cell::new("k".into(), w);
        assert_eq!(f.add(50, 0), AddOutcome::Added);
        f.merge_remote_at(7, 50, 500, 16, Some(start + 100));
        assert_eq!(f.predicted_at(50, start + 104), 22);
        assert_eq!(
            f.merge_remote_at(7, 50, 500, 16, Some(start + 105)),
            MergeOutcome::Unchanged
        );
        assert_eq!(f.predicted_at(50, start + 109), 0);
        f.merge_remote_at(7, 50, 501, 16, Some(start + 125));
        assert_eq!(f.predicted_at(50, start + 129), 22);
        // The next epoch starts from the origin's rate in this one.
        let next = w.start_ms(51);
        assert_eq!(d.add(51, 0), AddOutcome::Added);
        d.merge_remote_at(7, 51, 10, 16, Some(next + 50));
        assert_eq!(
            d.predicted_at(51, next + 52),
            12,
            "5 per ms carried × 2.5 ms, not 10 / 50 ms"
        );
    }
}
