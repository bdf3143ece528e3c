//! The counter API: `POST /v1/ratelimit/check`, `POST /v1/counters/{key}/add`, `POST /v1/counters/{key}/reset`
//! (admin), `GET /v1/counters/{key}`.
//!
//! Bodies are JSON objects; every field is checked and a bad one is answered `400` naming it. `n` (add) and
//! `cost` (check) are bounded by `http.max_request_n`, so one request cannot saturate a key; `limit` is not
//! bounded: it is compared, never stored. A check's `algorithm` is `fixed_window` (the default),
//! `sliding_window`, `token_bucket` (with `burst`, 1 to 3 × `limit`; its decision reports `limit` = burst,
//! `remaining` = tokens left, rounded down, and `reset_at_ms` = when the bucket is full again) or `concurrency`.
//! A check's `admission` is `default` (decide on this node's view of the global count) or `bounded` (fixed
//! windows only: admit within quota leased by the key's owner, so the cluster cannot pass the limit; see
//! `counter::lease`); refunds are not credited to a bounded limit.
//! A `window` is [`Window::parse`]'s text: `"1m"`, `"1d"`, `"1M"`, or anchored, `"30d@2026-12-01T10:00:00Z"`
//! (boundaries at the anchor plus whole lengths; only the anchor's phase matters, and answers name the window
//! with its phase as the anchor).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::RequestCeiling;
use super::api_error::{ApiError, KeyPath, Params};
use crate::counter::{AddOutcome, Algorithm, CounterError, CounterHandle, Decision, Window};
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
            format!(
                "invalid window {text:?}: {e} (e.g. \"1m\", \"1h\", \"1d\", \"30d@2026-12-01T10:00:00Z\")"
            ),
        )
    })
}

/// Bytes a limit's key needs beside the client's own: the refund companion's prefix.
const COMPANION_ROOM: usize = crate::counter::RELEASED_PREFIX.len();
/// The same for an in-flight limit: its own prefix under the companion's.
const IN_FLIGHT_ROOM: usize = COMPANION_ROOM + crate::counter::IN_FLIGHT_PREFIX.len();

/// The client's key of a limit, writable and short enough that its prefixed counters (`room` bytes more:
/// the refund companion, the in-flight prefix) fit in `limits.max_key_length`, so whatever can be taken can
/// also be given back. Lengths are the client's.
fn user_key<'a>(node: &ClusterHandle, key: &'a str, room: usize) -> Result<&'a str, ApiError> {
    let key = writable_key(key)?;
    let max = node.store().options().max_key_length.saturating_sub(room);
    if key.is_empty() {
        return Err(ApiError::bad_field("key", "must not be empty"));
    }
    if key.len() > max {
        return Err(ApiError::bad_field(
            "key",
            format!(
                "key of {} bytes; a limit's key takes at most {max} (cluster_config.limits.max_key_length \
                 less {room} bytes for the counters that hold its refunds)",
                key.len()
            ),
        ));
    }
    Ok(key)
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

/// Most checks one `POST /v1/ratelimit/check` may carry.
pub(crate) const MAX_CHECKS: usize = 64;

/// One limit of a check request, parsed and resolved before anything is counted.
struct Check {
    handle: CounterHandle,
    /// `None`: an in-flight (concurrency) limit.
    algorithm: Option<Algorithm>,
    limit: u64,
    cost: u64,
    /// `"admission": "bounded"`: the bounded-overshoot mode (see `counter::lease`).
    bounded: bool,
}

impl Check {
    /// The decision, counted when `count` and allowed; refunds (released units) are given back (not in the
    /// bounded mode, which decides on grants).
    fn decide(&self, store: &crate::counter::CounterStore, count: bool) -> Decision {
        if self.bounded {
            return if count {
                store.acquire_bounded_on(&self.handle, self.limit, self.cost)
            } else {
                store.check_bounded_on(&self.handle, self.limit, self.cost)
            };
        }
        match (self.algorithm, count) {
            (Some(a), true) => store.acquire_net(&self.handle, a, self.limit, self.cost),
            (Some(a), false) => store.check_net(&self.handle, a, self.limit, self.cost),
            (None, true) => store.acquire_in_flight(&self.handle, self.limit, self.cost),
            (None, false) => store.check_in_flight(&self.handle, self.limit, self.cost),
        }
    }
}

