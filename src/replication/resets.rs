//! Reset commands in a grouped layout (sans-IO): which resets this node has issued or heard, so each one is
//! applied and passed on once.
//!
//! In the full mesh every node holds every origin's values, so the floors a reset sets where it is issued are
//! all the others need. In a grouped layout a node holds per-origin values of its own group only, and knows the
//! other groups through aggregates; a reset issued on it cannot floor what it does not hold. So the reset also
//! travels as a command that every node applies to what it holds (its own value included) when it hears it,
//! and passes on to its replication peers. Floors are max-merged per origin, and aggregates carry their floor
//! sums, so every node converges on the same net count, whichever nodes heard which command first
//! (`docs/replication.md`, "Resets in a grouped layout").
//!
//! Guarantees:
//! - A reset is named by `(id, issuer)`, compared in that order. A command's id is larger than the id of every
//!   reset of the same `(key, window, epoch)` this node issued or heard before: `max(now_ms, newest + 1)`, so a
//!   later reset is never taken for a copy of an earlier one, even with clocks that disagree; two nodes that
//!   issue in the same millisecond differ by issuer.
//! - [`ResetLog::hear`] says `New` once per reset and never for one at or below the newest held: copies that
//!   arrive over several links, and stale ones, are neither applied again nor passed on. An id more than
//!   [`MAX_ID_AHEAD_MS`] ahead of this node's clock is refused (a clock far ahead, or a forged id, would
//!   otherwise hide every later reset of the epoch).
//! - A command heard within [`FRESH_MS`] of its id floors every value the node holds; one heard later (a link
//!   that came up after it passed: each side sends the other the commands it remembers) floors only the node's
//!   own value. A node that heard it late may hold values its origins counted after they applied it, and
//!   flooring those would take back counts made after the reset; its own value it counted before hearing it.
//! - Memory is bounded: at most [`MAX_RESETS_HELD`] `(key, window, epoch)`, the oldest forgotten first. A command
//!   not held whose id is at or below the newest id forgotten counts as repeated: it may be a forgotten one, and
//!   applying it again would floor this node's own counts made since (a reset this node never heard that old
//!   is then not applied here; the others' floors of it still reach it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::counter::Window;

/// Most `(key, window, epoch)` whose newest reset id is remembered.
pub const MAX_RESETS_HELD: usize = 4_096;

/// How far ahead of this node's clock a heard reset id may be: 1 hour.
pub const MAX_ID_AHEAD_MS: u64 = 3_600_000;

/// A reset heard within this long after its id (ms) floors every value held; later, the own value only.
pub const FRESH_MS: u64 = 1_000;

type Target = (Arc<str>, Window, u64);

/// What hearing a reset command found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Not heard before: apply it and pass it on.
    New,
    /// A copy, or older than the newest held: dropped.
    Repeated,
    /// Its id is more than [`MAX_ID_AHEAD_MS`] ahead of this node's clock: dropped.
    Refused,
}

/// The newest reset `(id, issuer)` per `(key, window, epoch)`.
#[derive(Debug, Default)]
pub(crate) struct ResetLog {
    newest: HashMap<Target, (u64, u64)>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<Target>,
    /// Entries forgotten because the log was full.
    pub(crate) forgotten: u64,
    /// The newest id among them.
    forgotten_below: u64,
}

impl ResetLog {
    /// The id of a reset issued here (by `issuer`, this node) now, recorded as heard.
    pub(crate) fn issue(
        &mut self,
        key: Arc<str>,
        window: Window,
        epoch: u64,
        issuer: u64,
        now_ms: u64,
    ) -> u64 {
        let target = (key, window, epoch);
        let id = match self.newest.get(&target) {
            Some(&(newest, _)) => now_ms.max(newest.saturating_add(1)),
            None => now_ms,
        };
        self.record(target, (id, issuer));
        id
    }

