//! Token bucket on the per-epoch G-counters: capacity `burst`, refilled continuously at `limit` per window.
//!
//! No state of its own: a decision reads the cell's global (local + remote) count of the current epoch and of
//! the `RING - 1` epochs before it (what the ring keeps), so replication and the wire are those of the windows.
//!
//! # Construction
//!
//! Write `L` for `limit`, `B` for `burst`, `F(t) = e + (t − start(e)) / len(e)` for the window position of time
//! `t` in epoch `e` (refill between `s` and `t` is `L·(F(t) − F(s))`: `L` per window, also for calendar windows
//! of varying length), `A[s, t)` for what was admitted at times `≥ s` before a request at `t`, and
//! `u_k = start(e − k)`. An exact bucket admits `cost` at `t` iff `A[s, t) + cost ≤ B + L·(F(t) − F(s))` for
//! every `s ≤ t`. This one checks that inequality only at
//! - `s = t` (`cost ≤ B`),
//! - `s = u_k` for `k = 0 .. K−1` (the starts of the current epoch and the ones before it in the ring),
//! - `s = u_K` **with no burst**: `A[u_K, t) + cost ≤ L·(F(t) − F(u_K))`,
//!
//! where `K = RING − 1 = 3` ([`HORIZON`]), or less when the ring lost an epoch's count (a position taken by a
//! peer's epoch ahead of this clock): then `K` is the last epoch before the loss. The last check treats the
//! horizon's start as an empty bucket; it is what keeps the long-run rate at `L` per window, since nothing
//! before `u_K` is remembered. Refill is computed in integers, `floor(L·elapsed/len)`, which decides every
//! inequality exactly (its other side is an integer).
//!
//! # Guarantees (single node, or any node once replication converged; proved below, property-tested)
//! - **Never more than one window's refill over the exact bucket, over any span**: for every `s ≤ t`,
//!   `A[s, t] ≤ B + L + L·(F(t) − F(s))`, so every admitted request would have been admitted by an exact
//!   bucket of burst `B + L` fed the same admitted requests, and the long-run rate is at most `L` per window.
//!   The `+ L` is reached: an idle key admits `B + L·(elapsed fraction)` at the end of an epoch.
//! - **Refuses only what an exact bucket that was empty at `u_K` refuses**: a refusal means `cost > B`, or an
//!   exact bucket of burst `B` fed the same admitted requests refuses too, or the horizon's check failed:
//!   `A[u_K, t) + cost > L·(F(t) − F(u_K))` (the last `K` to `K + 1` windows would admit more than their
//!   refill). Only that last case can refuse what an exact bucket allows, by at most `B` (an exact bucket full
//!   at `u_K`); it needs the horizon's traffic to have been within `B` of its refill (a client that kept to
//!   the rate and then bursts), and ends when the burst's epoch leaves the ring.
//! - Burst: `1 ≤ burst ≤ K·limit` ([`max_burst`]; [`crate::counter::Algorithm::token_bucket`] checks it):
//!   a full burst is then available after `K` idle windows. A larger burst could never be spent whole (the
//!   horizon's check caps the last `K + 1` windows at their refill) and is enforced as `K·limit`. A burst
//!   below `limit` is allowed, but the `+ L` of granularity dominates it: choose the window so that one
//!   window's refill is small against the burst.
//! - Under sustained overload the rate is between about `L − cost` and `L` per window: what an epoch leaving
//!   the horizon did not use of its refill is forgotten with it (an exact bucket keeps it as tokens), and that
//!   is less than one request's cost plus the refill between two requests, or they would have been admitted.
//! - Tokens can fall at an epoch boundary without traffic (to what the horizon's check leaves), when the
//!   epoch that had credited them becomes the horizon's start.
//!
//! Proof of the first bound, by induction on the admissions in `[s, t]`. Let the last be at `t_n`, in epoch
//! `e`. If `s ≥ u_K`, `s` lies in an epoch `e − k` with `k ≤ K`, and the check at `u_k` (burst `B`, or none)
//! gave `A[s, t_n) + cost_n ≤ A[u_k, t_n) + cost_n ≤ B + L·(F(t_n) − F(u_k))`, which is
//! `B + L·(F(t_n) − F(s)) + L·(F(s) − F(u_k)) < B + L + L·(F(t) − F(s))`. Otherwise `s < u_K ≤ t_n`: the
//! check at `u_K` bounds `A[u_K, t]` by `L·(F(t_n) − F(u_K))` with no `B`, and the induction bounds
//! `A[s, u_K)` (fewer admissions) by `B + L + L·(F(u_K) − F(s))`; the sum is the bound. The second bound:
//! every check but the horizon's is one of the exact bucket's inequalities, for the same history.
//!
//! # Decisions
//! `limit` is the (effective) burst, `remaining` the tokens left after the request, rounded down, `used`
//! their complement, and `reset_at_ms` the first millisecond at which this bucket is full again if nothing
//! more is admitted (now when it is full). Like the windows: a refused request counts nothing, and concurrent
//! acquires on different stripes may overshoot by one `cost` per other stripe.

