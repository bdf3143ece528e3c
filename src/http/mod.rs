//! HTTP surface of a node: liveness, readiness, cluster status and the counter API, for load balancers,
//! Kubernetes probes and gateways written in other languages.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `200 {"status":"ok"}` while the process serves requests (liveness) |
//! | `GET /ready` | `200` once the node has joined, is alone by config, or gave up its start-up join (then it runs alone while it keeps retrying); `503` before |
//! | `GET /cluster/status` | the reference's `local_node`, `members`, `healthy_members`, `cluster_health`, plus this node and every member in detail |
//! | `POST /v1/ratelimit/check` | `{key, window, limit, cost, algorithm}` → the decision (counted when allowed) |
//! | `POST /v1/counters/{key}/add` | `{window, n}` → adds `n` to the key's current window |
//! | `GET /v1/counters/{key}?window=1m[&epoch=N]` | this node's view of the key: local, remote, global |
//! | `GET /metrics` | Prometheus text (OpenMetrics): members, replication per peer, merges, decode errors, refused keys, discovery, hot-path calls (see [`metrics`]) |
//! | `GET /cluster/nodes` | every node's latest health record (CPU, memory, connections, request rate, links) and its age |
//! | `GET /v1/config` | every cluster-wide config entry (`utf8` values as text, others in hex) |
//! | `GET` / `PUT` / `DELETE /v1/config/{key}` | one entry: the raw value; write the raw body; delete |
//! | `GET /v1/traffic/{key}[?epoch=N]` | a traffic key's requests, errors and p50/p90/p99 latency, cluster-wide and per node |
//! | `GET /`, `GET /ui` | the status page (static, served without a token; the JSON it reads needs `read`, see [`ui`]) |
//! | `GET /cluster/peers` | per-peer replication: lag, bytes and batches each way, gaps, data-plane check round trip |
//! | `GET /v1/keys/hot[?n=10]` | the hottest keys (at most 100) with usage, the limit of their last acquire and window; decision counts |
//!
//! Keys may contain `/` (`vk/openai/gpt-4o`): the counter routes take the rest of the path as the key.
//!
//! Guarantees: a bad request gets a `400` with `{"error": "...", "field": "..."}` naming the field at fault
//! (`path`, `query`, `body` or a JSON member); every other error is JSON too: `401`/`403` (tokens, scopes,
//! the loopback rule, foreign `Origin`), `404` unknown route or config key, `405` wrong method, `413`/`414`
//! body or URI too long, `415` wrong `Content-Type`, `503` counter store full (`limits.max_keys`), node not
//! running or connection cap reached, `507` config map full. Every request passes the gate of `guard.rs`
//! first (authentication and scopes, cross-site checks, limits); the listener (`serve.rs`) bounds connections in
//! count and time; `n`/`cost` are bounded by `http.max_request_n`. No input makes a handler panic; no handler blocks the counter hot path (they call the same lock-free
//! store as the gateway); reads never create keys; keys starting with `@` (the traffic plane's) cannot be
//! written.

mod api_error;
pub mod auth;
mod counters;
mod guard;
pub mod metrics;
mod serve;
mod shared_state;
mod status;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{FieldError, HttpConfig};
use crate::node::ClusterHandle;

pub use api_error::ApiError;
pub use auth::{AuthSetupError, TokenSet};
pub use guard::{HttpAccess, HttpStats, MAX_BODY_BYTES, MAX_URI_BYTES};

/// What the handlers share: the node, the request ceiling and the HTTP counters.
#[derive(Clone)]
pub(crate) struct AppState {
    node: ClusterHandle,
    ceiling: RequestCeiling,
    stats: Arc<HttpStats>,
    hot_keys: Arc<ui::HotKeysCache>,
}

impl FromRef<AppState> for Arc<ui::HotKeysCache> {
    fn from_ref(state: &AppState) -> Self {
        state.hot_keys.clone()
    }
}

/// `http.max_request_n`: the largest `n`/`cost` one request may carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestCeiling(pub(crate) u64);

impl FromRef<AppState> for ClusterHandle {
    fn from_ref(state: &AppState) -> Self {
        state.node.clone()
    }
}