/// The lease of an in-flight slot when the request names no window: held at most until the end of the
/// hour after the one it was taken in.
const DEFAULT_IN_FLIGHT_WINDOW: &str = "1h";

/// `algorithm`: `None` for `"concurrency"`. A token bucket's burst is a placeholder here: [`with_burst`]
/// reads it once the limit is known.
fn algorithm(map: &Map<String, Value>) -> Result<Option<Algorithm>, ApiError> {
    match map.get("algorithm") {
        None | Some(Value::Null) => Ok(Some(Algorithm::FixedWindow)),
        Some(Value::String(s)) if s == "fixed_window" => Ok(Some(Algorithm::FixedWindow)),
        Some(Value::String(s)) if s == "sliding_window" => Ok(Some(Algorithm::SlidingWindow)),
        Some(Value::String(s)) if s == "token_bucket" => Ok(Some(Algorithm::TokenBucket {
            burst: std::num::NonZeroU64::MIN,
        })),
        Some(Value::String(s)) if s == "concurrency" => Ok(None),
        Some(other) => Err(ApiError::bad_field(
            "algorithm",
            format!(
                "expected \"fixed_window\", \"sliding_window\", \"token_bucket\" or \"concurrency\", got {other}"
            ),
        )),
    }
}

/// `burst` of a token bucket of `limit` (required, 1 to 3 × limit); refused beside any other algorithm.
fn with_burst(
    map: &Map<String, Value>,
    algorithm: Option<Algorithm>,
    limit: u64,
) -> Result<Option<Algorithm>, ApiError> {
    let given = !matches!(map.get("burst"), None | Some(Value::Null));
    match algorithm {
        Some(Algorithm::TokenBucket { .. }) => {
            if !given {
                return Err(ApiError::bad_field(
                    "burst",
                    "required for algorithm \"token_bucket\"",
                ));
            }
            let burst = integer(map, "burst", None)?;
            Algorithm::token_bucket(burst, limit)
                .map(Some)
                .map_err(|e| ApiError::bad_field("burst", e.to_string()))
        }
        other if given => Err(ApiError::bad_field(
            "burst",
            format!(
                "only for algorithm \"token_bucket\", not {:?}",
                other.map_or("concurrency", Algorithm::name)
            ),
        )),
        other => Ok(other),
    }
}

/// The counter of `{"key", "window", "algorithm"?}`: an in-flight limit counts under its own prefix, with
/// a window (its slots' lease) that defaults to [`DEFAULT_IN_FLIGHT_WINDOW`].
fn counter_of(
    node: &ClusterHandle,
    map: &Map<String, Value>,
) -> Result<(String, Window, Option<Algorithm>), ApiError> {
    let algorithm = algorithm(map)?;
    let room = match algorithm {
        Some(_) => COMPANION_ROOM,
        None => IN_FLIGHT_ROOM,
    };
    let key = user_key(node, string(map, "key")?, room)?;
    Ok(match algorithm {
        Some(_) => (
            key.to_owned(),
            window(string(map, "window")?, "window")?,
            algorithm,
        ),
        None => {
            let lease = match map.get("window") {
                None | Some(Value::Null) => DEFAULT_IN_FLIGHT_WINDOW,
                Some(_) => string(map, "window")?,
            };
            (
                crate::counter::in_flight_key(key),
                window(lease, "window")?,
                None,
            )
        }
    })
}

