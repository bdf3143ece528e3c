//! `udp`: broadcast beacons on `discovery.udp_broadcast_port`, answered by the peers that hear them, accepted
//! only from `discovery.allowed_address_space` and only when authenticated with the cluster secret.
//!
//! Guarantees:
//! - Nothing starts without `allowed_address_space`, `udp_broadcast_port`, `service_name` and a cluster
//!   secret ([`UdpDiscovery::new`] refuses with a [`DiscoveryError::Setup`] naming the missing field): an
//!   unauthenticated beacon would let anyone on the segment steer this node's joins.
//! - [`Discovery::register`] binds `0.0.0.0:udp_broadcast_port` (`SO_BROADCAST`, `SO_REUSEADDR`) and starts the
//!   receiver; it refuses, naming the interfaces, when no broadcast-capable interface of this host has an
//!   address inside `allowed_address_space` (a node outside the space never beacons, and is retried every
//!   round, so an address added later is picked up). [`Discovery::deregister`] stops the receiver.
//! - Every [`Discovery::discover`] round broadcasts one beacon (at most one per second) to the broadcast
//!   address of every interface inside the space, and returns the gossip addresses heard from in the last
//!   three `discovery.interval`s.
//! - The receiver drops, and counts in [`Discovery::counters`]: datagrams from a source outside the space
//!   (`beacons_outside_space`, before any parsing), malformed, unauthenticated, stale (timestamp more than
//!   [`MAX_SKEW`] from this node's clock) and replayed beacons (`beacons_rejected`, `beacons_replayed`),
//!   beacons of another `service_name` (`beacons_foreign_service`). Its own beacons are ignored. A valid
//!   beacon is answered by unicast to its source; an answer is recorded and never answered. A new address
//!   wakes the discovery loop through [`Discovery::changed`].
//!
//! Wire format, version 1 (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `"BFCD"` |
//! | 1 | version, `1` |
//! | 1 | kind: `1` beacon, `2` answer |
//! | 8 | sender's clock, milliseconds since the Unix epoch |
//! | 16 | random nonce |
//! | 1 | gossip address family: `4` or `6` |
//! | 4 or 16 | gossip IP |
//! | 2 | gossip port |
//! | 1 + n | `service_name`: length (1..=128), UTF-8 bytes |
//! | 1 + n | node id: length (1..=128), UTF-8 bytes |
//! | 32 | HMAC-SHA256 of every byte before it |
//!
//! The HMAC key is HKDF-SHA256 of the cluster secret with salt [`HKDF_SALT`] and info [`HKDF_INFO`] (32 bytes),
//! so it is independent of every other key derived from the secret.
//!
//! Layout: the wire format and its checks are the pure `codec` (beacon, answer, HMAC, freshness); what the
//! receiver makes of a datagram, which addresses are current and when a beacon is due are decided by the pure
//! `receiver` (time passed in); this file holds the sockets, the clock, the nonces' randomness, and turns the
//! receiver's verdicts into counters, log lines, wake-ups and answers.

mod codec;
mod receiver;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::interfaces::{self, V4Interface};
use super::{BoxFuture, Discovery, DiscoveryError, LocalNode};
use crate::config::DiscoveryConfig;
use crate::sync::LockClean;
pub use codec::{
    Beacon, BeaconError, BeaconKey, BeaconKind, HKDF_INFO, HKDF_SALT, MAGIC, MAX_NAME_LEN,
    MAX_SKEW, NONCE_LEN, TAG_LEN, VERSION, check, decode, encode,
};
pub use receiver::MIN_BEACON_GAP;
use receiver::{Local, Receiver, Verdict};

const BACKEND: &str = "udp";

/// Largest datagram read; a longer one is malformed (a beacon is at most a few hundred bytes).
const MAX_DATAGRAM: usize = 1024;

/// The system clock in milliseconds since the Unix epoch (0 if the clock is before 1970).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct Counters {
    beacons_sent: AtomicU64,
    answers_sent: AtomicU64,
    beacons_accepted: AtomicU64,
    beacons_rejected: AtomicU64,
    beacons_replayed: AtomicU64,
    beacons_outside_space: AtomicU64,
    beacons_foreign_service: AtomicU64,
}

/// What the receiver task and the rounds share.
struct Shared {
    local: Local,
    changed: Arc<Notify>,
    counters: Counters,
    receiver: Mutex<Receiver>,
    random: SystemRandom,
}

