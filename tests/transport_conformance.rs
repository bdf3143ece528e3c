//! The link-layer conformance suite (`bifrost_cluster::node::link_layer`): one set of checks, each a function
//! generic over the network it runs on, run against both implementations of [`LinkLayer`]:
//!
//! - `quinn_links::*`: [`QuicLinks`] over real QUIC endpoints on 127.0.0.1, mutual TLS from cluster secrets (a
//!   stranger holds another secret, so its certificate is of another CA), real time;
//! - `in_memory::*`: [`SimEndpoint`]s of the simulator's network (a stranger is in another trust domain),
//!   virtual time (the seed is printed; `BIFROST_SIM_SEED` replays it).
//!
//! Every wait is a bounded loop: a check that does not see what it waits for fails at its limit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bifrost_cluster::ReplicaId;
use bifrost_cluster::config::{ClusterSecret, NodeId, Trust};
use bifrost_cluster::node::QuicLinks;
use bifrost_cluster::node::link_layer::{CloseReason, DialError, LinkEvent, LinkId, LinkLayer};
use bifrost_cluster::replication::Channel;
use bifrost_cluster::sim::{NetOptions, SimEndpoint, SimOptions, Simulation};
use bifrost_cluster::transport::{TlsSetup, Transport, TransportOptions};
use bytes::Bytes;

/// The idle timeout both networks run with, short so a silent peer is noticed within the test.
const IDLE_TIMEOUT_MS: u64 = 1_500;
/// The connect timeout both networks run with.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How often the checks poll their endpoints.
const STEP_MS: u64 = 10;
/// The longest any check waits for one thing to happen.
const PATIENCE_MS: u64 = 8_000;
/// How long a check keeps listening after it saw what it waited for, to catch what must not follow.
const AFTERMATH_MS: u64 = 500;

/// The cluster's trust domain; any other is a stranger's.
const CLUSTER: u64 = 0;
const STRANGER: u64 = 1;

/// A network the checks run on: it makes endpoints and lets time pass.
trait Net {
    type Links: LinkLayer;
    /// A new endpoint trusting (and trusted by) exactly the endpoints of trust domain `domain`.
    fn endpoint(&mut self, domain: u64) -> Self::Links;
    /// An address where nothing answers.
    fn nobody(&mut self) -> SocketAddr;
    /// Lets `ms` of time pass (real or virtual).
    fn wait(&mut self, ms: u64);
    /// Time since the network was made, ms (real or virtual).
    fn now_ms(&self) -> u64;
    /// Makes `links` fall silent at once, as a crash or a cut cable: no close, no answer, ever again.
    fn silence(&mut self, links: Self::Links);
}

// ---- The quinn network.

const SECRETS: [&str; 2] = [
    "c0nformance-cluster/Gx4Vp9Bb6N4YlrQmnKlSB68MBjz",
    "c0nformance-strangr/Qa7Wm2Cc5P3ZksRtoLmTD79NAkx",
];

/// QUIC endpoints on 127.0.0.1, each [`QuicLinks`] on a runtime of its own (so one can be silenced by stopping
/// its runtime).
struct Quic {
    start: Instant,
    runtimes: HashMap<SocketAddr, tokio::runtime::Runtime>,
    /// Sockets held open that never answer ([`Net::nobody`]).
    mute: Vec<UdpSocket>,
    made: u64,
}

impl Quic {
    fn new() -> Quic {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("bifrost_cluster=info")
            .try_init();
        Quic {
            start: Instant::now(),
            runtimes: HashMap::new(),
            mute: Vec::new(),
            made: 0,
        }
    }
}

impl Net for Quic {
    type Links = QuicLinks;

    fn endpoint(&mut self, domain: u64) -> QuicLinks {
        self.made += 1;
        let name = format!("conformance-{}", self.made);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let _entered = runtime.enter();
        let secret = ClusterSecret::new(SECRETS[domain as usize]).unwrap_or_else(|e| panic!("{e}"));
        let node = NodeId::new(&name).unwrap_or_else(|e| panic!("{e}"));
        let tls = TlsSetup::from_trust(&Trust::Secret(secret), &node)
            .unwrap_or_else(|e| panic!("tls: {e}"));
        let options = TransportOptions {
            keep_alive_interval: Duration::from_millis(IDLE_TIMEOUT_MS / 5),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            ..TransportOptions::default()
        };
        let transport = Transport::bind(SocketAddr::from(([127, 0, 0, 1], 0)), tls, options)
            .unwrap_or_else(|e| panic!("bind {name}: {e}"));
        let replica_id = ReplicaId::new(0x00c0_f0e0_0000_0000 + self.made);
        let links = QuicLinks::new(
            Arc::new(transport),
            &name,
            replica_id,
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("links: {e}"));
        self.runtimes.insert(links.local_addr(), runtime);
        links
    }