    /// Whether reset `id` of `issuer` for `(key, window, epoch)` is new here (then it is recorded), given this
    /// node's clock `now_ms`.
    pub(crate) fn hear(
        &mut self,
        key: &str,
        window: Window,
        epoch: u64,
        (id, issuer): (u64, u64),
        now_ms: u64,
    ) -> Heard {
        if id > now_ms.saturating_add(MAX_ID_AHEAD_MS) {
            return Heard::Refused;
        }
        let target: Target = (Arc::from(key), window, epoch);
        let repeated = match self.newest.get(&target) {
            Some(&newest) => newest >= (id, issuer),
            None => id <= self.forgotten_below && self.forgotten > 0,
        };
        if repeated {
            return Heard::Repeated;
        }
        self.record(target, (id, issuer));
        Heard::New
    }

    /// Every reset remembered, as `(key, window, epoch)` and `(id, issuer)`, for a peer whose link just came up.
    pub(crate) fn remembered(&self) -> impl Iterator<Item = (&Target, (u64, u64))> + '_ {
        self.newest.iter().map(|(target, &id)| (target, id))
    }

    fn record(&mut self, target: Target, id: (u64, u64)) {
        if let Some(newest) = self.newest.get_mut(&target) {
            *newest = id;
            return;
        }
        if self.newest.len() >= MAX_RESETS_HELD
            && let Some(oldest) = self.order.pop_front()
            && let Some((forgotten_id, _)) = self.newest.remove(&oldest)
        {
            self.forgotten += 1;
            self.forgotten_below = self.forgotten_below.max(forgotten_id);
        }
        self.order.push_back(target.clone());
        self.newest.insert(target, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute() -> Window {
        Window::parse("1m").expect("a window")
    }

    const ME: u64 = 1;
    const OTHER: u64 = 2;
    const NOW: u64 = 10_000;

    #[test]
    fn each_reset_is_heard_once_and_a_later_one_always_has_a_larger_id() {
        let mut log = ResetLog::default();
        let hear = |log: &mut ResetLog, epoch, id, issuer| {
            log.hear("k", minute(), epoch, (id, issuer), NOW)
        };
        let first = log.issue(Arc::from("k"), minute(), 7, ME, 1_000);
        assert_eq!(
            hear(&mut log, 7, first, ME),
            Heard::Repeated,
            "its own command comes back"
        );
        assert_eq!(
            hear(&mut log, 7, first, OTHER),
            Heard::New,
            "another node's in the same ms"
        );
        assert_eq!(
            hear(&mut log, 7, 2_000, OTHER),
            Heard::New,
            "a later reset from elsewhere"
        );
        assert_eq!(
            hear(&mut log, 7, 2_000, OTHER),
            Heard::Repeated,
            "a copy of it"
        );
        assert_eq!(
            hear(&mut log, 7, 1_500, OTHER),
            Heard::Repeated,
            "an older one arriving late"
        );
        // A clock behind the newest id still issues a larger one.
        assert_eq!(log.issue(Arc::from("k"), minute(), 7, ME, 10), 2_001);
        assert_eq!(
            hear(&mut log, 8, 5, OTHER),
            Heard::New,
            "another epoch is another target"
        );
        assert_eq!(
            hear(&mut log, 9, NOW + MAX_ID_AHEAD_MS + 1, OTHER),
            Heard::Refused,
            "an id far ahead of the clock"
        );
        assert_eq!(
            hear(&mut log, 9, 1, OTHER),
            Heard::New,
            "a refused id is not recorded"
        );
    }

    #[test]
    fn the_log_is_bounded_and_forgets_the_oldest() {
        let mut log = ResetLog::default();
        // Epoch e is reset with id e + 1 (ids grow with time).
        for epoch in 0..(MAX_RESETS_HELD as u64 + 10) {
            assert_eq!(
                log.hear("k", minute(), epoch, (epoch + 1, OTHER), NOW),
                Heard::New
            );
        }
        assert_eq!(log.newest.len(), MAX_RESETS_HELD);
        assert_eq!(log.forgotten, 10);
        assert_eq!(
            log.hear("k", minute(), 0, (1, OTHER), NOW),
            Heard::Repeated,
            "forgotten, and no newer than the newest forgotten: maybe a copy, not applied again"
        );
        assert_eq!(
            log.hear("k", minute(), 0, (11, OTHER), NOW),
            Heard::New,
            "a reset of a forgotten target newer than every forgotten one"
        );
        assert_eq!(
            log.hear("k", minute(), 20, (21, OTHER), NOW),
            Heard::Repeated,
            "still held"
        );
    }
}
