//! Limiter decisions over a cell: fixed window, sliding window and token bucket.
//!
//! Guarantees:
//! - A decision reads this replica's count plus the last-known count of every other replica; no network call.
//! - Fixed window: `used` is the count of the current window. A request is allowed when `used + cost <= limit`.
//! - Sliding window (the estimate Cloudflare uses at scale): `used = previous × (unexpired fraction of the
//!   previous window) + current`, rounded down, computed in integers. A request is allowed when
//!   `used + cost <= limit`.
//! - Token bucket (capacity `burst`, refilled at `limit` per window): checked against the per-epoch counts of
//!   the ring; never more than one window's refill over an exact bucket on any span, long-run rate at most
//!   `limit` per window (construction, bounds and proof in `bucket`). Its decisions report the burst as
//!   `limit` and the tokens left as `remaining`.
//! - Prediction (opt-in, `StoreOptions::predict_remote`, fixed and sliding windows): the current epoch's
//!   remote count is read as the last-known remote count plus the remote origins' recent rate × the age of
//!   their values (at most `cell::PREDICT_MAX_AGE_MS`), so a node stops near the limit without waiting for the
//!   replication lag to show it the others' admissions. The extrapolation is counted as used, never counted
//!   into anything: it only makes decisions stricter, so every bound above still holds; what it adds is
//!   refusals while the true count is below the limit when it overestimates (measured in
//!   `benches/accuracy.rs`). Stores that do not predict publish no extrapolation and decide as before.
//! - A refused request counts nothing (values only ever grow, so nothing is taken back either).
//! - Locally, concurrent acquires on one value word are exact; on different stripes of a contended cell they
//!   may overshoot by at most one `cost` per other stripe.

use crate::UnixMs;
use std::num::NonZeroU64;

use super::bucket::{self, BurstError};
use super::cell::{Cell, TakeOutcome};

/// Which algorithm a limit uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Count per window; everything resets at the boundary.
    #[default]
    FixedWindow,
    /// The previous window, weighted by its unexpired fraction, plus the current one.
    SlidingWindow,
    /// A token bucket of capacity `burst`, refilled continuously at `limit` per window (see
    /// [`Algorithm::token_bucket`] for the constraints on `burst`; a larger one is enforced as
    /// [`max_burst`](crate::counter::max_burst)`(limit)`).
    TokenBucket {
        /// The capacity: the most one instant can admit.
        burst: NonZeroU64,
    },
}

impl Algorithm {
    /// A token bucket of `burst` for a limit of `limit` per window: `1 ≤ burst ≤ 3 × limit`
    /// ([`max_burst`](crate::counter::max_burst)).
    pub fn token_bucket(burst: u64, limit: u64) -> Result<Algorithm, BurstError> {
        bucket::check_burst(burst, limit).map(|burst| Algorithm::TokenBucket { burst })
    }

    /// The name the APIs and limits files use: `fixed_window`, `sliding_window` or `token_bucket`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket { .. } => "token_bucket",
        }
    }
}

/// The answer to "may this request go through?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed (and, for an acquire, counted).
    pub allowed: bool,
    /// Usage the decision saw: including the request's cost when allowed, excluding it when refused.
    pub used: u64,
    /// The limit the decision was made against.
    pub limit: u64,
    /// `limit - used`, saturating at 0.
    pub remaining: u64,
    /// Unix milliseconds at which the current window ends (for a sliding window, the estimate keeps decaying
    /// before that).
    pub reset_at_ms: u64,
    /// Unix milliseconds from which the request would be admitted at the earliest if nothing else were
    /// (`Retry-After`): `reset_at_ms` for the windows, and for a refused token-bucket request when its `cost`
    /// in tokens has refilled, within the current window (its end when not before), not when the bucket is
    /// full again. Equal to `reset_at_ms` when allowed.
    pub retry_at_ms: u64,
}

impl Decision {
    pub(crate) fn new(allowed: bool, used: u64, limit: u64, reset_at_ms: u64) -> Decision {
        Decision {
            allowed,
            used,
            limit,
            remaining: limit.saturating_sub(used),
            reset_at_ms,
            retry_at_ms: reset_at_ms,
        }
    }
}

/// The previous epoch's global count weighted by the unexpired fraction of the previous window.
#[inline]
fn sliding_weight(cell: &Cell, epoch: u64, now_ms: u64) -> u64 {
    let Some(previous) = epoch.checked_sub(1) else {
        return 0;
    };
    let prev_count = cell.local(previous).saturating_add(cell.remote(previous));
    if prev_count == 0 {
        return 0;
    }
    let window = cell.window();
    let start = window.start_ms(epoch);
    let end = window.end_ms(epoch);
    let length = end.saturating_sub(start).max(1);
    let unexpired = end.saturating_sub(now_ms).min(length);
    (u128::from(prev_count) * u128::from(unexpired) / u128::from(length)) as u64
}

/// Decides and, when allowed and `cost > 0`, counts `cost` in the current window.
#[inline]
pub(crate) fn acquire(
    cell: &Cell,
    algorithm: Algorithm,
    now: UnixMs,
    limit: u64,
    cost: u64,
) -> (Decision, bool) {
    let epoch = cell.epoch_at(now);
    let now_ms = now.get();
    let extra = match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => sliding_weight(cell, epoch, now_ms),
        Algorithm::TokenBucket { burst } => {
            return bucket::acquire(cell, burst, now, limit, cost, 0);
        }
    };
    let reset_at = cell.end_ms(epoch);
    // The remote sum's extrapolation counts as used when the store predicts it (`StoreOptions::predict_remote`).
    match cell.take_at(epoch, cost, limit, extra, Some(now_ms)) {
        TakeOutcome::Taken { used } => (Decision::new(true, used, limit, reset_at), cost > 0),
        TakeOutcome::Refused { used } => (Decision::new(false, used, limit, reset_at), false),
        // The clock is behind the cell's newest epoch by a whole ring: refuse rather than count into nothing.
        TakeOutcome::Stale => (Decision::new(false, limit, limit, reset_at), false),
    }
}

/// Decides without counting anything.
pub(crate) fn peek(
    cell: &Cell,
    algorithm: Algorithm,
    now: UnixMs,
    limit: u64,
    cost: u64,
) -> Decision {
    let epoch = cell.epoch_at(now);
    let now_ms = now.get();
    let extra = match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => sliding_weight(cell, epoch, now_ms),
        Algorithm::TokenBucket { burst } => {
            return bucket::peek(cell, burst, now, limit, cost, 0);
        }
    };
    let used = extra
        .saturating_add(cell.local(epoch))
        .saturating_add(cell.remote(epoch))
        .saturating_add(cell.predicted_at(epoch, now_ms));
    Decision::new(
        used.saturating_add(cost) <= limit,
        used,
        limit,
        cell.end_ms(epoch),
    )
}
