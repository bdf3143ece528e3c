//! When to ask the static peers (and, later, discovered addresses) to let this node in, and when to say that
//! joining failed.
//!
//! Guarantees:
//! - While the node is not joined and has targets, it asks them at once, then again after 1 s, 2 s, 4 s, …,
//!   at most every [`MAX_BACKOFF_MS`]; joining resets the backoff, and losing the cluster later starts a new
//!   episode.
//! - "failed to join cluster" is reported once per episode, when it has lasted `report_after_ms` (the
//!   config's `discovery.dial_timeout`, default 10 s) without a join while there was a target to try.
//! - The start-up join is *settled* when the node joined once, when that first episode ran out (it then runs
//!   alone and keeps trying), or at once when the config expects no peers at all.
//! - Pure logic: time comes in as `now_ms`.

use std::net::SocketAddr;

/// First wait between join attempts, in ms.
pub(crate) const FIRST_BACKOFF_MS: u64 = 1_000;
/// Longest wait between join attempts, in ms.
pub(crate) const MAX_BACKOFF_MS: u64 = 30_000;

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct JoinStep {
    /// Call `Membership::join` on every target.
    pub(crate) attempt: bool,
    /// Log "failed to join cluster" (once per episode).
    pub(crate) report_failure: bool,
}

/// The join schedule of one node.
#[derive(Debug)]
pub(crate) struct JoinSchedule {
    targets: Vec<SocketAddr>,
    /// When discovery last reported each target (parallel to `targets`).
    last_seen_ms: Vec<u64>,
    report_after_ms: u64,
    next_ms: u64,
    backoff_ms: u64,
    /// When the current not-joined episode started (`None` while joined).
    episode_started_ms: Option<u64>,
    reported: bool,
    attempts: u32,
    /// The start-up join is over: joined once, gave up once (reported), or there was nobody to join.
    settled: bool,
}

impl JoinSchedule {
    /// A schedule that starts at `now_ms` with no targets yet (discovery, static peers included, adds them).
    /// `expect_peers`: the config names peers or enables discovery; without, the node is alone by config.
    pub(crate) fn new(expect_peers: bool, report_after_ms: u64, now_ms: u64) -> JoinSchedule {
        JoinSchedule {
            targets: Vec::new(),
            last_seen_ms: Vec::new(),
            report_after_ms,
            next_ms: now_ms,
            backoff_ms: FIRST_BACKOFF_MS,
            episode_started_ms: Some(now_ms),
            settled: !expect_peers,
            reported: false,
            attempts: 0,
        }
    }

    /// Whether the start-up join is over: the node joined once, reported that joining failed, or had no
    /// target to join (alone by config). Readiness (`/ready`) follows it.
    pub(crate) fn settled(&self) -> bool {
        self.settled
    }

    /// The join targets.
    pub(crate) fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Attempts made in the current episode.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Adds targets not already known and refreshes known ones (discovery feeds this every round); an
    /// unjoined node tries new ones at once.
    pub(crate) fn add_targets(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now_ms: u64) {
        let mut added = false;
        for addr in addrs {
            match self.targets.iter().position(|t| *t == addr) {
                Some(i) => self.last_seen_ms[i] = now_ms,
                None => {
                    self.targets.push(addr);
                    self.last_seen_ms.push(now_ms);
                    added = true;
                }
            }
        }
        if added {
            self.next_ms = self.next_ms.min(now_ms);
        }
    }

    /// Forgets a target (it turned out to be this node itself).
    pub(crate) fn remove_target(&mut self, addr: SocketAddr) {
        if let Some(i) = self.targets.iter().position(|t| *t == addr) {
            self.targets.remove(i);
            self.last_seen_ms.remove(i);
        }
    }

