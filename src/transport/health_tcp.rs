//! The TCP health-check listener: accepts connections on the QUIC endpoint's port number and closes them at
//! once, so TCP health checks (Consul's, Kubernetes' `tcpSocket`) see the node. Nothing is ever read or written.
//!
//! It runs as one tokio task, aborted when the [`super::Transport`] is closed or dropped. An accept error (for
//! instance out of file descriptors) is logged and retried after a short pause; it never ends the task.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Pause after a failed `accept`, so a persistent error (EMFILE) does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Binds the listener synchronously, so the caller can report the address on failure.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts the accept-and-close loop. Must run inside a tokio runtime.
pub(crate) fn spawn(listener: std::net::TcpListener) -> io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tracing::trace!(%peer, "TCP health-check connection accepted and closed");
                    drop(stream);
                }
                Err(error) => {
                    tracing::warn!(%error, "TCP health-check listener: accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }))
}
