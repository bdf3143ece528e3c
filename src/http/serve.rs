//! The HTTP listener: our own accept loop over hyper's HTTP/1 connection driver, so every connection is
//! bounded in count, in time to send its headers, and in time without progress.
//!
//! Guarantees:
//! - at most `max_connections` connections are served at once; past that a new connection gets a `503` JSON
//!   answer and is closed at once (its descriptor is freed right away), counted, and logged once until the open
//!   count falls back below 90% of the cap (then one line says so);
//! - a client must finish its request headers (and the TLS handshake) within `header_read_timeout`, also while
//!   a keep-alive connection waits for its next request (hyper starts the timer whenever it waits for a head);
//! - a connection that moves no byte either way for `idle_timeout` is closed (a stalled body, a client that
//!   stopped reading);
//! - the answers hyper writes by itself (a head it cannot parse) are JSON too, like every other error;
//! - accept errors (e.g. out of file descriptors) never spin: the loop backs off and logs at most every 10 s.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::guard::HttpStats;

/// How a listener serves its connections.
#[derive(Clone)]
pub(crate) struct ServeOptions {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The answer of a connection over the cap.
fn refused_answer() -> String {
    let body = r#"{"error":"connection limit reached (cluster_config.http.max_connections)"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A socket that records progress: every read or write that moved bytes bumps `activity`.
struct Tracked {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn bump(&self) {
        // Only compared with its own earlier value by the connection's watchdog.
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.bump();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.bump();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Makes the answers hyper writes by itself JSON like every other error: a request head hyper cannot parse
/// (a URI over 64 KiB: `414`, a head over its buffer: `431`, garbage: `400`) gets a bare head with
/// `content-length: 0` before the connection closes. Such a write is replaced by the same head with a JSON
/// body `{"error": ..., "field": ...}`. Handlers never answer an error with an empty body (the gate makes every
/// error JSON), so only hyper's own answers match.
struct JsonErrors<I> {
    inner: I,
    /// A replacement being written, and how far.
    pending: Vec<u8>,
    written: usize,
    /// The length of the original buffer the replacement stands for.
    claimed: usize,
}

impl<I> JsonErrors<I> {
    fn new(inner: I) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
            claimed: 0,
        }
    }
}

/// The JSON replacement of a bare error head hyper wrote, if `buf` is one.
fn json_error_answer(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() || !buf.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    if status < 400 {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    let zero = "content-length: 0\r\n";
    let at = lower.find(zero)?;
    let (error, field) = match status {
        414 => (
            "request URI too long for the HTTP parser (at most 64 KiB; the API takes 8 KiB)",
            "path",
        ),
        431 => ("request head too large", "headers"),
        _ => ("malformed HTTP request", "request"),
    };
    let body = format!(r#"{{"error":"{error}","field":"{field}"}}"#);
    let mut out = Vec::with_capacity(buf.len() + body.len() + 40);
    out.extend_from_slice(&buf[..at]);
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&buf[at + zero.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match json_error_answer(buf) {
                Some(answer) => {
                    this.pending = answer;
                    this.written = 0;
                    this.claimed = buf.len();
                }
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        while this.written < this.pending.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending[this.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => this.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        this.pending.clear();
        Poll::Ready(Ok(this.claimed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers a connection over the cap with the `503` and closes it, never waiting: what the client already sent
/// is read first (closing a socket with unread input resets the connection, and the reset can destroy the
/// answer before the client reads it), at most 64 KiB; then one non-blocking write, into the fresh socket's
/// empty send buffer. The socket leaves the runtime for this (a plain non-blocking socket reads what has
/// arrived, whatever the runtime has polled).
fn refuse_over_cap(stream: tokio::net::TcpStream) {
    use std::io::{Read, Write};
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.write(refused_answer().as_bytes());
}

/// Decrements the open count when a connection ends, and logs the recovery from the cap once.
struct OpenGuard {
    stats: Arc<HttpStats>,
    max: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        // The count only feeds the cap decision and /metrics; no other memory is published through it.
        let open = self
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let recover_below = (self.max - self.max / 10).max(1) as u64;
        // Relaxed: a log-once flag; a duplicate or missed line under a race is harmless.
        if open < recover_below && self.stats.at_cap.swap(false, Ordering::Relaxed) {
            tracing::info!(
                open,
                max_connections = self.max,
                "HTTP connections below the cap again: accepting new connections"
            );
        }
    }
}

/// Accepts until `stop` turns true, then asks every connection to finish and returns once all have ended.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    stats: Arc<HttpStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%error, "HTTP accept failed (out of file descriptors?); backing off");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Relaxed: the count is only this loop's decision input and a metric.
        let open = stats.connections_open.load(Ordering::Relaxed);
        if open >= options.max_connections as u64 {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            // Relaxed: a log-once flag.
            if !stats.at_cap.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_connections = options.max_connections,
                    "HTTP connection cap reached (cluster_config.http.max_connections): new connections get 503 until some close"
                );
            }
            refuse_over_cap(stream);
            continue;
        }
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard {
            stats: stats.clone(),
            max: options.max_connections,
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            options.clone(),
            stats.clone(),
            stop.clone(),
            guard,
        ));
    }
    // Every connection task holds a guard; wait (bounded by the caller) until they are gone.
    while stats.connections_open.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    options: ServeOptions,
    stats: Arc<HttpStats>,
    stop: watch::Receiver<bool>,
    _guard: OpenGuard,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(AtomicU64::new(0));
    let tracked = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    match &options.tls {
        None => drive(tracked, peer, app, &options, &stats, activity, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(options.header_read_timeout, acceptor.accept(tracked)).await
            {
                Ok(Ok(tls)) => drive(tls, peer, app, &options, &stats, activity, stop).await,
                Ok(Err(error)) => {
                    stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, %error, "HTTP TLS handshake failed");
                }
                Err(_) => {
                    stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "HTTP TLS handshake timed out");
                }
            }
        }
    }
}

async fn drive<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    options: &ServeOptions,
    stats: &HttpStats,
    activity: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request).await }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        // One buffer per answer, so an error head hyper writes itself arrives whole at `JsonErrors`.
        .writev(false);
    let connection = builder.serve_connection(TokioIo::new(JsonErrors::new(io)), service);
    tokio::pin!(connection);
    let tick = (options.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Relaxed: compared only with this task's own earlier reading.
    let mut seen = activity.load(Ordering::Relaxed);
    let mut since = Instant::now();
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = ticker.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() >= options.idle_timeout {
                    stats.connections_idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_error_heads_become_json_and_nothing_else_changes() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = json_error_answer(bare).map(|b| String::from_utf8_lossy(&b).into_owned());
        let out = out.unwrap_or_default();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
        assert!(head.contains("content-type: application/json"), "{out}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{out}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(json["field"], "path");
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra",
            b"{\"error\": 1}",
        ] {
            assert!(json_error_answer(other).is_none());
        }
    }
}