/// `{"key", "window", "limit", "cost"?, "algorithm"?, "burst"?}`, its counter resolved (a key refused here refuses
/// the whole request before anything is counted).
fn check(
    node: &ClusterHandle,
    map: &Map<String, Value>,
    ceiling: RequestCeiling,
) -> Result<Check, ApiError> {
    let (key, window, algorithm) = counter_of(node, map)?;
    let limit = integer(map, "limit", None)?;
    let algorithm = with_burst(map, algorithm, limit)?;
    let cost = bounded(integer(map, "cost", Some(1))?, "cost", ceiling)?;
    let bounded_mode = admission(node, map, algorithm, &key)?;
    let handle = node.store().handle(&key, window).map_err(key_error)?;
    Ok(Check {
        handle,
        algorithm,
        limit,
        cost,
        bounded: bounded_mode,
    })
}

/// `admission`: `"default"` (or absent) or `"bounded"` (fixed windows only; the key must leave room for
/// its lease keys, [`crate::counter::LEASE_KEY_ROOM`] bytes within `limits.max_key_length`).
fn admission(
    node: &ClusterHandle,
    map: &Map<String, Value>,
    algorithm: Option<Algorithm>,
    key: &str,
) -> Result<bool, ApiError> {
    let bounded = match map.get("admission") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "default" => false,
        Some(Value::String(s)) if s == "bounded" => true,
        Some(other) => {
            return Err(ApiError::bad_field(
                "admission",
                format!("expected \"default\" or \"bounded\", got {other}"),
            ));
        }
    };
    if bounded && algorithm != Some(Algorithm::FixedWindow) {
        return Err(ApiError::bad_field(
            "admission",
            format!(
                "\"bounded\" is for algorithm \"fixed_window\" only, not {:?}",
                algorithm.map_or("concurrency", Algorithm::name)
            ),
        ));
    }
    let max = node.store().options().max_key_length;
    if bounded && key.len() + crate::counter::LEASE_KEY_ROOM > max {
        return Err(ApiError::bad_field(
            "key",
            format!(
                "key of {} bytes; a bounded limit's key takes at most {} (cluster_config.limits.max_key_length \
                 less {} bytes for its lease keys)",
                key.len(),
                max.saturating_sub(crate::counter::LEASE_KEY_ROOM),
                crate::counter::LEASE_KEY_ROOM
            ),
        ));
    }
    Ok(bounded)
}

