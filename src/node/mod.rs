//! Node runtime: wires the planes together on tokio — the coarse clock ticker, the QUIC transport, the
//! membership and replication state machines, joining through the static peers — and shuts them down in order.
//!
//! Guarantees:
//! - [`Cluster::start`] refuses a config that cannot run, naming every field at fault, before binding anything.
//! - The hot path never waits for the runtime: the gateway calls the [`crate::counter::CounterStore`] directly;
//!   replication drains it every flush interval on its own task.
//! - A link counts only after the `Hello` exchange; one link is kept per peer replica. Membership, deltas,
//!   anti-entropy and data-plane checks all travel on these links of the one gossip port.
//! - The node joins through what discovery finds — static `peers` and the `discovery.type` method, filtered
//!   by `allowed_address_space` — retrying with backoff (1 s doubling to 30 s) until a member lets it in;
//!   registrations are withdrawn on graceful leave, after the final flush; the member table ([`ClusterHandle::members`]) and cluster health are lock-free snapshots.
//! - [`ClusterHandle::shutdown`] flushes the last changes, waits (bounded) for peers to read them, then
//!   announces the leave so the others mark this node left, not suspect.
//!
//! # Embedding in a gateway
//!
//! ```no_run
//! use bifrost_cluster::config::load_from_str;
//! use bifrost_cluster::counter::{Algorithm, Window};
//! use bifrost_cluster::node::Cluster;
//!
//! # async fn gateway() -> Result<(), Box<dyn std::error::Error>> {
//! let config = load_from_str(r#"{ "cluster_config": {
//!     "enabled": true,
//!     "node_id": "gw-1",
//!     "peers": ["10.0.0.2:10101", "10.0.0.3:10101"],
//!     "security": { "cluster_secret": "change-me-to-32-random-bytes!!!!" }
//! } }"#)?.config;
//! let cluster = Cluster::start(config).await?;
//!
//! // Once per limit config: resolve the key and keep the handle.
//! let per_minute = cluster.store().handle("vk/openai/gpt-4o", Window::parse("1m")?)?;
//!
//! // On every request: a few nanoseconds, no network round trip; the count is cluster-wide.
//! let decision = per_minute.acquire(Algorithm::SlidingWindow, 600, 1);
//! if !decision.allowed { /* 429, Retry-After from decision.reset_at_ms */ }
//!
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```

mod advertise;
mod cluster;
mod discovery_loop;
mod driver;
mod error;
mod events;
mod health_probe;
mod hello;
mod identity;
mod join;
mod link_tasks;
mod live_links;
pub(crate) mod machine;
pub(crate) mod options;
mod persistence;
mod quic_links;
mod shared_view;
mod system_clock;

pub use cluster::{Cluster, ClusterHandle, NodeOptions, SharedStateError, TRAFFIC_WINDOW};
pub use discovery_loop::DiscoveryMethodStats;
pub use driver::{NodeStatus, PeerInfo};
pub use error::NodeError;
pub use hello::{HelloError, PeerHello};
pub use machine::link_layer;
pub use persistence::StorageStatus;
pub use quic_links::QuicLinks;
pub use system_clock::{SystemClock, TICK};