impl Shared {
    fn receiver(&self) -> MutexGuard<'_, Receiver> {
        self.receiver.lock_clean()
    }

    /// A beacon (or answer) from this node, stamped now with a fresh nonce.
    fn ours(&self, kind: BeaconKind) -> Result<Vec<u8>, DiscoveryError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| DiscoveryError::Setup {
                backend: BACKEND,
                reason: "the system random generator failed (beacon nonce)".into(),
            })?;
        let local = &self.local;
        encode(
            &Beacon {
                kind,
                service_name: local.service_name.clone(),
                node_id: local.node_id.clone(),
                gossip_addr: local.gossip_addr,
                timestamp_ms: unix_ms(),
                nonce,
            },
            &local.key,
        )
        .map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!("cannot build a beacon: {e}"),
        })
    }

    /// Judges one datagram from `src` (see [`Receiver::judge`]), counts and logs the verdict; returns the
    /// answer to send back, if any.
    fn handle(
        &self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let c = &self.counters;
        let verdict = self
            .receiver()
            .judge(&self.local, datagram, src, now, now_ms);
        let answer = verdict.answer();
        match verdict {
            Verdict::OutsideSpace { log } => {
                let n = c.beacons_outside_space.fetch_add(1, Ordering::Relaxed) + 1;
                if log {
                    tracing::warn!(
                        method = BACKEND,
                        %src,
                        beacons_outside_space = n,
                        allowed = %interfaces::describe_space(&self.local.allowed),
                        "not in allowed address space: ignoring udp beacon from {src}"
                    );
                }
                return None;
            }
            Verdict::Rejected { error, log } => {
                let n = c.beacons_rejected.fetch_add(1, Ordering::Relaxed) + 1;
                if log {
                    tracing::warn!(
                        method = BACKEND,
                        %src,
                        beacons_rejected = n,
                        "udp beacon rejected from {src}: {error}"
                    );
                }
                return None;
            }
            Verdict::Own => return None, // our own broadcast, looped back
            Verdict::ForeignService(other) => {
                c.beacons_foreign_service.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = BACKEND, %src, service = %other, "udp beacon of another service ignored");
                return None;
            }
            Verdict::Replayed { node_id } => {
                c.beacons_replayed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = BACKEND, %src, node = %node_id, "replayed udp beacon ignored");
                return None;
            }
            Verdict::Accepted { beacon, new } => {
                c.beacons_accepted.fetch_add(1, Ordering::Relaxed);
                if new {
                    tracing::debug!(
                        method = BACKEND,
                        %src,
                        node = %beacon.node_id,
                        gossip = %beacon.gossip_addr,
                        kind = ?beacon.kind,
                        "udp discovery: heard a new node"
                    );
                    self.changed.notify_one();
                }
            }
        }
        if !answer {
            return None;
        }
        match self.ours(BeaconKind::Answer) {
            Ok(answer) => Some(answer),
            Err(error) => {
                tracing::warn!(method = BACKEND, %error, "cannot answer a udp beacon");
                None
            }
        }
    }

    /// The addresses heard from within `expire_after`; forgets the others.
    fn current(&self, now: Instant) -> Vec<SocketAddr> {
        self.receiver().current(now, self.local.expire_after)
    }
}

/// The socket and receiver of a registered backend.
struct Running {
    socket: Arc<UdpSocket>,
    receiver: JoinHandle<()>,
}

/// UDP broadcast discovery (see the module docs).
pub struct UdpDiscovery {
    shared: Arc<Shared>,
    port: u16,
    running: Mutex<Option<Running>>,
    last_error: Mutex<Option<DiscoveryError>>,
}

impl std::fmt::Debug for UdpDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpDiscovery")
            .field("port", &self.port)
            .field("service_name", &self.shared.local.service_name)
            .field("allowed", &self.shared.local.allowed)
            .finish_non_exhaustive()
    }
}

