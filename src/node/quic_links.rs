//! [`QuicLinks`]: the quinn implementation of the [`LinkLayer`] contract, built from the same link tasks and
//! link table the tokio driver runs (the acceptor and the dials with their `Hello` exchange, and
//! [`super::live_links::LiveLinks`]: the readers, the reading of their reports, `link_tasks::send` for frames).
//!
//! Guarantees: those of [`super::link_layer`], over real QUIC with mutual TLS. In particular a peer whose
//! certificate is not of this cluster, or whose hello names another node than its certificate, never yields
//! [`LinkEvent::Up`]; [`LinkLayer::refusals`] counts such handshakes, both directions (the transport's
//! certificate refusals plus refused hellos).
//!
//! What it is for: the driver does not go through this type. It holds the same [`super::live_links::LiveLinks`]
//! and link tasks directly, interleaved with its own event channel (discovery, config writes, shutdown), so the
//! conformance suite (`tests/transport_conformance.rs`) checks the code the driver runs, through this thin
//! wrapper; what the driver adds on top (the shutdown's confirmed sends, round-trip times for the status) is
//! not covered here.
//!
//! Created inside a tokio runtime, it keeps that runtime's handle: its methods can then be called from any
//! thread, and its tasks run on that runtime. Dropping it stops its tasks; the links it holds close when their
//! last handle goes.

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
use super::live_links::LiveLinks;
use super::machine::link_layer::{LinkEvent, LinkId, LinkLayer};
use crate::ReplicaId;
use crate::replication::Channel;
use crate::transport::{RefusalReason, Transport, TransportError};

/// How many link events wait for [`QuicLinks::poll_event`] before the link tasks wait.
const EVENT_QUEUE: usize = 4_096;

/// The link layer of one node over a quinn [`Transport`]. See the module docs.
pub struct QuicLinks {
    runtime: tokio::runtime::Handle,
    transport: Arc<Transport>,
    setup: HelloSetup,
    events: mpsc::Sender<Event>,
    inbox: mpsc::Receiver<Event>,
    links: LiveLinks,
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
        replica_id: ReplicaId,
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
            links: LiveLinks::new(events.clone()),
            events,
            inbox,
            acceptor,
        })
    }
}

impl Drop for QuicLinks {
    fn drop(&mut self) {
        // The links' readers stop when `links` drops.
        self.acceptor.abort();
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
        let _runtime = self.runtime.enter();
        self.links.send(link, channel, frame);
    }

    fn close(&mut self, link: LinkId, reason: &str) {
        self.links.close(link, reason);
    }

    fn max_datagram(&self, link: LinkId) -> Option<usize> {
        self.links.link(link)?.max_datagram_size()
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
            if let Some(event) = self.links.absorb(event) {
                return Some(event);
            }
        }
        None
    }
}
