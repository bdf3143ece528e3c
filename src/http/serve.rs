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
            // A fresh socket's send buffer is empty: one non-blocking write; whatever fails, close it.
            let _ = stream.try_write(refused_answer().as_bytes());
            drop(stream);
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
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
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