impl UdpDiscovery {
    /// Checks the configuration and derives the beacon key; binds nothing (see [`Discovery::register`]).
    /// Addresses not heard from for three `discovery.interval`s (at least 3 s) are forgotten.
    pub async fn new(config: &DiscoveryConfig, local: &LocalNode) -> Result<Self, DiscoveryError> {
        let setup = |reason: String| DiscoveryError::Setup {
            backend: BACKEND,
            reason,
        };
        if config.allowed_address_space.is_empty() {
            return Err(setup(
                "cluster_config.discovery.allowed_address_space: required for udp discovery (the CIDRs beacons are accepted from, e.g. [\"192.168.1.0/24\"])".into(),
            ));
        }
        let Some(port) = config.udp_broadcast_port else {
            return Err(setup(
                "cluster_config.discovery.udp_broadcast_port: required for udp discovery".into(),
            ));
        };
        let Some(service_name) = config.service_name.clone() else {
            return Err(setup(
                "cluster_config.discovery.service_name: required for udp discovery".into(),
            ));
        };
        let Some(secret) = &local.secret else {
            return Err(setup(
                "udp discovery authenticates beacons with the cluster secret: set security.cluster_secret (or BIFROST_CLUSTER_SECRET); certificate files alone cannot key the beacons".into(),
            ));
        };
        let interval = Duration::from_millis(config.interval.as_millis().max(1));
        Ok(UdpDiscovery {
            shared: Arc::new(Shared {
                local: Local {
                    key: BeaconKey::derive(secret)?,
                    service_name,
                    node_id: local.node_id.clone(),
                    gossip_addr: local.gossip_addr,
                    allowed: config.allowed_address_space.clone(),
                    expire_after: (3 * interval).max(Duration::from_secs(3)),
                },
                changed: Arc::new(Notify::new()),
                counters: Counters::default(),
                receiver: Mutex::new(Receiver::default()),
                random: SystemRandom::new(),
            }),
            port,
            running: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock_clean()
    }

    /// The broadcast targets: every broadcast-capable interface inside the space.
    fn targets(&self) -> Result<Vec<V4Interface>, DiscoveryError> {
        let all = interfaces::ipv4_interfaces().map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!("cannot list this host's interfaces: {e}"),
        })?;
        let inside: Vec<V4Interface> = interfaces::inside(&all, &self.shared.local.allowed)
            .into_iter()
            .filter(|i| i.broadcast.is_some() && !i.loopback)
            .collect();
        if inside.is_empty() {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!(
                    "cluster_config.discovery.allowed_address_space ({}) contains no address of this host's broadcast-capable interfaces ({}): this node cannot beacon to any allowed peer",
                    interfaces::describe_space(&self.shared.local.allowed),
                    interfaces::describe(&all)
                ),
            });
        }
        Ok(inside)
    }

    fn start(&self) -> Result<(), DiscoveryError> {
        if self.running().is_some() {
            return Ok(());
        }
        let targets = self.targets()?;
        let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port));
        let socket = bind_broadcast(bind).map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!(
                "cannot listen on udp {bind} (cluster_config.discovery.udp_broadcast_port): {e}"
            ),
        })?;
        let socket = Arc::new(socket);
        let receiver = tokio::spawn(receive(Arc::clone(&self.shared), Arc::clone(&socket)));
        tracing::info!(
            method = BACKEND,
            listen = %bind,
            broadcast = ?targets.iter().filter_map(|i| i.broadcast).collect::<Vec<_>>(),
            allowed = %interfaces::describe_space(&self.shared.local.allowed),
            "udp discovery: listening for beacons"
        );
        *self.running() = Some(Running { socket, receiver });
        Ok(())
    }

    async fn round(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let socket = self.running().as_ref().map(|r| Arc::clone(&r.socket));
        let Some(socket) = socket else {
            let last = self.last_error.lock_clean().clone();
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: match last {
                    Some(e) => format!("not listening for beacons: {e}"),
                    None => "not listening for beacons (not registered yet)".into(),
                },
            });
        };
        let due = self.shared.receiver().beacon_due(Instant::now());
        if due {
            let targets = self.targets()?;
            let datagram = self.shared.ours(BeaconKind::Beacon)?;
            let mut failures = Vec::new();
            for target in &targets {
                let Some(brd) = target.broadcast else {
                    continue;
                };
                let to = SocketAddr::from((brd, self.port));
                match socket.send_to(&datagram, to).await {
                    Ok(_) => {
                        self.shared
                            .counters
                            .beacons_sent
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("{to} ({}): {e}", target.name)),
                }
            }
            if failures.len() == targets.len() {
                return Err(DiscoveryError::Unreachable {
                    backend: BACKEND,
                    target: failures.join("; "),
                    reason: "cannot send a beacon to any broadcast address".into(),
                });
            }
            for failure in failures {
                tracing::warn!(method = BACKEND, "cannot send a udp beacon to {failure}");
            }
        }
        Ok(self.shared.current(Instant::now()))
    }

    fn stop(&self) {
        if let Some(running) = self.running().take() {
            running.receiver.abort();
        }
        self.shared.receiver().forget_candidates();
    }
}

