//! A state machine's own timers in one table (the node machine's and the replicators'): an enum names each timer, the table holds its deadline, and the next
//! wake-up is the minimum over a handful of entries (never a scan of peers or members).

/// Deadlines of the timers `T` names (Unix ms). A timer that is not armed has no entry.
#[derive(Debug, Clone)]
pub(crate) struct TimerTable<T: Copy + Eq> {
    deadlines: Vec<(T, u64)>,
}

impl<T: Copy + Eq> Default for TimerTable<T> {
    fn default() -> Self {
        TimerTable {
            deadlines: Vec::new(),
        }
    }
}

impl<T: Copy + Eq> TimerTable<T> {
    /// Arms `timer` for `at_ms`, replacing its previous deadline.
    pub(crate) fn set(&mut self, timer: T, at_ms: u64) {
        match self.deadlines.iter_mut().find(|(t, _)| *t == timer) {
            Some(entry) => entry.1 = at_ms,
            None => self.deadlines.push((timer, at_ms)),
        }
    }

    /// The earliest deadline, if any timer is armed.
    pub(crate) fn next_ms(&self) -> Option<u64> {
        self.deadlines.iter().map(|&(_, at)| at).min()
    }

    /// Disarms and returns every timer due at `now_ms`, earliest first.
    pub(crate) fn take_due(&mut self, now_ms: u64) -> Vec<T> {
        let mut due: Vec<(T, u64)> = Vec::new();
        self.deadlines.retain(|&(t, at)| {
            if at <= now_ms {
                due.push((t, at));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|&(_, at)| at);
        due.into_iter().map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        A,
        B,
    }

    #[test]
    fn due_timers_come_out_once_in_deadline_order() {
        let mut table = TimerTable::default();
        table.set(T::A, 30);
        table.set(T::B, 10);
        table.set(T::A, 20); // re-armed: one entry
        assert_eq!(table.next_ms(), Some(10));
        assert_eq!(table.take_due(5), vec![]);
        assert_eq!(table.take_due(25), vec![T::B, T::A]);
        assert_eq!(table.take_due(100), vec![]);
        assert_eq!(table.next_ms(), None);
    }
}