impl FromRef<AppState> for RequestCeiling {
    fn from_ref(state: &AppState) -> Self {
        state.ceiling
    }
}

impl FromRef<AppState> for Arc<HttpStats> {
    fn from_ref(state: &AppState) -> Self {
        state.stats.clone()
    }
}

/// The router of a node's HTTP surface with the default access rules: no token, so writes are served to
/// loopback clients only (a request without a peer address counts as remote).
pub fn router(node: ClusterHandle) -> Router {
    router_with(node, HttpAccess::default(), Arc::new(HttpStats::default()))
}

/// The router with `access` enforced in front of every route (in the order of `guard.rs`) and its
/// rejections counted in `stats`. The peer address comes from the `ConnectInfo<SocketAddr>` request extension,
/// which [`HttpServer`] sets.
pub fn router_with(node: ClusterHandle, access: HttpAccess, stats: Arc<HttpStats>) -> Router {
    let state = AppState {
        node,
        ceiling: RequestCeiling(access.max_request_n),
        stats: stats.clone(),
        hot_keys: Arc::default(),
    };
    let gate = Arc::new(guard::Gate { access, stats });
    Router::new()
        .route("/health", get(status::health))
        .route("/ready", get(status::ready))
        .route("/cluster/status", get(status::cluster_status))
        .route("/v1/ratelimit/check", post(counters::ratelimit_check))
        .route("/v1/ratelimit/report", post(counters::ratelimit_report))
        .route("/v1/ratelimit/release", post(counters::ratelimit_release))
        .route(
            "/v1/counters/{*path}",
            get(counters::get_counter).post(counters::post_counter),
        )
        .route("/cluster/nodes", get(shared_state::nodes))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/config", get(shared_state::list_config))
        .route(
            "/v1/config/{*key}",
            get(shared_state::get_config)
                .put(shared_state::put_config)
                .delete(shared_state::delete_config),
        )
        .route("/v1/traffic/{*key}", get(shared_state::traffic))
        .route("/", get(ui::page))
        .route("/ui", get(ui::page))
        .route("/ui/status.js", get(ui::script))
        .route("/ui/status.css", get(ui::style))
        .route("/cluster/peers", get(ui::peers))
        .route("/v1/keys/hot", get(ui::hot_keys))
        .fallback(api_error::not_found)
        .method_not_allowed_fallback(api_error::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(gate, guard::gate))
        .with_state(state)
}