/// The items of a request: the body itself when it has no `field`, else each member of its `field` array
/// (1 to [`MAX_CHECKS`]), each parsed by `parse` with errors named by place (`checks[1].window`); with the
/// array, the members an item takes may not stand beside it. The flag says whether the array was given.
fn items<T>(
    map: &Map<String, Value>,
    field: &str,
    members: &[&str],
    parse: impl Fn(&Map<String, Value>) -> Result<T, ApiError>,
) -> Result<(Vec<T>, bool), ApiError> {
    let Some(list) = map.get(field) else {
        return Ok((vec![parse(map)?], false));
    };
    let Value::Array(list) = list else {
        return Err(ApiError::bad_field(
            field,
            format!("expected an array, got {list}"),
        ));
    };
    if list.is_empty() || list.len() > MAX_CHECKS {
        return Err(ApiError::bad_field(
            field,
            format!("{} members; 1 to {MAX_CHECKS} per request", list.len()),
        ));
    }
    if let Some(member) = members.iter().find(|m| map.contains_key(**m)) {
        return Err(ApiError::bad_field(
            member,
            format!("give it inside each member of \"{field}\", not beside the array"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(ApiError::bad_field(
                &format!("{field}[{i}]"),
                format!("expected a JSON object, got {item}"),
            ));
        };
        out.push(parse(item).map_err(|e| e.under(&format!("{field}[{i}].")))?);
    }
    Ok((out, true))
}

/// The answer of a check request.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum CheckAnswer {
    /// A single check: its decision.
    One(DecisionJson),
    /// Several: whether all were allowed (and counted) and each one's decision.
    Many {
        /// Every check allowed: all were counted; otherwise none was.
        allowed: bool,
        /// Each check's decision, in request order.
        results: Vec<DecisionJson>,
    },
}

/// The common shape of a check request, read without a JSON tree: one limit of a fixed or sliding window,
/// counted. Only an object of exactly these members qualifies (`deny_unknown_fields`, so nothing is skipped
/// unread); strings are borrowed from the body, so an escaped one makes the parse fail, as does a wrong type,
/// a duplicate member, `checks` (even `null`) or any other member, and the request goes through the general
/// path, which names the field at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SingleCheck<'a> {
    #[serde(borrow)]
    key: &'a str,
    #[serde(borrow)]
    window: &'a str,
    limit: u64,
    #[serde(default)]
    cost: Option<u64>,
    #[serde(borrow, default)]
    algorithm: Option<&'a str>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// The decision of a [`SingleCheck`] body, counted when allowed, through the per-thread cache of resolved
/// cells; `None` when the body is not of that shape or is refused (the general path then answers it, with
/// the same decision rules and the error that names the field).
fn single_check(
    node: &ClusterHandle,
    ceiling: RequestCeiling,
    body: &[u8],
) -> Option<Result<Decision, ApiError>> {
    // An object only: serde reads a struct from an array too.
    if body.len() > MAX_BODY_BYTES || body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let c: SingleCheck<'_> = serde_json::from_slice(body).ok()?;
    if c.dry_run == Some(true) {
        return None;
    }
    let algorithm = match c.algorithm {
        None | Some("fixed_window") => Algorithm::FixedWindow,
        Some("sliding_window") => Algorithm::SlidingWindow,
        Some(_) => return None,
    };
    let key = user_key(node, c.key, COMPANION_ROOM).ok()?;
    let window = Window::parse(c.window).ok()?;
    let cost = bounded(c.cost.unwrap_or(1), "cost", ceiling).ok()?;
    Some(
        node.store()
            .acquire_net_by_key(key, window, algorithm, c.limit, cost)
            .map_err(key_error),
    )
}

/// Counts a check request for `bifrost_ratelimit_checks_total{result}`: one per request.
fn count_check(stats: &super::HttpStats, allowed: bool) {
    super::HttpStats::bump(if allowed {
        &stats.ratelimit_allowed
    } else {
        &stats.ratelimit_over_limit
    });
}

/// `POST /v1/ratelimit/check`: one check (`{"key", "window", "limit", "cost"?, "algorithm"?}`) or several
/// (`{"checks": [...]}`), counted all or nothing: every limit of the request is counted only if all allow.
/// `"dry_run": true` decides without counting anything (the check of check-then-report). The answer carries
/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds) of the check closest to its
/// limit (a refused one first), and `Retry-After` when refused.
pub(crate) async fn ratelimit_check(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    State(stats): State<std::sync::Arc<super::HttpStats>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(decision) = single_check(&node, ceiling, &body) {
        let decision = decision?;
        count_check(&stats, decision.allowed);
        let headers = ratelimit_headers(
            std::slice::from_ref(&decision),
            &[],
            node.clock().now_unix_ms().get(),
        );
        let answer = CheckAnswer::One(DecisionJson::from(decision));
        return Ok((headers, Json(answer)).into_response());
    }
    let map = object(&body)?;
    let dry_run = match map.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_field(
                "dry_run",
                format!("expected true or false, got {other}"),
            ));
        }
    };
    let (checks, batch) = items(
        &map,
        "checks",
        &[
            "key",
            "window",
            "limit",
            "cost",
            "algorithm",
            "burst",
            "admission",
        ],
        |item| check(&node, item, ceiling),
    )?;
    // The same counter twice would pass both decisions and then refuse the second after counting the first:
    // each limit once.
    for (j, c) in checks.iter().enumerate() {
        if let Some(i) = checks[..j].iter().position(|b| {
            b.handle.key() == c.handle.key() && b.handle.window() == c.handle.window()
        }) {
            return Err(ApiError::bad_field(
                &format!("checks[{j}]"),
                format!(
                    "the same key and window as checks[{i}]; give each limit once (with the sum of the costs)"
                ),
            ));
        }
    }
    // First every decision without counting; then, only if all allow, count each. A check that loses the
    // last units to a concurrent request between the two is refused, and the ones before it stay counted:
    // the request is refused, never admitted over a limit.
    let mut decisions: Vec<Decision>;
    let mut allowed;
    if let [only] = &checks[..]
        && !dry_run
    {
        // One limit: a single acquire decides and counts at once.
        decisions = vec![only.decide(node.store(), true)];
        allowed = decisions[0].allowed;
    } else {
        decisions = checks
            .iter()
            .map(|c| c.decide(node.store(), false))
            .collect();
        allowed = decisions.iter().all(|d| d.allowed);
    }
    if allowed && !dry_run && checks.len() > 1 {
        for (c, d) in checks.iter().zip(decisions.iter_mut()) {
            *d = c.decide(node.store(), true);
            if !d.allowed {
                allowed = false;
                break;
            }
        }
    }
    if !dry_run {
        count_check(&stats, allowed);
    }
    let in_flight: Vec<bool> = checks.iter().map(|c| c.algorithm.is_none()).collect();
    let headers = ratelimit_headers(&decisions, &in_flight, node.clock().now_unix_ms().get());
    let answer = if batch {
        CheckAnswer::Many {
            allowed,
            results: decisions.into_iter().map(DecisionJson::from).collect(),
        }
    } else {
        CheckAnswer::One(DecisionJson::from(decisions.remove(0)))
    };
    Ok((headers, Json(answer)).into_response())
}

