//! [`Link`]: one established, mutually authenticated QUIC connection to a peer.
//!
//! # Guarantees
//!
//! - **Datagrams** (deltas) are unreliable and unordered, and each arrives whole or not at all. A datagram larger
//!   than [`Link::max_datagram_size`] is refused with [`LinkError::DatagramTooLarge`], never truncated; the
//!   maximum follows the path MTU (it grows as path MTU discovery succeeds, and can shrink), so callers re-read
//!   it instead of caching it. When the send buffer is full the *oldest* queued datagram is dropped, so a slow
//!   path loses stale deltas rather than blocking the sender.
//! - **Streams** (anti-entropy, state transfer) are reliable and ordered, flow-controlled in both directions.
//!   A stream opened with [`Link::open_stream`] reaches the peer's [`Link::accept_stream`] only once the
//!   opener writes to it.
//! - **Cheap to clone**: clones share the connection; [`Link::close`] on any clone closes it for all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendDatagramError, SendStream, VarInt};

use super::error::LinkError;
use super::peer_identity::peer_node_id;

/// An established connection to a peer. See the module docs for the guarantees.
#[derive(Debug, Clone)]
pub struct Link {
    connection: quinn::Connection,
    peer_node_id: Option<Arc<str>>,
}

impl Link {
    pub(crate) fn new(connection: quinn::Connection) -> Self {
        let peer_node_id = peer_node_id(&connection).map(Arc::from);
        Self {
            connection,
            peer_node_id,
        }
    }

    /// Queues one datagram. Fails without sending when it is larger than [`Self::max_datagram_size`], when the
    /// peer does not accept datagrams, or when the connection is lost.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), LinkError> {
        let peer = self.remote_address();
        let len = data.len();
        match self.connection.max_datagram_size() {
            None => return Err(LinkError::DatagramsUnsupported { peer }),
            Some(max) if len > max => return Err(LinkError::DatagramTooLarge { peer, len, max }),
            Some(_) => {}
        }
        self.connection
            .send_datagram(data)
            .map_err(|error| match error {
                // The limit shrank between our check and quinn's (path MTU change).
                SendDatagramError::TooLarge => LinkError::DatagramTooLarge {
                    peer,
                    len,
                    max: self.connection.max_datagram_size().unwrap_or(0),
                },
                SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => {
                    LinkError::DatagramsUnsupported { peer }
                }
                SendDatagramError::ConnectionLost(source) => LinkError::lost(peer, source),
            })
    }

    /// Waits for the next datagram from the peer. Fails once the connection is lost.
    pub async fn read_datagram(&self) -> Result<Bytes, LinkError> {
        self.connection
            .read_datagram()
            .await
            .map_err(|source| LinkError::lost(self.remote_address(), source))
    }

    /// The largest datagram [`Self::send_datagram`] accepts right now, or `None` when datagrams cannot be sent
    /// on this link. It changes with the path MTU: read it before building each batch.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.connection.max_datagram_size()
    }

    /// Opens a bidirectional stream for bulk transfer. Waits while the peer's stream limit is reached.
    pub async fn open_stream(&self) -> Result<(SendStream, RecvStream), LinkError> {
        self.connection
            .open_bi()
            .await
            .map_err(|source| LinkError::lost(self.remote_address(), source))
    }

    /// Waits for the peer to open a bidirectional stream (and write to it).
    pub async fn accept_stream(&self) -> Result<(SendStream, RecvStream), LinkError> {
        self.connection
            .accept_bi()
            .await
            .map_err(|source| LinkError::lost(self.remote_address(), source))
    }

    /// The peer's current address (it can change if the peer migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The peer's node id: the common name of its verified certificate (only a claim in insecure development
    /// mode). `None` if the certificate has no UTF-8 common name.
    pub fn peer_node_id(&self) -> Option<&str> {
        self.peer_node_id.as_deref()
    }

    /// A number identifying this connection among the endpoint's live connections.
    pub fn id(&self) -> usize {
        self.connection.stable_id()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// Closes the connection immediately (application code 0) with `reason`, sent to the peer. Undelivered data
    /// is abandoned; pending and later operations on every clone fail with [`LinkError::ConnectionLost`].
    pub fn close(&self, reason: &str) {
        self.connection
            .close(VarInt::from_u32(0), reason.as_bytes());
    }

    /// Waits until the connection is closed, by either side or by a timeout, and says why.
    pub async fn closed(&self) -> LinkError {
        let source = self.connection.closed().await;
        LinkError::lost(self.remote_address(), source)
    }

    /// Why the connection was closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<LinkError> {
        self.connection
            .close_reason()
            .map(|source| LinkError::lost(self.remote_address(), source))
    }

    /// The underlying quinn connection, for what this wrapper does not cover (statistics, unidirectional
    /// streams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}
