//! The tasks that move bytes between links and the driver: accepting, dialing, reading, and sending on
//! streams. Each reports to the driver through its event channel; none holds node state.
//!
//! Guarantees:
//! - A link reaches the driver only after the `Hello` exchange succeeded ([`super::hello`]).
//! - Every dial is a one-shot task that reports either `PeerUp` or `DialFailed`, so the driver always learns
//!   how a dial ended.
//! - A stream frame is read whole, up to [`MAX_FRAME_BYTES`]; a larger one is dropped and logged.
//! - [`send`] never drops a frame for its size: a datagram the link cannot take goes on a stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::Event;
use super::hello::{self, HelloError};
use super::machine::link_layer::DialError;
use crate::replication::Channel;
use crate::transport::{FailureKind, Link, LinkError, Transport, TrustMode};
use crate::wire::{Hello, MAX_FRAME_BYTES};

/// What every dial and accept needs to run the `Hello` exchange.
#[derive(Clone)]
pub(crate) struct HelloSetup {
    pub(crate) ours: Hello,
    pub(crate) trust: TrustMode,
    pub(crate) timeout: Duration,
    /// Hellos refused for the peer's identity (invalid, or a node id that is not its certificate's).
    pub(crate) refused: Arc<AtomicU64>,
}

/// Accepts links until the transport closes, runs the exchange on each, and hands them to the driver.
pub(crate) fn spawn_acceptor(
    transport: Arc<Transport>,
    setup: HelloSetup,
    events: mpsc::Sender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(link) = transport.accept().await {
            let (setup, events) = (setup.clone(), events.clone());
            tokio::spawn(async move {
                match hello::exchange(&link, &setup.ours, false, setup.trust, setup.timeout).await {
                    Ok(hello) => {
                        let link_nonce = hello.link_nonce;
                        let _ = events
                            .send(Event::PeerUp {
                                link,
                                hello,
                                dialed_addr: None,
                                link_nonce,
                            })
                            .await;
                    }
                    Err(error) => {
                        if identity_refusal(&error) {
                            // Relaxed: a counter, ordering nothing.
                            setup.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(address = %link.remote_address(), %error, "refused a link from a peer");
                        link.close("hello refused");
                    }
                }
            });
        }
    })
}

/// Dials `addr` once and reports the outcome.
pub(crate) fn spawn_dial(
    transport: Arc<Transport>,
    addr: SocketAddr,
    setup: HelloSetup,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        // A fresh nonce per link: it settles duplicate links the same way at both ends.
        let mut ours = setup.ours.clone();
        ours.link_nonce = super::identity::random_u64().unwrap_or_else(|_| {
            u64::from(addr.port()) ^ ours.replica_id.rotate_left(17) ^ link_counter()
        });
        let link_nonce = ours.link_nonce;
        let outcome = match transport.connect(addr).await {
            Ok(link) => {
                match hello::exchange(&link, &ours, true, setup.trust, setup.timeout).await {
                    Ok(hello) => Ok((link, hello)),
                    Err(error) => {
                        let reason = if matches!(error, HelloError::SelfLink) {
                            "self"
                        } else {
                            "hello refused"
                        };
                        let failure = hello_failure(&link, &error);
                        if identity_refusal(&error) {
                            // Relaxed: a counter, ordering nothing.
                            setup.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        link.close(reason);
                        Err(failure)
                    }
                }
            }
            Err(error) => Err(match error.failure_kind() {
                Some(FailureKind::BadCertificate | FailureKind::Handshake) => {
                    DialError::Refused(error.to_string())
                }
                Some(FailureKind::Timeout) => DialError::Timeout(error.to_string()),
                _ => DialError::Failed(error.to_string()),
            }),
        };
        let event = match outcome {
            Ok((link, hello)) => Event::PeerUp {
                link,
                hello,
                dialed_addr: Some(addr),
                link_nonce,
            },
            Err(error) => Event::DialFailed { addr, error },
        };
        let _ = events.send(event).await;
    });
}

/// A hello refused because of who the peer claims to be (not an I/O failure, not ourselves).
fn identity_refusal(error: &HelloError) -> bool {
    matches!(
        error,
        HelloError::IdentityMismatch { .. } | HelloError::Invalid(_)
    )
}

/// What a failed hello on a dialed link means for the dial. With TLS 1.3 the server checks our certificate
/// after our handshake is done, so a server that distrusts us shows up here: as the stream failing because the
/// connection was closed with a certificate alert.
fn hello_failure(link: &Link, error: &HelloError) -> DialError {
    match error {
        HelloError::SelfLink => DialError::SelfLink,
        HelloError::IdentityMismatch { .. } | HelloError::Invalid(_) => {
            DialError::Refused(error.to_string())
        }
        HelloError::Io(_) => match link.close_reason() {
            Some(LinkError::ConnectionLost {
                kind: FailureKind::BadCertificate | FailureKind::Handshake,
                ..
            }) => DialError::Refused(error.to_string()),
            _ => DialError::Failed(error.to_string()),
        },
    }
}

