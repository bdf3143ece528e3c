//! The shared-state routes: cluster-wide config entries, node health records, traffic patterns.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::api_error::{ApiError, KeyPath, Params};
use crate::ReplicaId;
use crate::node::{ClusterHandle, SharedStateError};
use crate::state::StateError;

fn state_error(e: SharedStateError) -> ApiError {
    match e {
        SharedStateError::State(StateError::Full { .. }) => {
            ApiError::with_status(507, e.to_string())
        }
        SharedStateError::State(StateError::EmptyKey | StateError::KeyTooLong { .. }) => {
            ApiError::bad_field("key", e.to_string())
        }
        SharedStateError::State(StateError::ValueTooLarge { .. }) => {
            ApiError::bad_field("body", e.to_string())
        }
        SharedStateError::State(StateError::Counter(_)) | SharedStateError::Json { .. } => {
            ApiError::bad_field("body", e.to_string())
        }
        SharedStateError::NotRunning => ApiError::with_status(503, e.to_string()),
    }
}

/// A config value as JSON: UTF-8 text as is, anything else in hex.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigValueJson {
    key: String,
    value: String,
    encoding: &'static str,
}

fn value_json(key: &str, bytes: &[u8]) -> ConfigValueJson {
    match std::str::from_utf8(bytes) {
        Ok(text) => ConfigValueJson {
            key: key.to_string(),
            value: text.to_string(),
            encoding: "utf8",
        },
        Err(_) => ConfigValueJson {
            key: key.to_string(),
            value: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            encoding: "hex",
        },
    }
}

pub(crate) async fn list_config(State(node): State<ClusterHandle>) -> Json<Vec<ConfigValueJson>> {
    Json(
        node.config_entries()
            .iter()
            .map(|(k, v)| value_json(k, v))
            .collect(),
    )
}

pub(crate) async fn get_config(
    State(node): State<ClusterHandle>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    match node.config_get(&key) {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError::with_status(
            404,
            format!("no config entry {key:?}"),
        )),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct WriteJson {
    key: String,
    timestamp: String,
}

pub(crate) async fn put_config(
    State(node): State<ClusterHandle>,
    KeyPath(key): KeyPath,
    body: Bytes,
) -> Result<Json<WriteJson>, ApiError> {
    let ts = node.config_put(&key, body).await.map_err(state_error)?;
    Ok(Json(WriteJson {
        key,
        timestamp: ts.to_string(),
    }))
}

pub(crate) async fn delete_config(
    State(node): State<ClusterHandle>,
    KeyPath(key): KeyPath,
) -> Result<Json<WriteJson>, ApiError> {
    // Over HTTP only what exists can be deleted: a tombstone per random key would fill the map cluster-wide.
    if node.config_get(&key).is_none() {
        return Err(ApiError::with_status(
            404,
            format!("no config entry {key:?}"),
        ));
    }
    let ts = node.config_delete(&key).await.map_err(state_error)?;
    Ok(Json(WriteJson {
        key,
        timestamp: ts.to_string(),
    }))
}

#[derive(Debug, Serialize)]
pub(crate) struct NodeJson {
    node_id: String,
    replica_id: String,
    age_ms: u64,
    version: u64,
    cpu_millicores: u32,
    memory_bytes: u64,
    memory_total_bytes: u64,
    open_connections: u32,
    requests_per_second: f64,
    links: Vec<LinkJson>,
}

#[derive(Debug, Serialize)]
struct LinkJson {
    node_id: String,
    up: bool,
    rtt_us: u64,
}

pub(crate) async fn nodes(State(node): State<ClusterHandle>) -> Json<Vec<NodeJson>> {
    Json(
        node.nodes()
            .into_iter()
            .map(|v| NodeJson {
                node_id: v.record.node_id,
                replica_id: format!("{:016x}", v.record.owner),
                age_ms: v.age_ms,
                version: v.record.version,
                cpu_millicores: v.record.cpu_millicores,
                memory_bytes: v.record.memory_bytes,
                memory_total_bytes: v.record.memory_total_bytes,
                open_connections: v.record.open_connections,
                requests_per_second: v.record.request_rate_milli as f64 / 1000.0,
                links: v
                    .record
                    .links
                    .into_iter()
                    .map(|l| LinkJson {
                        node_id: l.node_id,
                        up: l.up,
                        rtt_us: l.rtt_us,
                    })
                    .collect(),
            })
            .collect(),
    )
}

#[derive(Debug, Serialize)]
pub(crate) struct TrafficJson {
    key: String,
    window: String,
    epoch: u64,
    requests: u64,
    errors: u64,
    error_rate: f64,
    p50_us: Option<u64>,
    p90_us: Option<u64>,
    p99_us: Option<u64>,
    by_replica: Vec<OriginJson>,
}

#[derive(Debug, Serialize)]
struct OriginJson {
    replica_id: String,
    node_id: Option<String>,
    requests: u64,
    errors: u64,
    p99_us: Option<u64>,
}

pub(crate) async fn traffic(
    State(node): State<ClusterHandle>,
    KeyPath(key): KeyPath,
    params: Params,
) -> Result<(StatusCode, Json<TrafficJson>), ApiError> {
    let window = node.traffic().window();
    let epoch = params.epoch(window, node.clock().now_unix_ms().get())?;
    let view = node.traffic().read(&key, epoch);
    let members = node.members();
    // The traffic plane names origins by `u64` (the counter plane's origins); a member is named by its replica id.
    let node_of = |origin: u64| -> Option<String> {
        let replica = ReplicaId::new(origin);
        if replica == node.replica_id() {
            return Some(node.node_id().to_string());
        }
        members
            .as_ref()?
            .by_replica(replica)
            .map(|m| m.node_id().to_string())
    };
    Ok((
        StatusCode::OK,
        Json(TrafficJson {
            key,
            window: window.to_string(),
            epoch,
            requests: view.requests,
            errors: view.errors,
            error_rate: view.error_rate(),
            p50_us: view.latency.quantile(0.5),
            p90_us: view.latency.quantile(0.9),
            p99_us: view.latency.quantile(0.99),
            by_replica: view
                .by_origin
                .iter()
                .map(|o| OriginJson {
                    replica_id: format!("{:016x}", o.origin),
                    node_id: node_of(o.origin),
                    requests: o.requests,
                    errors: o.errors,
                    p99_us: o.latency.quantile(0.99),
                })
                .collect(),
        }),
    ))
}
