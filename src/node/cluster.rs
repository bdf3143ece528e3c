//! Starting and stopping a node: [`Cluster::start`] and the [`ClusterHandle`] a gateway keeps.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::driver::{Driver, Event, NodeStatus, PeerInfo};
use super::error::NodeError;
use super::hello::{self, HelloError};
use super::identity;
use super::system_clock::{self, SystemClock};
use crate::config::{CLUSTER_SECRET_ENV, ClusterConfig, PeerHost};
use crate::counter::{Clock, CoarseClock, CounterStore, StoreOptions};
use crate::replication::{ReplicationStats, Replicator, ReplicatorOptions};
use crate::transport::{TlsSetup, Transport, TransportOptions, TrustMode};
use crate::wire::Hello;

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
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            transport: TransportOptions::default(),
            env_secret: std::env::var(CLUSTER_SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// Starts nodes.
#[derive(Debug)]
pub struct Cluster;

struct Inner {
    node_id: String,
    replica_id: u64,
    store: CounterStore,
    clock: Arc<CoarseClock>,
    local_addr: Option<SocketAddr>,
    status: Arc<Mutex<NodeStatus>>,
    events: Option<mpsc::Sender<Event>>,
    transport: Option<Arc<Transport>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.iter().for_each(JoinHandle::abort);
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
            .field(
                "replica_id",
                &format_args!("{:016x}", self.inner.replica_id),
            )
            .field("local_addr", &self.inner.local_addr)
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
        let node_id = identity::resolve_node_id(config.node_id.as_ref())?;
        let replica_id = identity::random_u64()?;
        let clock = Arc::new(CoarseClock::new(SystemClock.now_unix_ms()));
        let store = CounterStore::new(StoreOptions {
            max_keys: config.limits.max_keys,
            max_key_length: config.limits.max_key_length,
            replica_id,
            hash_seed: identity::random_u64()?,
            clock: Arc::clone(&clock),
            ..StoreOptions::default()
        });
        let mut tasks = vec![system_clock::spawn_ticker(Arc::clone(&clock))];
        let status = Arc::new(Mutex::new(NodeStatus::default()));
        if !config.enabled {
            tracing::info!(node = %node_id, "cluster mode off: counting locally only");
            return Ok(ClusterHandle {
                inner: Arc::new(Inner {
                    node_id: node_id.as_str().to_string(),
                    replica_id,
                    store,
                    clock,
                    local_addr: None,
                    status,
                    events: None,
                    transport: None,
                    tasks: Mutex::new(tasks),
                }),
            });
        }
        if config.discovery.enabled {
            tracing::warn!(
                "discovery is not implemented yet: this node links to the static peers only"
            );
        }
        let trust = config
            .trust(env_secret)
            .map_err(|e| NodeError::Config(vec![e]))?;
        let tls = TlsSetup::from_trust(&trust, &node_id)?;
        let trust_mode = tls.mode();
        let transport_options = options.transport.clone();
        let hello_timeout = transport_options.connect_timeout;
        let transport = Arc::new(Transport::bind(
            SocketAddr::new(options.bind_ip, config.gossip.port),
            tls,
            transport_options,
        )?);
        let local_addr = transport.local_addr();

        let now = clock.now_unix_ms();
        let replicator = Replicator::new(
            store.clone(),
            replica_id,
            ReplicatorOptions {
                flush_interval_ms: config.replication.flush_interval.as_millis(),
                anti_entropy_interval_ms: config.replication.anti_entropy_interval.as_millis(),
                max_batch_bytes: config.replication.max_batch_bytes,
                ..ReplicatorOptions::default()
            },
            identity::random_u64()?,
            now,
        );
        let (events_tx, events_rx) = mpsc::channel(4_096);
        let linked_addresses = Arc::new(Mutex::new(HashSet::new()));
        let driver = Driver::new(
            replicator,
            Arc::clone(&clock),
            events_tx.clone(),
            Arc::clone(&status),
            Arc::clone(&linked_addresses),
        );
        tasks.push(tokio::spawn(driver.run(events_rx)));

        let ours = hello::own_hello(node_id.as_str(), replica_id);
        tasks.push(spawn_acceptor(
            Arc::clone(&transport),
            ours.clone(),
            trust_mode,
            hello_timeout,
            events_tx.clone(),
        ));
        let mut peers = Vec::new();
        for peer in &config.peers {
            let port = peer.port_or(config.gossip.port);
            let addresses: Vec<SocketAddr> = match &peer.host {
                PeerHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
                PeerHost::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map_err(|e| NodeError::Resolve {
                        peer: peer.to_string(),
                        reason: e.to_string(),
                    })?
                    .collect(),
            };
            peers.extend(addresses);
        }
        for address in peers {
            if address == local_addr {
                continue; // our own entry in a shared peer list
            }
            tasks.push(tokio::spawn(dial_loop(
                Arc::clone(&transport),
                address,
                ours.clone(),
                trust_mode,
                hello_timeout,
                events_tx.clone(),
                Arc::clone(&linked_addresses),
            )));
        }
        tracing::info!(
            node = %node_id,
            replica = format_args!("{replica_id:016x}"),
            address = %local_addr,
            peers = config.peers.len(),
            "node started"
        );
        Ok(ClusterHandle {
            inner: Arc::new(Inner {
                node_id: node_id.as_str().to_string(),
                replica_id,
                store,
                clock,
                local_addr: Some(local_addr),
                status,
                events: Some(events_tx),
                transport: Some(transport),
                tasks: Mutex::new(tasks),
            }),
        })
    }
}

