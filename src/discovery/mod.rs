//! Discovery: backends that find candidate peers (and, where the method needs it, register this node), one
//! cargo feature each — `kubernetes`, `consul`, `etcd`, `dns`, `udp`, `mdns` — plus static `peers`, always on.
//!
//! Guarantees:
//! - A backend only *finds addresses*: it never decides membership. The node's discovery loop filters what it
//!   returns by `allowed_address_space` and by this node's own addresses ([`filter`]) and hands the rest to the
//!   membership plane as join targets, so every method feeds the same join path.
//! - [`Discovery::discover`] is bounded by the caller (`discovery.dial_timeout`); a backend that cannot reach
//!   its service returns a [`DiscoveryError`] naming the service, the address and the cause, never panics.
//! - [`Discovery::register`] runs at start, [`Discovery::deregister`] on graceful leave after the final
//!   flush; both are no-ops for methods without registration (static, DNS, Kubernetes).
//! - Backends with a watch (Kubernetes, etcd) or a listener (UDP, mDNS) wake the loop through
//!   [`Discovery::changed`] so a new node is tried at once rather than at the next interval.

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod filter;
#[cfg(any(feature = "udp", feature = "mdns"))]
pub mod interfaces;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "mdns")]
pub mod mdns;
pub mod static_peers;
#[cfg(feature = "udp")]
pub mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[cfg(any(
    feature = "kubernetes",
    feature = "consul",
    feature = "etcd",
    feature = "dns",
    feature = "udp",
    feature = "mdns"
))]
use crate::config::DiscoveryType;
use crate::config::{ClusterConfig, ClusterSecret};

/// An error and its sources, joined with `: ` (a source already quoted in its parent's text is skipped), so a
/// log line carries the root cause (the OS error under an HTTP or gRPC client's message).
#[cfg(any(feature = "consul", feature = "etcd", feature = "kubernetes"))]
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A boxed, sendable future (the trait's methods are called through `dyn Discovery`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend knows about this node.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// This node's id (`cluster_config.node_id` or the hostname).
    pub node_id: String,
    /// The gossip address this node advertises (what it registers and what peers dial).
    pub gossip_addr: SocketAddr,
    /// `gossip.port`: the port appended to bare addresses found by the pod and interface based methods.
    pub gossip_port: u16,
    /// The cluster secret, when trust comes from one (UDP beacons are authenticated with it).
    pub secret: Option<ClusterSecret>,
}

/// Why a discovery round, a registration or a deregistration failed. Each variant names the backend and
/// what to fix; nothing was changed in the cluster by a failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The service could not be reached (connection refused, name not resolved, TLS failure).
    #[error("{backend}: cannot reach {target}: {reason}")]
    Unreachable {
        /// The backend (`"etcd"`, `"consul"`, ...).
        backend: &'static str,
        /// The address or URL tried.
        target: String,
        /// The cause.
        reason: String,
    },
    /// The service refused the request (HTTP 401/403, an ACL, RBAC). `reason` says which permission is
    /// missing.
    #[error("{backend}: forbidden: {reason}")]
    Forbidden {
        /// The backend.
        backend: &'static str,
        /// What is missing and how to grant it.
        reason: String,
    },
    /// The service answered something unusable.
    #[error("{backend}: unexpected answer: {reason}")]
    BadAnswer {
        /// The backend.
        backend: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The round took longer than `discovery.dial_timeout`.
    #[error("{backend}: no answer within {after:?} (discovery.dial_timeout)")]
    Timeout {
        /// The backend.
        backend: &'static str,
        /// The bound.
        after: Duration,
    },
    /// The backend could not be set up from the config (a field it needs, a socket it cannot bind).
    #[error("{backend}: {reason}")]
    Setup {
        /// The backend.
        backend: &'static str,
        /// What is wrong, naming the config field when one is at fault.
        reason: String,
    },
}

/// A discovery method.
pub trait Discovery: Send + Sync + 'static {
    /// The method's name as the config spells it (`"static"`, `"kubernetes"`, ...), for logs.
    fn name(&self) -> &'static str;

    /// Candidate peer gossip addresses, as the method sees them now (this node's own may be among them).
    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>>;

    /// Announces this node (Consul registration, etcd lease and key, mDNS advertisement, UDP responder).
    fn register(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async { Ok(()) })
    }

    /// Withdraws the announcement (graceful leave, after the final flush).
    fn deregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async { Ok(()) })
    }

    /// Notified when the method sees a change worth an early round (a watch event, a beacon).
    fn changed(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Method-specific counters for logs and metrics, e.g. `("beacons_rejected", 3)`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Backend knobs that are not part of `cluster_config` (tests shorten timers here). Default: each backend's
/// documented defaults. Carried by `NodeOptions::discovery_overrides`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DiscoveryOverrides {
    /// etcd: the lease TTL (default 30 s).
    #[cfg(feature = "etcd")]
    pub etcd: etcd::EtcdOptions,
}

/// Builds the discovery methods `config` asks for: static peers when `peers` is non-empty, and the
/// `discovery.type` backend when `discovery.enabled`. Nothing is contacted yet: registration and the first
/// round are the discovery loop's.
pub async fn from_config(
    config: &ClusterConfig,
    local: &LocalNode,
    overrides: &DiscoveryOverrides,
) -> Result<Vec<Box<dyn Discovery>>, DiscoveryError> {
    let mut methods: Vec<Box<dyn Discovery>> = Vec::new();
    if !config.peers.is_empty() {
        methods.push(Box::new(static_peers::StaticPeers::new(
            config.peers.clone(),
            config.gossip.port,
        )));
    }
    if !config.discovery.enabled {
        return Ok(methods);
    }
    let Some(kind) = config.discovery.discovery_type else {
        return Err(DiscoveryError::Setup {
            backend: "discovery",
            reason: "cluster_config.discovery.type: required when discovery is enabled".into(),
        });
    };
    let d = &config.discovery;
    let method: Option<Box<dyn Discovery>> = match kind {
        // One arm per backend, each behind its cargo feature.
        #[cfg(feature = "etcd")]
        DiscoveryType::Etcd => Some(Box::new(
            etcd::EtcdDiscovery::with_options(d, local, overrides.etcd.clone()).await?,
        )),
        #[cfg(feature = "consul")]
        DiscoveryType::Consul => Some(Box::new(consul::ConsulDiscovery::new(d, local).await?)),
        #[cfg(feature = "dns")]
        DiscoveryType::Dns => Some(Box::new(dns::DnsDiscovery::new(d, local).await?)),
        #[cfg(feature = "kubernetes")]
        DiscoveryType::Kubernetes => Some(Box::new(
            kubernetes::KubernetesDiscovery::new(d, local).await?,
        )),
        #[cfg(feature = "udp")]
        DiscoveryType::Udp => Some(Box::new(udp::UdpDiscovery::new(d, local).await?)),
        #[cfg(feature = "mdns")]
        DiscoveryType::Mdns => Some(Box::new(mdns::MdnsDiscovery::new(d, local).await?)),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    let Some(method) = method else {
        let _ = (d, local, overrides);
        return Err(DiscoveryError::Setup {
            backend: kind.as_str(),
            reason: format!("cluster_config.discovery.type: {}", kind.not_built_rule()),
        });
    };
    methods.push(method);
    Ok(methods)
}
