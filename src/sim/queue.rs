//! The simulator's event queue: events in virtual-time order, ties in the order they were scheduled.
//!
//! Guarantees:
//! - [`EventQueue::pop_due`] returns exactly the order a binary heap of `(at, seq)` gives: the earliest time
//!   first, and of one time the event scheduled first. The order depends only on the calls made, so a run
//!   replays from its seed.
//! - Push and pop cost O(1) for events due within [`RING_MS`] of the earliest time the queue may still hold
//!   (every network delivery and nearly every timer): a calendar of one bucket per millisecond, walked in
//!   order. Events further out wait in a heap (O(log E)) and are taken from it when their time comes.
//! - Nothing may be scheduled before the last time popped or passed to [`EventQueue::advance_to`] (the
//!   simulator never schedules in the past); such an event is treated as due at that time, in its turn.
//!
//! Why the heap's events of one time come before the ring's: an event goes to the heap only while its time is
//! at least `RING_MS` past the queue's base, and to the ring only once the base came within `RING_MS`. The base
//! never moves back, so every event of time `t` in the heap was scheduled before every event of time `t` in the
//! ring, and carries a lower sequence number.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Milliseconds the calendar covers from its base.
pub(crate) const RING_MS: u64 = 4_096;

/// One event beyond the calendar.
struct Later<E> {
    at: u64,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Later<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Later<E> {}
impl<E> PartialOrd for Later<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Later<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest, then the first scheduled.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events in virtual-time order (see the module docs).
pub(crate) struct EventQueue<E> {
    /// Bucket `t % RING_MS` holds the events due at `t`, for `t` in `base..base + RING_MS`, in scheduling order.
    ring: Vec<VecDeque<(u64, E)>>,
    /// Events in `ring`.
    in_ring: usize,
    /// No event is due before `base`.
    base: u64,
    /// Events scheduled at or past `base + RING_MS` when they were pushed.
    later: BinaryHeap<Later<E>>,
    next_seq: u64,
}

impl<E> EventQueue<E> {
    /// An empty queue whose earliest time is `start_ms`.
    pub(crate) fn new(start_ms: u64) -> EventQueue<E> {
        EventQueue {
            ring: (0..RING_MS).map(|_| VecDeque::new()).collect(),
            in_ring: 0,
            base: start_ms,
            later: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Events waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_ring + self.later.len()
    }

    /// Schedules `ev` at `at` (not before the base: see the module docs).
    pub(crate) fn push(&mut self, at: u64, ev: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = at.max(self.base);
        if at - self.base < RING_MS {
            self.ring[bucket(at)].push_back((at, ev));
            self.in_ring += 1;
        } else {
            self.later.push(Later { at, seq, ev });
        }
    }

    /// The earliest event if it is due at or before `until_ms`, with its time.
    pub(crate) fn pop_due(&mut self, until_ms: u64) -> Option<(u64, E)> {
        let later_at = self.later.peek().map(|l| l.at);
        let ring_at = self.first_in_ring(until_ms.min(later_at.unwrap_or(u64::MAX)));
        let at = match (ring_at, later_at) {
            (None, None) => return None,
            (Some(r), Some(l)) => r.min(l),
            (Some(r), None) => r,
            (None, Some(l)) => l,
        };
        if at > until_ms {
            return None;
        }
        // The heap's events of one time were scheduled before the ring's (module docs).
        let ev = if later_at == Some(at) {
            self.later.pop().map(|l| l.ev)
        } else {
            self.in_ring -= 1;
            self.ring[bucket(at)].pop_front().map(|(_, ev)| ev)
        }?;
        self.base = at;
        Some((at, ev))
    }

    /// Promises that nothing will be scheduled before `ms` (every event due before it was popped).
    pub(crate) fn advance_to(&mut self, ms: u64) {
        if self.first_in_ring(ms).is_some_and(|t| t < ms)
            || self.later.peek().is_some_and(|l| l.at < ms)
        {
            debug_assert!(false, "events before {ms} are still queued");
            return;
        }
        self.base = self.base.max(ms);
    }

    /// The time of the ring's earliest event, if one is due at or before `limit` (walks the buckets from the
    /// base; every bucket walked over is empty and stays behind the base once an event past it is popped).
    fn first_in_ring(&self, limit: u64) -> Option<u64> {
        if self.in_ring == 0 {
            return None;
        }
        let end = limit.min(self.base + RING_MS - 1);
        (self.base..=end).find(|&t| !self.ring[bucket(t)].is_empty())
    }
}

fn bucket(at: u64) -> usize {
    // `RING_MS` fits a usize: the remainder does too.
    (at % RING_MS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any interleaving of pushes (near, far, at the base) and bounded pops gives a heap's order.
        #[test]
        fn pops_in_the_order_of_a_heap(ops in proptest::collection::vec((0u8..4, 0u64..10_000), 1..400)) {
            let mut queue = EventQueue::new(100);
            let mut heap = BinaryHeap::new();
            let mut now = 100u64;
            let mut seq = 0u64;
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        // Near (within the ring) or far (past it), never before `now`.
                        let at = now + if op == 0 { x % 50 } else { x };
                        queue.push(at, seq);
                        heap.push(Later { at, seq, ev: seq });
                        seq += 1;
                    }
                    2 => {
                        let until = now + x % 3_000;
                        loop {
                            let expected = heap.peek().filter(|l| l.at <= until).map(|l| (l.at, l.ev));
                            let got = queue.pop_due(until);
                            prop_assert_eq!(got, expected);
                            if got.is_none() {
                                break;
                            }
                            heap.pop();
                            now = got.map_or(now, |(at, _)| at);
                        }
                        now = now.max(until);
                        queue.advance_to(now);
                    }
                    _ => {
                        if let Some((at, ev)) = queue.pop_due(u64::MAX) {
                            let l = heap.pop().expect("same length");
                            prop_assert_eq!((at, ev), (l.at, l.ev));
                            now = at;
                        } else {
                            prop_assert!(heap.is_empty());
                        }
                    }
                }
                prop_assert_eq!(queue.len(), heap.len());
            }
        }
    }
}
