//! [`QuicLinks`]: the quinn implementation of the [`LinkLayer`] contract, built from the same link tasks the
//! tokio driver runs (the acceptor and the dials with their `Hello` exchange, the readers, and
//! `link_tasks::send` for frames).
//!
//! Guarantees: those of [`super::link_layer`], over real QUIC with mutual TLS. In particular a peer whose
//! certificate is not of this cluster, or whose hello names another node than its certificate, never yields
//! [`LinkEvent::Up`]; [`LinkLayer::refusals`] counts such handshakes, both directions (the transport's
//! certificate refusals plus refused hellos).
//!
//! What it is for: the driver does not go through this type. It runs the same link tasks and send path
//! directly, interleaved with its own event channel (discovery, config writes, shutdown), so the conformance
//! suite (`tests/transport_conformance.rs`) checks the code the driver runs, through this thin wrapper; what the
//! driver adds on top (the shutdown's confirmed sends, round-trip times for the status) is not covered here.
//!
//! Created inside a tokio runtime, it keeps that runtime's handle: its methods can then be called from any
//! thread, and its tasks run on that runtime. Dropping it stops its tasks; the links it holds close when their
//! last handle goes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::Event;
use super::hello;
use super::link_tasks::{self, HelloSetup};
use super::machine::link_layer::{CloseReason, LinkEvent, LinkId, LinkLayer};
use crate::replication::Channel;
use crate::transport::{Link, LinkError, RefusalReason, Transport, TransportError};

/// How many link events wait for [`QuicLinks::poll_event`] before the link tasks wait.
const EVENT_QUEUE: usize = 4_096;

/// One live link: the transport's handle, its reader tasks, the bound on its stream sends.
struct Live {
    link: Link,
    readers: Vec<JoinHandle<()>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Live {
    fn stop_readers(&self) {
        self.readers.iter().for_each(JoinHandle::abort);
    }
}

/// The link layer of one node over a quinn [`Transport`]. See the module docs.
pub struct QuicLinks {
    runtime: tokio::runtime::Handle,
    transport: Arc<Transport>,
    setup: HelloSetup,
    events: mpsc::Sender<Event>,
    inbox: mpsc::Receiver<Event>,
    links: HashMap<LinkId, Live>,
    acceptor: JoinHandle<()>,
}

impl std::fmt::Debug for QuicLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLinks")
            .field("local_addr", &self.transport.local_addr())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl QuicLinks {
    /// Accepts links on `transport` and dials from it, introducing this endpoint as `node_id` with
    /// `replica_id` in the `Hello` exchange (bounded by `hello_timeout`), advertising the transport's address.
    /// Fails with [`TransportError::NoRuntime`] outside a tokio runtime.
    pub fn new(
        transport: Arc<Transport>,
        node_id: &str,
        replica_id: u64,
        hello_timeout: Duration,
    ) -> Result<QuicLinks, TransportError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let setup = HelloSetup {
            ours: hello::own_hello(node_id, replica_id, transport.local_addr()),
            trust: transport.trust_mode(),
            timeout: hello_timeout,
            refused: Arc::default(),
        };
        let (events, inbox) = mpsc::channel(EVENT_QUEUE);
        let acceptor =
            link_tasks::spawn_acceptor(Arc::clone(&transport), setup.clone(), events.clone());
        Ok(QuicLinks {
            runtime,
            transport,
            setup,
            events,
            inbox,
            links: HashMap::new(),
            acceptor,
        })
    }

