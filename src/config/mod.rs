//! The `cluster_config` schema: loading, defaults and validation with exact field paths.
//!
//! A config written for the reference clustering document loads here unchanged. The reference's fields
//! (`enabled`, `peers`, `discovery`, `gossip`) keep their names and defaults; this crate's own sections
//! (`node_id`, `security`, `replication`, `http`, `limits`) are optional. `docs/configuration.md` is the user
//! reference; [`ClusterConfig`] documents every field with its unit, default and constraints.
//!
//! # Guarantees
//!
//! - **Every problem at once.** [`load_from_str`] and [`load_from_path`] report all broken rules in one
//!   [`ConfigError::Invalid`], each as a [`FieldError`] naming the JSON path
//!   (`cluster_config.discovery.allowed_address_space[1]`) and the rule. A known field with a wrong type or value
//!   is always an error, never silently defaulted.
//! - **Forward compatible.** Unknown members inside `cluster_config` are warnings
//!   ([`ConfigWarning::UnknownField`]), not errors; other top-level members of a whole gateway config are ignored.
//! - **Two classes of rule.** Errors stop the load; *run requirements*
//!   ([`ClusterConfig::run_requirements`]) are what `run` needs beyond the reference (a trust source, a
//!   Kubernetes label selector) and are reported separately, so `check-config` accepts every reference example.
//! - **Sans-IO.** Nothing here reads the clock, the environment or randomness; the only I/O is reading the
//!   config file in [`load_from_path`]. Environment values (`BIFROST_CONFIG`, `BIFROST_CLUSTER_SECRET`) are
//!   passed in by the caller.
//! - **No secret leaks.** The cluster secret never appears in `Debug`, `Serialize` or an error message.
//!
//! # Example
//!
//! ```
//! use bifrost_cluster::config::{DiscoveryType, load_from_str};
//!
//! let loaded = load_from_str(r#"{ "cluster_config": { "enabled": true,
//!     "discovery": { "enabled": true, "type": "dns", "dns_names": ["bifrost.local"] } } }"#).unwrap();
//! assert_eq!(loaded.config.discovery.discovery_type, Some(DiscoveryType::Dns));
//! assert_eq!(loaded.config.gossip.port, 10101); // default
//! // Loads, but `run` will need a trust source:
//! assert_eq!(loaded.config.run_requirements(None)[0].path, "cluster_config.security");
//! ```

mod duration;
mod error;
mod grpc;
mod http_auth;
mod load;
mod parse;
mod schema;
mod storage;
mod validate;

pub use duration::ConfigDuration;
pub use error::{ConfigError, ConfigWarning, DurationError, FieldError};
pub use load::{
    CLUSTER_SECRET_ENV, CONFIG_ENV, LoadedConfig, effective_document, effective_json,
    load_from_path, load_from_str, load_from_value, resolve_config_path,
};
pub use schema::{
    ClusterConfig, ClusterSecret, DiscoveryConfig, DiscoveryType, GossipConfig, GossipHealthConfig,
    HttpConfig, LimitsConfig, NodeId, PeerAddr, PeerHost, ReplicationConfig, SecurityConfig, Trust,
};
// HTTP security (issue 14).
pub use http_auth::parse_env_tokens;
pub use load::HTTP_TOKENS_ENV;
pub use schema::{
    HttpAuthConfig, HttpScope, HttpTlsConfig, HttpToken, HttpTokenConfig, HttpTokenSource,
};
// The Envoy rate-limit service (issue 15).
pub use grpc::GrpcConfig;
pub use storage::StorageConfig;
