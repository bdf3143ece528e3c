//! The gate every request passes before a handler: size limits, authentication and scopes, the loopback rule,
//! cross-site checks, and JSON for every error answer.
//!
//! In order, for each request:
//! 1. a URI longer than [`MAX_URI_BYTES`] is a `414`, a declared body longer than [`MAX_BODY_BYTES`] a `413`;
//! 2. `/health` and `/ready` (and `/metrics` with `http.auth.public_metrics`, and a `GET` of the status page's
//!    static files, see `ui.rs`) go straight to their handler;
//! 3. with tokens configured, a missing or unknown `Authorization: Bearer` token is a `401` (with
//!    `WWW-Authenticate: Bearer`), a token without the route's scope a `403`; without any token, a write
//!    (anything but `GET`/`HEAD`) from a non-loopback peer, or with a `Host` that is not a loopback name, is a
//!    `403` (the `Host` rule stops DNS rebinding from a browser on the node's machine);
//! 4. a write carrying an `Origin` header that is not the node's own origin is a `403`;
//! 5. a `POST`/`PUT`/`PATCH` must declare `Content-Type: application/json` (config writes may also use
//!    `application/octet-stream`), else `415`: the types a cross-site "simple request" can send
//!    (`text/plain`, forms) never reach a handler;
//! 6. after the handler, any error answer that is not JSON yet (an extractor's plain-text `413`, ...) is
//!    rewritten as `{"error": ..., "field": ...}` with the same status.
//!
//! Every `401`/`403` is counted in [`HttpStats`] by reason; nothing here logs per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api_error::ApiError;
use super::auth::TokenSet;
use crate::config::HttpScope;

/// Longest request URI (path and query) answered by a handler, in bytes; longer is a `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request body read, in bytes; larger is a `413` (the counter API itself accepts 64 KiB, config
/// values are capped by the config map).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Counters of the HTTP surface, shown in `/metrics` (`bifrost_http_*`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections served right now.
    pub connections_open: AtomicU64,
    /// Connections accepted and served since start.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `http.max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed by `http.idle_timeout`.
    pub connections_idle_closed: AtomicU64,
    /// TLS handshakes that failed or did not finish within `http.header_read_timeout`.
    pub tls_handshake_failures: AtomicU64,
    /// `401`: no token.
    pub rejected_missing_token: AtomicU64,
    /// `401`: a token that matches none configured.
    pub rejected_unknown_token: AtomicU64,
    /// `403`: a valid token without the route's scope.
    pub rejected_scope: AtomicU64,
    /// `403`: no token configured and a write from a non-loopback peer or `Host`.
    pub rejected_not_loopback: AtomicU64,
    /// `403`: a write with a foreign `Origin`.
    pub rejected_origin: AtomicU64,
    /// `415`: a body without an accepted `Content-Type`.
    pub rejected_content_type: AtomicU64,
    /// `POST /v1/ratelimit/check` decisions that allowed the request.
    pub ratelimit_allowed: AtomicU64,
    /// `POST /v1/ratelimit/check` decisions over the limit (refused).
    pub ratelimit_over_limit: AtomicU64,
    /// Whether the connection cap is reached (for the log-once rule).
    pub(crate) at_cap: AtomicBool,
    /// The Envoy rate-limit service of this node, when it runs: its metrics join `/metrics`.
    pub rls: std::sync::OnceLock<crate::grpc::RlsHandle>,
}

impl HttpStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        // A statistic: no other memory depends on it.
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the gate enforces.
#[derive(Debug, Clone)]
pub struct HttpAccess {
    /// The accepted tokens; empty means "no token configured" (the loopback rule).
    pub tokens: TokenSet,
    /// `/metrics` without a token.
    pub public_metrics: bool,
    /// Largest `n`/`cost` of one request (`http.max_request_n`).
    pub max_request_n: u64,
}

impl Default for HttpAccess {
    /// No token, `/metrics` behind the same rule as reads, the default ceiling.
    fn default() -> Self {
        HttpAccess {
            tokens: TokenSet::default(),
            public_metrics: false,
            max_request_n: crate::config::HttpConfig::DEFAULT_MAX_REQUEST_N,
        }
    }
}

