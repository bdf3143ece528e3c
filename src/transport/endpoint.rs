//! [`Transport`]: the one QUIC endpoint of a node (listens and dials on the same UDP socket), plus the TCP
//! health-check listener on the same port number.
//!
//! # Guarantees
//!
//! - One UDP socket for all inter-node traffic; [`Transport::local_addr`] is its address (the port the OS chose
//!   when bound to port 0), and the TCP listener is on the same IP and port. If the TCP port cannot be bound,
//!   [`Transport::bind`] fails naming the address and releases the UDP socket. With port 0 it retries a few
//!   times with a fresh port when the OS-chosen UDP port is taken on TCP.
//! - Incoming handshakes run concurrently, each bounded by [`TransportOptions::connect_timeout`];
//!   [`Transport::accept`] yields only connections whose handshake completed (client certificate verified).
//!   Every refused, failed or timed-out attempt, incoming or outgoing, is counted by reason
//!   ([`Transport::refusals`]) and logged at `WARN` with the peer address and the reason, rate-limited per
//!   direction and reason: the first in full, then at most one summary line a minute ([`super::refusals`]).
//! - [`Transport::close`] closes every connection and stops accepting (`accept` returns `None`) and the TCP
//!   listener. Dropping the [`Transport`] stops accepting and the TCP listener; established [`Link`]s keep
//!   working until they are closed or time out.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, VarInt};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use super::error::{FailureKind, TlsError, TransportError};
use super::link::Link;
use super::options::TransportOptions;
use super::refusals::{
    Direction, LogLevel, REFUSAL_FLUSH_EVERY_MS, RefusalLine, RefusalLog, RefusalReason,
};
use super::tls::{TlsSetup, TrustMode};
use super::{SERVER_NAME, health_tcp};
use crate::sync::LockClean;

/// How many established incoming connections wait for [`Transport::accept`] before handshake tasks wait.
const ACCEPT_QUEUE: usize = 64;

