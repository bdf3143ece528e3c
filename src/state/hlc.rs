//! Hybrid logical clocks (Kulkarni et al., 2014) and the timestamps that order config entries.
//!
//! Guarantees:
//! - [`Hlc::tick`] (a local event) returns a timestamp greater than every timestamp this clock issued or
//!   observed, and at least the wall clock passed in.
//! - [`Hlc::observe`] (a remote timestamp arrives) makes every later tick greater than it. So a node whose wall
//!   clock runs ahead cannot win forever: once the others have seen its writes, their next writes order after
//!   them whatever their own wall clocks say.
//! - Timestamps are totally ordered: by wall time, then the logical counter, then the node id, so two nodes
//!   never produce equal timestamps.
//! - A remote wall time more than [`MAX_DRIFT_MS`] ahead of ours is not adopted by the clock (it would drag
//!   every later write into the future); the entry itself still merges by its timestamp.
//! - Sans-IO: the wall time comes in as an argument, a [`UnixMs`] (the state plane's `now_ms` converted where it
//!   meets the clock, in `config_map`).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::UnixMs;

/// Largest lead of a remote wall time our clock adopts, in ms: 1 hour.
pub const MAX_DRIFT_MS: u64 = 3_600_000;

/// One timestamp: `(wall_ms, logical, node)`, compared in that order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Wall-clock part.
    pub wall_ms: UnixMs,
    /// Logical counter within one wall-clock ms.
    pub logical: u32,
    /// The node that issued it (breaks ties).
    pub node: Arc<str>,
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall_ms, self.logical, &*self.node).cmp(&(other.wall_ms, other.logical, &*other.node))
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms.get(), self.logical, self.node)
    }
}

/// A hybrid logical clock owned by one node.
#[derive(Debug, Clone)]
pub struct Hlc {
    node: Arc<str>,
    wall_ms: UnixMs,
    logical: u32,
}

impl Hlc {
    /// A clock for `node`, starting at zero.
    pub fn new(node: &str) -> Hlc {
        Hlc {
            node: Arc::from(node),
            wall_ms: UnixMs::new(0),
            logical: 0,
        }
    }

    /// The node this clock belongs to.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// A timestamp for a local event at wall time `now`.
    pub fn tick(&mut self, now: UnixMs) -> Timestamp {
        if now > self.wall_ms {
            self.wall_ms = now;
            self.logical = 0;
        } else {
            self.bump_logical();
        }
        self.timestamp()
    }

    /// Takes a remote timestamp into account (wall time `now`): later ticks order after it, unless its
    /// wall time leads ours by more than [`MAX_DRIFT_MS`].
    pub fn observe(&mut self, remote: &Timestamp, now: UnixMs) {
        if remote.wall_ms.get() > now.get().saturating_add(MAX_DRIFT_MS) {
            return;
        }
        match remote.wall_ms.cmp(&self.wall_ms) {
            Ordering::Greater => {
                self.wall_ms = remote.wall_ms;
                self.logical = remote.logical;
            }
            Ordering::Equal => self.logical = self.logical.max(remote.logical),
            Ordering::Less => {}
        }
    }

    fn bump_logical(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            // 4 billion events in one ms: move to the next ms rather than wrap.
            None => {
                self.wall_ms = UnixMs::new(self.wall_ms.get() + 1);
                self.logical = 0;
            }
        }
    }

    fn timestamp(&self) -> Timestamp {
        Timestamp {
            wall_ms: self.wall_ms,
            logical: self.logical,
            node: Arc::clone(&self.node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_increase_even_when_the_wall_clock_stands_still_or_goes_back() {
        let mut c = Hlc::new("a");
        let t1 = c.tick(UnixMs::new(1_000));
        let t2 = c.tick(UnixMs::new(1_000));
        let t3 = c.tick(UnixMs::new(900));
        assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");
        assert_eq!(t3.wall_ms, UnixMs::new(1_000));
        assert_eq!(c.tick(UnixMs::new(2_000)).logical, 0);
    }

    #[test]
    fn a_node_behind_orders_its_next_write_after_what_it_observed() {
        let mut fast = Hlc::new("fast");
        let mut slow = Hlc::new("slow");
        let from_fast = fast.tick(UnixMs::new(10_000_000)); // 10 000 s ahead of slow
        slow.observe(&from_fast, UnixMs::new(9_000_000));
        let next = slow.tick(UnixMs::new(9_000_001));
        assert!(next > from_fast, "{next} must follow {from_fast}");
    }

    #[test]
    fn a_wall_time_too_far_ahead_is_not_adopted() {
        let mut c = Hlc::new("a");
        let far = Timestamp {
            wall_ms: UnixMs::new(1_000 + MAX_DRIFT_MS + 1),
            logical: 0,
            node: Arc::from("b"),
        };
        c.observe(&far, UnixMs::new(1_000));
        assert_eq!(c.tick(UnixMs::new(1_000)).wall_ms, UnixMs::new(1_000));
    }

    #[test]
    fn node_ids_break_ties() {
        let a = Timestamp {
            wall_ms: UnixMs::new(5),
            logical: 1,
            node: Arc::from("a"),
        };
        let b = Timestamp {
            wall_ms: UnixMs::new(5),
            logical: 1,
            node: Arc::from("b"),
        };
        assert!(a < b);
    }
}
