//! The token bucket against an exact reference bucket simulated here (single node, exact rationals scaled by
//! the window length), and its documented corner cases.

use std::num::NonZeroU64;

use proptest::prelude::*;

use super::*;
use crate::UnixMs;
use crate::counter::cell::MergeOutcome;

/// Window length of the tests, ms (a fixed-length window: refill is `limit · ms / W`).
const W: u64 = 10_000;
/// A window boundary.
const T0: u64 = 1_700_000_000_000;

fn cell() -> Cell {
    Cell::new("k".into(), Window::parse("10s").expect("a valid window"))
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("non-zero")
}

/// One acquire at `t`.
fn take(c: &Cell, burst: u64, limit: u64, t: u64, cost: u64) -> Decision {
    acquire(c, nz(burst), UnixMs::new(t), limit, cost, 0).0
}

/// What an exact bucket of burst `b` allows at `t` after the admitted `(time, cost)` list (all before `t`),
/// scaled by `W`: `min over s of (b·W + L·(t − s) − A[s, t)·W)`, the minimum over `s = t` and every admission
/// time at or after `from`, plus, when `empty_at` is given, `L·(t − empty_at) − A[empty_at, t)·W` (a bucket
/// that was empty at `empty_at`, which is also where its history starts).
fn exact_tokens_w(
    admitted: &[(u64, u64)],
    b: u64,
    limit: u64,
    t: u64,
    empty_at: Option<u64>,
) -> i128 {
    let from = empty_at.unwrap_or(0);
    let w = i128::from(W);
    let mut best = i128::from(b) * w;
    let since = |s: u64| -> i128 {
        admitted
            .iter()
            .filter(|&&(at, _)| at >= s)
            .map(|&(_, c)| i128::from(c))
            .sum()
    };
    for &(s, _) in admitted.iter().filter(|&&(at, _)| at > from) {
        best = best.min(i128::from(b) * w + i128::from(limit) * i128::from(t - s) - since(s) * w);
    }
    if let Some(u) = empty_at {
        best = best.min(i128::from(limit) * i128::from(t - u) - since(u) * w);
    }
    best
}

/// The start of the horizon (`u_K`) for a request at `t`.
fn horizon_start(t: u64) -> u64 {
    (t / W - HORIZON) * W
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Both sides of the bound, on random arrivals and costs: every span admits at most `B + L` over an exact
    /// bucket; every refusal is one an exact bucket of the same history, empty at the horizon's start, makes
    /// too; `remaining` is the largest cost that passes now; `reset_at_ms` is when the bucket reads full and
    /// stays full.
    #[test]
    fn within_one_window_of_refill_of_an_exact_bucket(
        limit in 1u64..=20,
        burst_share in 1u64..=60,
        requests in prop::collection::vec((0u64..=7_000, 0u64..=25), 1..160),
    ) {
        let burst = (burst_share * limit).div_ceil(20).clamp(1, max_burst(limit));
        let c = cell();
        let mut t = T0 + HORIZON * W; // the ring's epochs before it are empty, as after a long idle time
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap, cost) in requests {
            t += gap;
            let d = take(&c, burst, limit, t, cost);
            prop_assert_eq!(d.limit, burst);
            if d.allowed {
                if cost > 0 {
                    admitted.push((t, cost));
                }
                // Upper bound: over every span [s, t], A ≤ B + L + L·(t − s)/W.
                for &(s, _) in &admitted {
                    let a: u64 = admitted.iter().filter(|&&(at, _)| at >= s).map(|&(_, c)| c).sum();
                    prop_assert!(
                        u128::from(a) * u128::from(W)
                            <= u128::from(burst + limit) * u128::from(W) + u128::from(limit) * u128::from(t - s),
                        "admitted {} in [{}, {}] (burst {}, limit {})", a, s - T0, t - T0, burst, limit
                    );
                }
            } else if cost <= burst {
                // Lower side: a bucket empty at u_K with the same history refuses too.
                let tokens = exact_tokens_w(&admitted, burst, limit, t, Some(horizon_start(t)));
                prop_assert!(
                    i128::from(cost) * i128::from(W) > tokens,
                    "refused {} at {} with {}/W tokens in the exact bucket", cost, t - T0, tokens
                );
            }
            // `remaining` is what passes now (0 may also be a debt, when the horizon's check is short).
            if d.remaining > 0 {
                let r = peek(&c, nz(burst), UnixMs::new(t), limit, d.remaining, 0);
                prop_assert!(r.allowed, "remaining {} refused", d.remaining);
            }
            if d.remaining < burst {
                prop_assert!(!peek(&c, nz(burst), UnixMs::new(t), limit, d.remaining + 1, 0).allowed);
            }
        }
        // Full at reset_at_ms, not a millisecond before, and full from then on.
        let reset = peek(&c, nz(burst), UnixMs::new(t), limit, 0, 0).reset_at_ms;
        prop_assert!(reset >= t);
        if reset > t {
            prop_assert!(peek(&c, nz(burst), UnixMs::new(reset - 1), limit, 0, 0).remaining < burst);
        }
        for later in (0..12).map(|k| reset + k * W / 3) {
            let d = peek(&c, nz(burst), UnixMs::new(later), limit, 0, 0);
            prop_assert_eq!(d.remaining, burst, "not full at {} (reset {})", later - T0, reset - T0);
            prop_assert_eq!(d.reset_at_ms, later);
        }
    }
}