use crate::UnixMs;
use std::num::NonZeroU64;

use super::cell::{Cell, RING, TakeOutcome};
use super::limiter::Decision;
use super::window::Window;

/// `K`: how many epochs before the current one a decision reads (all the ring keeps).
pub const HORIZON: u64 = (RING - 1) as u64;

/// The largest burst a token bucket of `limit` per window accepts: `HORIZON × limit`.
pub fn max_burst(limit: u64) -> u64 {
    limit.saturating_mul(HORIZON)
}

/// Why a burst was refused for a token bucket. Nothing was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BurstError {
    /// A burst of 0: the bucket could never admit anything.
    #[error("must be at least 1")]
    Zero,
    /// A burst above [`max_burst`]: it could never be spent whole.
    #[error(
        "{burst} is above {max} ({HORIZON} × limit {limit}: what the last {HORIZON} windows refill)"
    )]
    TooLarge {
        /// The burst asked for.
        burst: u64,
        /// The largest allowed for that limit.
        max: u64,
        /// The limit.
        limit: u64,
    },
}

/// Checks a burst for a token bucket of `limit` per window.
pub fn check_burst(burst: u64, limit: u64) -> Result<NonZeroU64, BurstError> {
    let nonzero = NonZeroU64::new(burst).ok_or(BurstError::Zero)?;
    let max = max_burst(limit);
    if burst > max {
        return Err(BurstError::TooLarge { burst, max, limit });
    }
    Ok(nonzero)
}

/// What one decision reads, with the current epoch's own count left out (the take reads that one itself).
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    /// The effective burst: `min(burst, max_burst(limit))`.
    pub(crate) burst: u64,
    /// Refill per window.
    pub(crate) limit: u64,
    /// Global counts of the epochs before the current one, newest first (see [`Cell::prior_counts`]).
    pub(crate) prior: [Option<u64>; RING - 1],
    /// Milliseconds since the start of the current epoch.
    pub(crate) elapsed_ms: u64,
    /// Length of the current epoch in milliseconds.
    pub(crate) len_ms: u64,
    /// Units given back in the current epoch (refunds): added to every check.
    pub(crate) credit: u64,
}

impl View {
    /// The refill since `u_k`: `k·L + floor(L·elapsed/len)`.
    fn refill(&self, k: usize) -> i128 {
        let within =
            u128::from(self.limit) * u128::from(self.elapsed_ms) / u128::from(self.len_ms.max(1));
        (k as i128) * i128::from(self.limit) + within as i128
    }

    /// The largest value of (current epoch's count before the request + cost) every epoch-start check
    /// allows: the minimum over `k` of `credit_k + refill(k) − Σ prior[..k]` plus the refunds.
    pub(crate) fn allowance(&self) -> i128 {
        let mut before: i128 = 0; // Σ of the prior epochs' counts from u_k to the current epoch
        let mut best = i128::from(self.burst) + self.refill(0);
        for k in 1..=RING - 1 {
            match self.prior[k - 1] {
                Some(count) => before += i128::from(count),
                // The ring lost epoch e − k: the horizon ends at u_{k−1}, with no burst.
                None => return best.min(self.refill(k - 1) - (before)) + i128::from(self.credit),
            }
            let burst = if k == RING - 1 {
                0
            } else {
                i128::from(self.burst)
            };
            best = best.min(burst + self.refill(k) - before);
        }
        best + i128::from(self.credit)
    }
}

