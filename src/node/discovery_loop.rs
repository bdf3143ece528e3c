//! The discovery loop: registers this node with every method at start, runs each method every
//! `discovery.interval` (and at once when a method signals a change), filters what it finds and hands the
//! join targets to the driver.
//!
//! Guarantees:
//! - A round is bounded by `discovery.dial_timeout`; a failing method is logged ("discovery failed", with the
//!   cause) and retried next round; the other methods are unaffected.
//! - A registration that failed is retried every round until it succeeds.
//! - The reference's log lines: "discovered X nodes" (new addresses, with the method), "no new nodes
//!   discovered" (a warning while the node is alone, debug otherwise), "discovery failed", and "not in
//!   allowed address space" (once per address, with the address).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::driver::Event;
use crate::discovery::{Discovery, DiscoveryError, filter};
use crate::membership::{LocalState, MembershipReader};

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
    /// Starts the loop on the current runtime.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(self) {
        let wake = Arc::new(Notify::new());
        for method in &self.methods {
            if let Some(changed) = method.changed() {
                let wake = Arc::clone(&wake);
                tokio::spawn(async move {
                    loop {
                        changed.notified().await;
                        wake.notify_one();
                    }
                });
            }
        }
        let mut registered = vec![false; self.methods.len()];
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        let mut warned_outside: HashSet<SocketAddr> = HashSet::new();
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
        loop {
            for (i, method) in self.methods.iter().enumerate() {
                if !registered[i] {
                    registered[i] = self.register(method.as_ref()).await;
                    let ok = registered[i];
                    self.update_stats(|all| {
                        all[i].registered = ok;
                        all[i].registration_errors += u64::from(!ok);
                    });
                }
                let found = self
                    .round(method.as_ref(), &mut seen, &mut warned_outside)
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
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = wake.notified() => {
                    // Let a burst of changes settle into one round.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn update_stats(&self, f: impl FnOnce(&mut Vec<DiscoveryMethodStats>)) {
        match self.stats.lock() {
            Ok(mut all) => f(&mut all),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    async fn register(&self, method: &dyn Discovery) -> bool {
        match tokio::time::timeout(self.timeout, method.register()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(method = method.name(), %error, "discovery failed: registration; retrying next round");
                false
            }
            Err(_) => {
                let error = DiscoveryError::Timeout {
                    backend: method.name(),
                    after: self.timeout,
                };
                tracing::warn!(method = method.name(), %error, "discovery failed: registration; retrying next round");
                false
            }
        }
    }

    /// One round of `method`: the number of join targets it found, `None` when it failed.
    async fn round(
        &self,
        method: &dyn Discovery,
        seen: &mut HashSet<SocketAddr>,
        warned_outside: &mut HashSet<SocketAddr>,
    ) -> Option<usize> {
        let found = match tokio::time::timeout(self.timeout, method.discover()).await {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::warn!(method = method.name(), %error, "discovery failed");
                return None;
            }
            Err(_) => {
                let error = DiscoveryError::Timeout {
                    backend: method.name(),
                    after: self.timeout,
                };
                tracing::warn!(method = method.name(), %error, "discovery failed");
                return None;
            }
        };
        let filtered = filter::filter(&found, &self.allowed, &self.own);
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
        let new: Vec<SocketAddr> = filtered
            .accepted
            .iter()
            .copied()
            .filter(|a| !seen.contains(a))
            .collect();
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
            seen.extend(new.iter().copied());
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

/// Withdraws every method's announcement, each bounded by `timeout` (graceful leave, after the final flush).
pub(crate) async fn deregister_all(methods: &[Arc<dyn Discovery>], timeout: Duration) {
    for method in methods {
        match tokio::time::timeout(timeout, method.deregister()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(method = method.name(), %error, "deregistration failed")
            }
            Err(_) => tracing::warn!(
                method = method.name(),
                after = ?timeout,
                "deregistration did not finish in time"
            ),
        }
    }
}
