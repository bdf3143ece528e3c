//! The transport endpoint on 127.0.0.1: the TCP health-check listener on the QUIC port, bind errors, the
//! datagram size limit, timeouts and shutdown.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bifrost_cluster::config::{ClusterSecret, NodeId, Trust};
use bifrost_cluster::transport::{
    FailureKind, LinkError, TlsSetup, Transport, TransportError, TransportOptions,
};
use bytes::Bytes;

const SECRET: &str = "FTAcy5s4Vp4Bb6N4YlrQmnKlSB68MBjzMytQnD4uDVA=";
const PATIENCE: Duration = Duration::from_secs(5);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("bifrost_cluster=debug")
        .try_init();
}

fn tls(name: &str) -> TlsSetup {
    let secret = ClusterSecret::new(SECRET).unwrap_or_else(|e| panic!("{e}"));
    let node = NodeId::new(name).unwrap_or_else(|e| panic!("{e}"));
    TlsSetup::from_trust(&Trust::Secret(secret), &node).unwrap_or_else(|e| panic!("{e}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn bind(name: &str, options: TransportOptions) -> Transport {
    Transport::bind(loopback(0), tls(name), options).unwrap_or_else(|e| panic!("bind {name}: {e}"))
}

/// Connects with std and reads until EOF; `Ok(bytes read)` or the connect error.
fn tcp_probe(addr: SocketAddr) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    stream.read(&mut buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_on_the_same_port_accepts_and_closes() {
    init_logs();
    let transport = bind("tcp-node", TransportOptions::default());
    let addr = transport.local_addr();
    assert_ne!(addr.port(), 0);

    let read = tokio::task::spawn_blocking(move || tcp_probe(addr))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read.unwrap_or_else(|e| panic!("TCP probe of {addr}: {e}")),
        0
    );

    // After close, the listener is gone: connections are refused.
    transport.close("test done");
    let refused = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(_) => return true,
                Ok(_) if std::time::Instant::now() > deadline => return false,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(refused, "TCP listener still accepting after close");
    assert!(transport.accept().await.is_none(), "accept after close");
}

#[tokio::test]
async fn tcp_port_in_use_is_an_error_naming_the_address() {
    init_logs();
    let squatter = std::net::TcpListener::bind(loopback(0)).unwrap_or_else(|e| panic!("{e}"));
    let port = squatter
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    match Transport::bind(loopback(port), tls("busy"), TransportOptions::default()) {
        Err(error @ TransportError::BindTcp { .. }) => {
            assert!(
                error.to_string().contains(&format!("127.0.0.1:{port}")),
                "{error}"
            )
        }
        // The UDP port was taken by someone else at the same time: also an error naming the address.
        Err(error @ TransportError::BindUdp { .. }) => {
            assert!(
                error.to_string().contains(&format!("127.0.0.1:{port}")),
                "{error}"
            )
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(transport) => panic!("bound although TCP {port} is taken: {transport:?}"),
    }
    // The UDP socket was released again: binding UDP on that port works.
    assert!(std::net::UdpSocket::bind(loopback(port)).is_ok());
}

#[test]
fn bind_outside_a_runtime_is_an_error() {
    match Transport::bind(loopback(0), tls("no-runtime"), TransportOptions::default()) {
        Err(TransportError::NoRuntime) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_options_are_refused_naming_the_field() {
    let options = TransportOptions {
        keep_alive_interval: Duration::from_secs(30),
        ..TransportOptions::default()
    };
    match Transport::bind(loopback(0), tls("options"), options) {
        Err(TransportError::InvalidOption { field, .. }) => {
            assert_eq!(field, "keep_alive_interval")
        }
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_datagram_is_refused_and_the_link_still_works() {
    init_logs();
    let a = bind("node-a", TransportOptions::default());
    let b = bind("node-b", TransportOptions::default());
    let (a_to_b, b_to_a) = tokio::join!(a.connect(b.local_addr()), b.accept());
    let a_to_b = a_to_b.unwrap_or_else(|e| panic!("{e}"));
    let b_to_a = b_to_a.unwrap_or_else(|| panic!("closed"));

    let max = a_to_b
        .max_datagram_size()
        .unwrap_or_else(|| panic!("datagrams not enabled"));
    match a_to_b.send_datagram(Bytes::from(vec![7u8; max + 1])) {
        Err(LinkError::DatagramTooLarge {
            len,
            max: reported,
            peer,
        }) => {
            assert_eq!(len, max + 1);
            assert!(reported <= max + 1 && reported > 0);
            assert_eq!(peer, b.local_addr());
        }
        other => panic!("expected DatagramTooLarge, got {other:?}"),
    }
    let largest = a_to_b.max_datagram_size().unwrap_or(max);
    a_to_b
        .send_datagram(Bytes::from(vec![9u8; largest]))
        .unwrap_or_else(|e| panic!("largest datagram: {e}"));
    let got = tokio::time::timeout(PATIENCE, b_to_a.read_datagram())
        .await
        .unwrap_or_else(|_| panic!("timed out"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), largest);
}

#[tokio::test]
async fn connect_to_a_silent_address_times_out() {
    init_logs();
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind(loopback(0)).unwrap_or_else(|e| panic!("{e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let options = TransportOptions {
        connect_timeout: Duration::from_millis(300),
        ..TransportOptions::default()
    };
    let a = bind("node-a", options);
    match a.connect(silent_addr).await {
        Err(error @ TransportError::Timeout { .. }) => {
            assert_eq!(error.failure_kind(), Some(FailureKind::Timeout));
            assert!(
                error.to_string().contains(&silent_addr.to_string()),
                "{error}"
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn close_ends_links_and_accept() {
    init_logs();
    let a = bind("node-a", TransportOptions::default());
    let b = bind("node-b", TransportOptions::default());
    let (a_to_b, b_to_a) = tokio::join!(a.connect(b.local_addr()), b.accept());
    let a_to_b = a_to_b.unwrap_or_else(|e| panic!("{e}"));
    let b_to_a = b_to_a.unwrap_or_else(|| panic!("closed"));

    let waiting = async { tokio::time::timeout(PATIENCE, b.accept()).await };
    let closing = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.close("shutting down");
    };
    let (accepted, ()) = tokio::join!(waiting, closing);
    assert!(
        matches!(accepted, Ok(None)),
        "accept must return None once closed"
    );

    let lost = tokio::time::timeout(PATIENCE, a_to_b.read_datagram())
        .await
        .unwrap_or_else(|_| panic!("peer never saw the close"));
    match lost {
        Err(error @ LinkError::ConnectionLost { .. }) => {
            assert!(error.to_string().contains("shutting down"), "{error}")
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(b_to_a.close_reason().is_some());
    assert!(matches!(
        a.connect(b.local_addr()).await,
        Err(TransportError::Timeout { .. } | TransportError::Connection { .. })
    ));
}
