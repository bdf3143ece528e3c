//! The `Hello` exchange that makes a link trusted.
//!
//! TLS proves the peer holds a certificate of our cluster; with TLS 1.3 a dial can complete before the server has
//! checked the client's certificate, so a link counts only after the first application exchange: the dialer
//! opens a stream and sends its `Hello`, the acceptor answers with its own. Each side checks the other's
//! protocol version, that it is not talking to itself, and (with a cluster secret) that the node id in the
//! `Hello` is the one its certificate was issued for.
//!
//! The wire [`Hello`] carries the replica id as a `u64`; [`PeerHello`] and [`own_hello`] take it as a
//! [`ReplicaId`] and convert at this boundary.

use std::net::SocketAddr;
use std::time::Duration;

use crate::ReplicaId;
use crate::transport::{Link, TrustMode};
use crate::wire::{self, Frame, Hello, PROTOCOL_MAJOR, PROTOCOL_MINOR, capabilities};

/// What a peer said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// Its node id.
    pub node_id: String,
    /// Its replica id for this process start.
    pub replica_id: ReplicaId,
    /// Its capability bits.
    pub capabilities: u64,
    /// The gossip address it advertises (`None` for a client that is not a member).
    pub gossip_addr: Option<SocketAddr>,
    /// The link nonce it sent (the dialer's choice; 0 from an acceptor).
    pub link_nonce: u64,
}

/// Why a link was refused during the exchange.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The stream failed or timed out.
    #[error("hello exchange failed: {0}")]
    Io(String),
    /// The peer's first frame is not a valid `Hello`.
    #[error("invalid hello: {0}")]
    Invalid(String),
    /// The peer is this very process (a peer list that names our own address).
    #[error("the peer is this node itself")]
    SelfLink,
    /// The node id in the `Hello` differs from the certificate's.
    #[error("node id {hello:?} in hello but {certificate:?} in its certificate")]
    IdentityMismatch {
        /// From the hello.
        hello: String,
        /// From the certificate.
        certificate: String,
    },
}

/// Largest hello accepted.
const MAX_HELLO_BYTES: usize = 4_096;

/// Our hello, advertising `gossip_addr`.
pub fn own_hello(node_id: &str, replica_id: ReplicaId, gossip_addr: SocketAddr) -> Hello {
    Hello {
        node_id: node_id.to_string(),
        replica_id: replica_id.get(),
        protocol_version: (u32::from(PROTOCOL_MAJOR) << 16) | u32::from(PROTOCOL_MINOR),
        capabilities: capabilities::REPLICATION_V1,
        gossip_addr: gossip_addr.to_string(),
        link_nonce: 0,
    }
}

/// Runs the exchange on `link`, as the dialer (`dialer = true`) or the acceptor, within `timeout`.
pub async fn exchange(
    link: &Link,
    ours: &Hello,
    dialer: bool,
    trust: TrustMode,
    timeout: Duration,
) -> Result<PeerHello, HelloError> {
    let frame = wire::encode(ours).map_err(|e| HelloError::Io(e.to_string()))?;
    let io = async {
        let received = if dialer {
            let (mut send, mut recv) = link
                .open_stream()
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            send.finish().map_err(|e| HelloError::Io(e.to_string()))?;
            recv.read_to_end(MAX_HELLO_BYTES)
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?
        } else {
            let (mut send, mut recv) = link
                .accept_stream()
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            let received = recv
                .read_to_end(MAX_HELLO_BYTES)
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            // Validate before answering: an invalid peer learns nothing about us.
            check(&received, ours, link, trust)?;
            send.write_all(&frame)
                .await
                .map_err(|e| HelloError::Io(e.to_string()))?;
            send.finish().map_err(|e| HelloError::Io(e.to_string()))?;
            received
        };
        check(&received, ours, link, trust)
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| HelloError::Io(format!("no hello within {timeout:?}")))?
}

fn check(
    bytes: &[u8],
    ours: &Hello,
    link: &Link,
    trust: TrustMode,
) -> Result<PeerHello, HelloError> {
    let hello = match wire::decode(bytes) {
        Ok(Frame::Hello(hello)) => hello,
        Ok(other) => {
            return Err(HelloError::Invalid(format!(
                "expected a hello, got {other:?}"
            )));
        }
        Err(e) => return Err(HelloError::Invalid(e.to_string())),
    };
    let gossip_addr = match hello.gossip_addr.as_str() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            HelloError::Invalid(format!("gossip address {text:?} is not \"ip:port\""))
        })?),
    };
    let peer = PeerHello {
        node_id: hello.node_id.as_str().to_string(),
        replica_id: ReplicaId::new(hello.replica_id.to_native()),
        capabilities: hello.capabilities.to_native(),
        gossip_addr,
        link_nonce: hello.link_nonce.to_native(),
    };
    if let Err(rule) = crate::config::NodeId::new(&peer.node_id) {
        return Err(HelloError::Invalid(format!(
            "node id {:?}: {rule}",
            peer.node_id
        )));
    }
    if peer.replica_id.get() == ours.replica_id {
        return Err(HelloError::SelfLink);
    }
    if (hello.protocol_version.to_native() >> 16) as u8 != PROTOCOL_MAJOR {
        return Err(HelloError::Invalid(format!(
            "protocol version {}.{} (this node speaks {PROTOCOL_MAJOR}.x)",
            hello.protocol_version.to_native() >> 16,
            hello.protocol_version.to_native() & 0xffff
        )));
    }
    if trust == TrustMode::Secret
        && let Some(certificate) = link.peer_node_id()
        && certificate != peer.node_id
    {
        return Err(HelloError::IdentityMismatch {
            hello: peer.node_id,
            certificate: certificate.to_string(),
        });
    }
    Ok(peer)
}