    fn nobody(&mut self) -> SocketAddr {
        let socket = UdpSocket::bind(("127.0.0.1", 0)).unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = socket.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        self.mute.push(socket);
        addr
    }

    fn wait(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn silence(&mut self, links: QuicLinks) {
        let runtime = self
            .runtimes
            .remove(&links.local_addr())
            .unwrap_or_else(|| panic!("no runtime for {}", links.local_addr()));
        // Every task of the endpoint (its connection drivers included) stops mid-flight: nothing is sent again.
        runtime.shutdown_background();
        // Dropping the links now would try to close their connections; the socket stays open and unread, as a
        // frozen process's. Leaked for the rest of this test process.
        std::mem::forget(links);
    }
}

// ---- The in-memory network.

/// [`SimEndpoint`]s of one simulation without nodes.
struct Memory {
    sim: Rc<RefCell<Simulation>>,
    start_ms: u64,
}

impl Memory {
    fn new() -> Memory {
        let seed = std::env::var("BIFROST_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12);
        let options = SimOptions {
            nodes: 0,
            seed,
            net: NetOptions {
                connect_timeout_ms: CONNECT_TIMEOUT_MS,
                idle_timeout_ms: IDLE_TIMEOUT_MS,
                ..NetOptions::default()
            },
            ..SimOptions::default()
        };
        let sim = Simulation::new(options).unwrap_or_else(|e| panic!("simulation: {e}"));
        let start_ms = sim.now_ms();
        Memory {
            sim: Rc::new(RefCell::new(sim)),
            start_ms,
        }
    }
}

impl Net for Memory {
    type Links = SimEndpoint;

    fn endpoint(&mut self, domain: u64) -> SimEndpoint {
        SimEndpoint::new(&self.sim, domain)
    }

    fn nobody(&mut self) -> SocketAddr {
        SocketAddr::from(([10, 99, 99, 99], 10101))
    }

    fn wait(&mut self, ms: u64) {
        self.sim.borrow_mut().run_for(ms);
    }

    fn now_ms(&self) -> u64 {
        self.sim.borrow().now_ms() - self.start_ms
    }

