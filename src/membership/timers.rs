//! The membership plane's timer table: one deadline per kind of timer.
//!
//! Guarantees: [`Timers::next_wake`] is the minimum over the (six) kinds, whatever the number of members; a
//! kind is either armed with one deadline or disarmed. Three kinds stand for a queue kept elsewhere (foca's
//! timers, the suspicion timers, the data-plane deadlines): their entry is that queue's earliest deadline,
//! refreshed by [`super::Membership`] at the end of every call. [`Timer::Prune`] is housekeeping: it never
//! wakes a machine that has nothing else to do, it only runs along with the next wake-up.

/// A kind of timer of the membership plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The earliest timer foca asked for (probes, gossip, announces, removal of down members).
    Swim,
    /// The earliest Lifeguard suspicion expiry of this node (suspect → down).
    Suspicion,
    /// The earliest data-plane silence deadline of a member (one failed check when it passes).
    DataPlane,
    /// The next push-pull roster sync (armed while joined).
    RosterSync,
    /// The next announce to members believed down (armed while alone after having been in a cluster).
    Reconnect,
    /// The next pruning of the seen-broadcast memory, left identities and answered roster requests.
    Prune,
}

impl Timer {
    /// Every kind, in the order the table stores them.
    const ALL: [Timer; 6] = [
        Timer::Swim,
        Timer::Suspicion,
        Timer::DataPlane,
        Timer::RosterSync,
        Timer::Reconnect,
        Timer::Prune,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// False for housekeeping that must not wake an otherwise idle machine.
    fn wakes(self) -> bool {
        self != Timer::Prune
    }
}

/// The deadlines (Unix ms of the caller's clock) of every [`Timer`] kind; `None` when disarmed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    deadlines: [Option<u64>; Timer::ALL.len()],
}

impl Timers {
    /// Arms `timer` at `at_ms` (replacing its deadline), or disarms it with `None`.
    pub(crate) fn set(&mut self, timer: Timer, at_ms: Option<u64>) {
        self.deadlines[timer.index()] = at_ms;
    }

    /// Arms `timer` at `at_ms` unless it is already armed earlier.
    pub(crate) fn set_earlier(&mut self, timer: Timer, at_ms: u64) {
        let slot = &mut self.deadlines[timer.index()];
        *slot = Some(slot.map_or(at_ms, |d| d.min(at_ms)));
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.set(timer, None);
    }

    /// Disarms every timer.
    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; Timer::ALL.len()];
    }

    /// True when `timer` is armed at or before `now_ms`.
    pub(crate) fn is_due(&self, timer: Timer, now_ms: u64) -> bool {
        self.deadlines[timer.index()].is_some_and(|d| d <= now_ms)
    }

    /// When the machine must next be woken: the earliest waking deadline, or `None` if none is armed
    /// (housekeeping deadlines only pull an existing wake-up earlier).
    pub(crate) fn next_wake(&self) -> Option<u64> {
        let waking = Timer::ALL
            .iter()
            .filter(|t| t.wakes())
            .filter_map(|t| self.deadlines[t.index()])
            .min()?;
        Some(
            Timer::ALL
                .iter()
                .filter(|t| !t.wakes())
                .filter_map(|t| self.deadlines[t.index()])
                .fold(waking, u64::min),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_wake_is_the_minimum_and_prune_only_rides_along() {
        let mut t = Timers::default();
        t.set(Timer::Prune, Some(5));
        assert_eq!(t.next_wake(), None, "housekeeping alone wakes nobody");
        t.set(Timer::RosterSync, Some(40));
        t.set(Timer::Swim, Some(30));
        assert_eq!(t.next_wake(), Some(5));
        t.set(Timer::Prune, Some(100));
        assert_eq!(t.next_wake(), Some(30));
        t.set_earlier(Timer::Swim, 50);
        assert_eq!(t.next_wake(), Some(30));
        t.set_earlier(Timer::Swim, 20);
        assert_eq!(t.next_wake(), Some(20));
        assert!(t.is_due(Timer::Swim, 20) && !t.is_due(Timer::Swim, 19));
        t.stop(Timer::Swim);
        assert!(!t.is_due(Timer::Swim, 1_000));
        assert_eq!(t.next_wake(), Some(40));
        t.stop_all();
        assert_eq!(t.next_wake(), None);
    }
}
