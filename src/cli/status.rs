//! `bifrost-cluster status [--url URL] [--token T] [--ca-file PEM] [--json]`: fetches a node's `/cluster/status`
//! through reqwest (rustls on the ring provider) and prints it as a table of members and health, or as JSON.
//!
//! # Guarantees
//!
//! - `http://` and `https://` URLs work; `https://` verifies the node's certificate against the system's trust
//!   store plus the PEM certificates of `--ca-file`, and never skips verification. Any other scheme is refused
//!   before a request is sent. Proxy variables are ignored (the request goes straight to the node).
//! - Every failure is one [`StatusError`] that names the URL: unreachable (connect, TLS or timeout, with the
//!   cause), 401 (no or an unknown token), 403 (a token without the `read` scope), any other answer with its
//!   HTTP status and the start of its body, or a body that is not JSON. Nothing the node sends can panic it.
//! - Connecting is bounded by [`CONNECT_TIMEOUT`], the whole request by [`REQUEST_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an unexpected body an error quotes, in characters.
const BODY_QUOTE_CHARS: usize = 200;

/// Why the status could not be shown. Each variant names the URL it was about.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not an `http://` or `https://` URL.
    #[error("--url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot be sent in an HTTP header.
    #[error(
        "--token / BIFROST_HTTP_TOKEN: not a valid header value (control characters or non-ASCII)"
    )]
    Token,
    /// The `--ca-file` could not be read or holds no PEM certificate.
    #[error("--ca-file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer: connection refused, DNS, TLS handshake or timeout.
    #[error("{url}: the node is unreachable: {reason}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The cause chain.
        reason: String,
    },
    /// 401: no token was sent, or the node does not know it.
    #[error(
        "{url}: 401 Unauthorized: {}",
        if *token_sent { "the node refused the token" } else {
            "the node requires a token; pass --token or set BIFROST_HTTP_TOKEN (a token with the read scope)"
        }
    )]
    Unauthorized {
        /// The URL requested.
        url: String,
        /// Whether a token was sent.
        token_sent: bool,
    },
    /// 403: the token is valid but lacks the `read` scope.
    #[error("{url}: 403 Forbidden: the token lacks the read scope")]
    Forbidden {
        /// The URL requested.
        url: String,
    },
    /// Any other HTTP status.
    #[error("{url}: unexpected answer (HTTP {status}): {body}")]
    Answer {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// The body, shortened.
        body: String,
    },
    /// A 200 whose body is not the status JSON.
    #[error("{url}: the answer is not JSON: {reason}")]
    Body {
        /// The URL requested.
        url: String,
        /// The parse error.
        reason: String,
    },
}

/// `GET {base}/cluster/status` (base without its trailing `/`), refusing any scheme but http and https.
fn status_url(base: &str) -> Result<reqwest::Url, StatusError> {
    let bad = |reason: String| StatusError::Url {
        url: base.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!(
            "expected http:// or https://, got {}://",
            parsed.scheme()
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("expected no query or fragment".into()));
    }
    let joined = format!("{}/cluster/status", parsed.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined).map_err(|e| bad(e.to_string()))
}

