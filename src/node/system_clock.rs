//! The system clock, and the ticker that pushes it into the coarse clock the hot path reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::UnixMs;
use crate::counter::{Clock, CoarseClock};

/// Wall-clock time from the operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> UnixMs {
        UnixMs::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }
}

/// How often the coarse clock is refreshed: 1 ms, the resolution of every window boundary.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks `clock` from the system clock every [`TICK`] until the task is aborted.
pub fn spawn_ticker(clock: Arc<CoarseClock>) -> tokio::task::JoinHandle<()> {
    clock.tick(&SystemClock);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            clock.tick(&SystemClock);
        }
    })
}
