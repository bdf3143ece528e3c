//! Starting and stopping a node: [`Cluster::start`] and the [`ClusterHandle`] a gateway keeps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::advertise;
use super::discovery_loop::{self, DiscoveryLoop, DiscoveryMethodStats, SharedDiscoveryStats};
use super::driver::{Driver, DriverParts, NodeStatus, PeerInfo};
use super::error::NodeError;
use super::events::{ConfigCommand, Event};
use super::health_probe::HEALTH_INTERVAL;
use super::health_probe::HealthProbe;
use super::hello;
use super::identity;
use super::link_tasks::{self, HelloSetup};
use super::options::{self, MachineIdentity, MachineSeeds, MachineSetup};
use super::persistence::Persistence;
use super::shared_view::SharedView;
use super::system_clock::{self, SystemClock};
use crate::ReplicaId;
use crate::config::NodeId;
use crate::config::{CLUSTER_SECRET_ENV, ClusterConfig, Trust};
use crate::counter::{Clock, CoarseClock, CounterStore, Window};
use crate::discovery::{self, Discovery, DiscoveryOverrides, LocalNode};
use crate::membership::{ClusterHealth, MemberTable, MembershipOptions, MembershipReader};
use crate::replication::ReplicationStats;
use crate::state::{ConfigChange, NodeHealthView, StateError, Timestamp, TrafficRecorder};
use crate::sync::LockClean;
use crate::transport::{TlsSetup, Transport, TransportOptions};

/// Options of a node beyond `cluster_config`.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The IP the gossip port binds to. Default `0.0.0.0` (every interface); tests use `127.0.0.1`.
    pub bind_ip: IpAddr,
    /// QUIC timeouts and buffers.
    pub transport: TransportOptions,
    /// The cluster secret from the environment (`BIFROST_CLUSTER_SECRET`), when the config has none. Default:
    /// read from the environment at start.
    pub env_secret: Option<String>,
    /// Membership timing. Default `None`: the defaults of [`MembershipOptions`] with the health thresholds of
    /// `gossip.config`. Tests shorten the timers here.
    pub membership: Option<MembershipOptions>,
    /// Discovery backend knobs beyond `cluster_config` (e.g. the etcd lease TTL). Default: each backend's
    /// documented defaults. Tests shorten timers here.
    pub discovery_overrides: DiscoveryOverrides,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            transport: TransportOptions::default(),
            env_secret: std::env::var(CLUSTER_SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty()),
            membership: None,
            discovery_overrides: DiscoveryOverrides::default(),
        }
    }
}

/// Starts nodes.
#[derive(Debug)]
pub struct Cluster;

/// The shared-state options a config asks for: the config map bounds of `limits`, defaults for the rest.
/// The window traffic patterns are counted in ([`ClusterHandle::traffic`]): one minute.
pub const TRAFFIC_WINDOW: Window = Window::MINUTE;

/// Why a config-entry call failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// The map refused the write (full, key or value too large); nothing was written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node has shut down (or cluster mode is off: the config map is a cluster feature).
    #[error(
        "the node is not running in cluster mode (stopped, or cluster_config.enabled is false)"
    )]
    NotRunning,
    /// The value is not valid JSON for the type asked for, or could not be serialized.
    #[error("config value of {key:?}: {error}")]
    Json {
        /// The key.
        key: String,
        /// What serde said.
        error: String,
    },
}

struct Inner {
    node_id: String,
    replica_id: ReplicaId,
    store: CounterStore,
    clock: Arc<CoarseClock>,
    status: Arc<Mutex<NodeStatus>>,
    traffic: TrafficRecorder,
    /// Ticks the coarse clock; stopped only when the last handle is dropped.
    ticker: JoinHandle<()>,
    /// What cluster mode runs (`None` with cluster mode off: the node counts locally only).
    cluster: Option<ClusterParts>,
    /// The snapshot writer (`None` without `storage.path`).
    persistence: Option<Persistence>,
}