/// Everything the HTTP server needs, resolved from `cluster_config.http` (tokens read, TLS files loaded).
#[derive(Clone)]
pub struct HttpOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Tokens, scopes, ceiling.
    pub access: HttpAccess,
    /// `http.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `http.idle_timeout`.
    pub idle_timeout: Duration,
    /// `http.max_connections`.
    pub max_connections: usize,
    /// `http.tls`, loaded.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether a non-loopback `listen` without tokens was accepted by `http.allow_unauthenticated_reads`.
    pub unauthenticated_reads: bool,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("listen", &self.listen)
            .field("access", &self.access)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the HTTP options could not be resolved. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// A token could not be read or breaks a rule.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// `run` requirement: a non-loopback `listen` without any token (see [`HttpConfig::auth_requirement`]).
    #[error("{0}")]
    Requirement(FieldError),
    /// A TLS file is missing or bad.
    #[error("{field}: {}: {reason}", path.display())]
    Tls {
        /// The config field.
        field: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl HttpOptions {
    /// Resolves `http`: tokens from the config (reading `token_env` variables and `token_file` files) and
    /// `env_tokens` (the value of `BIFROST_HTTP_TOKENS`), the TLS files, and the loopback rule.
    pub fn from_config(
        http: &HttpConfig,
        env_tokens: Option<&str>,
    ) -> Result<HttpOptions, HttpSetupError> {
        let tokens = TokenSet::load(http, env_tokens, |var| std::env::var(var).ok())?;
        if let Some(requirement) = http.auth_requirement(!tokens.is_empty()) {
            return Err(HttpSetupError::Requirement(requirement));
        }
        let tls = match &http.tls {
            None => None,
            Some(tls) => Some(Arc::new(load_tls(&tls.cert_file, &tls.key_file)?)),
        };
        Ok(HttpOptions {
            listen: http.listen,
            unauthenticated_reads: tokens.is_empty() && !http.listen.ip().is_loopback(),
            access: HttpAccess {
                tokens,
                public_metrics: http.auth.public_metrics,
                max_request_n: http.max_request_n,
            },
            header_read_timeout: http.header_read_timeout.as_std(),
            idle_timeout: http.idle_timeout.as_std(),
            max_connections: http.max_connections,
            tls,
        })
    }
}

const TLS_CERT_FIELD: &str = "cluster_config.http.tls.cert_file";
const TLS_KEY_FIELD: &str = "cluster_config.http.tls.key_file";

/// A rustls server config (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`) from PEM files.
fn load_tls(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<rustls::ServerConfig, HttpSetupError> {
    let err = |field: &'static str, path: &std::path::Path, reason: String| HttpSetupError::Tls {
        field,
        path: path.to_owned(),
        reason,
    };
    // The crate's one PEM loader; its problem texts are the reasons.
    let from_pem = |e: crate::tls::pem::PemError| err(e.field, &e.path, e.problem.to_string());
    let certs = crate::tls::pem::load_certificates(TLS_CERT_FIELD, cert_file).map_err(from_pem)?;
    let key = crate::tls::pem::load_private_key(TLS_KEY_FIELD, key_file).map_err(from_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(TLS_CERT_FIELD, cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                TLS_KEY_FIELD,
                key_file,
                format!(
                    "does not fit the certificate of {}: {e}",
                    cert_file.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A running HTTP server. Dropping it does not stop it; call [`HttpServer::shutdown`].
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<HttpStats>,
}

/// Why the HTTP server did not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster_config.http.listen: cannot listen on {addr}: {source}")]
pub struct HttpError {
    /// The address from the config.
    pub addr: SocketAddr,
    /// The operating system's answer.
    #[source]
    pub source: std::io::Error,
}

impl HttpServer {
    /// Binds `addr` (port 0: any free port) and serves the node's routes on the current tokio runtime, with
    /// every other `http` setting at its default and no token: `addr` should be a loopback address (writes
    /// are answered only to loopback clients).
    pub async fn start(node: ClusterHandle, addr: SocketAddr) -> Result<HttpServer, HttpError> {
        let options = HttpOptions {
            listen: addr,
            access: HttpAccess::default(),
            header_read_timeout: HttpConfig::DEFAULT_HEADER_READ_TIMEOUT.as_std(),
            idle_timeout: HttpConfig::DEFAULT_IDLE_TIMEOUT.as_std(),
            max_connections: HttpConfig::DEFAULT_MAX_CONNECTIONS,
            tls: None,
            unauthenticated_reads: !addr.ip().is_loopback(),
        };
        Self::start_with(node, options).await
    }

    /// Binds `options.listen` and serves with `options` (see [`HttpOptions::from_config`]).
    pub async fn start_with(
        node: ClusterHandle,
        options: HttpOptions,
    ) -> Result<HttpServer, HttpError> {
        let addr = options.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError { addr, source })?;
        let stats = Arc::new(HttpStats::default());
        let tokens = options.access.tokens.len();
        let app = router_with(node, options.access.clone(), stats.clone());
        let serve = serve::ServeOptions {
            header_read_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
            max_connections: options.max_connections,
            tls: options.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve::accept_loop(
            listener,
            app,
            serve,
            stats.clone(),
            stopped,
        ));
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if tokens > 0 {
            tracing::info!(address = %local_addr, scheme, tokens, "HTTP listening; every route but /health and /ready needs a bearer token");
        } else if local_addr.ip().is_loopback() {
            tracing::info!(address = %local_addr, scheme, "HTTP listening on loopback without tokens: every route is served, to local clients only");
        } else {
            tracing::warn!(address = %local_addr, scheme, "HTTP listening on a non-loopback address WITHOUT TOKENS (http.allow_unauthenticated_reads): anyone reaching the port can read status, counters and config; writes are refused except from loopback. Configure http.auth.tokens.");
        }
        Ok(HttpServer {
            local_addr,
            stop,
            task,
            stats,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters (also in `/metrics`).
    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.stats
    }

    /// Stops accepting connections and waits (at most 1 s) for requests in flight.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