impl Drop for UdpDiscovery {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `0.0.0.0:port` with `SO_REUSEADDR` and `SO_BROADCAST`, non-blocking, as a tokio socket.
fn bind_broadcast(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The receiver: judges every datagram, answers valid beacons, until aborted.
async fn receive(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(error) => {
                tracing::debug!(method = BACKEND, %error, "udp discovery: receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let datagram = if len > MAX_DATAGRAM {
            &buf[..0] // over-long: judged as malformed below
        } else {
            &buf[..len]
        };
        if let Some(answer) = shared.handle(datagram, src, Instant::now(), unix_ms()) {
            match socket.send_to(&answer, src).await {
                Ok(_) => {
                    shared.counters.answers_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(method = BACKEND, %src, %error, "cannot answer a udp beacon")
                }
            }
        }
    }
}

impl Discovery for UdpDiscovery {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.round())
    }

    fn register(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let result = self.start();
            *self.last_error.lock_clean() = result.clone().err();
            result
        })
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            self.stop();
            Ok(())
        })
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.shared.changed))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("beacons_sent", get(&c.beacons_sent)),
            ("answers_sent", get(&c.answers_sent)),
            ("beacons_accepted", get(&c.beacons_accepted)),
            ("beacons_rejected", get(&c.beacons_rejected)),
            ("beacons_replayed", get(&c.beacons_replayed)),
            ("beacons_outside_space", get(&c.beacons_outside_space)),
            ("beacons_foreign_service", get(&c.beacons_foreign_service)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::codec::fixtures::*;
    use super::*;
    use crate::config::ClusterSecret;

    fn shared(allowed: &[&str]) -> Shared {
        Shared {
            local: Local {
                key: key(SECRET),
                service_name: "bifrost-cluster".into(),
                node_id: "node-a".into(),
                gossip_addr: "10.77.0.1:10101".parse().expect("addr"),
                allowed: allowed.iter().map(|n| n.parse().expect("net")).collect(),
                expire_after: Duration::from_secs(30),
            },
            changed: Arc::new(Notify::new()),
            counters: Counters::default(),
            receiver: Mutex::new(Receiver::default()),
            random: SystemRandom::new(),
        }
    }

    fn src(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn the_receiver_answers_records_and_counts() {
        let s = shared(&["10.77.0.0/24"]);
        let now = Instant::now();
        let from_b = encode(
            &beacon(BeaconKind::Beacon, "node-b", "10.77.0.2:10101", NOW, 1),
            &s.local.key,
        )
        .expect("encode");
        // A valid beacon is recorded, wakes the loop, and is answered with an authenticated answer from us.
        let answer = s
            .handle(&from_b, src("10.77.0.2:9999"), now, NOW)
            .expect("answered");
        let answer = decode(&answer, &s.local.key).expect("our answer authenticates");
        assert_eq!(answer.kind, BeaconKind::Answer);
        assert_eq!(answer.node_id, "node-a");
        assert_eq!(
            answer.gossip_addr,
            "10.77.0.1:10101".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(s.current(now), vec![src("10.77.0.2:10101")]);
        // The same datagram again is a replay: dropped, not answered.
        assert!(s.handle(&from_b, src("10.77.0.2:9999"), now, NOW).is_none());
        // An answer is recorded but never answered.
        let from_c = encode(
            &beacon(BeaconKind::Answer, "node-c", "10.77.0.3:10101", NOW, 2),
            &s.local.key,
        )
        .expect("encode");
        assert!(s.handle(&from_c, src("10.77.0.3:9999"), now, NOW).is_none());
        assert_eq!(
            s.current(now),
            vec![src("10.77.0.2:10101"), src("10.77.0.3:10101")]
        );
        // Our own beacon looped back: ignored, nothing counted.
        let own = s.ours(BeaconKind::Beacon).expect("own");
        assert!(
            s.handle(&own, src("10.77.0.1:9999"), now, unix_ms())
                .is_none()
        );
        // Outside the space: counted before anything is parsed.
        assert!(s.handle(&from_b, src("10.78.0.2:9999"), now, NOW).is_none());
        // Wrong key, stale, foreign service.
        let forged = encode(
            &beacon(BeaconKind::Beacon, "evil", "10.77.0.9:10101", NOW, 3),
            &key("another-cluster-secret-0123456789"),
        )
        .expect("encode");
        assert!(s.handle(&forged, src("10.77.0.9:9999"), now, NOW).is_none());
        let stale = encode(
            &beacon(
                BeaconKind::Beacon,
                "node-d",
                "10.77.0.4:10101",
                NOW - 61_000,
                4,
            ),
            &s.local.key,
        )
        .expect("encode");
        assert!(s.handle(&stale, src("10.77.0.4:9999"), now, NOW).is_none());
        let mut foreign = beacon(BeaconKind::Beacon, "node-e", "10.77.0.5:10101", NOW, 5);
        foreign.service_name = "other".into();
        let foreign = encode(&foreign, &s.local.key).expect("encode");
        assert!(
            s.handle(&foreign, src("10.77.0.5:9999"), now, NOW)
                .is_none()
        );
        let counts: HashMap<&str, u64> = {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let c = &s.counters;
            HashMap::from([
                ("accepted", get(&c.beacons_accepted)),
                ("replayed", get(&c.beacons_replayed)),
                ("outside", get(&c.beacons_outside_space)),
                ("rejected", get(&c.beacons_rejected)),
                ("foreign", get(&c.beacons_foreign_service)),
            ])
        };
        assert_eq!(
            counts,
            HashMap::from([
                ("accepted", 2),
                ("replayed", 1),
                ("outside", 1),
                ("rejected", 2),
                ("foreign", 1)
            ])
        );
        assert_eq!(
            s.current(now),
            vec![src("10.77.0.2:10101"), src("10.77.0.3:10101")],
            "nothing refused was recorded"
        );
    }

    #[test]
    fn silent_nodes_expire() {
        let s = shared(&["10.77.0.0/24"]);
        let start = Instant::now();
        let from_b = encode(
            &beacon(BeaconKind::Answer, "node-b", "10.77.0.2:10101", NOW, 1),
            &s.local.key,
        )
        .expect("encode");
        assert!(
            s.handle(&from_b, src("10.77.0.2:9999"), start, NOW)
                .is_none()
        );
        assert_eq!(s.current(start + s.local.expire_after).len(), 1);
        assert!(
            s.current(start + s.local.expire_after + Duration::from_millis(1))
                .is_empty()
        );
    }

    fn config(f: impl FnOnce(&mut DiscoveryConfig)) -> DiscoveryConfig {
        let mut c = DiscoveryConfig {
            service_name: Some("bifrost-cluster".into()),
            udp_broadcast_port: Some(9999),
            allowed_address_space: vec!["10.77.0.0/24".parse().expect("net")],
            ..DiscoveryConfig::default()
        };
        f(&mut c);
        c
    }

    fn local(secret: bool) -> LocalNode {
        LocalNode {
            node_id: "node-a".into(),
            gossip_addr: "10.77.0.1:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: secret.then(|| ClusterSecret::new(SECRET).expect("secret")),
        }
    }

    #[tokio::test]
    async fn setup_refuses_without_space_port_service_or_secret() {
        let reason = |r: Result<UdpDiscovery, DiscoveryError>| match r {
            Err(DiscoveryError::Setup { backend, reason }) => {
                assert_eq!(backend, "udp");
                reason
            }
            other => panic!("expected a setup error, got {other:?}"),
        };
        let r = reason(
            UdpDiscovery::new(&config(|c| c.allowed_address_space.clear()), &local(true)).await,
        );
        assert!(r.contains("allowed_address_space"), "{r}");
        let r =
            reason(UdpDiscovery::new(&config(|c| c.udp_broadcast_port = None), &local(true)).await);
        assert!(r.contains("udp_broadcast_port"), "{r}");
        let r = reason(UdpDiscovery::new(&config(|c| c.service_name = None), &local(true)).await);
        assert!(r.contains("service_name"), "{r}");
        let r = reason(UdpDiscovery::new(&config(|_| {}), &local(false)).await);
        assert!(r.contains("security.cluster_secret"), "{r}");
        let ok = UdpDiscovery::new(&config(|_| {}), &local(true))
            .await
            .expect("valid");
        // Nothing is bound until register: a round says so instead of pretending to find nobody.
        assert!(matches!(
            ok.discover().await,
            Err(DiscoveryError::Setup { .. })
        ));
    }
}