    fn silence(&mut self, links: SimEndpoint) {
        self.sim.borrow_mut().crash(links.index());
    }
}

// ---- Helpers.

/// Polls every endpoint of `eps` until `done` holds over everything collected so far (endpoint index, event),
/// or `limit_ms` passed; returns what was collected.
fn gather<N: Net>(
    net: &mut N,
    eps: &mut [N::Links],
    limit_ms: u64,
    done: impl Fn(&[(usize, LinkEvent)]) -> bool,
) -> Vec<(usize, LinkEvent)> {
    let until = net.now_ms() + limit_ms;
    let mut seen = Vec::new();
    loop {
        for (i, ep) in eps.iter_mut().enumerate() {
            while let Some(event) = ep.poll_event() {
                seen.push((i, event));
            }
        }
        if done(&seen) || net.now_ms() >= until {
            return seen;
        }
        net.wait(STEP_MS);
    }
}

/// Everything that arrives within `ms`.
fn listen<N: Net>(net: &mut N, eps: &mut [N::Links], ms: u64) -> Vec<(usize, LinkEvent)> {
    gather(net, eps, ms, |_| false)
}

/// The outcomes of dials at endpoint `i`: (dialed address, link when it came up, error when it failed).
fn dial_outcomes(
    events: &[(usize, LinkEvent)],
    i: usize,
) -> Vec<(SocketAddr, Result<LinkId, DialError>)> {
    events
        .iter()
        .filter(|(at, _)| *at == i)
        .filter_map(|(_, event)| match event {
            LinkEvent::Up(up) => up.dialed_addr.map(|addr| (addr, Ok(up.link))),
            LinkEvent::DialFailed { addr, error } => Some((*addr, Err(error.clone()))),
            _ => None,
        })
        .collect()
}

fn ups(events: &[(usize, LinkEvent)], i: usize) -> usize {
    events
        .iter()
        .filter(|(at, e)| *at == i && matches!(e, LinkEvent::Up(_)))
        .count()
}

/// Endpoint `a` dials endpoint `b`; returns the link's id at `a` and at `b` once both ends are up.
fn connect<N: Net>(net: &mut N, eps: &mut [N::Links], a: usize, b: usize) -> (LinkId, LinkId) {
    let target = eps[b].local_addr();
    eps[a].dial(target);
    let events = gather(net, eps, PATIENCE_MS, |seen| {
        ups(seen, a) >= 1 && ups(seen, b) >= 1
    });
    let mut at_a = None;
    let mut at_b = None;
    for (i, event) in &events {
        match event {
            LinkEvent::Up(up) if *i == a && up.dialed_addr == Some(target) => {
                at_a = Some((up.link, up.link_nonce))
            }
            LinkEvent::Up(up) if *i == b && up.dialed_addr.is_none() => {
                at_b = Some((up.link, up.link_nonce))
            }
            other => panic!("while linking {a} to {b}, endpoint {i} reported {other:?}"),
        }
    }
    let (Some((la, nonce_a)), Some((lb, nonce_b))) = (at_a, at_b) else {
        panic!("no link from {a} to {b} within {PATIENCE_MS} ms: {events:?}");
    };
    assert_eq!(
        nonce_a, nonce_b,
        "both ends of a link know the dialer's nonce"
    );
    (la, lb)
}

/// `len` bytes that differ from frame to frame (`tag`) and along the frame.
fn pattern(tag: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect::<Vec<u8>>()
        .into()
}

/// The frames endpoint `i` received on `link`: (bytes, channel).
fn frames_at(events: &[(usize, LinkEvent)], i: usize, on: LinkId) -> Vec<(Bytes, Channel)> {
    events
        .iter()
        .filter_map(|(at, event)| match event {
            LinkEvent::Frame {
                link,
                frame,
                channel,
            } if *at == i && *link == on => Some((frame.clone(), *channel)),
            _ => None,
        })
        .collect()
}

// ---- The checks.

/// A dial to, or from, an endpoint of another trust domain never yields `Up` at either end; the dialer gets
/// `DialFailed` with `Refused`; both ends count every refused handshake.
fn untrusted_peer_is_refused<N: Net>(net: &mut N) {
    let mut eps = vec![net.endpoint(CLUSTER), net.endpoint(STRANGER)];
    assert_eq!((eps[0].refusals(), eps[1].refusals()), (0, 0));
    let (member, stranger) = (eps[0].local_addr(), eps[1].local_addr());
    eps[0].dial(stranger);
    eps[1].dial(member);
    let mut events = gather(net, &mut eps, PATIENCE_MS, |seen| {
        dial_outcomes(seen, 0).len() + dial_outcomes(seen, 1).len() >= 2
    });
    events.extend(listen(net, &mut eps, AFTERMATH_MS));
    assert!(
        events.iter().all(|(_, e)| !matches!(e, LinkEvent::Up(_))),
        "a link came up across trust domains: {events:?}"
    );
    for (i, dialed) in [(0, stranger), (1, member)] {
        let outcomes = dial_outcomes(&events, i);
        assert!(
            matches!(outcomes.as_slice(), [(addr, Err(DialError::Refused(_)))] if *addr == dialed),
            "endpoint {i} dialing {dialed}: expected one DialFailed(Refused), got {outcomes:?}"
        );
    }
    assert_eq!(
        events.len(),
        2,
        "nothing but the two refusals is reported: {events:?}"
    );
    // Each end took part in two refused handshakes: its own dial and the other's.
    assert_eq!(
        (eps[0].refusals(), eps[1].refusals()),
        (2, 2),
        "refusals counted at (member, stranger)"
    );
}

/// Every dial ends with exactly one `Up` or `DialFailed`: to a peer, to nobody, to itself, to a stranger.
fn every_dial_ends_once<N: Net>(net: &mut N) {
    let mut eps = vec![
        net.endpoint(CLUSTER),
        net.endpoint(CLUSTER),
        net.endpoint(STRANGER),
    ];
    let nobody = net.nobody();
    let (me, peer, stranger) = (
        eps[0].local_addr(),
        eps[1].local_addr(),
        eps[2].local_addr(),
    );
    let dials = [peer, nobody, me, stranger];
    for addr in dials {
        eps[0].dial(addr);
    }
    eps[1].dial(me);
    let mut events = gather(net, &mut eps, PATIENCE_MS, |seen| {
        dial_outcomes(seen, 0).len() >= dials.len() && !dial_outcomes(seen, 1).is_empty()
    });
    // Late duplicates would show up now.
    events.extend(listen(net, &mut eps, AFTERMATH_MS + CONNECT_TIMEOUT_MS));
    let outcomes = dial_outcomes(&events, 0);
    assert_eq!(
        outcomes.len(),
        dials.len(),
        "one outcome per dial: {outcomes:?}"
    );
    let of = |addr: SocketAddr| {
        let mut matching = outcomes.iter().filter(|(a, _)| *a == addr);
        let first = matching
            .next()
            .unwrap_or_else(|| panic!("no outcome for the dial to {addr}: {outcomes:?}"));
        assert!(matching.next().is_none(), "two outcomes for {addr}");
        first.1.clone()
    };
    assert!(of(peer).is_ok(), "dial to a member: {:?}", of(peer));
    assert!(
        matches!(of(nobody), Err(DialError::Timeout(_))),
        "dial to nobody: {:?}",
        of(nobody)
    );
    // Never a link; `SelfLink` when the dialing side reads its own hello first. With quinn the accepting side
    // can refuse first and close the link, and the dial then fails as `Failed` (see the contract's docs).
    assert!(of(me).is_err(), "dial to itself: {:?}", of(me));
    assert!(
        matches!(of(stranger), Err(DialError::Refused(_))),
        "dial to a stranger: {:?}",
        of(stranger)
    );
    let back = dial_outcomes(&events, 1);
    assert!(
        matches!(back.as_slice(), [(addr, Ok(_))] if *addr == me),
        "the member's dial back: {back:?}"
    );
    // Each member also accepted the other's link: two links up at each, none elsewhere.
    assert_eq!(
        (ups(&events, 0), ups(&events, 1), ups(&events, 2)),
        (2, 2, 0)
    );
}

/// Frames arrive whole, in both directions: every stream frame once with its bytes; a datagram that fits
/// arrives as a datagram with its bytes, if at all.
fn frames_arrive_whole<N: Net>(net: &mut N) {
    let mut eps = vec![net.endpoint(CLUSTER), net.endpoint(CLUSTER)];
    let (la, lb) = connect(net, &mut eps, 0, 1);
    let max = eps[0]
        .max_datagram(la)
        .unwrap_or_else(|| panic!("the link takes datagrams"));
    let streams: Vec<Bytes> = [1, 100, 5_000, 70_000, 300_000]
        .iter()
        .enumerate()
        .map(|(tag, &len)| pattern(tag as u8, len))
        .collect();
    let datagrams: Vec<Bytes> = [1, 64, max / 2]
        .iter()
        .enumerate()
        .map(|(tag, &len)| pattern(100 + tag as u8, len))
        .collect();
    for frame in &streams {
        eps[0].send(la, Channel::Stream, frame.clone());
    }
    for frame in &datagrams {
        eps[0].send(la, Channel::Datagram, frame.clone());
    }
    let reply = pattern(200, 2_000);
    eps[1].send(lb, Channel::Stream, reply.clone());
    let count = streams.len();
    let events = gather(net, &mut eps, PATIENCE_MS, |seen| {
        frames_at(seen, 1, lb)
            .iter()
            .filter(|(_, c)| *c == Channel::Stream)
            .count()
            >= count
            && !frames_at(seen, 0, la).is_empty()
    });
    let received = frames_at(&events, 1, lb);
    for frame in &streams {
        let copies = received
            .iter()
            .filter(|(f, c)| f == frame && *c == Channel::Stream)
            .count();
        assert_eq!(
            copies,
            1,
            "stream frame of {} bytes: {copies} whole copies",
            frame.len()
        );
    }
    for (frame, channel) in &received {
        let sent = match channel {
            Channel::Stream => &streams,
            Channel::Datagram => &datagrams,
        };
        assert!(
            sent.contains(frame),
            "a {channel:?} frame of {} bytes that was never sent (cut or merged)",
            frame.len()
        );
    }
    assert_eq!(
        frames_at(&events, 0, la),
        vec![(reply, Channel::Stream)],
        "the reply"
    );
}

/// A frame sent as a datagram that is larger than `max_datagram` arrives intact, on a stream.
fn oversized_datagram_goes_on_a_stream<N: Net>(net: &mut N) {
    let mut eps = vec![net.endpoint(CLUSTER), net.endpoint(CLUSTER)];
    let (la, lb) = connect(net, &mut eps, 0, 1);
    // Path MTU discovery settles in a few round trips on loopback; the limit is read again before each send.
    net.wait(AFTERMATH_MS);
    let mut sent = Vec::new();
    for (tag, extra) in [(1u8, 1usize), (2, 1_000), (3, 60_000)] {
        let max = eps[0]
            .max_datagram(la)
            .unwrap_or_else(|| panic!("the link takes datagrams"));
        let frame = pattern(tag, max + extra);
        eps[0].send(la, Channel::Datagram, frame.clone());
        sent.push(frame);
    }
    let events = gather(net, &mut eps, PATIENCE_MS, |seen| {
        frames_at(seen, 1, lb).len() >= sent.len()
    });
    let received = frames_at(&events, 1, lb);
    for frame in &sent {
        assert!(
            received.contains(&(frame.clone(), Channel::Stream)),
            "a {}-byte datagram did not arrive whole on a stream: got {:?}",
            frame.len(),
            received
                .iter()
                .map(|(f, c)| (f.len(), *c))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(received.len(), sent.len(), "each exactly once");
}

/// A close reaches the peer with its reason; the closing end forgets the link at once.
fn close_is_reported_with_its_reason<N: Net>(net: &mut N) {
    let mut eps = vec![net.endpoint(CLUSTER), net.endpoint(CLUSTER)];
    let (la, lb) = connect(net, &mut eps, 0, 1);
    let reason = "conformance: going away";
    eps[0].close(la, reason);
    assert_eq!(eps[0].max_datagram(la), None, "a closed link is forgotten");
    // Dropped: the link is closed.
    eps[0].send(la, Channel::Stream, pattern(9, 100));
    let mut events = gather(net, &mut eps, PATIENCE_MS, |seen| {
        seen.iter()
            .any(|(i, e)| *i == 1 && matches!(e, LinkEvent::Down { .. }))
    });
    events.extend(listen(net, &mut eps, AFTERMATH_MS));
    assert_eq!(
        events,
        vec![(
            1,
            LinkEvent::Down {
                link: lb,
                reason: CloseReason::ClosedByPeer(reason.to_string()),
            }
        )],
        "only the peer hears of the close, with the reason"
    );
    assert_eq!(
        eps[1].max_datagram(lb),
        None,
        "a link reported down is gone"
    );
}

/// A peer that falls silent (no close) ends the link with `TimedOut` after the idle timeout.
fn silent_peer_times_out<N: Net>(net: &mut N) {
    let mut eps = vec![net.endpoint(CLUSTER), net.endpoint(CLUSTER)];
    let (la, _) = connect(net, &mut eps, 0, 1);
    let silent = eps.pop().unwrap_or_else(|| panic!("two endpoints"));
    let since = net.now_ms();
    net.silence(silent);
    let events = gather(net, &mut eps, IDLE_TIMEOUT_MS + PATIENCE_MS, |seen| {
        !seen.is_empty()
    });
    let after = net.now_ms() - since;
    assert_eq!(
        events,
        vec![(
            0,
            LinkEvent::Down {
                link: la,
                reason: CloseReason::TimedOut
            }
        )],
        "after {after} ms"
    );
    // Not before the idle timeout (less what had passed since the peer was last heard: its keep-alive).
    assert!(
        after >= IDLE_TIMEOUT_MS * 3 / 4,
        "timed out after {after} ms, idle timeout {IDLE_TIMEOUT_MS} ms"
    );
    assert!(
        after <= IDLE_TIMEOUT_MS + 2_000,
        "timed out only after {after} ms"
    );
}

/// Runs each check against both networks.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod quinn_links {
            $(
                #[test]
                fn $check() {
                    super::$check(&mut super::Quic::new());
                }
            )*
        }
        mod in_memory {
            $(
                #[test]
                fn $check() {
                    super::$check(&mut super::Memory::new());
                }
            )*
        }
    };
}

conformance!(
    untrusted_peer_is_refused,
    every_dial_ends_once,
    frames_arrive_whole,
    oversized_datagram_goes_on_a_stream,
    close_is_reported_with_its_reason,
    silent_peer_times_out,
);