/// What a report counted on one key.
#[derive(Debug, Serialize)]
pub(crate) struct ReportJson {
    key: String,
    window: String,
    /// `added`, `saturated` or `stale` (see `POST /v1/counters/{key}/add`).
    outcome: &'static str,
    /// The key's cluster-wide count in its current window after the report, as this node knows it.
    used: u64,
}

/// `POST /v1/ratelimit/report`: the report of check-then-report. Counts the real cost of a request after it
/// ran (tokens, micro-dollars), without a limit and without refusing: one report
/// (`{"key", "window", "cost"}`) or several (`{"reports": [...]}`, at most [`MAX_CHECKS`]), every one parsed
/// and resolved before any is counted. Answers `{"results": [{"key", "window", "outcome", "used"}]}`.
pub(crate) async fn ratelimit_report(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let map = object(&body)?;
    let parse = |item: &Map<String, Value>| -> Result<(CounterHandle, u64), ApiError> {
        let key = user_key(&node, string(item, "key")?, COMPANION_ROOM)?;
        let window = window(string(item, "window")?, "window")?;
        let cost = bounded(integer(item, "cost", None)?, "cost", ceiling)?;
        Ok((node.store().handle(key, window).map_err(key_error)?, cost))
    };
    let (reports, _) = items(&map, "reports", &["key", "window", "cost"], parse)?;
    let results: Vec<ReportJson> = reports
        .into_iter()
        .map(|(handle, cost)| {
            let outcome = match handle.add(cost) {
                AddOutcome::Added => "added",
                AddOutcome::Saturated => "saturated",
                AddOutcome::Stale => "stale",
            };
            ReportJson {
                key: handle.key().to_owned(),
                window: handle.window().to_string(),
                outcome,
                used: handle.global(),
            }
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": results })))
}

/// What a release gave back on one limit.
#[derive(Debug, Serialize)]
pub(crate) struct ReleaseJson {
    key: String,
    window: String,
    /// Units given back.
    released: u64,
    /// Units asked for beyond what this node saw held or counted: not given back.
    unmatched: u64,
    /// The net count (slots held, for a concurrency limit) after the release, as this node sees it.
    used: u64,
}

/// `POST /v1/ratelimit/release`: gives back what a request reserved. On a window limit, a refund in the
/// current window (`{"key", "window", "cost"?}`); on a concurrency limit (`"algorithm": "concurrency"`), the
/// request's slots when it ends. One release or several (`{"releases": [...]}`), every one parsed before any
/// is given back. Answers `{"results": [{"key", "window", "released", "unmatched", "used"}]}`.
pub(crate) async fn ratelimit_release(
    State(node): State<ClusterHandle>,
    State(ceiling): State<RequestCeiling>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let map = object(&body)?;
    let parse = |item: &Map<String, Value>| -> Result<(String, Window, bool, u64), ApiError> {
        let (key, window, algorithm) = counter_of(&node, item)?;
        let cost = bounded(integer(item, "cost", Some(1))?, "cost", ceiling)?;
        Ok((key, window, algorithm.is_none(), cost))
    };
    let (releases, batch) = items(
        &map,
        "releases",
        &["key", "window", "cost", "algorithm"],
        parse,
    )?;
    let mut results = Vec::with_capacity(releases.len());
    for (i, (key, window, in_flight, cost)) in releases.into_iter().enumerate() {
        // Every key fits with its companion (checked above), so only a full store can refuse one here.
        let done = if in_flight {
            node.store().release_in_flight(&key, window, cost)
        } else {
            node.store().release(&key, window, cost)
        }
        .map_err(|e| {
            let e = key_error(e);
            if batch {
                e.under(&format!("releases[{i}]."))
            } else {
                e
            }
        })?;
        let name = key
            .strip_prefix(crate::counter::IN_FLIGHT_PREFIX)
            .unwrap_or(&key);
        results.push(ReleaseJson {
            key: name.to_owned(),
            window: window.to_string(),
            released: done.released,
            unmatched: done.unmatched,
            used: done.used,
        });
    }
    Ok(Json(serde_json::json!({ "results": results })))
}

/// The RateLimit headers (IETF draft `RateLimit-*` fields as Envoy and the envoyproxy/ratelimit service send
/// them) of the decision closest to its limit: a refused one first, then the fewest remaining.
fn ratelimit_headers(decisions: &[Decision], in_flight: &[bool], now_ms: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some((closest, concurrency)) = decisions
        .iter()
        .zip(in_flight.iter().copied().chain(std::iter::repeat(false)))
        .min_by_key(|(d, _)| (d.allowed, if d.allowed { d.remaining } else { 0 }))
    else {
        return headers;
    };
    // An in-flight slot frees whenever a holder releases it, not at its lease's end: say one second.
    let reset_s = if concurrency {
        IN_FLIGHT_RETRY_S
    } else {
        closest.reset_at_ms.saturating_sub(now_ms).div_ceil(1000)
    };
    let remaining = if closest.allowed {
        closest.remaining
    } else {
        0
    };
    for (name, value) in [
        ("ratelimit-limit", closest.limit),
        ("ratelimit-remaining", remaining),
        ("ratelimit-reset", reset_s),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    if !closest.allowed {
        // Every refused limit must admit again: the latest of their earliest retries (a token bucket's is
        // when the request's tokens have refilled, not when it is full).
        let retry_s = decisions
            .iter()
            .zip(in_flight.iter().copied().chain(std::iter::repeat(false)))
            .filter(|(d, _)| !d.allowed)
            .map(|(d, concurrency)| {
                if concurrency {
                    IN_FLIGHT_RETRY_S
                } else {
                    d.retry_at_ms.saturating_sub(now_ms).div_ceil(1000)
                }
            })
            .max()
            .unwrap_or(reset_s);
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_s));
    }
    headers
}

/// `RateLimit-Reset` and `Retry-After` of an in-flight (concurrency) limit, seconds.
const IN_FLIGHT_RETRY_S: u64 = 1;

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
    let epoch = params.epoch(window, node.clock().now_unix_ms().get())?;
    Ok(Json(counter_json(&node, &key, window, epoch, None)))
}