/// The error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, StatusError> {
    let bad = |reason: String| StatusError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Fetches `GET {url}/cluster/status` (with `Authorization: Bearer {token}` when given, trusting the
/// certificates of `ca_file` besides the system's) and returns the parsed JSON.
pub async fn fetch(
    url: &str,
    token: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Value, StatusError> {
    let target = status_url(url)?;
    let authorization = token
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| StatusError::Token))
        .transpose()?;
    // reqwest is built with `rustls-no-provider`: make sure a process-wide provider exists (an error only
    // means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy();
    if let Some(path) = ca_file {
        builder = builder.tls_certs_merge(ca_certificates(path)?);
    }
    let client = builder
        .build()
        .map_err(|e| StatusError::Client(chain(&e)))?;
    let shown = target.to_string();
    let mut request = client
        .get(target)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let response = request.send().await.map_err(|e| StatusError::Unreachable {
        url: shown.clone(),
        reason: chain(&e),
    })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| StatusError::Unreachable {
            url: shown.clone(),
            reason: chain(&e),
        })?;
    match status {
        StatusCode::OK => serde_json::from_str(&body).map_err(|e| StatusError::Body {
            url: shown,
            reason: e.to_string(),
        }),
        StatusCode::UNAUTHORIZED => Err(StatusError::Unauthorized {
            url: shown,
            token_sent: token.is_some(),
        }),
        StatusCode::FORBIDDEN => Err(StatusError::Forbidden { url: shown }),
        other => Err(StatusError::Answer {
            url: shown,
            status: other.as_u16(),
            body: body.chars().take(BODY_QUOTE_CHARS).collect(),
        }),
    }
}

/// A JSON value as table text: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `yes` / `no` for a JSON boolean, `-` otherwise.
fn yes_no(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// The status as a table: a summary line, then one row per member (this node first), with state and health.
pub fn render(status: &Value) -> String {
    let mut out = format!(
        "node {}  cluster {}  members {}  healthy {}  leader {}  ready {}\n\n",
        cell(&status["local_node"]),
        cell(&status["cluster_health"]),
        cell(&status["members"]),
        cell(&status["healthy_members"]),
        cell(&status["leader"]),
        yes_no(&status["ready"]),
    );
    let mut rows = vec![[
        "MEMBER".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "HEALTHY".into(),
        "INC".into(),
        "RTT MS".into(),
        "HEALTH".into(),
    ]];
    let local = &status["local"];
    rows.push([
        format!("{} (this node)", cell(&local["node_id"])),
        cell(&local["address"]),
        cell(&local["state"]),
        // Lifeguard local health: 0 is best.
        "-".into(),
        "-".into(),
        "-".into(),
        format!("local health {}", cell(&local["local_health"])),
    ]);
    for m in status["member_details"].as_array().into_iter().flatten() {
        rows.push([
            cell(&m["node_id"]),
            cell(&m["address"]),
            cell(&m["state"]),
            yes_no(&m["healthy"]).into(),
            cell(&m["incarnation"]),
            cell(&m["rtt_ms"]),
            cell(&m["health_reason"]),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (w, c)) in widths.iter().zip(row).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_path_and_refuse_other_schemes() {
        let ok = |u: &str| {
            status_url(u)
                .map(|u| u.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            ok("http://127.0.0.1:8080"),
            Ok("http://127.0.0.1:8080/cluster/status".into())
        );
        assert_eq!(
            ok("https://node.example:8443/bifrost/"),
            Ok("https://node.example:8443/bifrost/cluster/status".into())
        );
        for bad in ["ftp://x", "127.0.0.1:8080", "http://x/?a=1", ""] {
            assert!(status_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_lists_every_member_with_its_health() {
        let status = serde_json::json!({
            "local_node": "a", "cluster_health": "HEALTHY", "members": 2, "healthy_members": 2,
            "leader": "a", "ready": true,
            "local": { "node_id": "a", "address": "127.0.0.1:1", "state": "joined", "local_health": 0 },
            "member_details": [{ "node_id": "b", "address": "127.0.0.1:2", "state": "alive", "healthy": false,
                "incarnation": 3, "rtt_ms": null, "last_seen_ms": 12, "health_reason": "no data-plane answer" }]
        });
        let text = render(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "node a  cluster HEALTHY  members 2  healthy 2  leader a  ready yes"
        );
        assert!(lines[2].starts_with("MEMBER"), "{text}");
        assert!(lines[3].starts_with("a (this node)"), "{text}");
        let b: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            b,
            [
                "b",
                "127.0.0.1:2",
                "alive",
                "no",
                "3",
                "-",
                "no",
                "data-plane",
                "answer"
            ]
        );
    }
}
