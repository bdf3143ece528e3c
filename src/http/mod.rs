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
//!
//! Keys may contain `/` (`vk/openai/gpt-4o`): the counter routes take the rest of the path as the key.
//!
//! Guarantees: a bad request gets a `400` with `{"error": "...", "field": "..."}` naming the field at fault
//! (`path`, `query`, `body` or a JSON member); every other error is JSON too: `404` unknown route or config
//! key, `405` wrong method, `503` counter store full (`limits.max_keys`) or node not running, `507` config map
//! full. No input makes a handler panic; no handler blocks the counter hot path (they call the same lock-free
//! store as the gateway); reads never create keys; keys starting with `@` (the traffic plane's) cannot be
//! written.

mod api_error;
mod counters;
pub mod metrics;
mod shared_state;
mod status;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::node::ClusterHandle;

pub use api_error::ApiError;

/// The router of a node's HTTP surface.
pub fn router(node: ClusterHandle) -> Router {
    Router::new()
        .route("/health", get(status::health))
        .route("/ready", get(status::ready))
        .route("/cluster/status", get(status::cluster_status))
        .route("/v1/ratelimit/check", post(counters::ratelimit_check))
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
        .fallback(api_error::not_found)
        .method_not_allowed_fallback(api_error::method_not_allowed)
        .with_state(node)
}

/// A running HTTP server. Dropping it does not stop it; call [`HttpServer::shutdown`].
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
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
    /// Binds `addr` (port 0: any free port) and serves the node's routes on the current tokio runtime.
    pub async fn start(node: ClusterHandle, addr: SocketAddr) -> Result<HttpServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError { addr, source })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(node);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        tracing::info!(address = %local_addr, "HTTP listening");
        Ok(HttpServer {
            local_addr,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits (at most 1 s) for requests in flight.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