/// The parts of a node in cluster mode.
struct ClusterParts {
    local_addr: SocketAddr,
    advertised_addr: SocketAddr,
    members: MembershipReader,
    shared: Arc<SharedView>,
    events: mpsc::Sender<Event>,
    transport: Arc<Transport>,
    /// The discovery loop (stopped first on shutdown).
    discovery: Mutex<Option<JoinHandle<()>>>,
    discovery_stats: SharedDiscoveryStats,
    /// The discovery methods (deregistered on shutdown, after the final flush).
    methods: Vec<Arc<dyn Discovery>>,
    dial_timeout: Duration,
    /// The acceptor and the driver.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What every node has, cluster mode or not.
struct LocalParts {
    node_id: NodeId,
    replica_id: ReplicaId,
    clock: Arc<CoarseClock>,
    store: CounterStore,
    ticker: JoinHandle<()>,
    traffic: TrafficRecorder,
    status: Arc<Mutex<NodeStatus>>,
    persistence: Option<Persistence>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(cluster) = &mut self.cluster {
            if let Some(discovery) = cluster.discovery.get_mut().ok().and_then(Option::take) {
                discovery.abort();
            }
            if let Ok(tasks) = cluster.tasks.get_mut() {
                tasks.iter().for_each(JoinHandle::abort);
            }
        }
    }
}

/// A running node: the counter store for the hot path, status, and shutdown. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("node_id", &self.inner.node_id)
            .field("replica_id", &format_args!("{}", self.inner.replica_id))
            .field(
                "local_addr",
                &self.inner.cluster.as_ref().map(|c| c.local_addr),
            )
            .finish()
    }
}

