//! The coarse clock the hot path reads, and the trait that feeds it.
//!
//! Guarantees:
//! - Reading [`CoarseClock::now_unix_ms`] is one relaxed atomic load: no syscall, no lock.
//! - The counter plane never reads the system clock itself (the crate's sans-IO rule, see the crate docs). Time is *pushed* into the
//!   coarse clock: the node ticks it from the system clock every millisecond or so; tests set it by hand or tick
//!   it from a [`ManualClock`].
//! - The coarse clock never goes backwards: [`CoarseClock::tick`] keeps the larger of the stored and the given
//!   time, so a system clock stepped back cannot reopen a closed window.
//! - Times are [`UnixMs`]; reading one is free (a `#[repr(transparent)]` newtype, `#[inline]` accessors).

use crate::UnixMs;
use crate::sync::{AtomicU64, Ordering};

/// A source of wall-clock time in Unix milliseconds.
///
/// The node implements it over the system clock (an I/O plane); tests use [`ManualClock`].
pub trait Clock: Send + Sync {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_unix_ms(&self) -> UnixMs;
}

/// The cached time read on the hot path: an atomic that a ticker refreshes.
#[derive(Debug, Default)]
pub struct CoarseClock {
    unix_ms: AtomicU64,
}

impl CoarseClock {
    /// A clock reading `unix_ms` until it is ticked.
    pub fn new(unix_ms: UnixMs) -> CoarseClock {
        CoarseClock {
            unix_ms: AtomicU64::new(unix_ms.get()),
        }
    }

    /// The cached time.
    #[inline]
    pub fn now_unix_ms(&self) -> UnixMs {
        // Relaxed: the value is a standalone timestamp; nothing else is published through it.
        UnixMs::new(self.unix_ms.load(Ordering::Relaxed))
    }

    /// Refreshes the cache from `source`, never moving it backwards.
    pub fn tick(&self, source: &dyn Clock) {
        self.advance_to(source.now_unix_ms());
    }

    /// Moves the cache forward to `unix_ms` (no effect if the cache is already later).
    pub fn advance_to(&self, unix_ms: UnixMs) {
        // Relaxed: a monotonic max on a standalone timestamp.
        self.unix_ms.fetch_max(unix_ms.get(), Ordering::Relaxed);
    }

    /// Sets the cache to exactly `unix_ms`, backwards included. For tests and replays only.
    pub fn set_unix_ms(&self, unix_ms: UnixMs) {
        // Relaxed: a standalone timestamp.
        self.unix_ms.store(unix_ms.get(), Ordering::Relaxed);
    }
}

impl Clock for CoarseClock {
    fn now_unix_ms(&self) -> UnixMs {
        CoarseClock::now_unix_ms(self)
    }
}

/// A clock that only moves when told to. Used by tests and the deterministic simulation.
#[derive(Debug, Default)]
pub struct ManualClock {
    unix_ms: AtomicU64,
}

impl ManualClock {
    /// A manual clock reading `unix_ms`.
    pub fn new(unix_ms: UnixMs) -> ManualClock {
        ManualClock {
            unix_ms: AtomicU64::new(unix_ms.get()),
        }
    }

    /// Sets the time.
    pub fn set(&self, unix_ms: UnixMs) {
        // Relaxed: a standalone timestamp.
        self.unix_ms.store(unix_ms.get(), Ordering::Relaxed);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        // Relaxed: a standalone timestamp.
        self.unix_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> UnixMs {
        // Relaxed: a standalone timestamp.
        UnixMs::new(self.unix_ms.load(Ordering::Relaxed))
    }
}

#[cfg(all(test, not(bifrost_loom)))]
mod tests {
    use super::*;

    #[test]
    fn tick_follows_source_and_never_goes_back() {
        let source = ManualClock::new(UnixMs::new(1_000));
        let coarse = CoarseClock::new(UnixMs::new(0));
        coarse.tick(&source);
        assert_eq!(coarse.now_unix_ms(), UnixMs::new(1_000));
        source.advance(500);
        coarse.tick(&source);
        assert_eq!(coarse.now_unix_ms(), UnixMs::new(1_500));
        source.set(UnixMs::new(10)); // the system clock was stepped back
        coarse.tick(&source);
        assert_eq!(coarse.now_unix_ms(), UnixMs::new(1_500));
    }
}
