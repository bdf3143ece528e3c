//! Counter plane (sans-IO): the hot path a gateway calls on every request.
//!
//! A counter is `(key, window)`. Each node counts its own increments locally in a lock-free cell and keeps, per
//! window, the last-known values of every other replica; a decision reads both, with no network call.
//!
//! Guarantees (details in each module):
//! - [`CounterHandle::add`] / [`CounterHandle::try_acquire`]: no lock, no allocation, no syscall, a few atomic
//!   operations; hot keys hit from many threads spread over padded stripes instead of one cache line.
//! - Every value carries its window index (epoch): counts never leak between windows, nothing is ever "reset".
//! - Local values only grow within a window (G-counters), so replication ships absolute values and merges with
//!   a per-origin max: idempotent, commutative, associative.
//! - Memory is bounded by `max_keys` (local keys) plus `max_remote_keys` (keys only merged here), and each cell by
//!   `max_origins_per_key`; expired epochs are reused in place and idle keys can be reclaimed.
//! - A reset sets per-origin floors (grow-only, max-merged, subtracted in reads) instead of lowering any value, so
//!   replication stays a per-origin max and the hot path is unchanged.
//! - In the large-cluster mode a cell also merges aggregates of other groups of replicas ([`AggregateId`]): the
//!   count it reads is never above the exact sum and never below the per-origin sum (see `aggregate`).
//! - Refunds and in-flight limits count what was given back in a second G-counter beside each counter and
//!   decide on the difference, so merges stay exact (see `signed`).
//! - A token bucket ([`Algorithm::TokenBucket`]) reads the ring's per-epoch counts, no state of its own: never more
//!   than one window's refill over an exact bucket on any span, long-run rate at most the limit (see `bucket`).
//! - The bounded-overshoot mode ([`CounterStore::acquire_bounded`]) admits only within quota leased by one
//!   owner per key: the admitted total of a window never passes the limit while the owner is reachable
//!   (see `lease`).
//! - Time is read from a [`CoarseClock`] that the owner ticks; this module never reads the system clock.

mod aggregate;
mod bucket;
mod calls;
mod cell;
mod clock;
mod epoch_cache;
mod error;
mod lease;
mod limiter;
mod lookup_cache;
mod signed;
mod store;
mod window;

pub use aggregate::{AggregateId, MAX_GROUPS, MAX_SCHEMES, SumOf, group_of};
pub use bucket::{BurstError, HORIZON, check_burst, max_burst};
pub use calls::{CallCounts, call_counts};
pub use cell::{AddOutcome, FloorOutcome, LimitSeen, MAX_CELL_VALUE, MergeOutcome, RING};
pub use clock::{Clock, CoarseClock, ManualClock};
pub(crate) use epoch_cache::EpochCache;
pub use error::CounterError;
pub use lease::{
    AT_PREFIX, Claim, GRANT_PREFIX, GRANTED_PREFIX, LEASE_COVER_MARGIN_MS, LEASE_HORIZON_MS,
    LEASE_KEY_ROOM, LEASE_STALENESS_MS, LEASE_TICK_MS, LeaseStats, LeaseTick, PACE_FRACTION,
    RATE_TIME_CONSTANT_MS, SILENT_AFTER_MS, TopUp, WANT_PREFIX, at_key, grant_key, granted_key,
    is_lease_key, owner_of, pace_cover_ms, parse_want_key, top_up, want_key,
};
pub use limiter::{Algorithm, Decision};
pub use signed::{
    IN_FLIGHT_PREFIX, RELEASED_PREFIX, Released, departed_origin, in_flight_key, is_in_flight,
    released_key,
};
pub use store::{
    CounterHandle, CounterStore, DEFAULT_MAX_ORIGINS_PER_KEY, DIRTY_QUEUE_SLOTS, DirtyEntry,
    HotKey, ResetReport, ResetScope, StatsSnapshot, StoreOptions, StoreStats,
};
pub use window::{
    Alignment, MAX_ANCHORED_LEN_MS, MAX_WINDOW_COUNT, Unit, Window, WindowError, format_instant,
    parse_instant,
};

#[cfg(all(test, bifrost_loom))]
mod loom_models;
