//! # bifrost-cluster
//!
//! A state-replication engine for AI-gateway clusters: every gateway node enforces **one** global rate limit or
//! budget, not N copies of it, without a network round trip on the request path.
//!
//! Each node counts locally in lock-free per-replica G-counters ([`counter`]); [`replication`] ships absolute
//! per-origin values as delta batches over the [`transport`] and merges everyone else's with a per-origin `max`,
//! so merges are idempotent, commutative and associative, and anti-entropy repairs what was lost.
//!
//! ## What this crate guarantees today
//!
//! - **Hot path**: [`counter::CounterHandle::add`] and [`counter::CounterHandle::try_acquire`] take no lock, make no
//!   allocation and no syscall, and do a handful of atomic operations. Time comes from a coarse cached clock
//!   ([`counter::CoarseClock`]) that the node ticks and tests set by hand.
//! - **Windows**: every stored value carries its window index (epoch); a count from one window never leaks into
//!   another, and all nodes roll over on the same boundary by construction.
//! - **Bounded memory**: the store holds at most `limits.max_keys` cells; at the cap a new key is refused with a
//!   typed error and counted, existing keys keep working.
//! - **Replication**: lost, duplicated or reordered batches are harmless (merge is a per-origin `max`); once
//!   every node has received every other's values, every node's global count is the exact sum of all
//!   increments ([`replication::Replicator`]).
//! - **Config**: [`config`] loads the reference's `cluster_config` JSON unchanged and reports every invalid field
//!   with its JSON path.
//!
//! ## Planes
//!
//! The folder layout follows the planes of the design: [`counter`], [`replication`], [`membership`], [`state`],
//! [`wire`], [`config`] and [`policy`] (limits files for the Envoy rate-limit service) are sans-IO (no tokio, no
//! quinn, no clock or OS randomness read there); [`transport`], [`discovery`], [`node`], [`http`] and [`grpc`]
//! (Envoy's `RateLimitService`) do the I/O.
//!
//! ## Example
//!
//! ```
//! use bifrost_cluster::UnixMs;
//! use bifrost_cluster::counter::{CounterStore, StoreOptions, Window};
//!
//! let store = CounterStore::new(StoreOptions::default());
//! store.clock().set_unix_ms(UnixMs::new(1_700_000_000_000)); // the node ticks this; tests set it by hand
//! let window = Window::parse("1m").unwrap();
//! let handle = store.handle("vk/openai/gpt-4o", window).unwrap(); // resolve once, keep next to the limit config
//! let decision = handle.try_acquire(100, 1);
//! assert!(decision.allowed);
//! assert_eq!(decision.used, 1);
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod counter;
pub mod discovery;
mod fixed_hash;
pub mod grpc;
pub mod http;
mod link_id;
pub mod membership;
pub mod node;
pub mod policy;
mod replica_id;
pub mod replication;
pub mod rng;
pub mod sim;
pub mod state;
pub mod storage;
mod sync;
mod timers;
mod tls;
pub mod transport;
mod unix_ms;
pub mod wire;

pub use replica_id::ReplicaId;
pub use unix_ms::UnixMs;

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