impl Cluster {
    /// Starts a node from `config` with default [`NodeOptions`]. Must be called inside a tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<ClusterHandle, NodeError> {
        Cluster::start_with(config, NodeOptions::default()).await
    }

    /// Starts a node. With `enabled: false` the node counts locally only (no port is bound). With cluster mode
    /// on, it binds `gossip.port`, links to every static peer (retrying with backoff) and accepts the others.
    pub async fn start_with(
        config: ClusterConfig,
        options: NodeOptions,
    ) -> Result<ClusterHandle, NodeError> {
        let env_secret = options.env_secret.as_deref();
        let mut problems = config.validate();
        problems.extend(config.run_requirements(env_secret));
        if !problems.is_empty() {
            return Err(NodeError::Config(problems));
        }
        let local = LocalParts::new(&config)?;
        let cluster = if config.enabled {
            Some(Self::start_cluster(&config, &options, &local).await?)
        } else {
            tracing::info!(node = %local.node_id, "cluster mode off: counting locally only");
            None
        };
        let LocalParts {
            node_id,
            replica_id,
            clock,
            store,
            ticker,
            traffic,
            status,
            persistence,
        } = local;
        Ok(ClusterHandle {
            inner: Arc::new(Inner {
                node_id: node_id.as_str().to_string(),
                replica_id,
                store,
                clock,
                status,
                traffic,
                ticker,
                cluster,
                persistence,
            }),
        })
    }

    /// Binds the transport, builds the node's machine, and starts the acceptor, the driver and discovery.
    async fn start_cluster(
        config: &ClusterConfig,
        options: &NodeOptions,
        local: &LocalParts,
    ) -> Result<ClusterParts, NodeError> {
        let env_secret = options.env_secret.as_deref();
        let (node_id, replica_id) = (&local.node_id, local.replica_id);
        let trust = config
            .trust(env_secret)
            .map_err(|e| NodeError::Config(vec![e]))?;
        let tls = TlsSetup::from_trust(&trust, node_id)?;
        let trust_mode = tls.mode();
        let transport_options = options.transport.clone();
        let hello_timeout = transport_options.connect_timeout;
        let transport = Arc::new(Transport::bind(
            SocketAddr::new(options.bind_ip, config.gossip.port),
            tls,
            transport_options,
        )?);
        let local_addr = transport.local_addr();
        let advertised = advertise::choose(config.gossip.advertise_address.as_ref(), local_addr);

        let setup = MachineSetup {
            identity: MachineIdentity {
                node_id: node_id.as_str().to_string(),
                replica_id,
                advertised: advertised.addr,
            },
            membership: options::membership_options(config, options.membership.as_ref()),
            seeds: MachineSeeds {
                replicator: identity::random_u64()?,
                membership: identity::random_u64()?,
                state: identity::random_u64()?,
            },
        };
        let machine = options::build_machine(
            config,
            setup,
            &local.store,
            local.traffic.clone(),
            Box::new(HealthProbe::default()),
            local.clock.now_unix_ms().get(),
        )?;
        let members = machine.membership().reader();

        let methods: Vec<Arc<dyn Discovery>> = discovery::from_config(
            config,
            &LocalNode {
                node_id: node_id.as_str().to_string(),
                gossip_addr: advertised.addr,
                gossip_port: config.gossip.port,
                secret: match &trust {
                    Trust::Secret(secret) => Some(secret.clone()),
                    _ => None,
                },
            },
            &options.discovery_overrides,
        )
        .await?
        .into_iter()
        .map(Arc::from)
        .collect();
        let (events_tx, events_rx) = mpsc::channel(4_096);
        let hello = HelloSetup {
            ours: hello::own_hello(node_id.as_str(), replica_id, advertised.addr),
            trust: trust_mode,
            timeout: hello_timeout,
            refused: Arc::default(),
        };
        let mut tasks = vec![link_tasks::spawn_acceptor(
            Arc::clone(&transport),
            hello.clone(),
            events_tx.clone(),
        )];
        let shared = Arc::new(SharedView::new());
        let driver = Driver::new(DriverParts {
            machine,
            clock: Arc::clone(&local.clock),
            events: events_tx.clone(),
            status: Arc::clone(&local.status),
            transport: Arc::clone(&transport),
            hello,
            shared: Arc::clone(&shared),
        });
        tasks.push(tokio::spawn(driver.run(events_rx)));
        let dial_timeout = Duration::from_millis(config.discovery.dial_timeout.as_millis());
        let discovery_stats: SharedDiscoveryStats = Arc::default();
        let discovery_task = DiscoveryLoop {
            methods: methods.clone(),
            allowed: config.discovery.allowed_address_space.clone(),
            // This node's own addresses: a shared peer list or a registry lists us too.
            own: vec![local_addr, advertised.addr],
            interval: Duration::from_millis(config.discovery.interval.as_millis()),
            timeout: dial_timeout,
            members: members.clone(),
            events: events_tx.clone(),
            stats: Arc::clone(&discovery_stats),
        }
        .spawn();
        tracing::info!(
            node = %node_id,
            replica = %replica_id,
            address = %local_addr,
            advertised = %advertised.addr,
            advertised_from = advertised.source,
            peers = config.peers.len(),
            discovery = ?methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "node started"
        );
        Ok(ClusterParts {
            local_addr,
            advertised_addr: advertised.addr,
            members,
            shared,
            events: events_tx,
            transport,
            discovery: Mutex::new(Some(discovery_task)),
            discovery_stats,
            methods,
            dial_timeout,
            tasks: Mutex::new(tasks),
        })
    }
}

