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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::filter::in_space;
use super::interfaces::{self, V4Interface};
use super::{BoxFuture, Discovery, DiscoveryError, LocalNode};
use crate::config::{ClusterSecret, DiscoveryConfig};
use crate::sync::LockClean;

const BACKEND: &str = "udp";

/// First bytes of every beacon.
pub const MAGIC: [u8; 4] = *b"BFCD";
/// The wire format version this build sends and accepts.
pub const VERSION: u8 = 1;
/// HKDF-SHA256 salt of the beacon key derivation.
pub const HKDF_SALT: &[u8] = b"bifrost-cluster/udp-discovery/v1";
/// HKDF-SHA256 `info` of the beacon key derivation.
pub const HKDF_INFO: &[u8] = b"bifrost-cluster/udp-discovery/hmac-sha256-key";
/// Largest accepted difference between a beacon's timestamp and this node's clock: 60 s either way.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Length of the random nonce.
pub const NONCE_LEN: usize = 16;
/// Length of the authentication tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Longest `service_name` and node id a beacon carries (the config's limit for both).
pub const MAX_NAME_LEN: usize = 128;
/// The shortest gap between two beacons this node broadcasts, however often the loop runs.
pub const MIN_BEACON_GAP: Duration = Duration::from_secs(1);
/// Largest datagram read; a longer one is malformed (a beacon is at most a few hundred bytes).
const MAX_DATAGRAM: usize = 1024;
/// Beacons remembered for replay detection (beyond it, the oldest half is forgotten).
const MAX_NONCES: usize = 16_384;
/// Rate limit of the rejection warnings: one per source address and reason per minute.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A beacon's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeaconKind {
    /// A broadcast announcement, answered by every peer that accepts it.
    Beacon,
    /// A unicast answer to a beacon; never answered.
    Answer,
}

impl BeaconKind {
    fn byte(self) -> u8 {
        match self {
            BeaconKind::Beacon => 1,
            BeaconKind::Answer => 2,
        }
    }
}

/// The content of a beacon or an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    /// Beacon or answer.
    pub kind: BeaconKind,
    /// The sender's `discovery.service_name`.
    pub service_name: String,
    /// The sender's node id.
    pub node_id: String,
    /// The gossip address the sender advertises.
    pub gossip_addr: SocketAddr,
    /// The sender's clock when it sent this, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Random bytes, unique per datagram (replay detection).
    pub nonce: [u8; NONCE_LEN],
}

/// Why a datagram was not accepted as a beacon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// Not a well-formed beacon (wrong magic, truncated, trailing bytes, a bad field).
    #[error("malformed beacon: {0}")]
    Malformed(String),
    /// A beacon of a version this build does not speak.
    #[error("unsupported beacon version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The HMAC does not match: another cluster secret, or a forged or corrupted datagram.
    #[error("authentication failed (another cluster secret, or a forged or corrupted beacon)")]
    Unauthenticated,
    /// The timestamp is too far from this node's clock (an old beacon replayed, or a clock off by minutes).
    #[error("stale beacon: its timestamp is {skew_ms} ms from this node's clock (limit {} ms)", MAX_SKEW.as_millis())]
    Stale {
        /// `|beacon timestamp - now|` in milliseconds.
        skew_ms: u64,
    },
    /// A beacon of another cluster (another `service_name`).
    #[error("beacon for service {0:?}, not ours")]
    ForeignService(String),
}

/// The key beacons are authenticated with, derived from the cluster secret.
#[derive(Clone)]
pub struct BeaconKey(hmac::Key);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeaconKey(<redacted>)")
    }
}

impl BeaconKey {
    /// HKDF-SHA256(secret, salt [`HKDF_SALT`], info [`HKDF_INFO`]) → 32-byte HMAC-SHA256 key.
    pub fn derive(secret: &ClusterSecret) -> Result<BeaconKey, DiscoveryError> {
        hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT)
            .extract(secret.expose_secret().as_bytes())
            .expand(&[HKDF_INFO], hmac::HMAC_SHA256)
            .map(|okm| BeaconKey(hmac::Key::from(okm)))
            .map_err(|_| DiscoveryError::Setup {
                backend: BACKEND,
                reason: "cannot derive the beacon key from security.cluster_secret (HKDF-SHA256)"
                    .into(),
            })
    }
}

