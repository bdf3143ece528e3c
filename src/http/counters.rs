//! The counter API: `POST /v1/ratelimit/check`, `POST /v1/counters/{key}/add`, `POST /v1/counters/{key}/reset`
//! (admin), `GET /v1/counters/{key}`.
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
        CounterError::KeyLimit { .. } | CounterError::RemoteKeyLimit { .. } => {
            ApiError::with_status(503, e.to_string())
        }
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
    State(stats): State<std::sync::Arc<super::HttpStats>>,
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
    let decision = handle.acquire(algorithm, limit, cost);
    // Counted for `bifrost_ratelimit_checks_total{result}`.
    super::HttpStats::bump(if decision.allowed {
        &stats.ratelimit_allowed
    } else {
        &stats.ratelimit_over_limit
    });
    Ok(Json(DecisionJson::from(decision)))
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
    /// For an add: `added`, `saturated` or `stale`; `reset` for a reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    /// For a reset: the global count it cleared, as this node saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    /// For a reset: how many origins got a floor (this node included).
    #[serde(skip_serializing_if = "Option::is_none")]
    origins: Option<usize>,
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
        before: None,
        origins: None,
    }
}

pub(crate) async fn post_counter(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    KeyPath(path): KeyPath,
    body: Bytes,
) -> Result<Json<CounterJson>, ApiError> {
    if let Some(key) = path.strip_suffix("/reset") {
        return reset_counter(&node, key, &body).map(Json);
    }
    let Some(key) = path.strip_suffix("/add") else {
        return Err(ApiError::bad_field(
            "path",
            "POST goes to /v1/counters/{key}/add or /v1/counters/{key}/reset",
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

// --- admin reset (POST /v1/counters/{key}/reset) ---

/// `POST /v1/counters/{key}/reset` `{"window": "1Y", "epoch": N?}`: clears the key's window (the current one
/// unless `epoch` is given) cluster-wide through per-origin floors (see [`ClusterHandle::reset_counter`]).
/// Answers the counter as this node sees it right after the reset, with `outcome: "reset"`, `before` (the
/// global count it cleared) and `origins` (the floors set). `404` when the key has no value in that window
/// here. The authentication layer classifies this path as the `admin` scope.
fn reset_counter(node: &ClusterHandle, key: &str, body: &Bytes) -> Result<CounterJson, ApiError> {
    let key = writable_key(key)?;
    let map = object(body)?;
    let window = window(string(&map, "window")?, "window")?;
    let epoch = match map.get("epoch") {
        None | Some(Value::Null) => window.epoch_at(node.clock().now_unix_ms()),
        Some(_) => integer(&map, "epoch", None)?,
    };
    let Some(report) = node.reset_counter(key, window, Some(epoch)) else {
        return Err(ApiError::with_status(
            404,
            format!(
                "no value of {key:?} in window {window} epoch {epoch} on this node: nothing to reset"
            ),
        ));
    };
    let mut answer = counter_json(node, key, window, epoch, Some("reset"));
    answer.before = Some(report.before);
    answer.origins = Some(report.floors.len());
    Ok(answer)
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