/// The gate's state: the rules and the counters.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) access: HttpAccess,
    pub(crate) stats: Arc<HttpStats>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Open,
    Scope(HttpScope),
}

/// Percent-decodes `path` (invalid escapes stay as written), as the key extractor does.
fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (
                (bytes[i + 1] as char).to_digit(16),
                (bytes[i + 2] as char).to_digit(16),
            )
        {
            // Two hex digits make one byte: h, l < 16.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The scope a request needs. Anything not known to be a read, a check or an add needs `admin`, so a route
/// added later is closed until classified.
fn classify(method: &Method, path: &str, public_metrics: bool) -> Need {
    if path == "/health" || path == "/ready" {
        return Need::Open;
    }
    // The status page's static files carry no data (the JSON they read keeps its scope).
    if (method == Method::GET || method == Method::HEAD) && super::ui::is_page(path) {
        return Need::Open;
    }
    if path == "/metrics" && public_metrics {
        return Need::Open;
    }
    if method == Method::GET || method == Method::HEAD {
        return Need::Scope(HttpScope::Read);
    }
    if method == Method::POST {
        if matches!(
            path,
            "/v1/ratelimit/check" | "/v1/ratelimit/report" | "/v1/ratelimit/release"
        ) {
            return Need::Scope(HttpScope::Check);
        }
        // Decoded as the handler decodes it: `/rese%74` is a reset, not an add.
        if let Some(rest) = path.strip_prefix("/v1/counters/") {
            let key_path = decode(rest);
            if key_path.ends_with("/reset") {
                return Need::Scope(HttpScope::Admin);
            }
            if key_path.ends_with("/add") {
                return Need::Scope(HttpScope::Check);
            }
        }
    }
    Need::Scope(HttpScope::Admin)
}

/// `Host` names that only reach this machine: `localhost`, `*.localhost`, loopback IPs (any port).
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
fn media_type(value: &HeaderValue) -> String {
    value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn unauthorized(error: &str, invalid: bool) -> Response {
    let mut response = ApiError::with_field(401, "authorization", error).into_response();
    let challenge = if invalid {
        "Bearer realm=\"bifrost-cluster\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"bifrost-cluster\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

fn forbidden(field: &str, error: String) -> Response {
    ApiError::with_field(403, field, error).into_response()
}

/// The gate (see the module docs).
pub(crate) async fn gate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let stats = &gate.stats;
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::with_field(
            414,
            "path",
            format!("request URI of {uri_len} bytes; at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared
        && len > MAX_BODY_BYTES as u64
    {
        return ApiError::with_field(
            413,
            "body",
            format!("body of {len} bytes; at most {MAX_BODY_BYTES}"),
        )
        .into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let need = classify(&method, &path, gate.access.public_metrics);
    let Need::Scope(scope) = need else {
        return jsonify(next.run(request).await).await;
    };
    let is_write = !(method == Method::GET || method == Method::HEAD);

    if gate.access.tokens.is_empty() {
        if is_write {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            if !peer.is_some_and(|p| p.ip().is_loopback()) {
                HttpStats::bump(&stats.rejected_not_loopback);
                return forbidden(
                    "authorization",
                    format!(
                        "no HTTP token is configured, so {method} {path} is served to loopback clients only (configure http.auth.tokens to allow remote writes)"
                    ),
                );
            }
            if let Some(host) = request.headers().get(header::HOST)
                && !is_loopback_host(host.to_str().unwrap_or(""))
            {
                HttpStats::bump(&stats.rejected_not_loopback);
                return forbidden(
                    "host",
                    "no HTTP token is configured, so writes need a loopback Host (localhost, 127.0.0.1, [::1])".to_owned(),
                );
            }
        }
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| {
                let (scheme, rest) = v.split_at(v.len().min(7));
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| rest.trim_ascii())
            });
        let Some(presented) = presented else {
            HttpStats::bump(&stats.rejected_missing_token);
            return unauthorized(
                "missing bearer token (Authorization: Bearer <token>)",
                false,
            );
        };
        let Some(principal) = gate.access.tokens.find(presented) else {
            HttpStats::bump(&stats.rejected_unknown_token);
            return unauthorized("unknown bearer token", true);
        };
        if !principal.scopes.contains(&scope) {
            HttpStats::bump(&stats.rejected_scope);
            let mut response = forbidden(
                "authorization",
                format!(
                    "token {:?} lacks the {scope} scope needed for {method} {path}",
                    principal.name
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Bearer realm=\"bifrost-cluster\", error=\"insufficient_scope\", scope=\"{scope}\""
            )) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return response;
        }
    }

    if is_write && let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host));
        if !same {
            HttpStats::bump(&stats.rejected_origin);
            return forbidden(
                "origin",
                "cross-origin writes are refused (the Origin header is not this node)".to_owned(),
            );
        }
    }

    if method == Method::POST || method == Method::PUT || method == Method::PATCH {
        let config_write = path.starts_with("/v1/config/");
        let media = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(media_type)
            .unwrap_or_default();
        let ok =
            media == "application/json" || (config_write && media == "application/octet-stream");
        if !ok {
            HttpStats::bump(&stats.rejected_content_type);
            let expected = if config_write {
                "application/json or application/octet-stream"
            } else {
                "application/json"
            };
            let got = if media.is_empty() {
                "none".to_owned()
            } else {
                format!("{media:?}")
            };
            return ApiError::with_field(
                415,
                "content-type",
                format!("Content-Type must be {expected}, got {got}"),
            )
            .into_response();
        }
    }
    jsonify(next.run(request).await).await
}

/// An error answer that is not JSON becomes `{"error": ..., "field": ...}` with the same status.
pub(crate) async fn jsonify(response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| media_type(v) == "application/json");
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let error = if text.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {text}")
    };
    let field = match status {
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("body"),
        StatusCode::URI_TOO_LONG => Some("path"),
        _ => None,
    };
    let api = match field {
        Some(f) => ApiError::with_field(status.as_u16(), f, error),
        None => ApiError::with_status(status.as_u16(), error),
    };
    let mut out = api.into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let read = Need::Scope(HttpScope::Read);
        let check = Need::Scope(HttpScope::Check);
        let admin = Need::Scope(HttpScope::Admin);
        for (method, path, need) in [
            (Method::GET, "/health", Need::Open),
            (Method::GET, "/ready", Need::Open),
            (Method::GET, "/metrics", read),
            (Method::GET, "/cluster/status", read),
            (Method::GET, "/", Need::Open),
            (Method::GET, "/ui", Need::Open),
            (Method::HEAD, "/ui/status.js", Need::Open),
            (Method::GET, "/ui/status.css", Need::Open),
            (Method::POST, "/ui", admin),
            (Method::GET, "/cluster/peers", read),
            (Method::GET, "/v1/keys/hot", read),
            (Method::GET, "/v1/counters/a/b?window=1m", read),
            (Method::GET, "/v1/config/x", read),
            (Method::POST, "/v1/ratelimit/check", check),
            (Method::POST, "/v1/ratelimit/report", check),
            (Method::POST, "/v1/ratelimit/release", check),
            (Method::POST, "/v1/counters/vk/openai/add", check),
            (Method::POST, "/v1/counters/vk/openai/reset", admin),
            (Method::POST, "/v1/counters/vk/rese%74", admin),
            (Method::POST, "/v1/counters/vk/ad%64", check),
            (Method::POST, "/v1/counters/vk/other", admin),
            (Method::PUT, "/v1/config/x", admin),
            (Method::DELETE, "/v1/config/x", admin),
            (Method::POST, "/v1/something/new", admin),
        ] {
            assert_eq!(classify(&method, path, false), need, "{method} {path}");
        }
        assert_eq!(classify(&Method::GET, "/metrics", true), Need::Open);
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "a.localhost",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1",
            "[fd00::1]:80",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