#[test]
fn an_idle_bucket_admits_its_burst_plus_the_epochs_refill_at_most() {
    // The `+ L` of the bound is reached: at the end of an epoch, an idle key admits burst + the refill since
    // the epoch's start in one instant (an exact bucket: the burst).
    let c = cell();
    let t = T0 + 5 * W + W - 1;
    let admitted = (0..40).filter(|_| take(&c, 10, 10, t, 1).allowed).count();
    assert_eq!(admitted, 10 + 9);
    assert!(!take(&c, 10, 10, t, 1).allowed);
    // One millisecond later the epoch's check refills the tenth unit (19 + 1 = burst + one window).
    assert!(take(&c, 10, 10, t + 1, 1).allowed);
    assert!(!take(&c, 10, 10, t + 1, 1).allowed);
}

#[test]
fn sustained_overload_is_held_to_the_rate() {
    // 4 units offered per W/10 ms for 60 windows: 40 per window against a limit of 10.
    let (limit, burst) = (10, 30);
    let c = cell();
    let start = T0 + 5 * W;
    let mut admitted = 0;
    for i in 0..600 {
        let d = take(&c, burst, limit, start + i * W / 10, 4);
        admitted += u64::from(d.allowed) * 4;
    }
    // At most burst + one window's refill over the rate (a bucket assumed full at the horizon's start would
    // give +burst per horizon: 10 + 30/3 per window), at least the rate less one cost per window.
    assert!(admitted <= burst + limit + 60 * limit, "{admitted}");
    assert!(admitted >= 60 * (limit - 4), "{admitted}");
}

#[test]
fn a_full_burst_is_available_after_horizon_idle_windows() {
    let (limit, burst) = (10, 30);
    let c = cell();
    let t = T0 + 10 * W;
    assert!(
        take(&c, burst, limit, t, 30).allowed,
        "full after a long idle time"
    );
    assert!(
        !take(&c, burst, limit, t + 3 * W, 30).allowed,
        "horizon still holds it"
    );
    // After the burst's epoch left the ring and K more windows were idle, the whole burst again.
    assert!(take(&c, burst, limit, t + 4 * W, 30).allowed);
}

#[test]
fn a_cost_above_the_burst_is_refused_and_counts_nothing() {
    let c = cell();
    let t = T0 + 10 * W;
    let d = take(&c, 5, 10, t, 6);
    assert!(!d.allowed);
    assert_eq!((d.limit, d.remaining, d.used), (5, 5, 0));
    assert_eq!(c.local(c.epoch_at(UnixMs::new(t))), 0);
}

#[test]
fn a_burst_above_the_horizon_is_enforced_as_its_maximum() {
    let c = cell();
    let t = T0 + 10 * W;
    let d = take(&c, 1_000, 10, t, 1);
    assert_eq!(d.limit, 30);
    assert_eq!(d.remaining, 29);
}

#[test]
fn the_allowance_is_the_minimum_of_the_checks() {
    let mut v = View {
        burst: 20,
        limit: 10,
        prior: [Some(5), Some(7), Some(9)],
        elapsed_ms: W / 2,
        len_ms: W,
        credit: 0,
    };
    // u_0: 20 + 5; u_1: 20 + 15 − 5; u_2: 20 + 25 − 12; u_3 (no burst): 35 − 21.
    assert_eq!(v.allowance(), 14);
    v.credit = 3;
    assert_eq!(v.allowance(), 17, "refunds count in every check");
    // The ring lost e − 3: the horizon ends at u_2, with no burst: 25 − 12.
    v.credit = 0;
    v.prior[2] = None;
    assert_eq!(v.allowance(), 13);
    v.prior = [None, Some(1), Some(1)];
    assert_eq!(v.allowance(), 5, "only u_0, with no burst");
}