/// With port 0: how many fresh UDP ports to try when the OS-chosen one is already taken on TCP.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// The node's QUIC endpoint and TCP health-check listener. See the module docs for the guarantees.
///
/// Methods take `&self`: share a `Transport` between the accept loop and dialers with an `Arc`.
pub struct Transport {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    options: TransportOptions,
    mode: TrustMode,
    accepted: Mutex<mpsc::Receiver<Link>>,
    closed: watch::Sender<bool>,
    tcp_task: JoinHandle<()>,
    accept_task: JoinHandle<()>,
    refusals: Arc<Refusals>,
    flush_task: JoinHandle<()>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.local_addr)
            .field("mode", &self.mode)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the QUIC endpoint on UDP `bind` and the TCP health-check listener on the same IP and port, with the
    /// ALPN [`super::ALPN`] and mutual TLS from `tls`. Port 0 lets the OS choose (tests); read
    /// [`Self::local_addr`]. Must be called inside a tokio runtime.
    pub fn bind(
        bind: SocketAddr,
        tls: TlsSetup,
        options: TransportOptions,
    ) -> Result<Transport, TransportError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::NoRuntime);
        }
        let transport_config = options.quinn_transport_config()?;
        let server_crypto =
            QuicServerConfig::try_from(tls.server_config()).map_err(TlsError::from)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::clone(&transport_config));
        let client_crypto =
            QuicClientConfig::try_from(tls.client_config()).map_err(TlsError::from)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);

        let (udp, tcp, local_addr) = bind_sockets(bind)?;
        let mut endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(server_config),
            udp,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::BindUdp { addr: bind, source })?;
        endpoint.set_default_client_config(client_config);
        let tcp_task = health_tcp::spawn(tcp).map_err(|source| TransportError::BindTcp {
            addr: local_addr,
            source,
        })?;

        let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPT_QUEUE);
        let refusals = Arc::new(Refusals::new());
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            accepted_tx,
            options.connect_timeout,
            Arc::clone(&refusals),
        ));
        let flush_task = tokio::spawn({
            let refusals = Arc::clone(&refusals);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(REFUSAL_FLUSH_EVERY_MS)).await;
                    refusals.flush();
                }
            }
        });
        let (closed, _) = watch::channel(false);
        tracing::info!(
            udp = %local_addr,
            tcp = %local_addr,
            trust = %tls.mode(),
            node_id = tls.local_node_id().unwrap_or("<none>"),
            "transport bound: QUIC endpoint and TCP health-check listener"
        );
        Ok(Transport {
            endpoint,
            local_addr,
            options,
            mode: tls.mode(),
            accepted: Mutex::new(accepted_rx),
            closed,
            tcp_task,
            accept_task,
            refusals,
            flush_task,
        })
    }

    /// Handshakes refused or failed since bind, by direction and reason (non-zero counts only). The source of
    /// `bifrost_transport_handshakes_refused_total`.
    pub fn refusals(&self) -> Vec<(Direction, RefusalReason, u64)> {
        self.refusals.counts()
    }

    /// The address of the UDP socket (and of the TCP listener).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The trust mode of the TLS setup this transport runs with.
    pub fn trust_mode(&self) -> TrustMode {
        self.mode
    }

    /// The options this transport runs with.
    pub fn options(&self) -> &TransportOptions {
        &self.options
    }

    /// Dials `peer` and waits for the handshake, at most [`TransportOptions::connect_timeout`].
    ///
    /// The server's certificate is verified when this returns `Ok`; the server verifies ours a moment later,
    /// so treat the link as trusted only after its first application exchange succeeded. A failure is logged at
    /// `WARN` with the peer address and the reason, and returned; no connection remains.
    pub async fn connect(&self, peer: SocketAddr) -> Result<Link, TransportError> {
        let connecting = self.endpoint.connect(peer, SERVER_NAME).map_err(|source| {
            tracing::warn!(%peer, reason = %FailureKind::LocallyClosed, error = %source, "cannot dial peer");
            TransportError::Dial { peer, source }
        })?;
        match tokio::time::timeout(self.options.connect_timeout, connecting).await {
            Ok(Ok(connection)) => {
                let link = Link::new(connection);
                tracing::debug!(
                    %peer,
                    peer_node_id = link.peer_node_id().unwrap_or("<none>"),
                    "connected to peer"
                );
                Ok(link)
            }
            Ok(Err(source)) => {
                let (kind, detail) = FailureKind::classify(&source);
                if let Some(reason) = RefusalReason::classify(&source) {
                    self.refusals
                        .refused(Direction::Outgoing, reason, kind, peer, &detail);
                }
                Err(TransportError::Connection {
                    peer,
                    kind,
                    detail,
                    source,
                })
            }
            Err(_) => {
                let after = self.options.connect_timeout;
                self.refusals.refused(
                    Direction::Outgoing,
                    RefusalReason::Timeout,
                    FailureKind::Timeout,
                    peer,
                    &format!("no handshake within {after:?}"),
                );
                Err(TransportError::Timeout { peer, after })
            }
        }
    }

    /// The next incoming connection whose handshake completed (the peer's certificate is verified), or `None`
    /// once the transport is closed. Failed incoming attempts are logged and never returned.
    ///
    /// Call it in a loop: up to 64 established connections wait here; beyond that, handshakes wait.
    pub async fn accept(&self) -> Option<Link> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return None;
        }
        let mut accepted = self.accepted.lock().await;
        tokio::select! {
            link = accepted.recv() => link,
            _ = closed.wait_for(|closed| *closed) => None,
        }
    }

    /// Closes every connection (application code 0, `reason` sent to peers), stops accepting and stops the TCP
    /// listener. Idempotent. Await [`Self::wait_idle`] afterwards to let the close frames go out.
    pub fn close(&self, reason: &str) {
        self.closed.send_replace(true);
        self.endpoint.close(VarInt::from_u32(0), reason.as_bytes());
        self.accept_task.abort();
        self.tcp_task.abort();
        self.flush_task.abort();
        self.refusals.flush_all();
        tracing::info!(addr = %self.local_addr, reason, "transport closed");
    }

    /// Waits until every connection is fully closed (bounded by the peers' idle timeouts).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// The underlying quinn endpoint, for what this wrapper does not cover (statistics).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.tcp_task.abort();
        self.flush_task.abort();
    }
}

/// The refusal counters and rate-limited log of one transport, shared by the accept loop and the dialers.
#[derive(Debug)]
struct Refusals {
    log: std::sync::Mutex<RefusalLog>,
    /// The monotonic clock the log runs on.
    base: Instant,
}

