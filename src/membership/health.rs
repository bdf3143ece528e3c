//! Per-member health thresholds: healthy after `success_threshold` consecutive successful checks, unhealthy
//! after `failure_threshold` consecutive failed ones.

use std::sync::Arc;

use super::options::HealthOptions;

/// The health of one member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HealthTracker {
    pub(crate) healthy: bool,
    pub(crate) reason: Arc<str>,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A member that just came up: healthy at once when SWIM alone decides, else unhealthy until the data
    /// plane has answered `success_threshold` times.
    pub(crate) fn new(o: &HealthOptions) -> HealthTracker {
        if o.require_data_plane {
            HealthTracker {
                healthy: false,
                reason: Arc::from(format!(
                    "awaiting {} successful data-plane checks",
                    o.success_threshold
                )),
                successes: 0,
                failures: 0,
            }
        } else {
            HealthTracker {
                healthy: true,
                reason: Arc::from("alive; no failed checks"),
                successes: 0,
                failures: 0,
            }
        }
    }

    /// Records one check. Returns true when `healthy` flipped.
    pub(crate) fn record(&mut self, o: &HealthOptions, ok: bool, what: &str) -> bool {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= o.success_threshold {
                self.healthy = true;
                self.reason = Arc::from(format!(
                    "{} consecutive successful checks (last: {what})",
                    self.successes
                ));
                return true;
            }
            if !self.healthy {
                self.reason = Arc::from(format!(
                    "{} of {} successful checks needed (last: {what})",
                    self.successes, o.success_threshold
                ));
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= o.failure_threshold {
                self.healthy = false;
                self.reason = Arc::from(format!(
                    "{} consecutive failed checks (last: {what})",
                    self.failures
                ));
                return true;
            }
            if !self.healthy {
                self.reason = Arc::from(format!(
                    "{} consecutive failed checks (last: {what})",
                    self.failures
                ));
            }
        }
        false
    }

    /// The member's data plane is not this node's to check: healthy at once (`why`), the streaks reset.
    /// Returns true when `healthy` flipped.
    pub(crate) fn assume_healthy(&mut self, why: &str) -> bool {
        let flipped = !self.healthy;
        self.healthy = true;
        self.successes = 0;
        self.failures = 0;
        self.reason = Arc::from(why);
        flipped
    }

    /// The member is down or left: unhealthy at once. Returns true when `healthy` flipped.
    pub(crate) fn force_unhealthy(&mut self, why: &str) -> bool {
        let flipped = self.healthy;
        self.healthy = false;
        self.successes = 0;
        self.failures = 0;
        self.reason = Arc::from(why);
        flipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(require: bool) -> HealthOptions {
        HealthOptions {
            timeout_ms: 1_000,
            success_threshold: 2,
            failure_threshold: 3,
            require_data_plane: require,
        }
    }

    #[test]
    fn thresholds_are_exact_and_consecutive() {
        let o = opts(true);
        let mut h = HealthTracker::new(&o);
        assert!(!h.healthy);
        assert!(!h.record(&o, true, "ok"));
        assert!(h.record(&o, true, "ok"));
        assert!(h.healthy);
        assert!(!h.record(&o, false, "broken"));
        assert!(!h.record(&o, false, "broken"));
        assert!(!h.record(&o, true, "ok")); // resets the failure streak
        assert!(!h.record(&o, false, "broken"));
        assert!(!h.record(&o, false, "broken"));
        assert!(h.record(&o, false, "replication link refused"));
        assert!(!h.healthy);
        assert!(
            h.reason.contains("replication link refused"),
            "{}",
            h.reason
        );
    }

    #[test]
    fn swim_only_members_start_healthy() {
        let o = opts(false);
        let h = HealthTracker::new(&o);
        assert!(h.healthy);
    }
}
