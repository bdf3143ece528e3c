//! The link-layer contract the node relies on: a [`LinkLayer`] dials and accepts links, sends frames on them as
//! datagrams or on streams, closes them, and reports what happened as [`LinkEvent`]s.
//!
//! Two implementations exist and one conformance suite (`tests/transport_conformance.rs`) checks both against
//! the guarantees below: [`crate::node::QuicLinks`] over the quinn [`crate::transport::Transport`] (a thin
//! wrapper over the link tasks and the link table the tokio driver holds; the driver itself does not go through
//! the trait), and [`crate::sim::SimEndpoint`], an endpoint of the whole-node simulator's in-memory network, whose
//! links are the ones the simulated nodes use. The node machine takes these events through
//! `NodeMachine::handle_link_event`. This module is sans-IO (no tokio, no quinn, no clock): it only names the
//! contract.
//!
//! # Guarantees every implementation gives
//!
//! - **Only trusted peers get a link.** A dial to, or from, a peer whose identity this endpoint does not trust
//!   (with quinn: a certificate not issued by the cluster CA, or a hello whose node id is not the
//!   certificate's; in memory: another trust domain) never yields [`LinkEvent::Up`] at either end. The dialer
//!   gets [`LinkEvent::DialFailed`] with [`DialError::Refused`], and both ends count a refused certificate (or
//!   trust domain) in [`LinkLayer::refusals`]; a refused hello is counted by the end that refused it.
//! - **Every dial ends.** A [`LinkLayer::dial`] is answered by exactly one [`LinkEvent::Up`] or
//!   [`LinkEvent::DialFailed`]. A dial to nobody fails with [`DialError::Timeout`] after the connect timeout.
//!   A dial to this endpoint's own address never yields a link; it fails with [`DialError::SelfLink`] when the
//!   dialing side reads its own hello first (with quinn the accepting side of the same process may refuse
//!   first and close the link, and the dial then fails as [`DialError::Failed`]).
//! - **Frames arrive whole.** A frame sent with [`LinkLayer::send`] on an open link arrives as one
//!   [`LinkEvent::Frame`] with the same bytes, or (a datagram only) not at all. Stream frames are reliable;
//!   datagrams are unreliable and unordered.
//! - **A datagram that does not fit goes on a stream.** A frame sent as [`Channel::Datagram`] that is larger
//!   than [`LinkLayer::max_datagram`] is delivered intact on a stream (it arrives with [`Channel::Stream`]),
//!   never truncated or dropped for its size.
//! - **A close is reported to the other side with its reason.** [`LinkLayer::close`] forgets the link at once
//!   (no [`LinkEvent::Down`] for it locally, later sends on it are dropped); the peer gets
//!   [`LinkEvent::Down`] with [`CloseReason::ClosedByPeer`] and the reason text. A link whose peer goes silent
//!   (crash, partition) ends with [`CloseReason::TimedOut`] after the idle timeout.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::node::PeerHello;
use crate::replication::Channel;

pub use crate::link_id::LinkId;

/// A link that passed authentication and the hello exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUp {
    /// Its id.
    pub link: LinkId,
    /// What the peer said about itself (its identity is verified: see the module docs).
    pub hello: PeerHello,
    /// The address this endpoint dialed (`None`: the peer dialed us).
    pub dialed_addr: Option<SocketAddr>,
    /// The dialer's nonce, known to both ends.
    pub link_nonce: u64,
    /// The peer's address as the link sees it.
    pub remote: SocketAddr,
    /// The largest datagram the link takes now (`None`: no datagrams).
    pub max_datagram: Option<usize>,
}

/// What a [`LinkLayer`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link passed authentication and the hello exchange (boxed: the hello is large, frames are many).
    Up(Box<LinkUp>),
    /// A frame arrived.
    Frame {
        /// On which link.
        link: LinkId,
        /// The frame, whole.
        frame: Bytes,
        /// How it travelled.
        channel: Channel,
    },
    /// A frame could not be sent on a stream (the peer refused or reset it); the link may still be up.
    StreamFailed {
        /// On which link.
        link: LinkId,
        /// Why, in words.
        error: String,
    },
    /// A link closed; it is gone.
    Down {
        /// Which.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
    /// A dial ended without a link.
    DialFailed {
        /// The address dialed.
        addr: SocketAddr,
        /// Why.
        error: DialError,
    },
}

/// Why a link closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it with [`LinkLayer::close`], giving this reason.
    ClosedByPeer(String),
    /// Nothing was heard from the peer for the idle timeout (a crash, a pause, a partition).
    TimedOut,
    /// Anything else (a reset, a protocol error, the local endpoint closing), in words.
    Lost(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClosedByPeer(reason) => write!(f, "closed by peer: {reason}"),
            CloseReason::TimedOut => f.write_str("timeout"),
            CloseReason::Lost(detail) => write!(f, "lost: {detail}"),
        }
    }
}

/// Why a dial ended without a link. Nothing remains of the attempt. Each variant displays as the cause's text
/// alone (what the node logged and kept as a dial's last error before this type existed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The peer's identity is not trusted, or the peer did not trust ours.
    #[error("{0}")]
    Refused(String),
    /// The address is this endpoint itself.
    #[error("the peer is this node itself")]
    SelfLink,
    /// No handshake completed within the connect timeout (nobody there, or unreachable).
    #[error("{0}")]
    Timeout(String),
    /// Any other failure, in words.
    #[error("{0}")]
    Failed(String),
}

/// The link layer of one endpoint. See the module docs for the guarantees.
///
/// Nothing here waits: operations start work and [`LinkLayer::poll_event`] hands out what is ready. How time
/// passes is the implementation's business (tokio tasks for quinn; virtual time for the simulator).
pub trait LinkLayer {
    /// The address peers dial to reach this endpoint.
    fn local_addr(&self) -> SocketAddr;
    /// Starts dialing `addr`; the outcome comes later as [`LinkEvent::Up`] or [`LinkEvent::DialFailed`].
    fn dial(&mut self, addr: SocketAddr);
    /// Sends `frame` on `link`: as a datagram when `channel` says so and it fits [`LinkLayer::max_datagram`],
    /// otherwise on a stream. A frame for a closed or unknown link is dropped.
    fn send(&mut self, link: LinkId, channel: Channel, frame: Bytes);
    /// Closes `link`, sending `reason` to the peer. The link is forgotten at once: no [`LinkEvent::Down`]
    /// follows for it here.
    fn close(&mut self, link: LinkId, reason: &str);
    /// The largest datagram `link` takes now (`None`: unknown link, or no datagrams). It can change.
    fn max_datagram(&self, link: LinkId) -> Option<usize>;
    /// Handshakes refused because one side does not trust the other's identity, both directions, so far.
    fn refusals(&self) -> u64;
    /// The next event, if one is ready.
    fn poll_event(&mut self) -> Option<LinkEvent>;
}

/// Whether a frame of `len` bytes asked to go on `channel` travels on a stream, given the link's current
/// `max_datagram`: the rule of [`LinkLayer::send`]. The simulator applies it as is; with quinn,
/// `Link::send_datagram` refuses a datagram over the limit and the frame goes on a stream instead.
pub fn travels_on_stream(channel: Channel, len: usize, max_datagram: Option<usize>) -> bool {
    channel == Channel::Stream || max_datagram.is_none_or(|max| len > max)
}
