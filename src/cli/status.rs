//! `bifrost-cluster status [--url URL]`: fetches a node's `/cluster/status` and prints it as a table.
//! Plain `http://` only (the node serves plain HTTP; put TLS in front of it with a proxy).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Why the status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not `http://host[:port][/]`.
    #[error("--url: expected http://host[:port], got {0:?}")]
    Url(String),
    /// Connecting or reading failed.
    #[error("{url}: {reason}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The node answered something else than a status.
    #[error("{url}: unexpected answer (HTTP {status}): {body}")]
    Answer {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The body, shortened.
        body: String,
    },
}

/// Fetches `GET {url}/cluster/status` (with `Authorization: Bearer {token}` when given) and returns the parsed
/// JSON.
pub fn fetch(url: &str, token: Option<&str>) -> Result<Value, StatusError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| StatusError::Url(url.to_string()))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(StatusError::Url(url.to_string()));
    }
    let authority = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let io = |reason: String| StatusError::Io {
        url: url.to_string(),
        reason,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| io(e.to_string()))?
        .next()
        .ok_or_else(|| io("no address".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| io(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| io(e.to_string()))?;
    let authorization =
        token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET /cluster/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n{authorization}\r\n"
    )
    .map_err(|e| io(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| io(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match serde_json::from_str::<Value>(body) {
        Ok(v) if status == 200 => Ok(v),
        _ => Err(StatusError::Answer {
            url: url.to_string(),
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

/// The status as a table.
pub fn render(status: &Value) -> String {
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let mut out = format!(
        "node {}  cluster {}  members {}  healthy {}  leader {}  ready {}\n",
        s(&status["local_node"]),
        s(&status["cluster_health"]),
        status["members"],
        status["healthy_members"],
        s(&status["leader"]),
        status["ready"],
    );
    out.push_str(&format!(
        "{:<24} {:<22} {:<8} {:<8} {:>6} {:>7}  {}\n",
        "member", "address", "state", "healthy", "inc", "rtt ms", "reason"
    ));
    if let Some(members) = status["member_details"].as_array() {
        for m in members {
            out.push_str(&format!(
                "{:<24} {:<22} {:<8} {:<8} {:>6} {:>7}  {}\n",
                s(&m["node_id"]),
                s(&m["address"]),
                s(&m["state"]),
                m["healthy"],
                m["incarnation"],
                m["rtt_ms"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |r| r.to_string()),
                s(&m["health_reason"]),
            ));
        }
    }
    out
}