impl Refusals {
    fn new() -> Refusals {
        Refusals {
            log: std::sync::Mutex::new(RefusalLog::default()),
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalLog> {
        // Poison policy (crate::sync): every update leaves whole counters and slots behind.
        self.log.lock_clean()
    }

    /// Counts one refusal and logs it if the rate limit allows.
    fn refused(
        &self,
        direction: Direction,
        reason: RefusalReason,
        kind: FailureKind,
        peer: SocketAddr,
        detail: &str,
    ) {
        let now = self.now_ms();
        let line = self.lock().record(direction, reason, peer, detail, now);
        match line {
            Some(RefusalLine::First) => match direction {
                Direction::Incoming => tracing::warn!(
                    %peer,
                    reason = %kind,
                    cause = %reason,
                    %detail,
                    "incoming connection refused (further refusals with this cause are counted in \
                     bifrost_transport_handshakes_refused_total and summarized at most once a minute)"
                ),
                Direction::Outgoing => match LogLevel::of(direction, reason) {
                    LogLevel::Info => tracing::info!(
                        %peer,
                        reason = %kind,
                        cause = %reason,
                        %detail,
                        "outgoing connection closed by the peer during the handshake (normal while that \
                         peer is stopping; further ones are counted in \
                         bifrost_transport_handshakes_refused_total and summarized at most once a minute)"
                    ),
                    LogLevel::Warn => tracing::warn!(
                        %peer,
                        reason = %kind,
                        cause = %reason,
                        %detail,
                        "outgoing connection failed (further failures with this cause are counted in \
                         bifrost_transport_handshakes_refused_total and summarized at most once a minute)"
                    ),
                },
            },
            Some(summary) => log_summary(&summary, now),
            None => {}
        }
    }

    /// Logs the summaries that are due.
    fn flush(&self) {
        let now = self.now_ms();
        let lines = self.lock().flush(now);
        for line in &lines {
            log_summary(line, now);
        }
    }

    /// Logs every pending summary, due or not (the transport is closing).
    fn flush_all(&self) {
        let now = self.now_ms();
        let lines = self.lock().flush(u64::MAX);
        for line in &lines {
            log_summary(line, now);
        }
    }

    fn counts(&self) -> Vec<(Direction, RefusalReason, u64)> {
        self.lock().counts()
    }
}

fn log_summary(line: &RefusalLine, now_ms: u64) {
    let RefusalLine::Summary {
        direction,
        reason,
        refused,
        since_ms,
        peer,
        detail,
    } = line
    else {
        return;
    };
    let over_s = now_ms.saturating_sub(*since_ms) / 1_000;
    match LogLevel::of(*direction, *reason) {
        LogLevel::Info => tracing::info!(
            %direction,
            cause = %reason,
            refused,
            over_s,
            latest_peer = %peer,
            latest_detail = %detail,
            "{refused} more {direction} handshakes refused ({reason}) in the last {over_s} s"
        ),
        LogLevel::Warn => tracing::warn!(
            %direction,
            cause = %reason,
            refused,
            over_s,
            latest_peer = %peer,
            latest_detail = %detail,
            "{refused} more {direction} handshakes refused ({reason}) in the last {over_s} s"
        ),
    }
}

/// Binds the UDP socket and the TCP listener on the same IP and port.
fn bind_sockets(
    bind: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr), TransportError> {
    let attempts = if bind.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = std::net::UdpSocket::bind(bind)
            .map_err(|source| TransportError::BindUdp { addr: bind, source })?;
        let local_addr = udp
            .local_addr()
            .map_err(|source| TransportError::BindUdp { addr: bind, source })?;
        match health_tcp::bind(local_addr) {
            Ok(tcp) => return Ok((udp, tcp, local_addr)),
            Err(source) if attempt < attempts && source.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::debug!(%local_addr, "port taken on TCP; trying another OS-chosen port");
            }
            Err(source) => {
                return Err(TransportError::BindTcp {
                    addr: local_addr,
                    source,
                });
            }
        }
    }
}

/// Accepts incoming connections and runs each handshake in its own task, bounded by `timeout`.
async fn accept_loop(
    endpoint: Endpoint,
    accepted: mpsc::Sender<Link>,
    timeout: Duration,
    refusals: Arc<Refusals>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        let accepted = accepted.clone();
        let refusals = Arc::clone(&refusals);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(connection)) => {
                    let link = Link::new(connection);
                    tracing::debug!(
                        %peer,
                        peer_node_id = link.peer_node_id().unwrap_or("<none>"),
                        "accepted connection from peer"
                    );
                    if let Err(mpsc::error::SendError(link)) = accepted.send(link).await {
                        link.close("transport closed");
                    }
                }
                Ok(Err(source)) => {
                    let (kind, detail) = FailureKind::classify(&source);
                    match RefusalReason::classify(&source) {
                        Some(reason) => {
                            refusals.refused(Direction::Incoming, reason, kind, peer, &detail);
                        }
                        None => {
                            tracing::debug!(%peer, %detail, "incoming handshake ended: closing")
                        }
                    }
                }
                Err(_) => refusals.refused(
                    Direction::Incoming,
                    RefusalReason::Timeout,
                    FailureKind::Timeout,
                    peer,
                    &format!("no handshake within {timeout:?}"),
                ),
            }
        });
    }
}
