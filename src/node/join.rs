//! When to ask the static peers (and, later, discovered addresses) to let this node in, and when to say that
//! joining failed.
//!
//! Guarantees:
//! - While the node is not joined and has targets, it asks them at once, then again after 1 s, 2 s, 4 s, …,
//!   at most every [`MAX_BACKOFF_MS`]; joining resets the backoff, and losing the cluster later starts a new
//!   episode.
//! - "failed to join cluster" is reported once per episode, when it has lasted `report_after_ms` (the
//!   config's `discovery.dial_timeout`, default 10 s) without a join.
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
    /// A schedule over `targets` that starts at `now_ms`.
    pub(crate) fn new(targets: Vec<SocketAddr>, report_after_ms: u64, now_ms: u64) -> JoinSchedule {
        JoinSchedule {
            targets,
            report_after_ms,
            next_ms: now_ms,
            backoff_ms: FIRST_BACKOFF_MS,
            episode_started_ms: Some(now_ms),
            settled: false,
            reported: false,
            attempts: 0,
        }
    }

    /// Whether the start-up join is over: the node joined once, reported that joining failed, or had no
    /// target to join (alone by config). Readiness (`/ready`) follows it.
    pub(crate) fn settled(&self) -> bool {
        self.settled || self.targets.is_empty()
    }

    /// The join targets.
    pub(crate) fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Attempts made in the current episode.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Adds targets not already known (discovery feeds this); an unjoined node tries them at once.
    #[allow(dead_code)] // the discovery loop (next step) is its caller; the unit tests cover it now
    pub(crate) fn add_targets(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now_ms: u64) {
        let mut added = false;
        for addr in addrs {
            if !self.targets.contains(&addr) {
                self.targets.push(addr);
                added = true;
            }
        }
        if added {
            self.next_ms = self.next_ms.min(now_ms);
        }
    }

    /// Forgets a target (it turned out to be this node itself).
    pub(crate) fn remove_target(&mut self, addr: SocketAddr) {
        self.targets.retain(|t| *t != addr);
    }

    /// When [`JoinSchedule::step`] should next run; `None` while joined or without targets.
    pub(crate) fn due_ms(&self, joined: bool) -> Option<u64> {
        if joined || self.targets.is_empty() {
            return None;
        }
        Some(match (self.episode_started_ms, self.reported) {
            (Some(start), false) => self.next_ms.min(start.saturating_add(self.report_after_ms)),
            _ => self.next_ms,
        })
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
        if self.targets.is_empty() {
            return JoinStep::default();
        }
        let mut step = JoinStep::default();
        if now_ms >= self.next_ms {
            step.attempt = true;
            self.attempts += 1;
            self.next_ms = now_ms.saturating_add(self.backoff_ms);
            self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        }
        if !self.reported && now_ms >= start.saturating_add(self.report_after_ms) {
            self.reported = true;
            self.settled = true;
            step.report_failure = true;
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
        let mut s = JoinSchedule::new(vec![addr(1)], 10_000, 0);
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
        let mut s = JoinSchedule::new(vec![addr(1)], 10_000, 0);
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
    fn no_targets_means_nothing_to_do_and_new_targets_are_tried_at_once() {
        let mut s = JoinSchedule::new(Vec::new(), 10_000, 0);
        assert!(s.settled(), "nobody to join: alone by config");
        assert_eq!(s.due_ms(false), None);
        assert_eq!(s.step(false, 5_000), JoinStep::default());
        s.add_targets([addr(2)], 6_000);
        assert_eq!(s.due_ms(false), Some(0));
        assert!(s.step(false, 6_000).attempt);
        s.remove_target(addr(2));
        assert_eq!(s.due_ms(false), None);
    }
}
