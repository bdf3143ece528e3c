//! Transport: the quinn endpoint on `gossip.port`, mutual TLS and peer links.
//!
//! This is the only plane that opens inter-node sockets. One [`Transport`] owns **one UDP socket** running a QUIC
//! endpoint that both listens and dials, so membership, deltas and anti-entropy all share the same path: a
//! cluster cannot look healthy on membership while its data plane is blocked on another port. Beside it, a TCP
//! listener on the same port number accepts and immediately closes connections, so TCP health checks (Consul's,
//! Kubernetes' `tcpSocket`) see the node.
//!
//! `docs/transport.md` is the operator's reference; this page is the API's.
//!
//! # Guarantees
//!
//! - **Mutual TLS, always.** TLS 1.3 only (ring provider), ALPN [`ALPN`]. Both sides present a certificate and
//!   the server *requires* one from the client; there is no mode without encryption and no mode without client
//!   certificates. Which certificates are trusted depends on the [`Trust`](crate::config::Trust) mode
//!   ([`TlsSetup::from_trust`]):
//!   - *secret*: every node derives the same cluster CA from the shared secret (HKDF-SHA256 → Ed25519, see
//!     [`ClusterCa`]) and issues itself a fresh leaf; nodes that share the secret trust each other and nothing
//!     else does;
//!   - *files*: a CA, certificate chain and key in PEM files; any certificate the CA signed is a member;
//!   - *insecure development*: any certificate is accepted (still encrypted); a `WARN` is logged every time such
//!     a setup is built.
//! - **Server name.** Peers are dialed by address. A server certificate is accepted when it chains to the
//!   cluster CA; the DNS name in it is not compared (see [`SERVER_NAME`]).
//! - **No 0-RTT, no resumption.** Every connection runs a full handshake with certificate verification.
//! - **Authenticated links.** A [`Link`] handed out by [`Transport::accept`] has verified the client's
//!   certificate. A [`Link`] returned by [`Transport::connect`] has verified the server's certificate, but with
//!   TLS 1.3 the server checks *ours* after the client considers the handshake done, so a dialed link counts as
//!   trusted only after its first application exchange succeeded (the caller's job: a probe, a delta ack).
//! - **Failures are counted and logged, never panics.** Every refused or failed connection attempt is counted
//!   by direction and [`RefusalReason`] ([`Transport::refusals`]), logged with `tracing` at `WARN` with the peer
//!   address and a [`FailureKind`] (bad certificate, handshake failure, timeout, …) — rate-limited: the first
//!   per direction and reason in full, then at most one summary line a minute ([`refusals`]) — and surfaced as a
//!   typed error ([`TransportError`], [`LinkError`], [`TlsError`]) naming the peer, the file or the option at
//!   fault.
//! - **Datagrams are bounded.** [`Link::send_datagram`] refuses a datagram larger than
//!   [`Link::max_datagram_size`] (which follows the path MTU, so callers re-read it) with an error instead of
//!   truncating or fragmenting. Datagrams are unreliable and unordered; streams are reliable and ordered.
//! - **Clean shutdown.** [`Transport::close`] (or dropping the [`Transport`]) stops the accept loop and the TCP
//!   listener; `close` also closes every connection of the endpoint.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bifrost_cluster::config::{ClusterSecret, NodeId, Trust};
//! use bifrost_cluster::transport::{TlsSetup, Transport, TransportOptions};
//!
//! let secret = ClusterSecret::new("a long, random, shared cluster secret")?;
//! let node_id = NodeId::new("node-a")?;
//! let tls = TlsSetup::from_trust(&Trust::Secret(secret), &node_id)?;
//! let transport = Transport::bind("0.0.0.0:10101".parse()?, tls, TransportOptions::default())?;
//! let link = transport.connect("10.0.0.2:10101".parse()?).await?;
//! link.send_datagram(bytes::Bytes::from_static(b"delta"))?;
//! # Ok(()) }
//! ```

mod cluster_ca;
mod endpoint;
mod error;
mod health_tcp;
mod link;
mod options;
mod peer_identity;
pub mod refusals;
mod tls;

pub use cluster_ca::{CA_COMMON_NAME, ClusterCa, HKDF_INFO, HKDF_SALT, LEAF_VALIDITY};
pub use endpoint::Transport;
pub use error::{FailureKind, LinkError, TlsError, TransportError};
pub use link::Link;
pub use options::TransportOptions;
pub use peer_identity::common_name;
pub use refusals::{Direction, RefusalReason};
pub use tls::{TlsSetup, TrustMode};

/// The ALPN protocol id every connection negotiates. A peer speaking anything else fails the handshake
/// (`no_application_protocol`). The trailing number is the transport's major version.
pub const ALPN: &[u8] = b"bifrost-cluster/1";

/// The server name a node dials with, and the DNS subject alternative name of every leaf certificate this crate
/// issues.
///
/// Node ids need not be valid DNS names and peers are dialed by address, so the name is fixed. With trust from
/// files, the name in the peer's certificate is not compared at all: membership is "signed by the cluster CA".
pub const SERVER_NAME: &str = "bifrost-cluster";
