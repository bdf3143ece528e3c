//! What the node's tasks (links, dials, discovery, the handle) tell the driver task, on one channel.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::hello::PeerHello;
use super::machine::link_layer::DialError;
use crate::replication::Channel;
use crate::state::{StateError, Timestamp};
use crate::transport::Link;

/// Inputs of the driver.
pub(crate) enum Event {
    /// A link passed the hello exchange. `dialed_addr` is the address we dialed (`None`: the peer dialed us);
    /// `link_nonce` is the dialer's nonce, known to both ends.
    PeerUp {
        link: Link,
        hello: PeerHello,
        dialed_addr: Option<SocketAddr>,
        link_nonce: u64,
    },
    /// A dial ended without a link.
    DialFailed { addr: SocketAddr, error: DialError },
    /// A link closed.
    PeerDown { link_id: usize },
    /// A frame arrived on a link.
    Frame {
        link_id: usize,
        bytes: Bytes,
        channel: Channel,
    },
    /// Sending a frame on a stream of a link failed.
    StreamFailed { link_id: usize, error: String },
    /// The discovery loop found these join targets (filtered; this node excluded).
    Discovered { addrs: Vec<SocketAddr> },
    /// A config write from the handle.
    Config(ConfigCommand),
    /// Flush, leave, close the links and stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// A config write asked for by the handle.
pub(crate) enum ConfigCommand {
    Put {
        key: String,
        value: Bytes,
        reply: oneshot::Sender<Result<Timestamp, StateError>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<Timestamp, StateError>>,
    },
}