    /// Forgets targets discovery has not reported since `before_ms` (pods and hosts that went away), so the
    /// list follows what discovery finds instead of growing with every address ever seen.
    pub(crate) fn forget_unseen(&mut self, before_ms: u64) {
        let mut i = 0;
        while i < self.targets.len() {
            if self.last_seen_ms[i] < before_ms {
                self.targets.remove(i);
                self.last_seen_ms.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// When [`JoinSchedule::step`] should next run; `None` while joined, or with nothing to try and nothing
    /// left to settle.
    pub(crate) fn due_ms(&self, joined: bool) -> Option<u64> {
        if joined {
            return None;
        }
        let report = match (self.episode_started_ms, self.reported) {
            (Some(start), false) => Some(start.saturating_add(self.report_after_ms)),
            _ => None,
        };
        let attempt = (!self.targets.is_empty()).then_some(self.next_ms);
        match (attempt, report) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// Advances the schedule to `now_ms`.
    pub(crate) fn step(&mut self, joined: bool, now_ms: u64) -> JoinStep {
        if joined {
            self.settled = true;
            self.episode_started_ms = None;
            self.reported = false;
            self.backoff_ms = FIRST_BACKOFF_MS;
            self.attempts = 0;
            return JoinStep::default();
        }
        let start = *self.episode_started_ms.get_or_insert(now_ms);
        let mut step = JoinStep::default();
        if !self.targets.is_empty() && now_ms >= self.next_ms {
            step.attempt = true;
            self.attempts += 1;
            self.next_ms = now_ms.saturating_add(self.backoff_ms);
            self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        }
        if !self.reported && now_ms >= start.saturating_add(self.report_after_ms) {
            self.reported = true;
            self.settled = true;
            // With nothing to try (discovery found nobody yet) the node is simply alone; the discovery loop
            // says so ("no new nodes discovered").
            step.report_failure = !self.targets.is_empty();
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn attempts_back_off_from_one_second_to_thirty_and_report_once() {
        let mut s = JoinSchedule::new(true, 10_000, 0);
        s.add_targets([addr(1)], 0);
        let mut attempts = Vec::new();
        let mut reports = Vec::new();
        let mut now = 0;
        while now <= 120_000 {
            let step = s.step(false, now);
            if step.attempt {
                attempts.push(now);
            }
            if step.report_failure {
                reports.push(now);
            }
            now = s.due_ms(false).expect("due while not joined");
        }
        assert_eq!(
            &attempts[..8],
            &[0, 1_000, 3_000, 7_000, 15_000, 31_000, 61_000, 91_000]
        );
        assert_eq!(
            reports,
            vec![10_000],
            "one report per episode, at report_after_ms"
        );
    }

    #[test]
    fn joining_resets_and_a_new_episode_reports_again() {
        let mut s = JoinSchedule::new(true, 10_000, 0);
        s.add_targets([addr(1)], 0);
        assert!(!s.settled());
        assert!(s.step(false, 0).attempt);
        assert!(!s.settled());
        assert!(s.step(false, 10_000).report_failure);
        assert_eq!(s.step(true, 11_000), JoinStep::default());
        assert_eq!(s.due_ms(true), None);
        // Lost the cluster at 50 s: attempts resume from the first backoff; a report after 10 more seconds.
        let step = s.step(false, 50_000);
        assert!(step.attempt && !step.report_failure);
        assert_eq!(s.due_ms(false), Some(51_000));
        assert!(s.step(false, 60_000).report_failure);
    }

    #[test]
    fn alone_by_config_is_settled_at_once_and_has_nothing_to_do() {
        let mut s = JoinSchedule::new(false, 10_000, 0);
        assert!(s.settled());
        assert_eq!(s.step(false, 0), JoinStep::default());
        assert_eq!(
            s.due_ms(false),
            Some(10_000),
            "the (silent) end of the first episode"
        );
        assert_eq!(s.step(false, 10_000), JoinStep::default());
        assert_eq!(s.due_ms(false), None);
    }

    #[test]
    fn discovery_that_finds_nobody_settles_without_a_failure_report() {
        let mut s = JoinSchedule::new(true, 10_000, 0);
        assert!(!s.settled());
        assert_eq!(s.due_ms(false), Some(10_000));
        assert_eq!(
            s.step(false, 10_000),
            JoinStep::default(),
            "no target: no 'failed to join'"
        );
        assert!(s.settled());
        // A target found later is tried at once.
        s.add_targets([addr(2)], 12_000);
        assert_eq!(s.due_ms(false), Some(0));
        assert!(s.step(false, 12_000).attempt);
        s.remove_target(addr(2));
        assert_eq!(s.due_ms(false), None);
    }

    #[test]
    fn targets_discovery_stops_reporting_are_forgotten() {
        let mut s = JoinSchedule::new(true, 10_000, 0);
        s.add_targets([addr(1), addr(2)], 0);
        s.add_targets([addr(2)], 50_000);
        s.forget_unseen(10_000);
        assert_eq!(s.targets(), &[addr(2)]);
    }
}