impl LocalParts {
    /// The node's identity, clock, store and traffic recorder; the clock starts ticking.
    fn new(config: &ClusterConfig) -> Result<LocalParts, NodeError> {
        let node_id = identity::resolve_node_id(config.node_id.as_ref())?;
        let replica_id = ReplicaId::new(identity::random_u64()?);
        let clock = Arc::new(CoarseClock::new(SystemClock.now_unix_ms()));
        let store = CounterStore::new(options::store_options(
            config,
            replica_id,
            identity::random_u64()?,
            Arc::clone(&clock),
        ));
        // The snapshot goes in before anything serves or replicates.
        let persistence = Persistence::start(config, node_id.as_str(), &store, &clock)?;
        // The clock ticks until the last handle is dropped: the store stays usable after `shutdown`.
        let ticker = system_clock::spawn_ticker(Arc::clone(&clock));
        let traffic = TrafficRecorder::new(store.clone(), TRAFFIC_WINDOW);
        Ok(LocalParts {
            node_id,
            replica_id,
            clock,
            store,
            ticker,
            traffic,
            status: Arc::new(Mutex::new(NodeStatus::default())),
            persistence,
        })
    }
}

impl ClusterHandle {
    /// The counter store: resolve handles once, then call `add` / `try_acquire` on the hot path.
    pub fn store(&self) -> &CounterStore {
        &self.inner.store
    }

    /// Resets `(key, window)` cluster-wide in `epoch` (default: the current window): every origin's value as
    /// this node holds it becomes that origin's floor, so the count drops to what is counted from now on, here
    /// at once and on every other node as the floors replicate (at the next flush; nodes that miss them, or
    /// were down, get them through anti-entropy). Adds after the reset keep counting everywhere, including on a
    /// node whose count had saturated. `None` when the key is unknown here or the epoch is not in its ring
    /// (nothing to reset). This is an admin operation: the HTTP route requires the `admin` scope.
    pub fn reset_counter(
        &self,
        key: &str,
        window: crate::counter::Window,
        epoch: Option<u64>,
    ) -> Option<crate::counter::ResetReport> {
        let epoch = epoch.unwrap_or_else(|| window.epoch_at(self.inner.clock.now_unix_ms()));
        let report = self.inner.store.reset(key, window, epoch)?;
        tracing::info!(
            key,
            %window,
            epoch,
            before = report.before,
            origins = report.floors.len(),
            "counter reset: floors set for every origin, replicating to the cluster"
        );
        Some(report)
    }

    /// The coarse clock the store reads (ticked every millisecond by the node).
    pub fn clock(&self) -> &Arc<CoarseClock> {
        &self.inner.clock
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// This process's replica id.
    pub fn replica_id(&self) -> ReplicaId {
        self.inner.replica_id
    }

    /// The bound gossip address (`None` with cluster mode off).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.cluster.as_ref().map(|c| c.local_addr)
    }

    /// The gossip address this node advertises to the others (`None` with cluster mode off).
    pub fn advertised_addr(&self) -> Option<SocketAddr> {
        self.inner.cluster.as_ref().map(|c| c.advertised_addr)
    }

    /// The member table: every known member with its state, health, incarnation, last-seen time and round
    /// trip, and the cluster health. Lock-free (an `arc-swap` snapshot). `None` with cluster mode off.
    pub fn members(&self) -> Option<Arc<MemberTable>> {
        self.inner.cluster.as_ref().map(|c| c.members.load())
    }

    /// A reader of the member table for other threads (lock-free). `None` with cluster mode off.
    pub fn membership_reader(&self) -> Option<MembershipReader> {
        self.inner.cluster.as_ref().map(|c| c.members.clone())
    }

    /// Cluster health (`HEALTHY` / `NOT HEALTHY`, rule in [`crate::membership`]). A node with cluster mode off
    /// is a healthy cluster of one.
    pub fn cluster_health(&self) -> ClusterHealth {
        self.members()
            .map_or(ClusterHealth::Healthy, |t| t.cluster_health)
    }

    /// Ready to serve as a cluster member (`/ready`): not a refused duplicate (see
    /// [`crate::membership::LocalInfo::refused_by`]), and cluster mode is off, or this node is joined, or its
    /// start-up join is over — it joined once, had nobody to join, or gave up after
    /// `discovery.dial_timeout` (it then runs alone and keeps retrying, logging "failed to join cluster").
    /// Giving up counts as ready so a StatefulSet that starts pods one by one never waits on itself.
    pub fn is_ready(&self) -> bool {
        match self.members() {
            None => true,
            // A refused duplicate (a live member holds this node id) is not ready until it takes over.
            Some(table) if table.local.refused_by.is_some() => false,
            Some(table) => {
                table.local.state == crate::membership::LocalState::Joined
                    || self.inner.status.lock_clean().join_settled
            }
        }
    }

