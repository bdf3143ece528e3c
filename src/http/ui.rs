//! The status page (`GET /` and `GET /ui`, with `/ui/status.js` and `/ui/status.css`) and the two JSON routes it
//! needs beside the existing ones: `GET /cluster/peers` (per-peer replication) and `GET /v1/keys/hot` (the
//! hottest keys with their limits, and the hot path's decision counts).
//!
//! Guarantees:
//! - The page is static: three files embedded in the binary (`include_str!`), the same bytes for every client,
//!   carrying no data of the node. So they are served without a token ([`is_page`] is open in the gate); every
//!   number the page shows comes from JSON routes that keep their `read` scope. A browser passes the token the
//!   user types into the page (kept in the tab's `sessionStorage`, sent as `Authorization: Bearer`); with no
//!   token configured the loopback rule applies as before (reads are served, writes only to loopback clients).
//! - The page loads nothing from elsewhere: its `Content-Security-Policy` allows scripts, styles and `fetch`
//!   from the node's own origin only, no inline script, no framing (`frame-ancestors 'none'`), no form posts;
//!   it renders every value from the node as text (`textContent`), never as markup.
//! - The page only reads: it sends `GET` requests and nothing else, so the cross-site rules of the gate
//!   (`Origin`, `Content-Type`) are unchanged.
//! - `GET /v1/keys/hot?n=N` answers at most [`MAX_HOT_KEYS`] keys (`n` defaults to [`DEFAULT_HOT_KEYS`]; `0` or
//!   more than the maximum is a `400` naming `n`). Its scan over every key runs at most once per
//!   [`HOT_KEYS_TTL_MS`] per node, whatever the number of clients: answers in between reuse the last scan.
//! - `GET /cluster/peers` lists the linked peers (bounded by the member table's caps).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::api_error::{ApiError, Params};
use crate::counter::{Algorithm, HotKey, call_counts};
use crate::node::ClusterHandle;

/// Most keys `GET /v1/keys/hot` answers.
pub const MAX_HOT_KEYS: usize = 100;
/// Keys `GET /v1/keys/hot` answers without `n`.
pub const DEFAULT_HOT_KEYS: usize = 10;
/// How long one scan of the keys answers `GET /v1/keys/hot`, in ms of the node's coarse clock.
pub const HOT_KEYS_TTL_MS: u64 = 1_000;

const PAGE_HTML: &str = include_str!("ui/index.html");
const PAGE_JS: &str = include_str!("ui/status.js");
const PAGE_CSS: &str = include_str!("ui/status.css");

/// The page's policy: everything from the node itself, nothing inline, nothing framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's static files (served without a token; see the module docs).
pub(crate) fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/ui/status.js" | "/ui/status.css")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

// ---- GET /cluster/peers ----

/// The body of `GET /cluster/peers`.
#[derive(Debug, Serialize)]
pub(crate) struct PeersJson {
    /// The node's clock (Unix ms), for the ages below.
    now_ms: u64,
    /// Data-plane checks of this node, all peers together.
    checks: ChecksJson,
    /// Every linked peer.
    peers: Vec<PeerJson>,
}

#[derive(Debug, Serialize)]
struct ChecksJson {
    sent: u64,
    answered: u64,
    timed_out: u64,
}

#[derive(Debug, Serialize)]
struct PeerJson {
    node_id: String,
    replica_id: String,
    address: String,
    /// QUIC's round trip, in ms.
    rtt_ms: u64,
    /// Whether deltas go to the peer (false while membership holds it down or left).
    replicating: bool,
    /// Receive time minus the peer's send time of its last batch, in ms (clock skew included).
    lag_ms: u64,
    bytes_sent: u64,
    bytes_received: u64,
    batches_sent: u64,
    batches_received: u64,
    /// Batches of the peer that never arrived.
    sequence_gaps: u64,
    decode_errors: u64,
    /// Round trip of the last answered data-plane check, in ms (0 before the first).
    check_rtt_ms: u64,
    /// When the peer last answered a data-plane check (Unix ms, 0 before the first).
    last_check_answered_ms: u64,
    /// When a valid frame of the peer last arrived (Unix ms, 0 before the first).
    last_received_ms: u64,
}

pub(crate) async fn peers(State(node): State<ClusterHandle>) -> Json<PeersJson> {
    let status = node.status();
    let r = &status.replication;
    Json(PeersJson {
        now_ms: node.clock().now_unix_ms().get(),
        checks: ChecksJson {
            sent: r.checks_sent,
            answered: r.checks_answered,
            timed_out: r.checks_timed_out,
        },
        peers: status
            .peers
            .iter()
            .map(|p| PeerJson {
                node_id: p.node_id.clone(),
                replica_id: p.replica_id.to_string(),
                address: p.gossip_addr.unwrap_or(p.address).to_string(),
                rtt_ms: u64::try_from(p.rtt.as_millis()).unwrap_or(u64::MAX),
                replicating: p.replicating,
                lag_ms: p.stats.lag_ms,
                bytes_sent: p.stats.bytes_sent,
                bytes_received: p.stats.bytes_received,
                batches_sent: p.stats.batches_sent,
                batches_received: p.stats.batches_received,
                sequence_gaps: p.stats.sequence_gaps,
                decode_errors: p.stats.decode_errors,
                check_rtt_ms: p.stats.check_rtt_ms,
                last_check_answered_ms: p.stats.last_check_answered_ms,
                last_received_ms: p.stats.last_received_ms,
            })
            .collect(),
    })
}

