//! The counter API: `POST /v1/ratelimit/check`, `POST /v1/counters/{key}/add`, `GET /v1/counters/{key}`.
//!
//! Bodies are JSON objects; every field is checked and a bad one is answered `400` naming it. `n` (add) and
//! `cost` (check) are bounded by `http.max_request_n`, so one request cannot saturate a key; `limit` is not
//! bounded: it is compared, never stored.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Map, Value};

use super::RequestCeiling;
use super::api_error::{ApiError, KeyPath, Params};
use crate::counter::{AddOutcome, Algorithm, CounterError, Decision, Window};
use crate::node::ClusterHandle;

/// Largest request body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::bad_field(
            "body",
            format!("body of {} bytes; at most {MAX_BODY_BYTES}", body.len()),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_field("body", "expected a JSON object")),
        Err(e) => Err(ApiError::bad_field("body", format!("invalid JSON: {e}"))),
    }
}

fn string<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::bad_field(field, "required")),
        Some(other) => Err(ApiError::bad_field(
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

fn integer(map: &Map<String, Value>, field: &str, default: Option<u64>) -> Result<u64, ApiError> {
    match map.get(field) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            ApiError::bad_field(field, format!("expected an integer 0..=2^64-1, got {n}"))
        }),
        None | Some(Value::Null) => default.ok_or_else(|| ApiError::bad_field(field, "required")),
        Some(other) => Err(ApiError::bad_field(
            field,
            format!("expected an integer, got {other}"),
        )),
    }
}

/// `field` of at most `ceiling` (`http.max_request_n`): a larger value is a `400` naming the field.
fn bounded(value: u64, field: &str, ceiling: RequestCeiling) -> Result<u64, ApiError> {
    if value > ceiling.0 {
        return Err(ApiError::bad_field(
            field,
            format!(
                "{value} is above the per-request ceiling of {} (cluster_config.http.max_request_n)",
                ceiling.0
            ),
        ));
    }
    Ok(value)
}

fn window(text: &str, field: &str) -> Result<Window, ApiError> {
    Window::parse(text).map_err(|e| {
        ApiError::bad_field(
            field,
            format!("invalid window {text:?}: {e} (e.g. \"1m\", \"1h\", \"1d\")"),
        )
    })
}

/// A key a client may write: keys starting with `@` belong to the traffic plane.
fn writable_key(key: &str) -> Result<&str, ApiError> {
    if key.starts_with('@') {
        return Err(ApiError::bad_field(
            "key",
            format!("keys starting with '@' are reserved (traffic patterns), got {key:?}"),
        ));
    }
    Ok(key)
}

fn key_error(e: CounterError) -> ApiError {
    match e {
        CounterError::KeyLimit { .. } => ApiError::with_status(503, e.to_string()),
        CounterError::KeyTooLong { .. } | CounterError::EmptyKey => {
            ApiError::bad_field("key", e.to_string())
        }
    }
}

/// A decision as JSON.
#[derive(Debug, Serialize)]
pub(crate) struct DecisionJson {
    allowed: bool,
    used: u64,
    limit: u64,
    remaining: u64,
    reset_at_ms: u64,
}

impl From<Decision> for DecisionJson {
    fn from(d: Decision) -> Self {
        DecisionJson {
            allowed: d.allowed,
            used: d.used,
            limit: d.limit,
            remaining: d.remaining,
            reset_at_ms: d.reset_at_ms,
        }
    }
}

pub(crate) async fn ratelimit_check(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    body: Bytes,
) -> Result<Json<DecisionJson>, ApiError> {
    let map = object(&body)?;
    let key = writable_key(string(&map, "key")?)?;
    let window = window(string(&map, "window")?, "window")?;
    let limit = integer(&map, "limit", None)?;
    let cost = bounded(integer(&map, "cost", Some(1))?, "cost", ceiling)?;
    let algorithm = match map.get("algorithm") {
        None | Some(Value::Null) => Algorithm::FixedWindow,
        Some(Value::String(s)) if s == "fixed_window" => Algorithm::FixedWindow,
        Some(Value::String(s)) if s == "sliding_window" => Algorithm::SlidingWindow,
        Some(other) => {
            return Err(ApiError::bad_field(
                "algorithm",
                format!("expected \"fixed_window\" or \"sliding_window\", got {other}"),
            ));
        }
    };
    let handle = node.store().handle(key, window).map_err(key_error)?;
    Ok(Json(DecisionJson::from(
        handle.acquire(algorithm, limit, cost),
    )))
}

/// A counter as this node sees it.
#[derive(Debug, Serialize)]
pub(crate) struct CounterJson {
    key: String,
    window: String,
    epoch: u64,
    window_start_ms: u64,
    window_end_ms: u64,
    /// This node's own count.
    local: u64,
    /// The merged count of every other replica.
    remote: u64,
    /// `local + remote`: the cluster-wide count as this node knows it.
    global: u64,
    /// For an add: `added`, `saturated` or `stale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
}

fn counter_json(
    node: &ClusterHandle,
    key: &str,
    window: Window,
    epoch: u64,
    outcome: Option<&'static str>,
) -> CounterJson {
    let (local, remote) = node.store().counts_at(key, window, epoch).unwrap_or((0, 0));
    CounterJson {
        key: key.to_string(),
        window: window.to_string(),
        epoch,
        window_start_ms: window.start_ms(epoch),
        window_end_ms: window.end_ms(epoch),
        local,
        remote,
        global: local.saturating_add(remote),
        outcome,
    }
}

pub(crate) async fn post_counter(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    KeyPath(path): KeyPath,
    body: Bytes,
) -> Result<Json<CounterJson>, ApiError> {
    let Some(key) = path.strip_suffix("/add") else {
        return Err(ApiError::bad_field(
            "path",
            "POST goes to /v1/counters/{key}/add",
        ));
    };
    let key = writable_key(key)?;
    let map = object(&body)?;
    let window = window(string(&map, "window")?, "window")?;
    let n = bounded(integer(&map, "n", Some(1))?, "n", ceiling)?;
    let epoch = window.epoch_at(node.clock().now_unix_ms());
    let outcome = node.store().add(key, window, n).map_err(key_error)?;
    let outcome = match outcome {
        AddOutcome::Added => "added",
        AddOutcome::Saturated => "saturated",
        AddOutcome::Stale => "stale",
    };
    Ok(Json(counter_json(&node, key, window, epoch, Some(outcome))))
}

pub(crate) async fn get_counter(
    State(node): State<ClusterHandle>,
    KeyPath(key): KeyPath,
    params: Params,
) -> Result<Json<CounterJson>, ApiError> {
    let Some(text) = params.0.get("window") else {
        return Err(ApiError::bad_field(
            "window",
            "required query parameter, e.g. ?window=1m",
        ));
    };
    let window = window(text, "window")?;
    let epoch = params.epoch(window, node.clock().now_unix_ms())?;
    Ok(Json(counter_json(&node, &key, window, epoch, None)))
}