/// Serializes and authenticates `beacon`. Names longer than [`MAX_NAME_LEN`] bytes are refused.
pub fn encode(beacon: &Beacon, key: &BeaconKey) -> Result<Vec<u8>, BeaconError> {
    let mut out = Vec::with_capacity(96 + beacon.service_name.len() + beacon.node_id.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(beacon.kind.byte());
    out.extend_from_slice(&beacon.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&beacon.nonce);
    match beacon.gossip_addr.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&beacon.gossip_addr.port().to_be_bytes());
    for (what, name) in [
        ("service_name", &beacon.service_name),
        ("node id", &beacon.node_id),
    ] {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(BeaconError::Malformed(format!(
                "{what} must be 1..={MAX_NAME_LEN} bytes, got {}",
                name.len()
            )));
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// A cursor over a datagram that never reads past its end.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], BeaconError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len());
        match end {
            Some(end) => {
                let out = &self.data[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(BeaconError::Malformed(format!(
                "truncated at {what} (byte {} of {})",
                self.at,
                self.data.len()
            ))),
        }
    }

    fn byte(&mut self, what: &str) -> Result<u8, BeaconError> {
        Ok(self.take(1, what)?[0])
    }

    fn name(&mut self, what: &str) -> Result<String, BeaconError> {
        let len = usize::from(self.byte(what)?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(BeaconError::Malformed(format!(
                "{what} length {len} (expected 1..={MAX_NAME_LEN})"
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| BeaconError::Malformed(format!("{what} is not UTF-8")))
    }
}

/// Parses and authenticates a datagram. Does not judge the timestamp or the service name (see [`check`]).
pub fn decode(datagram: &[u8], key: &BeaconKey) -> Result<Beacon, BeaconError> {
    if datagram.len() < MAGIC.len() + 1 || datagram[..MAGIC.len()] != MAGIC {
        return Err(BeaconError::Malformed(
            "not a beacon (no BFCD magic)".into(),
        ));
    }
    if datagram[MAGIC.len()] != VERSION {
        return Err(BeaconError::UnsupportedVersion(datagram[MAGIC.len()]));
    }
    if datagram.len() < MAGIC.len() + 2 + TAG_LEN {
        return Err(BeaconError::Malformed(format!(
            "{} bytes is too short",
            datagram.len()
        )));
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    // Authenticate before reading any field: an unauthenticated datagram is never interpreted.
    hmac::verify(&key.0, body, tag).map_err(|_| BeaconError::Unauthenticated)?;
    let mut r = Reader { data: body, at: 5 };
    let kind = match r.byte("kind")? {
        1 => BeaconKind::Beacon,
        2 => BeaconKind::Answer,
        other => return Err(BeaconError::Malformed(format!("unknown kind {other}"))),
    };
    let mut ts = [0u8; 8];
    ts.copy_from_slice(r.take(8, "timestamp")?);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(r.take(NONCE_LEN, "nonce")?);
    let ip = match r.byte("address family")? {
        4 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(r.take(4, "IPv4 address")?);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(r.take(16, "IPv6 address")?);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => {
            return Err(BeaconError::Malformed(format!(
                "unknown address family {other}"
            )));
        }
    };
    let mut port = [0u8; 2];
    port.copy_from_slice(r.take(2, "port")?);
    let service_name = r.name("service_name")?;
    let node_id = r.name("node id")?;
    if r.at != body.len() {
        return Err(BeaconError::Malformed(format!(
            "{} trailing bytes",
            body.len() - r.at
        )));
    }
    Ok(Beacon {
        kind,
        service_name,
        node_id,
        gossip_addr: SocketAddr::new(ip, u16::from_be_bytes(port)),
        timestamp_ms: u64::from_be_bytes(ts),
        nonce,
    })
}

/// Whether an authenticated beacon is for `service_name` and fresh at `now_ms` (within [`MAX_SKEW`]).
pub fn check(beacon: &Beacon, now_ms: u64, service_name: &str) -> Result<(), BeaconError> {
    if beacon.service_name != service_name {
        return Err(BeaconError::ForeignService(beacon.service_name.clone()));
    }
    let skew_ms = now_ms.abs_diff(beacon.timestamp_ms);
    if u128::from(skew_ms) > MAX_SKEW.as_millis() {
        return Err(BeaconError::Stale { skew_ms });
    }
    Ok(())
}

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

#[derive(Debug, Clone)]
struct Candidate {
    node_id: String,
    heard: Instant,
}

#[derive(Debug, Default)]
struct State {
    candidates: HashMap<SocketAddr, Candidate>,
    nonces: HashMap<[u8; NONCE_LEN], Instant>,
    logged: HashMap<(IpAddr, &'static str), Instant>,
    last_beacon: Option<Instant>,
}

/// What the receiver and the rounds share.
struct Shared {
    key: BeaconKey,
    service_name: String,
    node_id: String,
    gossip_addr: SocketAddr,
    allowed: Vec<IpNet>,
    expire_after: Duration,
    changed: Arc<Notify>,
    counters: Counters,
    state: Mutex<State>,
    random: SystemRandom,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock_clean()
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
        encode(
            &Beacon {
                kind,
                service_name: self.service_name.clone(),
                node_id: self.node_id.clone(),
                gossip_addr: self.gossip_addr,
                timestamp_ms: unix_ms(),
                nonce,
            },
            &self.key,
        )
        .map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!("cannot build a beacon: {e}"),
        })
    }

    /// Whether to log a rejection of `reason` from `src` now (one per source and reason per minute).
    fn should_log(state: &mut State, src: IpAddr, reason: &'static str, now: Instant) -> bool {
        if state.logged.len() > 1_024 {
            state.logged.clear();
        }
        match state.logged.get(&(src, reason)) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                state.logged.insert((src, reason), now);
                true
            }
        }
    }

    /// Judges one datagram from `src`; returns the answer to send back, if any.
    fn handle(
        &self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let c = &self.counters;
        if !in_space(src.ip(), &self.allowed) {
            let n = c.beacons_outside_space.fetch_add(1, Ordering::Relaxed) + 1;
            if Self::should_log(&mut self.state(), src.ip(), "outside", now) {
                tracing::warn!(
                    method = BACKEND,
                    %src,
                    beacons_outside_space = n,
                    allowed = %interfaces::describe_space(&self.allowed),
                    "not in allowed address space: ignoring udp beacon from {src}"
                );
            }
            return None;
        }
        let beacon = match decode(datagram, &self.key) {
            Ok(beacon) => beacon,
            Err(error) => {
                self.rejected(src, &error, now);
                return None;
            }
        };
        if beacon.node_id == self.node_id && beacon.gossip_addr == self.gossip_addr {
            return None; // our own broadcast, looped back
        }
        match check(&beacon, now_ms, &self.service_name) {
            Ok(()) => {}
            Err(BeaconError::ForeignService(other)) => {
                c.beacons_foreign_service.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = BACKEND, %src, service = %other, "udp beacon of another service ignored");
                return None;
            }
            Err(error) => {
                self.rejected(src, &error, now);
                return None;
            }
        }
        let mut state = self.state();
        if state.nonces.contains_key(&beacon.nonce) {
            drop(state);
            c.beacons_replayed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method = BACKEND, %src, node = %beacon.node_id, "replayed udp beacon ignored");
            return None;
        }
        if state.nonces.len() >= MAX_NONCES {
            let horizon = 2 * MAX_SKEW;
            state
                .nonces
                .retain(|_, at| now.duration_since(*at) < horizon);
            if state.nonces.len() >= MAX_NONCES {
                state.nonces.clear();
            }
        }
        state.nonces.insert(beacon.nonce, now);
        c.beacons_accepted.fetch_add(1, Ordering::Relaxed);
        let new = state
            .candidates
            .insert(
                beacon.gossip_addr,
                Candidate {
                    node_id: beacon.node_id.clone(),
                    heard: now,
                },
            )
            .is_none_or(|old| now.duration_since(old.heard) > self.expire_after);
        drop(state);
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
        if beacon.kind != BeaconKind::Beacon {
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

    fn rejected(&self, src: SocketAddr, error: &BeaconError, now: Instant) {
        let n = self
            .counters
            .beacons_rejected
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let reason = match error {
            BeaconError::Malformed(_) => "malformed",
            BeaconError::UnsupportedVersion(_) => "version",
            BeaconError::Unauthenticated => "unauthenticated",
            BeaconError::Stale { .. } => "stale",
            BeaconError::ForeignService(_) => "foreign",
        };
        if Self::should_log(&mut self.state(), src.ip(), reason, now) {
            tracing::warn!(
                method = BACKEND,
                %src,
                beacons_rejected = n,
                "udp beacon rejected from {src}: {error}"
            );
        }
    }

    /// The addresses heard from within `expire_after`; forgets the others.
    fn current(&self, now: Instant) -> Vec<SocketAddr> {
        let mut state = self.state();
        let expire_after = self.expire_after;
        state
            .candidates
            .retain(|_, c| now.duration_since(c.heard) <= expire_after);
        let mut out: Vec<(SocketAddr, String)> = state
            .candidates
            .iter()
            .map(|(addr, c)| (*addr, c.node_id.clone()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        out.into_iter().map(|(addr, _)| addr).collect()
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
            .field("service_name", &self.shared.service_name)
            .field("allowed", &self.shared.allowed)
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
                key: BeaconKey::derive(secret)?,
                service_name,
                node_id: local.node_id.clone(),
                gossip_addr: local.gossip_addr,
                allowed: config.allowed_address_space.clone(),
                expire_after: (3 * interval).max(Duration::from_secs(3)),
                changed: Arc::new(Notify::new()),
                counters: Counters::default(),
                state: Mutex::new(State::default()),
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
        let inside: Vec<V4Interface> = interfaces::inside(&all, &self.shared.allowed)
            .into_iter()
            .filter(|i| i.broadcast.is_some() && !i.loopback)
            .collect();
        if inside.is_empty() {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!(
                    "cluster_config.discovery.allowed_address_space ({}) contains no address of this host's broadcast-capable interfaces ({}): this node cannot beacon to any allowed peer",
                    interfaces::describe_space(&self.shared.allowed),
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
            allowed = %interfaces::describe_space(&self.shared.allowed),
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
        let now = Instant::now();
        let due = {
            let mut state = self.shared.state();
            let due = state
                .last_beacon
                .is_none_or(|at| now.duration_since(at) >= MIN_BEACON_GAP);
            if due {
                state.last_beacon = Some(now);
            }
            due
        };
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
        self.shared.state().candidates.clear();
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
    use super::*;

    const SECRET: &str = "unit-test-cluster-secret-0123456789";

    fn key(secret: &str) -> BeaconKey {
        BeaconKey::derive(&ClusterSecret::new(secret).expect("secret")).expect("key")
    }

    fn beacon(kind: BeaconKind, node: &str, addr: &str, ts: u64, nonce: u8) -> Beacon {
        Beacon {
            kind,
            service_name: "bifrost-cluster".into(),
            node_id: node.into(),
            gossip_addr: addr.parse().expect("addr"),
            timestamp_ms: ts,
            nonce: [nonce; NONCE_LEN],
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn the_key_is_hkdf_sha256_of_the_secret() {
        // Vector computed with Python's hmac module: prk = HMAC(salt, secret), key = HMAC(prk, info || 0x01).
        let tag = hmac::sign(&key(SECRET).0, b"hello");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "4aa8254fa7def6e652abbbb04fdf154022840ca82ec472ea0dd8c9b8835e570b"
        );
    }

    #[test]
    fn a_beacon_round_trips_for_both_address_families() {
        let k = key(SECRET);
        for b in [
            beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 1),
            beacon(BeaconKind::Answer, "n.b_c-9", "[fd00::7]:4000", NOW + 5, 2),
        ] {
            let bytes = encode(&b, &k).expect("encode");
            assert_eq!(&bytes[..4], b"BFCD");
            assert_eq!(decode(&bytes, &k), Ok(b.clone()));
            assert_eq!(check(&b, NOW, "bifrost-cluster"), Ok(()));
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let k = key(SECRET);
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &k,
        )
        .expect("encode");
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad, &k).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn a_wrong_key_is_refused_as_unauthenticated() {
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &key(SECRET),
        )
        .expect("encode");
        assert_eq!(
            decode(&bytes, &key("another-cluster-secret-0123456789")),
            Err(BeaconError::Unauthenticated)
        );
    }

    #[test]
    fn truncated_extended_and_foreign_datagrams_are_malformed() {
        let k = key(SECRET);
        let bytes = encode(
            &beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 7),
            &k,
        )
        .expect("encode");
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &k).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &k).is_err());
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\n\r\n", &k),
            Err(BeaconError::Malformed(_))
        ));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2, &k), Err(BeaconError::UnsupportedVersion(2)));
        // A well-authenticated body with trailing bytes inside the MAC is still refused.
        let mut body = bytes[..bytes.len() - TAG_LEN].to_vec();
        body.push(0);
        let tag = hmac::sign(&k.0, &body);
        body.extend_from_slice(tag.as_ref());
        assert!(matches!(decode(&body, &k), Err(BeaconError::Malformed(_))));
    }

    #[test]
    fn stale_and_foreign_service_beacons_are_refused() {
        let skew = MAX_SKEW.as_millis() as u64;
        let b = |ts| beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", ts, 1);
        assert_eq!(check(&b(NOW - skew), NOW, "bifrost-cluster"), Ok(()));
        assert_eq!(check(&b(NOW + skew), NOW, "bifrost-cluster"), Ok(()));
        assert_eq!(
            check(&b(NOW - skew - 1), NOW, "bifrost-cluster"),
            Err(BeaconError::Stale { skew_ms: skew + 1 })
        );
        assert!(matches!(
            check(&b(NOW + 5 * skew), NOW, "bifrost-cluster"),
            Err(BeaconError::Stale { .. })
        ));
        assert_eq!(
            check(&b(NOW), NOW, "other-cluster"),
            Err(BeaconError::ForeignService("bifrost-cluster".into()))
        );
    }

    #[test]
    fn names_longer_than_the_limit_are_not_encoded() {
        let mut b = beacon(BeaconKind::Beacon, "node-a", "10.77.0.1:10101", NOW, 1);
        b.node_id = "x".repeat(MAX_NAME_LEN + 1);
        assert!(encode(&b, &key(SECRET)).is_err());
        b.node_id = "x".repeat(MAX_NAME_LEN);
        assert!(encode(&b, &key(SECRET)).is_ok());
    }

    fn shared(allowed: &[&str]) -> Shared {
        Shared {
            key: key(SECRET),
            service_name: "bifrost-cluster".into(),
            node_id: "node-a".into(),
            gossip_addr: "10.77.0.1:10101".parse().expect("addr"),
            allowed: allowed.iter().map(|n| n.parse().expect("net")).collect(),
            expire_after: Duration::from_secs(30),
            changed: Arc::new(Notify::new()),
            counters: Counters::default(),
            state: Mutex::new(State::default()),
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
            &s.key,
        )
        .expect("encode");
        // A valid beacon is recorded, wakes the loop, and is answered with an authenticated answer from us.
        let answer = s
            .handle(&from_b, src("10.77.0.2:9999"), now, NOW)
            .expect("answered");
        let answer = decode(&answer, &s.key).expect("our answer authenticates");
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
            &s.key,
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
            &s.key,
        )
        .expect("encode");
        assert!(s.handle(&stale, src("10.77.0.4:9999"), now, NOW).is_none());
        let mut foreign = beacon(BeaconKind::Beacon, "node-e", "10.77.0.5:10101", NOW, 5);
        foreign.service_name = "other".into();
        let foreign = encode(&foreign, &s.key).expect("encode");
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
            &s.key,
        )
        .expect("encode");
        assert!(
            s.handle(&from_b, src("10.77.0.2:9999"), start, NOW)
                .is_none()
        );
        assert_eq!(s.current(start + s.expire_after).len(), 1);
        assert!(
            s.current(start + s.expire_after + Duration::from_millis(1))
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
