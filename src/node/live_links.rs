//! The live quinn links of one node, by link id: the table both the tokio driver and [`super::QuicLinks`] hold,
//! so the two share one reading of the link tasks' reports and one send path.
//!
//! Guarantees:
//! - [`LiveLinks::absorb`] turns what a link task reported into the event of the link-layer contract
//!   ([`super::link_layer`]): a link that passed the hello is registered with its reader tasks and reported
//!   [`LinkEvent::Up`] once; a frame, a failed stream send or a close of a link no longer held (closed here
//!   meanwhile) is reported not at all; a close is reported [`LinkEvent::Down`] with the contract's reason.
//! - At most [`link_tasks::MAX_STREAM_SENDS_PER_LINK`] stream sends run per link (`link_tasks::send`).
//! - A link closed here ([`LiveLinks::close`]), and every link when the table is dropped, has its reader tasks
//!   stopped.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::Event;
use super::link_tasks;
use super::machine::link_layer::{CloseReason, LinkEvent, LinkId, LinkUp};
use crate::replication::Channel;
use crate::transport::{Link, LinkError};

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

/// The live links of one node. See the module docs.
pub(crate) struct LiveLinks {
    /// Where the reader tasks of new links report.
    events: mpsc::Sender<Event>,
    links: HashMap<LinkId, Live>,
}

impl LiveLinks {
    /// An empty table whose links' reader tasks report on `events`.
    pub(crate) fn new(events: mpsc::Sender<Event>) -> LiveLinks {
        LiveLinks {
            events,
            links: HashMap::new(),
        }
    }

    /// Links held.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// The contract's event for what a link task reported (`None`: nothing to report, or not a link event).
    /// Must run inside the tokio runtime (a link that comes up gets its reader tasks here).
    pub(crate) fn absorb(&mut self, event: Event) -> Option<LinkEvent> {
        match event {
            Event::PeerUp {
                link,
                hello,
                dialed_addr,
                link_nonce,
            } => {
                let id = link_id_of(link.id());
                let up = LinkEvent::Up(Box::new(LinkUp {
                    link: id,
                    hello,
                    dialed_addr,
                    link_nonce,
                    remote: link.remote_address(),
                    max_datagram: link.max_datagram_size(),
                }));
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
                let live = self.links.remove(&link_id_of(link_id))?;
                live.stop_readers();
                Some(LinkEvent::Down {
                    link: link_id_of(link_id),
                    reason: close_reason(live.link.close_reason()),
                })
            }
            Event::Frame {
                link_id,
                bytes,
                channel,
            } => self
                .links
                .contains_key(&link_id_of(link_id))
                .then_some(LinkEvent::Frame {
                    link: link_id_of(link_id),
                    frame: bytes,
                    channel,
                }),
            Event::StreamFailed { link_id, error } => self
                .links
                .contains_key(&link_id_of(link_id))
                .then_some(LinkEvent::StreamFailed {
                    link: link_id_of(link_id),
                    error,
                }),
            Event::DialFailed { addr, error } => Some(LinkEvent::DialFailed { addr, error }),
            Event::Discovered { .. } | Event::Config(_) | Event::Shutdown { .. } => None,
        }
    }

    /// Sends `frame` on `link` (dropped when the link is not held). Must run inside the tokio runtime.
    pub(crate) fn send(&self, link: LinkId, channel: Channel, frame: Bytes) {
        if let Some(live) = self.links.get(&link) {
            link_tasks::send(&live.link, channel, frame, &self.events, &live.permits);
        }
    }

    /// Closes `link` with `reason` and forgets it (no [`LinkEvent::Down`] follows for it).
    pub(crate) fn close(&mut self, link: LinkId, reason: &str) {
        if let Some(live) = self.links.remove(&link) {
            live.link.close(reason);
            live.stop_readers();
        }
    }

    /// Closes every link with `reason`.
    pub(crate) fn close_all(&mut self, reason: &str) {
        for (_, live) in self.links.drain() {
            live.link.close(reason);
            live.stop_readers();
        }
    }

    /// The transport's handle of `link`.
    pub(crate) fn link(&self, link: LinkId) -> Option<&Link> {
        self.links.get(&link).map(|live| &live.link)
    }

    /// Every link held, with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.links.iter().map(|(&id, live)| (id, &live.link))
    }
}

impl Drop for LiveLinks {
    fn drop(&mut self) {
        for live in self.links.values() {
            live.stop_readers();
        }
    }
}

/// The id of the link whose quinn connection id is `id`.
fn link_id_of(id: usize) -> LinkId {
    // A usize is at most 64 bits on every target quinn supports: the cast never truncates.
    LinkId::new(id as u64)
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
