//! A minimal HTTP/1.1 client for tests (std only, `Connection: close`, loopback addresses only).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends one request and returns the status code and the body parsed as JSON (`Null` if it is not JSON).
/// `Err` when the connection fails (the server is not up yet, or gone).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let (status, text) = request_text(addr, method, path, body)?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// Sends one request and returns the status code and the raw body as text.
pub fn request_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    request_text_with_token(addr, method, path, None, body)
}

/// [`request_text`] with an optional bearer token.
pub fn request_text_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    exchange(addr, method, path, token, body).map(|(status, _, body)| (status, body))
}

/// Response headers: (lower-case name, value) in the order received.
pub type Headers = Vec<(String, String)>;

/// `POST path` with a JSON body: the status code, the response headers (names in lower case) and the body
/// parsed as JSON (`Null` if it is not JSON).
pub fn post_with_headers(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, Headers, serde_json::Value)> {
    let (status, headers, text) = exchange(addr, "POST", path, None, Some(body))?;
    Ok((
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// One request: status, headers (lower-case names) and the raw body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, Headers, String)> {
    assert!(addr.ip().is_loopback(), "tests only talk to loopback");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Checks `text` is Prometheus/OpenMetrics text exposition: `# HELP`/`# TYPE`/`# UNIT` comments, samples
/// `name{label="value",...} number`, and the final `# EOF`. Returns the samples as `(name with labels, value)`.
pub fn parse_prometheus(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        if eof {
            return Err(format!("line {}: content after # EOF", n + 1));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            if !(rest.starts_with("HELP ")
                || rest.starts_with("TYPE ")
                || rest.starts_with("UNIT "))
            {
                return Err(format!("line {}: unknown comment {line:?}", n + 1));
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no value: {line:?}", n + 1))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("line {}: bad metric name {name:?}", n + 1));
        }
        if name_end < series.len() && !series.ends_with('}') {
            return Err(format!("line {}: unterminated labels: {line:?}", n + 1));
        }
        let value: f64 = value
            .parse()
            .map_err(|_| format!("line {}: bad value {value:?}", n + 1))?;
        samples.push((series.to_string(), value));
    }
    if !eof {
        return Err("no final # EOF".into());
    }
    Ok(samples)
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, serde_json::Value)> {
    request(addr, "GET", path, None)
}

/// `POST path` with a JSON body.
pub fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, serde_json::Value)> {
    request(addr, "POST", path, Some(body))
}