fn spawn_acceptor(
    transport: Arc<Transport>,
    ours: Hello,
    trust: TrustMode,
    timeout: Duration,
    events: mpsc::Sender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(link) = transport.accept().await {
            let (ours, events) = (ours.clone(), events.clone());
            tokio::spawn(async move {
                match hello::exchange(&link, &ours, false, trust, timeout).await {
                    Ok(hello) => {
                        let _ = events
                            .send(Event::PeerUp {
                                link,
                                hello,
                                dialed_by_us: false,
                            })
                            .await;
                    }
                    Err(error) => {
                        tracing::warn!(address = %link.remote_address(), %error, "refused a link from a peer");
                        link.close("hello refused");
                    }
                }
            });
        }
    })
}

/// Dials `address` until linked, then waits for the link to close and dials again, with exponential backoff
/// (100 ms doubling to 5 s, with jitter) between failed attempts. Skips dialing while some link (for instance
/// one the peer dialed) already connects us to that address.
async fn dial_loop(
    transport: Arc<Transport>,
    address: SocketAddr,
    ours: Hello,
    trust: TrustMode,
    timeout: Duration,
    events: mpsc::Sender<Event>,
    linked_addresses: Arc<Mutex<HashSet<SocketAddr>>>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u32 = 0;
    let mut jitter = ours.replica_id ^ u64::from(address.port());
    loop {
        let already = linked_addresses
            .lock()
            .map(|a| a.contains(&address))
            .unwrap_or(false);
        if already {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match transport.connect(address).await {
            Ok(link) => match hello::exchange(&link, &ours, true, trust, timeout).await {
                Ok(hello) => {
                    failures = 0;
                    backoff = FIRST_BACKOFF;
                    let watch = link.clone();
                    if events
                        .send(Event::PeerUp {
                            link,
                            hello,
                            dialed_by_us: true,
                        })
                        .await
                        .is_err()
                    {
                        return; // the node is stopping
                    }
                    watch.closed().await;
                }
                Err(HelloError::SelfLink) => {
                    tracing::info!(%address, "peer address is this node itself; not dialing it");
                    link.close("self");
                    return;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%address, %error, "refused a link to a peer");
                    link.close("hello refused");
                }
            },
            Err(error) => {
                failures += 1;
                // Log the 1st, 2nd, 4th, 8th… failure in a row at warn, the rest at debug.
                if failures.is_power_of_two() {
                    tracing::warn!(%address, %error, attempts = failures, "failed to link to peer; retrying");
                } else {
                    tracing::debug!(%address, %error, attempts = failures, "failed to link to peer; retrying");
                }
            }
        }
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        let spread = backoff.as_millis() as u64 / 4 + 1;
        tokio::time::sleep(backoff + Duration::from_millis(jitter % spread)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl ClusterHandle {
    /// The counter store: resolve handles once, then call `add` / `try_acquire` on the hot path.
    pub fn store(&self) -> &CounterStore {
        &self.inner.store
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
    pub fn replica_id(&self) -> u64 {
        self.inner.replica_id
    }

    /// The bound gossip address (`None` with cluster mode off).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// The linked peers (refreshed every 50 ms and on every link change).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner
            .status
            .lock()
            .map(|s| s.peers.clone())
            .unwrap_or_default()
    }

    /// Replication counters (refreshed every 50 ms).
    pub fn replication_stats(&self) -> ReplicationStats {
        self.inner
            .status
            .lock()
            .map(|s| s.replication.clone())
            .unwrap_or_default()
    }

    /// Flushes the last changes to the peers (waiting at most 2 s for them to be read), closes the links and
    /// stops the node's tasks. The store stays readable.
    pub async fn shutdown(&self) {
        if let Some(events) = &self.inner.events {
            let (done_tx, done_rx) = oneshot::channel();
            if events.send(Event::Shutdown { done: done_tx }).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
            }
        }
        // Stop the tasks first (dialers and the acceptor hold the transport), then close the endpoint.
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
        if let Some(transport) = &self.inner.transport {
            transport.close("shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.wait_idle()).await;
        }
        tracing::info!(node = %self.inner.node_id, "node stopped");
    }
}