fn clamp(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// The view of `cell` at `now_ms` in `epoch`.
fn view(cell: &Cell, epoch: u64, now_ms: u64, burst: NonZeroU64, limit: u64, credit: u64) -> View {
    let window = cell.window();
    let start = window.start_ms(epoch);
    View {
        burst: burst.get().min(max_burst(limit)),
        limit,
        prior: cell.prior_counts(epoch),
        elapsed_ms: now_ms.saturating_sub(start),
        len_ms: window.end_ms(epoch).saturating_sub(start),
        credit,
    }
}

/// Decides and, when allowed and `cost > 0`, counts `cost` in the current epoch (`credit`: units given back
/// in it). The second value says whether something was counted.
pub(crate) fn acquire(
    cell: &Cell,
    burst: NonZeroU64,
    now: UnixMs,
    limit: u64,
    cost: u64,
    credit: u64,
) -> (Decision, bool) {
    let epoch = cell.epoch_at(now);
    let now_ms = now.get();
    let v = view(cell, epoch, now_ms, burst, limit, credit);
    if cost > v.burst {
        return (peek_view(cell, &v, epoch, now_ms, cost), false);
    }
    let allowance = v.allowance();
    // `extra + count + cost ≤ limit` is `count + cost ≤ allowance` whatever the sign of the allowance.
    let (take_limit, extra) = (clamp(allowance), clamp(-allowance));
    let tokens = |used_take: u64| {
        clamp((i128::from(take_limit) - i128::from(used_take)).min(i128::from(v.burst)))
    };
    match cell.take(epoch, cost, take_limit, extra) {
        TakeOutcome::Taken { used } => {
            let left = tokens(used);
            let reset = full_at(cell.window(), epoch, now_ms, &v, used - extra);
            (decision(true, &v, left, reset), cost > 0)
        }
        TakeOutcome::Refused { used } => {
            let left = tokens(used);
            let count = used.saturating_sub(extra);
            let reset = full_at(cell.window(), epoch, now_ms, &v, count);
            let mut refused = decision(false, &v, left, reset);
            refused.retry_at_ms =
                tokens_at(cell.window(), epoch, now_ms, &v, allowance, count, cost).min(reset);
            (refused, false)
        }
        // As the windows: the clock is a whole ring behind the cell's newest epoch.
        TakeOutcome::Stale => (decision(false, &v, 0, cell.end_ms(epoch)), false),
    }
}

/// Decides without counting anything.
pub(crate) fn peek(
    cell: &Cell,
    burst: NonZeroU64,
    now: UnixMs,
    limit: u64,
    cost: u64,
    credit: u64,
) -> Decision {
    let epoch = cell.epoch_at(now);
    let now_ms = now.get();
    let v = view(cell, epoch, now_ms, burst, limit, credit);
    peek_view(cell, &v, epoch, now_ms, cost)
}

fn peek_view(cell: &Cell, v: &View, epoch: u64, now_ms: u64, cost: u64) -> Decision {
    let count = cell.local(epoch).saturating_add(cell.remote(epoch));
    let allowance = v.allowance();
    let tokens = (allowance - i128::from(count)).min(i128::from(v.burst));
    let allowed = cost <= v.burst && i128::from(cost) <= tokens;
    let reset = full_at(cell.window(), epoch, now_ms, v, count);
    let mut peeked = decision(allowed, v, clamp(tokens), reset);
    if !allowed {
        peeked.retry_at_ms =
            tokens_at(cell.window(), epoch, now_ms, v, allowance, count, cost).min(reset);
    }
    peeked
}

/// The first millisecond `≥ now_ms` of the current epoch at which `cost` tokens are there if nothing more is
/// admitted (the current epoch's global count `count`), or the epoch's end when not before it: at the boundary
/// the horizon moves and the tokens are read anew. Within an epoch every check of [`View::allowance`] grows by
/// the same refill `floor(L·elapsed/len)`, so the tokens reach `cost` once that refill covers what is missing.
/// A cost above the burst is never admitted: the epoch's end.
/// `allowance` is `v.allowance()`, which the caller computed already.
fn tokens_at(
    window: Window,
    epoch: u64,
    now_ms: u64,
    v: &View,
    allowance: i128,
    count: u64,
    cost: u64,
) -> u64 {
    let end = window.end_ms(epoch).max(now_ms);
    if cost > v.burst || v.limit == 0 {
        return end;
    }
    let within_now = v.refill(0);
    // allowance(t) − count = (allowance(now) − within(now)) + within(t) − count ≥ cost
    let needed = i128::from(cost) + i128::from(count) - (allowance - within_now);
    if needed <= within_now {
        return now_ms;
    }
    let Ok(needed) = u128::try_from(needed) else {
        return now_ms;
    };
    // floor(L·e/len) ≥ needed  ⟺  e ≥ ceil(needed·len / L)
    let elapsed = (needed * u128::from(v.len_ms)).div_ceil(u128::from(v.limit));
    let start = window.start_ms(epoch);
    match u64::try_from(elapsed) {
        Ok(e) if start.saturating_add(e) < end => start.saturating_add(e).max(now_ms),
        _ => end,
    }
}

fn decision(allowed: bool, v: &View, tokens: u64, reset_at_ms: u64) -> Decision {
    let tokens = tokens.min(v.burst);
    Decision::new(allowed, v.burst - tokens, v.burst, reset_at_ms)
}

/// The first millisecond `≥ now_ms` from which the bucket reads full (`burst` tokens) if nothing more is
/// admitted, given the current epoch's global count `count`. Each epoch start `j` that still has admissions
/// after it keeps the bucket below full until its refill covers them (with the burst, while it is not the
/// horizon's start) and, once it is the horizon's start, until its refill covers them plus the burst (or it
/// leaves the ring); the answer is the latest of these times.
fn full_at(window: Window, epoch: u64, now_ms: u64, v: &View, count: u64) -> u64 {
    if v.limit == 0 {
        return window.end_ms(epoch).max(now_ms); // nothing ever refills
    }
    // Where the ring lost an epoch's count, the epoch after it is the horizon's start already now.
    let lost = v.prior.iter().position(Option::is_none);
    let mut since: u128 = u128::from(count); // admitted from u_k on
    let mut latest = now_ms;
    for k in 0..lost.map_or(RING, |l| l + 1) {
        if k > 0 {
            since += u128::from(v.prior[k - 1].unwrap_or(0));
        }
        let Some(j) = epoch.checked_sub(k as u64) else {
            break;
        };
        let owed = since.saturating_sub(u128::from(v.credit));
        if owed == 0 {
            continue;
        }
        // The epoch in which u_k = start(j) is (or becomes) the horizon's start, and the windows from j to it.
        let windows = if lost == Some(k) { k as u64 } else { HORIZON };
        let with_burst = owed + u128::from(v.burst);
        let until = if with_burst > u128::from(windows) * u128::from(v.limit) {
            // Still short when j is the horizon's start: full once its refill covers the burst too, or when j
            // leaves the ring.
            position_ms(window, j, with_burst, v.limit).min(window.start_ms(j + windows + 1))
        } else {
            position_ms(window, j, owed, v.limit)
        };
        latest = latest.max(until);
    }
    latest
}

/// The first millisecond `t` with `L·(F(t) − j) ≥ units`, i.e. `F(t) ≥ j + units/L`.
fn position_ms(window: Window, j: u64, units: u128, limit: u64) -> u64 {
    let limit = u128::from(limit);
    let whole = u64::try_from(units / limit).unwrap_or(u64::MAX);
    let rest = units % limit;
    let e = j.saturating_add(whole);
    let start = window.start_ms(e);
    let len = u128::from(window.end_ms(e).saturating_sub(start));
    // ceil(rest·len / L) ms into epoch e.
    let into = (rest * len).div_ceil(limit);
    start.saturating_add(u64::try_from(into).unwrap_or(u64::MAX))
}

#[cfg(all(test, not(bifrost_loom)))]
mod tests;