    /// Turns what a link task reported into the event the contract promises (`None`: nothing to report, as a
    /// frame read on a link closed meanwhile).
    fn absorb(&mut self, event: Event) -> Option<LinkEvent> {
        match event {
            Event::PeerUp {
                link,
                hello,
                dialed_addr,
                link_nonce,
            } => {
                let id = link.id() as LinkId;
                let up = LinkEvent::Up {
                    link: id,
                    hello,
                    dialed_addr,
                    link_nonce,
                    remote: link.remote_address(),
                    max_datagram: link.max_datagram_size(),
                };
                let readers = link_tasks::spawn_readers(&link, self.events.clone());
                let permits = Arc::new(tokio::sync::Semaphore::new(
                    link_tasks::MAX_STREAM_SENDS_PER_LINK,
                ));
                self.links.insert(
                    id,
                    Live {
                        link,
                        readers,
                        permits,
                    },
                );
                Some(up)
            }
            Event::PeerDown { link_id } => {
                let live = self.links.remove(&(link_id as LinkId))?;
                live.stop_readers();
                let reason = close_reason(live.link.close_reason());
                Some(LinkEvent::Down {
                    link: link_id as LinkId,
                    reason,
                })
            }
            Event::Frame {
                link_id,
                bytes,
                channel,
            } => self
                .links
                .contains_key(&(link_id as LinkId))
                .then_some(LinkEvent::Frame {
                    link: link_id as LinkId,
                    frame: bytes,
                    channel,
                }),
            Event::StreamFailed { link_id, error } => self
                .links
                .contains_key(&(link_id as LinkId))
                .then_some(LinkEvent::StreamFailed {
                    link: link_id as LinkId,
                    error,
                }),
            Event::DialFailed { addr, error } => Some(LinkEvent::DialFailed { addr, error }),
            Event::Discovered { .. } | Event::Config(_) | Event::Shutdown { .. } => None,
        }
    }
}

impl Drop for QuicLinks {
    fn drop(&mut self) {
        self.acceptor.abort();
        for live in self.links.values() {
            live.stop_readers();
        }
    }
}

/// The contract's reading of why a quinn connection closed.
fn close_reason(error: Option<LinkError>) -> CloseReason {
    match error {
        Some(LinkError::ConnectionLost { source, .. }) => match source {
            quinn::ConnectionError::ApplicationClosed(close) => {
                CloseReason::ClosedByPeer(String::from_utf8_lossy(&close.reason).into_owned())
            }
            quinn::ConnectionError::TimedOut => CloseReason::TimedOut,
            other => CloseReason::Lost(other.to_string()),
        },
        Some(other) => CloseReason::Lost(other.to_string()),
        None => CloseReason::Lost("closed".to_string()),
    }
}

impl LinkLayer for QuicLinks {
    fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    fn dial(&mut self, addr: SocketAddr) {
        let _runtime = self.runtime.enter();
        link_tasks::spawn_dial(
            Arc::clone(&self.transport),
            addr,
            self.setup.clone(),
            self.events.clone(),
        );
    }

    fn send(&mut self, link: LinkId, channel: Channel, frame: Bytes) {
        let Some(live) = self.links.get(&link) else {
            return;
        };
        let _runtime = self.runtime.enter();
        link_tasks::send(&live.link, channel, frame, &self.events, &live.permits);
    }

    fn close(&mut self, link: LinkId, reason: &str) {
        if let Some(live) = self.links.remove(&link) {
            live.link.close(reason);
            live.stop_readers();
        }
    }

    fn max_datagram(&self, link: LinkId) -> Option<usize> {
        self.links.get(&link)?.link.max_datagram_size()
    }

    fn refusals(&self) -> u64 {
        let certificates: u64 = self
            .transport
            .refusals()
            .into_iter()
            .filter(|(_, reason, _)| {
                matches!(
                    reason,
                    RefusalReason::NoCertificate
                        | RefusalReason::UnknownCa
                        | RefusalReason::BadSignature
                        | RefusalReason::Expired
                        | RefusalReason::BadCertificate
                )
            })
            .map(|(_, _, count)| count)
            .sum();
        // Relaxed: a counter, ordering nothing.
        certificates + self.setup.refused.load(Ordering::Relaxed)
    }

    fn poll_event(&mut self) -> Option<LinkEvent> {
        // A link that comes up gets its reader tasks here.
        let _runtime = self.runtime.enter();
        while let Ok(event) = self.inbox.try_recv() {
            if let Some(event) = self.absorb(event) {
                return Some(event);
            }
        }
        None
    }
}