    /// Traffic patterns: `cluster.traffic().handle("openai/gpt-4o")?.record(latency, Outcome::Ok)` on the hot
    /// path; [`TrafficRecorder::read`] for the cluster's and each node's view, per window of
    /// [`TRAFFIC_WINDOW`].
    pub fn traffic(&self) -> &TrafficRecorder {
        &self.inner.traffic
    }

    /// Every node's latest health record (this node's included) and its age, sorted by node id. A node that
    /// stopped publishing (dead) drops out after three publication intervals (6 s).
    pub fn nodes(&self) -> Vec<NodeHealthView> {
        let Some(shared) = self.inner.cluster.as_ref().map(|c| &c.shared) else {
            return Vec::new();
        };
        let expire = 3 * HEALTH_INTERVAL.as_millis() as u64;
        shared
            .records
            .load()
            .view(self.inner.clock.now_unix_ms().get(), expire)
    }

    /// The leader: the healthy member with the lowest node id (this node counts while it is in the cluster or
    /// alone), re-evaluated on every membership change. The reference's rule, for work only one node should do.
    /// With cluster mode off, this node.
    pub fn leader(&self) -> Option<String> {
        let Some(table) = self.members() else {
            return Some(self.inner.node_id.clone());
        };
        let me = (table.local.refused_by.is_none()
            && matches!(
                table.local.state,
                crate::membership::LocalState::Joined | crate::membership::LocalState::Alone
            ))
        .then_some(self.inner.node_id.as_str());
        table
            .members
            .iter()
            .filter(|m| m.state.is_active() && m.healthy)
            .map(|m| m.node_id())
            .chain(me)
            .min()
            .map(str::to_string)
    }