#[test]
fn a_peer_ahead_that_takes_the_oldest_position_shortens_the_horizon() {
    let c = cell();
    let t = T0 + 10 * W; // epoch e
    let e = c.epoch_at(UnixMs::new(t));
    assert_eq!(
        c.merge_remote(9, e - 3, 8, usize::MAX),
        MergeOutcome::Raised
    );
    assert_eq!(c.prior_counts(e), [Some(0), Some(0), Some(8)]);
    assert_eq!(
        c.merge_remote(9, e + 1, 1, usize::MAX),
        MergeOutcome::Raised
    );
    assert_eq!(c.prior_counts(e), [Some(0), Some(0), None]);
}

#[test]
fn bursts_are_checked() {
    assert_eq!(check_burst(0, 10), Err(BurstError::Zero));
    assert_eq!(
        check_burst(31, 10),
        Err(BurstError::TooLarge {
            burst: 31,
            max: 30,
            limit: 10
        })
    );
    assert_eq!(check_burst(30, 10), Ok(nz(30)));
    assert_eq!(
        check_burst(1, 0).unwrap_err(),
        BurstError::TooLarge {
            burst: 1,
            max: 0,
            limit: 0
        }
    );
    assert_eq!(max_burst(u64::MAX), u64::MAX);
}

#[test]
fn the_status_page_sees_the_burst() {
    let c = cell();
    c.note_limit(10, crate::counter::Algorithm::TokenBucket { burst: nz(25) });
    let seen = c.limit_seen().expect("an acquire was noted");
    assert_eq!(seen.limit, 10);
    assert_eq!(
        seen.algorithm,
        crate::counter::Algorithm::TokenBucket { burst: nz(25) }
    );
    c.note_limit(7, crate::counter::Algorithm::SlidingWindow);
    assert_eq!(
        c.limit_seen().map(|s| (s.limit, s.algorithm)),
        Some((7, crate::counter::Algorithm::SlidingWindow))
    );
}

#[test]
fn a_refused_request_may_retry_once_its_tokens_have_refilled_not_when_the_bucket_is_full() {
    let c = cell();
    // Burst 20, refill 10 per 10 s window: one token a second.
    let t = T0;
    assert!(take(&c, 20, 10, t, 20).allowed, "the whole burst");
    let refused = take(&c, 20, 10, t + 100, 1);
    assert!(!refused.allowed);
    assert!(
        refused.retry_at_ms < refused.reset_at_ms,
        "retry {} vs full {}",
        refused.retry_at_ms,
        refused.reset_at_ms
    );
    assert!(
        refused.retry_at_ms <= t + 100 + 1_000,
        "one token within a second"
    );
    assert!(!peek_at(&c, nz(20), 10, refused.retry_at_ms - 1, 1).allowed);
    assert!(peek_at(&c, nz(20), 10, refused.retry_at_ms, 1).allowed);
    // A cost above the burst is never admitted: the retry is the window's end.
    let never = take(&c, 20, 10, t + 200, 21);
    assert_eq!(never.retry_at_ms, T0 + W);
}

/// A peek at `t` with no refunds.
fn peek_at(c: &Cell, burst: NonZeroU64, limit: u64, t: u64, cost: u64) -> Decision {
    peek(c, burst, UnixMs::new(t), limit, cost, 0)
}

proptest! {
    /// A refused request's `retry_at_ms`, when inside its epoch, is the first millisecond it is admitted.
    #[test]
    fn retry_at_is_the_first_millisecond_a_refused_request_is_admitted(
        steps in proptest::collection::vec((0u64..3_000, 1u64..8), 1..40),
        burst in 1u64..30,
        limit in 1u64..20,
    ) {
        let burst = burst.min(max_burst(limit));
        let c = cell();
        let mut t = T0;
        for (dt, cost) in steps {
            t += dt;
            let d = take(&c, burst, limit, t, cost);
            let epoch_end = c.window().end_ms(c.epoch_at(UnixMs::new(t)));
            if d.allowed || cost > burst || d.retry_at_ms >= epoch_end {
                continue;
            }
            prop_assert!(d.retry_at_ms >= t);
            prop_assert!(d.retry_at_ms <= d.reset_at_ms);
            prop_assert!(peek_at(&c, nz(burst), limit, d.retry_at_ms, cost).allowed,
                "not admitted at its retry {} (now {t})", d.retry_at_ms);
            if d.retry_at_ms > t {
                prop_assert!(!peek_at(&c, nz(burst), limit, d.retry_at_ms - 1, cost).allowed,
                    "admitted before its retry {} (now {t})", d.retry_at_ms);
            }
        }
    }
}
