//! The epoch of "now" for one window, cheaply: the last epoch computed is kept and checked against the clock's
//! time with one multiply, so the hot path divides only when a window boundary has passed.
//!
//! Guarantees: [`EpochCache::epoch_at`] returns exactly `window.epoch_at(unix_ms)` for every input, whatever
//! other threads store meanwhile (the cached value is only a guess that the check verifies). Fixed and
//! anchored windows take the cached path: an anchored window's epoch is that of the time shifted by its
//! [`Window::epoch_offset_ms`] (0 for a fixed window, so its cost is one add of zero). Calendar windows (days,
//! weeks, months, years by the calendar) have epochs of different lengths and are computed in full.

use crate::UnixMs;
use crate::sync::{AtomicU64, Ordering};

use super::window::Window;

/// One window's epoch cache. Shared between threads by reference.
#[derive(Debug)]
pub(crate) struct EpochCache {
    window: Window,
    /// The window's length for a fixed or anchored window, 0 for a calendar one.
    fixed_len_ms: u64,
    /// The epoch of the last fixed-window computation (0 at first).
    hint: AtomicU64,
}

impl EpochCache {
    pub(crate) fn new(window: Window) -> EpochCache {
        EpochCache {
            window,
            fixed_len_ms: window.fixed_len_ms().unwrap_or(0),
            hint: AtomicU64::new(0),
        }
    }

    /// The window.
    #[inline(always)]
    pub(crate) fn window(&self) -> Window {
        self.window
    }

    /// The epoch containing `unix_ms`: `window.epoch_at(unix_ms)`.
    #[inline(always)]
    pub(crate) fn epoch_at(&self, unix_ms: UnixMs) -> u64 {
        match self.cached_epoch_at(unix_ms) {
            Some(epoch) => epoch,
            None => self.recompute(unix_ms),
        }
    }

    /// The epoch containing `unix_ms` if it is the cached one (a fixed window whose boundary has not passed
    /// since): the check of `epoch_at` alone, with no call, for leaf fast paths. `None` means "use `epoch_at`".
    #[inline(always)]
    pub(crate) fn cached_epoch_at(&self, unix_ms: UnixMs) -> Option<u64> {
        let len = self.fixed_len_ms;
        let t = self.shifted(unix_ms.get());
        // Relaxed: a guess, verified here against `t`. Every value it ever holds is some `t / len`, so
        // `hint * len <= t` cannot overflow, and the check accepts it only if it is exactly `t / len`. A
        // calendar window (len 0) never passes it (`x < 0` is false).
        let hint = self.hint.load(Ordering::Relaxed);
        (t.wrapping_sub(hint.wrapping_mul(len)) < len).then_some(hint)
    }

    /// `unix_ms` plus the window's epoch offset (0 unless anchored), wrapping as `Window::epoch_at` does (only
    /// past `u64::MAX` minus one window, where no guarantee holds).
    #[inline(always)]
    fn shifted(&self, unix_ms: u64) -> u64 {
        unix_ms.wrapping_add(self.window.epoch_offset_ms())
    }

    #[cold]
    #[inline(never)]
    fn recompute(&self, unix_ms: UnixMs) -> u64 {
        let len = self.fixed_len_ms;
        if len == 0 {
            return self.window.epoch_at(unix_ms);
        }
        let epoch = self.shifted(unix_ms.get()) / len;
        // Relaxed: see `cached_epoch_at`.
        self.hint.store(epoch, Ordering::Relaxed);
        epoch
    }

    /// `end_ms` for an epoch that [`EpochCache::cached_epoch_at`] returned (so the window is fixed), with no
    /// call.
    #[inline(always)]
    pub(crate) fn cached_end_ms(&self, epoch: u64) -> u64 {
        epoch
            .saturating_add(1)
            .saturating_mul(self.fixed_len_ms)
            .saturating_sub(self.window.epoch_offset_ms())
    }

    /// The first millisecond after `epoch`: `window.end_ms(epoch)`.
    #[inline(always)]
    pub(crate) fn end_ms(&self, epoch: u64) -> u64 {
        if self.fixed_len_ms != 0 {
            self.cached_end_ms(epoch)
        } else {
            self.window.end_ms(epoch)
        }
    }
}

#[cfg(all(test, not(bifrost_loom)))]
mod tests {
    use super::*;
    use crate::counter::window::{Alignment, Unit};

    /// 2026-11-24T10:00:00Z.
    const T0: u64 = 1_795_514_400_000;

    #[test]
    fn matches_the_window_for_every_kind_of_window_and_any_order_of_times() {
        let windows = [
            Window::parse("1s").expect("1s"),
            Window::parse("1m").expect("1m"),
            Window::parse("7m").expect("7m"),
            Window::parse("1h").expect("1h"),
            Window::parse("1d").expect("1d"),
            Window::parse("1w").expect("1w"),
            Window::parse("1M").expect("1M"),
            Window::parse("2Y").expect("2Y"),
            Window::with_alignment(1, Unit::Day, Alignment::Fixed).expect("fixed day"),
            Window::parse("1m@2026-11-24T10:00:17.5Z").expect("anchored minute"),
            Window::parse("30d@2026-12-01T10:00:00Z").expect("anchored 30 days"),
            Window::parse("7s@3").expect("anchored 7 s"),
            Window::anchored(1, Unit::Week, 0).expect("anchored week, phase 0"),
        ];
        // Forwards, backwards and jumping: the cache must never answer with a stale epoch.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut times: Vec<u64> = (0..2_000u64).map(|i| T0 + i * 997).collect();
        times.extend((0..2_000u64).rev().map(|i| T0 + i * 1_013));
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(x % (T0 * 2));
        }
        times.extend([0, 1, 59_999, 60_000, u64::MAX / 2, u64::MAX - 1, u64::MAX]);
        for window in windows {
            let cache = EpochCache::new(window);
            for &t in &times {
                let epoch = cache.epoch_at(UnixMs::new(t));
                assert_eq!(epoch, window.epoch_at(UnixMs::new(t)), "{window} at {t}");
                assert_eq!(
                    cache.end_ms(epoch),
                    window.end_ms(epoch),
                    "{window} end of {epoch}"
                );
                if let Some(cached) = cache.cached_epoch_at(UnixMs::new(t)) {
                    assert_eq!(cached, epoch, "{window} cached at {t}");
                    assert_eq!(
                        cache.cached_end_ms(cached),
                        window.end_ms(epoch),
                        "{window}"
                    );
                }
            }
        }
    }
}
