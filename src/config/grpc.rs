//! `cluster_config.grpc`: the Envoy rate-limit service (issue 15). Absent: no gRPC listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::duration::ConfigDuration;
use super::error::FieldError;
use super::parse::ROOT;
use super::schema::HttpTlsConfig;

/// `cluster_config.grpc`: Envoy's `envoy.service.ratelimit.v3.RateLimitService` and `grpc.health.v1.Health`
/// on their own port. Authentication reuses `http.auth.tokens`: a token with the `check` scope, sent as
/// `authorization: Bearer <token>` metadata. Without any token the listener must be on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcConfig {
    /// Socket address of the gRPC listener, `"ip:port"`. Default: `"127.0.0.1:8081"`. Port 0 asks the OS for
    /// a free port. A non-loopback address needs at least one HTTP token (`run` refuses otherwise).
    pub listen: SocketAddr,
    /// The limits file (envoyproxy/ratelimit's descriptor format, one or more YAML documents) or a directory
    /// whose `*.yaml`/`*.yml` files are all loaded (a Kubernetes ConfigMap mount). Default: none (every
    /// domain is unknown, so every request is answered OK). Re-read when it changes; a bad version is
    /// refused, logged with every problem, and the previous policy kept.
    pub limits_file: Option<PathBuf>,
    /// How often the limits file is checked for a change (modification time, size and content). Default:
    /// `"1s"`. Range 100ms..=1h.
    pub reload_interval: ConfigDuration,
    /// Add `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (and `Retry-After` when over the limit)
    /// to every answer with a limit, taken from the descriptor closest to its limit. Default: `false`.
    pub response_headers: bool,
    /// Most descriptors in one `RateLimitRequest`; more is `INVALID_ARGUMENT`. Default: 64. Range 1..=1024.
    pub max_descriptors: usize,
    /// Most entries in one descriptor; more is `INVALID_ARGUMENT`. Default: 16. Range 1..=64.
    pub max_entries: usize,
    /// Largest request message, in bytes; larger is `RESOURCE_EXHAUSTED`. Default: 65536. Range
    /// 1024..=4194304.
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams per connection. Default: 256. Range 1..=65536.
    pub max_concurrent_streams: u32,
    /// TLS on the gRPC listener (ALPN `h2`). Default: none (plaintext HTTP/2).
    pub tls: Option<HttpTlsConfig>,
}

impl GrpcConfig {
    /// Default `listen`: `127.0.0.1:8081`.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);
    /// Default `reload_interval`: 1 s.
    pub const DEFAULT_RELOAD_INTERVAL: ConfigDuration = ConfigDuration::from_millis(1_000);
    /// Smallest `reload_interval`.
    pub const MIN_RELOAD_INTERVAL: ConfigDuration = ConfigDuration::from_millis(100);
    /// Largest `reload_interval`.
    pub const MAX_RELOAD_INTERVAL: ConfigDuration = ConfigDuration::from_millis(3_600_000);
    /// Default `max_descriptors`.
    pub const DEFAULT_MAX_DESCRIPTORS: usize = 64;
    /// Largest `max_descriptors`.
    pub const MAX_MAX_DESCRIPTORS: usize = 1024;
    /// Default `max_entries`.
    pub const DEFAULT_MAX_ENTRIES: usize = 16;
    /// Largest `max_entries`.
    pub const MAX_MAX_ENTRIES: usize = 64;
    /// Default `max_message_bytes`.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
    /// Smallest `max_message_bytes`.
    pub const MIN_MAX_MESSAGE_BYTES: usize = 1024;
    /// Largest `max_message_bytes`.
    pub const MAX_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    /// Default `max_concurrent_streams`.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
    /// Largest `max_concurrent_streams`.
    pub const MAX_MAX_CONCURRENT_STREAMS: u32 = 65_536;

    /// What `run` refuses: a non-loopback `listen` while no token is configured (`tokens`: whether any HTTP
    /// token exists, from the config or the environment).
    pub fn auth_requirement(&self, tokens: bool) -> Option<FieldError> {
        if tokens || self.listen.ip().is_loopback() {
            return None;
        }
        Some(FieldError::new(
            format!("{ROOT}.grpc.listen"),
            format!(
                "{} is not a loopback address and no token is configured: anyone reaching the port could spend every limit; run will refuse to start. Add a token with the check scope (http.auth.tokens; Envoy sends it as initial_metadata authorization: Bearer <token>) or listen on 127.0.0.1",
                self.listen
            ),
        ))
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN,
            limits_file: None,
            reload_interval: Self::DEFAULT_RELOAD_INTERVAL,
            response_headers: false,
            max_descriptors: Self::DEFAULT_MAX_DESCRIPTORS,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            tls: None,
        }
    }
}