    async fn config_call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Timestamp, StateError>>) -> ConfigCommand,
    ) -> Result<Timestamp, SharedStateError> {
        let events = self
            .inner
            .cluster
            .as_ref()
            .map(|c| &c.events)
            .ok_or(SharedStateError::NotRunning)?;
        let (reply, answer) = oneshot::channel();
        events
            .send(Event::Config(make(reply)))
            .await
            .map_err(|_| SharedStateError::NotRunning)?;
        Ok(answer.await.map_err(|_| SharedStateError::NotRunning)??)
    }

    /// Writes a cluster-wide config entry; every node sees it shortly (a joining node receives the whole
    /// map). Last writer wins by hybrid logical clock. Returns the write's timestamp.
    pub async fn config_put(
        &self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<Timestamp, SharedStateError> {
        let (key, value) = (key.to_string(), value.into());
        self.config_call(|reply| ConfigCommand::Put { key, value, reply })
            .await
    }

    /// Writes `value` as JSON.
    pub async fn config_put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Timestamp, SharedStateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SharedStateError::Json {
            key: key.to_string(),
            error: e.to_string(),
        })?;
        self.config_put(key, bytes).await
    }

    /// Deletes a cluster-wide config entry (a tombstone that wins over older writes).
    pub async fn config_delete(&self, key: &str) -> Result<Timestamp, SharedStateError> {
        let key = key.to_string();
        self.config_call(|reply| ConfigCommand::Delete { key, reply })
            .await
    }

    /// The value of a config entry as this node holds it now (lock-free).
    pub fn config_get(&self, key: &str) -> Option<Bytes> {
        self.inner
            .cluster
            .as_ref()
            .and_then(|c| c.shared.config.load().get(key).cloned())
    }

    /// A config entry parsed as JSON: `None` when absent, `Some(Err)` when it does not parse as `T`.
    pub fn config_get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Option<Result<T, SharedStateError>> {
        self.config_get(key).map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| SharedStateError::Json {
                key: key.to_string(),
                error: e.to_string(),
            })
        })
    }

    /// Every live config entry (lock-free snapshot).
    pub fn config_entries(&self) -> Arc<std::collections::BTreeMap<Arc<str>, Bytes>> {
        self.inner
            .cluster
            .as_ref()
            .map(|c| c.shared.config.load_full())
            .unwrap_or_default()
    }

    /// A stream of config changes, local and remote, in the order this node applied them. `None` with cluster
    /// mode off. A subscriber more than 1 024 changes behind gets `RecvError::Lagged` and should re-read
    /// [`ClusterHandle::config_entries`].
    pub fn config_subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<ConfigChange>> {
        self.inner
            .cluster
            .as_ref()
            .map(|c| c.shared.changes.subscribe())
    }

    /// Counters of every discovery method (static peers included): rounds, errors, what the last round found.
    pub fn discovery_stats(&self) -> Vec<DiscoveryMethodStats> {
        self.inner
            .cluster
            .as_ref()
            .map(|c| c.discovery_stats.lock_clean().clone())
            .unwrap_or_default()
    }

    /// Handshakes the transport refused or that failed since start, by direction and reason, non-zero counts
    /// only (empty with cluster mode off). `bifrost_transport_handshakes_refused_total` in `/metrics`.
    pub fn transport_refusals(
        &self,
    ) -> Vec<(
        crate::transport::Direction,
        crate::transport::RefusalReason,
        u64,
    )> {
        self.inner
            .cluster
            .as_ref()
            .map(|c| c.transport.refusals())
            .unwrap_or_default()
    }

    /// The linked peers (refreshed every 50 ms and on every link change).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.status.lock_clean().peers.clone()
    }

    /// Links, replication, membership and shared-state counters (refreshed every 50 ms).
    pub fn status(&self) -> NodeStatus {
        self.inner.status.lock_clean().clone()
    }

    /// Replication counters (refreshed every 50 ms).
    pub fn replication_stats(&self) -> ReplicationStats {
        self.inner.status.lock_clean().replication.clone()
    }

    /// The snapshot writer's state (`None` without `storage.path`).
    pub fn storage_status(&self) -> Option<super::StorageStatus> {
        self.inner.persistence.as_ref().map(Persistence::status)
    }

    /// Leaves the cluster gracefully: flushes the last changes to the peers (waiting at most 2 s for them to
    /// be read), announces the leave (at most 1 s) so the others mark this node left at once, closes the links
    /// and stops the node's tasks. The store stays readable.
    pub async fn shutdown(&self) {
        let Some(cluster) = &self.inner.cluster else {
            if let Some(persistence) = &self.inner.persistence {
                persistence.finish(&self.inner.node_id).await;
            }
            tracing::info!(node = %self.inner.node_id, "node stopped");
            return;
        };
        // No new join targets while leaving.
        if let Some(discovery) = cluster.discovery.lock_clean().take() {
            discovery.abort();
        }
        let (done_tx, done_rx) = oneshot::channel();
        if cluster
            .events
            .send(Event::Shutdown { done: done_tx })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
        // After the final flush and the leave: withdraw the registrations (each bounded by dial_timeout, at
        // most 2 s).
        discovery_loop::deregister_all(
            &cluster.methods,
            cluster.dial_timeout.min(Duration::from_secs(2)),
        )
        .await;
        // Stop the tasks first (dialers and the acceptor hold the transport), then close the endpoint.
        cluster.tasks.lock_clean().drain(..).for_each(|t| t.abort());
        cluster.transport.close("shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), cluster.transport.wait_idle()).await;
        // Last, so the snapshot holds everything merged up to the leave.
        if let Some(persistence) = &self.inner.persistence {
            persistence.finish(&self.inner.node_id).await;
        }
        tracing::info!(node = %self.inner.node_id, "node stopped");
    }
}