// ---- GET /v1/keys/hot ----

/// The last scan of the keys, shared by every request of one node (see [`HOT_KEYS_TTL_MS`]).
#[derive(Debug, Default)]
pub(crate) struct HotKeysCache {
    last: tokio::sync::Mutex<Option<(u64, Arc<Vec<HotKey>>)>>,
}

/// The body of `GET /v1/keys/hot`.
#[derive(Debug, Serialize)]
pub(crate) struct HotKeysJson {
    /// The node's clock (Unix ms) when answered.
    now_ms: u64,
    /// When the keys below were read (Unix ms): at most [`HOT_KEYS_TTL_MS`] before `now_ms`.
    scanned_ms: u64,
    /// Cells this node holds (both key budgets).
    keys_held: usize,
    /// The hottest keys, highest count first.
    keys: Vec<HotKeyJson>,
    /// The hot path's decisions of this process (every store in it: the demo runs all its nodes in one).
    decisions: DecisionsJson,
}

#[derive(Debug, Serialize)]
struct HotKeyJson {
    key: String,
    window: String,
    epoch: u64,
    window_end_ms: u64,
    local: u64,
    remote: u64,
    /// Usage as the last acquire's algorithm counts it (else the current window's count), net of refunds.
    used: u64,
    /// The limit the last acquire on this node gave; `null` for a key only added to or merged.
    limit: Option<u64>,
    /// `fixed_window`, `sliding_window` or `token_bucket` of that acquire; `null` without one.
    algorithm: Option<&'static str>,
    /// The burst of a token bucket's last acquire; absent for the other algorithms.
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

#[derive(Debug, Serialize)]
struct DecisionsJson {
    /// Acquires (every limiter decision, `POST /v1/ratelimit/check` included).
    acquires: u64,
    /// Of those, allowed.
    admitted: u64,
    /// Of those, refused (over the limit).
    refused: u64,
}

fn hot_key_json(h: &HotKey) -> HotKeyJson {
    HotKeyJson {
        key: h.key.to_string(),
        window: h.window.to_string(),
        epoch: h.epoch,
        window_end_ms: h.window_end_ms,
        local: h.local,
        remote: h.remote,
        used: h.used,
        limit: h.limit.map(|l| l.limit),
        algorithm: h.limit.map(|l| l.algorithm.name()),
        burst: h.limit.and_then(|l| match l.algorithm {
            Algorithm::TokenBucket { burst } => Some(burst.get()),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => None,
        }),
    }
}

pub(crate) async fn hot_keys(
    State(node): State<ClusterHandle>,
    State(cache): State<Arc<HotKeysCache>>,
    params: Params,
) -> Result<Json<HotKeysJson>, ApiError> {
    let n = match params.0.get("n") {
        None => DEFAULT_HOT_KEYS,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_HOT_KEYS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_field(
                    "n",
                    format!("expected an integer 1..={MAX_HOT_KEYS}, got {text:?}"),
                ));
            }
        },
    };
    let now = node.clock().now_unix_ms().get();
    let (scanned_ms, keys) = {
        let mut last = cache.last.lock().await;
        match &*last {
            Some((at, keys)) if now >= *at && now - *at < HOT_KEYS_TTL_MS => {
                (*at, Arc::clone(keys))
            }
            _ => {
                let keys = Arc::new(node.store().hottest(MAX_HOT_KEYS));
                *last = Some((now, Arc::clone(&keys)));
                (now, keys)
            }
        }
    };
    let calls = call_counts();
    Ok(Json(HotKeysJson {
        now_ms: now,
        scanned_ms,
        keys_held: node.store().stats().keys,
        keys: keys.iter().take(n).map(hot_key_json).collect(),
        decisions: DecisionsJson {
            acquires: calls.acquires,
            admitted: calls.acquires.saturating_sub(calls.refusals),
            refused: calls.refusals,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_files_are_open() {
        for open in ["/", "/ui", "/ui/status.js", "/ui/status.css"] {
            assert!(is_page(open), "{open}");
        }
        for closed in [
            "/ui/",
            "/ui/x",
            "/cluster/status",
            "/v1/keys/hot",
            "//",
            "/index.html",
        ] {
            assert!(!is_page(closed), "{closed}");
        }
    }

    #[test]
    fn the_page_references_only_its_own_files_and_renders_text() {
        // No CDN, no inline script or style (the CSP would block them), no other origin.
        assert!(!PAGE_HTML.contains("http://") && !PAGE_HTML.contains("https://"));
        assert!(!PAGE_JS.contains("http://") && !PAGE_JS.contains("https://"));
        assert!(PAGE_HTML.contains(r#"<script src="ui/status.js""#));
        assert!(PAGE_HTML.contains(r#"href="ui/status.css""#));
        assert_eq!(PAGE_HTML.matches("<script").count(), 1);
        assert!(!PAGE_HTML.contains("<style") && !PAGE_HTML.contains(" style="));
        // Values from the node reach the DOM as text only.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE_JS.contains(sink), "the page's script uses {sink}");
        }
        // It only reads.
        assert!(
            !PAGE_JS.contains("method:"),
            "the page's script sends something else than GET"
        );
    }
}
