//! [`UnixMs`]: a wall-clock time, in milliseconds since 1970-01-01T00:00:00Z.
//!
//! Guarantees: a [`UnixMs`] is a wall-clock reading (the system clock through [`crate::counter::CoarseClock`],
//! or a test's or the simulator's virtual clock set to a Unix time), never a duration, a monotonic instant or
//! an epoch index. It is `#[repr(transparent)]` over `u64` with `#[inline]` accessors, so the counter hot path,
//! which reads the coarse clock on every call, pays nothing for it; it does no checks.
//!
//! Where it is used:
//! - the clock the counter plane reads: [`crate::counter::Clock`], [`crate::counter::CoarseClock`],
//!   [`crate::counter::ManualClock`] (the node's ticker and the simulator push it, tests set it);
//! - window epochs: [`crate::counter::Window::epoch_at`], and the hot path's cached epoch and limiter
//!   decisions, which take the clock's reading as it is;
//! - the shared-state plane's hybrid logical clock and its timestamps ([`crate::state::Hlc`],
//!   [`crate::state::Timestamp`]'s `wall_ms`) and the node health records' publication time
//!   ([`crate::state::NodeRecord`]'s `published_ms`).
//!
//! Where the number inside ([`UnixMs::get`], [`UnixMs::new`]) is taken instead:
//! - the wire and the snapshot file: rkyv structs in [`crate::wire`] and [`crate::storage`] stay `u64`;
//! - window arithmetic in milliseconds (`Window::start_ms`, `Window::end_ms`, the sliding-window weight and the
//!   token bucket's refill), on the value the clock gave;
//! - the sans-IO planes' `now_ms: u64` arguments (`handle_*`, `poll_*`, `Membership::new`, the replicators, the
//!   config map). These are Unix milliseconds too (the node driver passes the coarse clock's reading, the
//!   simulator a virtual Unix time), not a monotonic clock. They stay `u64` for now: some 290 sites compare
//!   them with deadlines and add intervals to them, which a typed time would need an interval type for. They
//!   are converted where they meet a typed time: the driver and the simulator
//!   (reading the clock), the config map (ticking the HLC) and the health publisher (stamping a record).

/// Milliseconds since 1970-01-01T00:00:00Z, read from a wall clock (see the module doc). Ordered as the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct UnixMs(u64);

impl UnixMs {
    /// The time `ms` milliseconds after the Unix epoch.
    #[inline]
    pub const fn new(ms: u64) -> UnixMs {
        UnixMs(ms)
    }

    /// The number of milliseconds since the Unix epoch.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}