/// A process-wide dial counter: the fallback nonce when the OS random generator fails.
fn link_counter() -> u64 {
    static DIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Relaxed: a counter for uniqueness, ordering nothing.
    DIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Stream sends in flight per link at most: a peer that keeps its connection but stops accepting streams
/// cannot make tasks and frames pile up without bound. Far above what a healthy link has in flight (a state
/// transfer is a few chunks of 256 KiB; checks and health records one each per second).
pub(crate) const MAX_STREAM_SENDS_PER_LINK: usize = 1_024;

/// Sends `frame` on `link` as `channel` asks: a datagram as one QUIC datagram when the link takes it now, and
/// otherwise (too large for the current path MTU, or no datagrams on this link) on a stream, as a stream frame
/// always is. The driver and [`super::QuicLinks`] both send through here.
pub(crate) fn send(
    link: &Link,
    channel: Channel,
    frame: Bytes,
    events: &mpsc::Sender<Event>,
    permits: &Arc<tokio::sync::Semaphore>,
) {
    if channel == Channel::Datagram {
        match link.send_datagram(frame.clone()) {
            Ok(()) => return,
            Err(LinkError::DatagramTooLarge { .. } | LinkError::DatagramsUnsupported { .. }) => {}
            Err(error) => {
                tracing::debug!(%error, "datagram not sent (link closing)");
                return;
            }
        }
    }
    spawn_stream_send(link.clone(), frame, events.clone(), permits);
}

/// Sends `frame` on a new stream of `link`, in the background, holding one of the link's `permits` until done;
/// a failure (or no permit left) is reported as `StreamFailed`, and what is lost is repaired by anti-entropy.
pub(crate) fn spawn_stream_send(
    link: Link,
    frame: Bytes,
    events: mpsc::Sender<Event>,
    permits: &Arc<tokio::sync::Semaphore>,
) {
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        tracing::debug!(address = %link.remote_address(), "stream sends backed up; frame dropped");
        let _ = events.try_send(Event::StreamFailed {
            link_id: link.id(),
            error: format!("{MAX_STREAM_SENDS_PER_LINK} stream sends already in flight"),
        });
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let result = async {
            let (mut send, _recv) = link.open_stream().await.map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, address = %link.remote_address(), "stream frame not sent");
            let _ = events
                .send(Event::StreamFailed {
                    link_id: link.id(),
                    error,
                })
                .await;
        }
    });
}

/// Sends each `(link, frame)` on its own stream and waits until the peers have read them all, at most
/// `limit`. Returns how many were confirmed.
pub(crate) async fn send_and_confirm(
    frames: Vec<(Link, Bytes)>,
    limit: Duration,
) -> (usize, usize) {
    let total = frames.len();
    let sends: Vec<_> = frames
        .into_iter()
        .map(|(link, frame)| {
            tokio::spawn(async move {
                let (mut send, _recv) = link.open_stream().await.ok()?;
                send.write_all(&frame).await.ok()?;
                send.finish().ok()?;
                // Resolves once the peer has read the stream to its end.
                send.stopped().await.ok()
            })
        })
        .collect();
    let mut confirmed = 0;
    let all = async {
        for send in sends {
            if let Ok(Some(_)) = send.await {
                confirmed += 1;
            }
        }
    };
    let _ = tokio::time::timeout(limit, all).await;
    (confirmed, total)
}

/// Reads datagrams and streams of `link` into `events`, and reports its closing.
pub(crate) fn spawn_readers(link: &Link, events: mpsc::Sender<Event>) -> Vec<JoinHandle<()>> {
    let link_id = link.id();
    let datagrams = {
        let (link, events) = (link.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok(bytes) = link.read_datagram().await {
                let frame = Event::Frame {
                    link_id,
                    bytes,
                    channel: Channel::Datagram,
                };
                if events.send(frame).await.is_err() {
                    return;
                }
            }
        })
    };
    let streams = {
        let (link, events) = (link.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok((_send, mut recv)) = link.accept_stream().await {
                let events = events.clone();
                let address = link.remote_address();
                tokio::spawn(async move {
                    match recv.read_to_end(MAX_FRAME_BYTES).await {
                        Ok(bytes) => {
                            let _ = events
                                .send(Event::Frame {
                                    link_id,
                                    bytes: Bytes::from(bytes),
                                    channel: Channel::Stream,
                                })
                                .await;
                        }
                        // The connection ended under the stream (a peer stopping, a link closed as a
                        // duplicate): nothing for an operator, and the link's end is logged where it is handled.
                        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(
                            error,
                        ))) => {
                            tracing::debug!(%address, %error, "a stream frame was cut off: the connection ended");
                        }
                        Err(error) => {
                            tracing::warn!(%address, %error, "dropped a stream frame from a peer (too large or reset)");
                        }
                    }
                });
            }
        })
    };
    let closed = {
        let link = link.clone();
        tokio::spawn(async move {
            link.closed().await;
            let _ = events.send(Event::PeerDown { link_id }).await;
        })
    };
    vec![datagrams, streams, closed]
}
