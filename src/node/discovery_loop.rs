//! The discovery loop: registers this node with every method at start, runs each method every
//! `discovery.interval` (and at once when a method signals a change), filters what it finds and hands the
//! join targets to the driver.
//!
//! Guarantees:
//! - Each method runs in its own task; a round is bounded by `discovery.dial_timeout`; a failing method is
//!   logged ("discovery failed", with the cause) and retried next round; the other methods are unaffected.
//! - Memory is bounded by what the methods currently find: "new" means not found by the method's previous
//!   round, and an address outside the space is warned about again only after it went away.
//! - A registration that failed is retried every round until it succeeds.
//! - The reference's log lines: "discovered X nodes" (new addresses, with the method), "no new nodes
//!   discovered" (a warning while the node is alone, debug otherwise), "discovery failed", and "not in
//!   allowed address space" (once per address, with the address).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::Event;
use crate::discovery::{Discovery, DiscoveryError, filter};
use crate::membership::{LocalState, MembershipReader};
use crate::sync::LockClean;

/// Counters of one discovery method, as `/metrics` and [`crate::node::ClusterHandle::discovery_stats`] show
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryMethodStats {
    /// The method (`"static"`, `"etcd"`, ...).
    pub method: &'static str,
    /// Rounds run.
    pub runs: u64,
    /// Rounds that failed (the method's error, or `dial_timeout`).
    pub errors: u64,
    /// Registrations that failed (retried next round).
    pub registration_errors: u64,
    /// Whether the method is registered (always true for methods without registration).
    pub registered: bool,
    /// Join targets the last successful round found (after filtering).
    pub last_found: usize,
    /// Addresses refused because they are outside `allowed_address_space` (distinct addresses).
    pub outside_space: usize,
    /// The method's own counters (e.g. `beacons_rejected`).
    pub backend: Vec<(&'static str, u64)>,
}

/// The counters of every method, shared with the handle.
pub(crate) type SharedDiscoveryStats = Arc<Mutex<Vec<DiscoveryMethodStats>>>;

/// Everything the loop runs with.
pub(crate) struct DiscoveryLoop {
    pub(crate) methods: Vec<Arc<dyn Discovery>>,
    pub(crate) allowed: Vec<IpNet>,
    pub(crate) own: Vec<SocketAddr>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) members: MembershipReader,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) stats: SharedDiscoveryStats,
}

impl DiscoveryLoop {
    /// Starts one task per method on the current runtime, under one handle: aborting it stops them all.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            self.update_stats(|all| {
                *all = self
                    .methods
                    .iter()
                    .map(|m| DiscoveryMethodStats {
                        method: m.name(),
                        ..DiscoveryMethodStats::default()
                    })
                    .collect();
            });
            let this = Arc::new(self);
            // Each method runs on its own, so a slow one (a timeout) never delays the others. The guard aborts
            // them when this task is aborted (shutdown) or dropped.
            let _tasks = AbortOnDrop(
                (0..this.methods.len())
                    .map(|i| tokio::spawn(Arc::clone(&this).run_method(i)))
                    .collect(),
            );
            std::future::pending::<()>().await
        })
    }

    /// Registers method `i` (retried every round until it works) and runs its rounds: every `interval`, and
    /// soon after the method signals a change.
    async fn run_method(self: Arc<Self>, i: usize) {
        let method = Arc::clone(&self.methods[i]);
        let changed = method.changed();
        let mut registered = false;
        let mut previous: HashSet<SocketAddr> = HashSet::new();
        let mut warned_outside: HashSet<SocketAddr> = HashSet::new();
        loop {
            if !registered {
                registered = self.register(method.as_ref()).await;
                let ok = registered;
                self.update_stats(|all| {
                    all[i].registered = ok;
                    all[i].registration_errors += u64::from(!ok);
                });
            }
            let found = self
                .round(method.as_ref(), &mut previous, &mut warned_outside)
                .await;
            let backend = method.counters();
            let outside = warned_outside.len();
            self.update_stats(|all| {
                let s = &mut all[i];
                s.runs += 1;
                match found {
                    Some(n) => s.last_found = n,
                    None => s.errors += 1,
                }
                s.outside_space = outside;
                s.backend = backend;
            });
            match &changed {
                Some(changed) => tokio::select! {
                    () = tokio::time::sleep(self.interval) => {}
                    () = changed.notified() => {
                        // Let a burst of changes settle into one round.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                None => tokio::time::sleep(self.interval).await,
            }
        }
    }

    fn update_stats(&self, f: impl FnOnce(&mut Vec<DiscoveryMethodStats>)) {
        f(&mut self.stats.lock_clean());
    }

    async fn register(&self, method: &dyn Discovery) -> bool {
        match bounded(method, self.timeout, method.register()).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(method = method.name(), %error, "discovery failed: registration; retrying next round");
                false
            }
        }
    }

    /// One round of `method`: the number of join targets it found, `None` when it failed.
    async fn round(
        &self,
        method: &dyn Discovery,
        previous: &mut HashSet<SocketAddr>,
        warned_outside: &mut HashSet<SocketAddr>,
    ) -> Option<usize> {
        let found = match bounded(method, self.timeout, method.discover()).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(method = method.name(), %error, "discovery failed");
                return None;
            }
        };
        let filtered = filter::filter(&found, &self.allowed, &self.own);
        // Warn once per address while it keeps showing up; forget addresses that are gone (bounded memory).
        warned_outside.retain(|a| filtered.outside.contains(a));
        for addr in filtered.outside {
            if warned_outside.insert(addr) {
                tracing::warn!(
                    method = method.name(),
                    %addr,
                    allowed = ?self.allowed,
                    "not in allowed address space: ignoring {addr}"
                );
            }
        }
        // New: not found by the previous round of this method.
        let new: Vec<SocketAddr> = filtered
            .accepted
            .iter()
            .copied()
            .filter(|a| !previous.contains(a))
            .collect();
        *previous = filtered.accepted.iter().copied().collect();
        if new.is_empty() {
            let alone = self.members.load().local.state != LocalState::Joined;
            if alone {
                tracing::warn!(
                    method = method.name(),
                    candidates = filtered.accepted.len(),
                    "no new nodes discovered"
                );
            } else {
                tracing::debug!(method = method.name(), "no new nodes discovered");
            }
        } else {
            tracing::info!(
                method = method.name(),
                new = ?new,
                total = filtered.accepted.len(),
                "discovered {} nodes",
                new.len()
            );
        }
        let count = filtered.accepted.len();
        if !filtered.accepted.is_empty() {
            let _ = self
                .events
                .send(Event::Discovered {
                    addrs: filtered.accepted,
                })
                .await;
        }
        Some(count)
    }
}

/// Aborts the tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// Withdraws every method's announcement, each bounded by `timeout` (graceful leave, after the final flush).
pub(crate) async fn deregister_all(methods: &[Arc<dyn Discovery>], timeout: Duration) {
    for method in methods {
        if let Err(error) = bounded(method.as_ref(), timeout, method.deregister()).await {
            tracing::warn!(method = method.name(), %error, "deregistration failed");
        }
    }
}

/// Runs one call of `method`, turning a call that outlives `timeout` into [`DiscoveryError::Timeout`].
async fn bounded<T>(
    method: &dyn Discovery,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, DiscoveryError>>,
) -> Result<T, DiscoveryError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(DiscoveryError::Timeout {
            backend: method.name(),
            after: timeout,
        }))
}
