//! Mutual TLS of the transport, with real quinn endpoints on 127.0.0.1: the three trust modes, rejected
//! strangers (another secret, no client certificate), file errors that name the file, and refused handshakes
//! counted by reason with a rate-limited log.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bifrost_cluster::config::{ClusterSecret, NodeId, Trust};
use bifrost_cluster::transport::{
    ALPN, CA_COMMON_NAME, Direction, FailureKind, Link, RefusalReason, SERVER_NAME, TlsError,
    TlsSetup, Transport, TransportError, TransportOptions, TrustMode, common_name,
};
use bytes::Bytes;

const SECRET_ONE: &str = "YmSxAoHivDdA2mimqDxOyk/boDECnQdtXLa3nNkYCdA=";
const SECRET_TWO: &str = "/bGNp9NuJp5P2Rr8CHAPIlWtt3q0d/8XycmtTYz/ZPE=";

/// How long the tests wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long the tests wait for something that must not happen.
const QUIET: Duration = Duration::from_millis(700);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("bifrost_cluster=debug")
        .try_init();
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap_or_else(|e| panic!("node id {name}: {e}"))
}

fn secret(text: &str) -> Trust {
    Trust::Secret(ClusterSecret::new(text).unwrap_or_else(|e| panic!("secret: {e}")))
}

fn options() -> TransportOptions {
    TransportOptions {
        connect_timeout: Duration::from_secs(3),
        ..TransportOptions::default()
    }
}

fn bind(trust: &Trust, name: &str) -> Transport {
    let tls =
        TlsSetup::from_trust(trust, &node(name)).unwrap_or_else(|e| panic!("tls {name}: {e}"));
    let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    Transport::bind(addr, tls, options()).unwrap_or_else(|e| panic!("bind {name}: {e}"))
}

/// Dials `b` from `a` and accepts on `b`: (a's link to b, b's link to a).
async fn connect_pair(a: &Transport, b: &Transport) -> (Link, Link) {
    let (dialed, accepted) = tokio::join!(a.connect(b.local_addr()), async {
        tokio::time::timeout(PATIENCE, b.accept()).await
    });
    let dialed = dialed.unwrap_or_else(|e| panic!("connect: {e}"));
    let accepted = accepted
        .unwrap_or_else(|_| panic!("accept timed out"))
        .unwrap_or_else(|| panic!("transport closed"));
    (dialed, accepted)
}

/// A datagram both ways and a bidirectional stream round trip.
async fn assert_exchange(a: &Link, b: &Link) {
    a.send_datagram(Bytes::from_static(b"delta from a"))
        .unwrap_or_else(|e| panic!("send a->b: {e}"));
    let got = tokio::time::timeout(PATIENCE, b.read_datagram())
        .await
        .unwrap_or_else(|_| panic!("datagram a->b timed out"))
        .unwrap_or_else(|e| panic!("read a->b: {e}"));
    assert_eq!(&got[..], b"delta from a");

    b.send_datagram(Bytes::from_static(b"delta from b"))
        .unwrap_or_else(|e| panic!("send b->a: {e}"));
    let got = tokio::time::timeout(PATIENCE, a.read_datagram())
        .await
        .unwrap_or_else(|_| panic!("datagram b->a timed out"))
        .unwrap_or_else(|e| panic!("read b->a: {e}"));
    assert_eq!(&got[..], b"delta from b");

    let server = async {
        let (mut send, mut recv) = b
            .accept_stream()
            .await
            .unwrap_or_else(|e| panic!("accept_stream: {e}"));
        let request = recv
            .read_to_end(1024)
            .await
            .unwrap_or_else(|e| panic!("read request: {e}"));
        assert_eq!(request, b"digest please");
        send.write_all(b"here is my state")
            .await
            .unwrap_or_else(|e| panic!("write response: {e}"));
        send.finish()
            .unwrap_or_else(|e| panic!("finish response: {e}"));
        // Keep the stream alive until the peer read everything.
        let _ = send.stopped().await;
    };
    let client = async {
        let (mut send, mut recv) = a
            .open_stream()
            .await
            .unwrap_or_else(|e| panic!("open_stream: {e}"));
        send.write_all(b"digest please")
            .await
            .unwrap_or_else(|e| panic!("write request: {e}"));
        send.finish()
            .unwrap_or_else(|e| panic!("finish request: {e}"));
        recv.read_to_end(1024)
            .await
            .unwrap_or_else(|e| panic!("read response: {e}"))
    };
    let ((), response) = tokio::time::timeout(PATIENCE, async { tokio::join!(server, client) })
        .await
        .unwrap_or_else(|_| panic!("stream exchange timed out"));
    assert_eq!(response, b"here is my state");
}

#[tokio::test]
async fn same_secret_connects_and_exchanges_datagrams_and_streams() {
    init_logs();
    let a = bind(&secret(SECRET_ONE), "node-a");
    let b = bind(&secret(SECRET_ONE), "node-b");
    assert_eq!(a.trust_mode(), TrustMode::Secret);

    let (a_to_b, b_to_a) = connect_pair(&a, &b).await;
    assert_eq!(a_to_b.peer_node_id(), Some("node-b"));
    assert_eq!(b_to_a.peer_node_id(), Some("node-a"));
    assert_eq!(a_to_b.remote_address(), b.local_addr());
    assert!(
        a_to_b.max_datagram_size().is_some_and(|max| max >= 1000),
        "max_datagram_size = {:?}",
        a_to_b.max_datagram_size()
    );
    assert_exchange(&a_to_b, &b_to_a).await;

    a_to_b.close("test done");
    let closed = tokio::time::timeout(PATIENCE, b_to_a.closed())
        .await
        .unwrap_or_else(|_| panic!("peer never saw the close"));
    assert!(closed.to_string().contains("test done"), "{closed}");
    a.close("test done");
    b.close("test done");
}

#[tokio::test]
async fn node_ids_that_are_not_dns_names_work() {
    init_logs();
    let a = bind(&secret(SECRET_ONE), "Node_A.1");
    let b = bind(&secret(SECRET_ONE), "_b_");
    let (a_to_b, b_to_a) = connect_pair(&a, &b).await;
    assert_eq!(a_to_b.peer_node_id(), Some("_b_"));
    assert_eq!(b_to_a.peer_node_id(), Some("Node_A.1"));
}

#[tokio::test]
async fn same_secret_derives_the_same_trust_anchor() {
    let a = TlsSetup::from_trust(&secret(SECRET_ONE), &node("a")).unwrap_or_else(|e| panic!("{e}"));
    let b = TlsSetup::from_trust(&secret(SECRET_ONE), &node("b")).unwrap_or_else(|e| panic!("{e}"));
    let c = TlsSetup::from_trust(&secret(SECRET_TWO), &node("c")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.ca_certificates(), b.ca_certificates());
    assert_ne!(a.ca_certificates(), c.ca_certificates());
    assert_eq!(
        common_name(&a.ca_certificates()[0]).as_deref(),
        Some(CA_COMMON_NAME)
    );
    assert_eq!(a.local_node_id(), Some("a"));
    assert_ne!(a.certificate(), b.certificate());
}

#[tokio::test]
async fn different_secrets_fail_the_handshake_both_ways() {
    init_logs();
    let a = bind(&secret(SECRET_ONE), "node-a");
    let b = bind(&secret(SECRET_TWO), "node-b");

    for (dialer, listener) in [(&a, &b), (&b, &a)] {
        let (dialed, accepted) = tokio::join!(
            dialer.connect(listener.local_addr()),
            tokio::time::timeout(QUIET, listener.accept())
        );
        match dialed {
            Err(error @ TransportError::Connection { .. }) => {
                assert_eq!(
                    error.failure_kind(),
                    Some(FailureKind::BadCertificate),
                    "{error}"
                );
                assert!(
                    error
                        .to_string()
                        .contains(&listener.local_addr().to_string()),
                    "{error}"
                );
            }
            Err(other) => panic!("expected a certificate failure, got {other}"),
            Ok(link) => panic!("connected to a node with another secret: {link:?}"),
        }
        assert!(accepted.is_err(), "the listener must never yield a link");
    }
}

#[tokio::test]
async fn client_without_certificate_cannot_exchange() {
    init_logs();
    let server = bind(&secret(SECRET_ONE), "node-server");
    let anchor = TlsSetup::from_trust(&secret(SECRET_ONE), &node("x"))
        .unwrap_or_else(|e| panic!("{e}"))
        .ca_certificates()[0]
        .clone();

    // A raw quinn client that trusts the derived CA but presents no certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor).unwrap_or_else(|e| panic!("{e}"));
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap_or_else(|e| panic!("{e}"));
    let client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));

    let accepted = async { tokio::time::timeout(QUIET, server.accept()).await };
    let exchange = async {
        let connecting = client
            .connect_with(client_config, server.local_addr(), SERVER_NAME)
            .unwrap_or_else(|e| panic!("{e}"));
        // With TLS 1.3 the client may finish its side of the handshake before the server rejects it.
        let connection = match connecting.await {
            Ok(connection) => connection,
            Err(_) => return Err("handshake failed"),
        };
        let attempt = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|_| "open_bi failed")?;
            send.write_all(b"hello?")
                .await
                .map_err(|_| "write failed")?;
            send.finish().map_err(|_| "finish failed")?;
            recv.read_to_end(1024).await.map_err(|_| "read failed")
        };
        match tokio::time::timeout(PATIENCE, attempt).await {
            Ok(result) => result,
            Err(_) => Err("exchange timed out"),
        }
    };
    let (accepted, exchange) = tokio::join!(accepted, exchange);
    assert!(
        exchange.is_err(),
        "a client without a certificate completed an exchange"
    );
    assert!(accepted.is_err(), "the server must never yield a link");
}

/// Writes a CA and two leaves (CN node-a / node-b, SANs that do not match SERVER_NAME) as PEM files.
fn write_pki(dir: &Path, ca_name: &str) -> (PathBuf, [(PathBuf, PathBuf); 2]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .unwrap_or_else(|e| panic!("{e}"));
    let issuer = Issuer::new(ca_params, ca_key);

    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let ca_path = write(&format!("{ca_name}.pem"), &ca_cert.pem());
    let leaves = ["node-a", "node-b"].map(|cn| {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = CertificateParams::new(vec![format!("{cn}.example.test")])
            .unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .unwrap_or_else(|e| panic!("{e}"));
        (
            write(&format!("{ca_name}-{cn}.crt"), &cert.pem()),
            write(&format!("{ca_name}-{cn}.key"), &key.serialize_pem()),
        )
    });
    (ca_path, leaves)
}

fn files(ca: &Path, leaf: &(PathBuf, PathBuf)) -> Trust {
    Trust::Files {
        ca_file: ca.to_owned(),
        cert_file: leaf.0.clone(),
        key_file: leaf.1.clone(),
    }
}

#[tokio::test]
async fn files_trust_connects_and_rejects_another_ca() {
    init_logs();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ca, [leaf_a, leaf_b]) = write_pki(dir.path(), "ca-one");
    let (other_ca, [other_leaf, _]) = write_pki(dir.path(), "ca-two");

    let a = bind(&files(&ca, &leaf_a), "node-a");
    let b = bind(&files(&ca, &leaf_b), "node-b");
    assert_eq!(a.trust_mode(), TrustMode::Files);
    let (a_to_b, b_to_a) = connect_pair(&a, &b).await;
    assert_eq!(a_to_b.peer_node_id(), Some("node-b"));
    assert_eq!(b_to_a.peer_node_id(), Some("node-a"));
    assert_exchange(&a_to_b, &b_to_a).await;

    let stranger = bind(&files(&other_ca, &other_leaf), "node-a");
    let (dialed, accepted) = tokio::join!(
        stranger.connect(b.local_addr()),
        tokio::time::timeout(QUIET, b.accept())
    );
    match dialed {
        Err(error) => assert_eq!(
            error.failure_kind(),
            Some(FailureKind::BadCertificate),
            "{error}"
        ),
        Ok(link) => panic!("connected across CAs: {link:?}"),
    }
    assert!(accepted.is_err(), "the listener must never yield a link");
}

#[test]
fn files_trust_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ca, [leaf, _]) = write_pki(dir.path(), "ca");
    let missing = dir.path().join("does-not-exist.pem");

    for (trust, path, field) in [
        (
            Trust::Files {
                ca_file: missing.clone(),
                cert_file: leaf.0.clone(),
                key_file: leaf.1.clone(),
            },
            &missing,
            "ca_file",
        ),
        (
            Trust::Files {
                ca_file: ca.clone(),
                cert_file: missing.clone(),
                key_file: leaf.1.clone(),
            },
            &missing,
            "cert_file",
        ),
        (
            Trust::Files {
                ca_file: ca.clone(),
                cert_file: leaf.0.clone(),
                key_file: missing.clone(),
            },
            &missing,
            "key_file",
        ),
        // A certificate where the key should be.
        (
            Trust::Files {
                ca_file: ca.clone(),
                cert_file: leaf.0.clone(),
                key_file: leaf.0.clone(),
            },
            &leaf.0,
            "key_file",
        ),
        // A key where the CA should be.
        (
            Trust::Files {
                ca_file: leaf.1.clone(),
                cert_file: leaf.0.clone(),
                key_file: leaf.1.clone(),
            },
            &leaf.1,
            "ca_file",
        ),
    ] {
        let error = match TlsSetup::from_trust(&trust, &node("node-a")) {
            Err(error) => error,
            Ok(setup) => panic!("expected an error for {field}, got {setup:?}"),
        };
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "error does not name {}: {message}",
            path.display()
        );
        assert!(
            message.contains(field),
            "error does not name {field}: {message}"
        );
        assert!(
            matches!(error, TlsError::ReadFile { .. } | TlsError::Pem { .. }),
            "{error:?}"
        );
    }
}

#[test]
fn files_trust_with_a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ca, [leaf_a, leaf_b]) = write_pki(dir.path(), "ca");
    let trust = Trust::Files {
        ca_file: ca,
        cert_file: leaf_a.0.clone(),
        key_file: leaf_b.1,
    };
    match TlsSetup::from_trust(&trust, &node("node-a")) {
        Err(error) => assert!(
            error.to_string().contains(&leaf_a.0.display().to_string()),
            "{error}"
        ),
        Ok(setup) => panic!("mismatched key accepted: {setup:?}"),
    }
}

/// A `tracing` writer that keeps what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[test]
fn insecure_dev_warns_every_time_it_is_built() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..2 {
            let setup = TlsSetup::from_trust(&Trust::InsecureDev, &node("dev"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(setup.mode(), TrustMode::InsecureDev);
            assert!(setup.ca_certificates().is_empty());
        }
    });
    let text = captured.text();
    assert_eq!(text.matches("WARN").count(), 2, "{text}");
    assert_eq!(text.matches("INSECURE").count(), 2, "{text}");
    assert!(
        text.contains("development only") || text.contains("Development only"),
        "{text}"
    );
}

#[tokio::test]
async fn insecure_dev_connects() {
    init_logs();
    let a = bind(&Trust::InsecureDev, "dev-a");
    let b = bind(&Trust::InsecureDev, "dev-b");
    let (a_to_b, b_to_a) = connect_pair(&a, &b).await;
    assert_eq!(a_to_b.peer_node_id(), Some("dev-b"));
    assert_eq!(b_to_a.peer_node_id(), Some("dev-a"));
    assert_exchange(&a_to_b, &b_to_a).await;
}

#[tokio::test]
async fn secret_mode_rejects_an_insecure_node() {
    init_logs();
    let secure = bind(&secret(SECRET_ONE), "secure");
    let insecure = bind(&Trust::InsecureDev, "dev");
    // The insecure node accepts the secure node's certificate, but the secure node rejects the insecure one's.
    let (dialed, accepted) = tokio::join!(
        insecure.connect(secure.local_addr()),
        tokio::time::timeout(QUIET, secure.accept())
    );
    assert!(accepted.is_err(), "the secure node must never yield a link");
    if let Ok(link) = dialed {
        // TLS 1.3: the dial may succeed before the server rejects us; the first exchange must fail.
        let exchange = tokio::time::timeout(PATIENCE, async {
            let (mut send, mut recv) = link.open_stream().await.map_err(|e| e.to_string())?;
            send.write_all(b"hi").await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(64).await.map_err(|e| e.to_string())
        })
        .await;
        assert!(
            !matches!(exchange, Ok(Ok(_))),
            "an exchange succeeded with an untrusted node"
        );
    }
    // And the secure node refuses to trust the insecure node's self-signed server certificate.
    let dialed = secure.connect(insecure.local_addr()).await;
    let accepted = tokio::time::timeout(QUIET, insecure.accept()).await;
    match dialed {
        Err(error) => assert_eq!(
            error.failure_kind(),
            Some(FailureKind::BadCertificate),
            "{error}"
        ),
        Ok(link) => panic!("the secure node trusted a self-signed certificate: {link:?}"),
    }
    // The insecure listener never completes the handshake either (the client aborted).
    assert!(
        !matches!(accepted, Ok(Some(_))),
        "insecure node yielded a link"
    );
}

/// A tracing subscriber for the current thread that writes into a buffer (no ANSI), for counting log lines.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("bifrost_cluster=debug")
        .with_writer(move || Sink(Arc::clone(&sink)))
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

fn captured(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(
        &buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

/// A raw quinn client trusting secret one's CA, offering `alpn`, presenting no certificate.
fn raw_client(alpn: &[u8]) -> (quinn::Endpoint, quinn::ClientConfig) {
    let anchor = TlsSetup::from_trust(&secret(SECRET_ONE), &node("x"))
        .unwrap_or_else(|e| panic!("{e}"))
        .ca_certificates()[0]
        .clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor).unwrap_or_else(|e| panic!("{e}"));
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap_or_else(|e| panic!("{e}"));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

/// One handshake attempt that the server refuses; returns once the client's side of it is over.
async fn refused_handshake(
    client: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    server: std::net::SocketAddr,
) {
    let connecting = client
        .connect_with(config.clone(), server, SERVER_NAME)
        .unwrap_or_else(|e| panic!("{e}"));
    // With TLS 1.3 the client may finish its side before the server refuses: then wait for the close.
    if let Ok(Ok(connection)) = tokio::time::timeout(PATIENCE, connecting).await {
        let _ = tokio::time::timeout(PATIENCE, connection.closed()).await;
    }
}

/// Polls `server`'s refusal counter for `direction`/`reason` until it reaches `want` (bounded).
async fn wait_for_count(
    server: &Transport,
    direction: Direction,
    reason: RefusalReason,
    want: u64,
) -> u64 {
    let count = || {
        server
            .refusals()
            .iter()
            .find(|(d, r, _)| *d == direction && *r == reason)
            .map_or(0, |(_, _, n)| *n)
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count() < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    count()
}

// The attack: 500 handshakes without a certificate gave 500 WARN lines and no metric.
#[tokio::test]
async fn a_flood_of_refused_handshakes_is_counted_exactly_and_logged_once() {
    // The runtime of this test is single-threaded, so the transport's tasks log into this capture.
    let (logs, _guard) = capture_logs();
    let server = bind(&secret(SECRET_ONE), "node-server");
    let (client, config) = raw_client(ALPN);
    const ATTEMPTS: u64 = 500;
    for _ in 0..ATTEMPTS {
        refused_handshake(&client, &config, server.local_addr()).await;
    }
    let counted = wait_for_count(
        &server,
        Direction::Incoming,
        RefusalReason::NoCertificate,
        ATTEMPTS,
    )
    .await;
    let text = captured(&logs);
    let warn_lines: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    let refused_lines: Vec<&&str> = warn_lines
        .iter()
        .filter(|l| l.contains("incoming connection refused") || l.contains("handshakes refused"))
        .collect();
    eprintln!(
        "{ATTEMPTS} handshakes without a certificate: counted {counted}, {} WARN lines:\n{}",
        warn_lines.len(),
        warn_lines.join("\n")
    );
    assert_eq!(
        refused_lines.len(),
        1,
        "one line for the first refusal, the rest within the minute summarized later"
    );
    assert!(
        refused_lines[0].contains("no_certificate"),
        "{}",
        refused_lines[0]
    );
    assert!(warn_lines.len() <= 2, "{}", warn_lines.join("\n"));
    assert_eq!(counted, ATTEMPTS, "every refused handshake is counted");
    assert_eq!(
        server.refusals(),
        vec![(Direction::Incoming, RefusalReason::NoCertificate, ATTEMPTS)],
        "nothing else was counted"
    );
    // Closing the transport reports what the rate limit held back, in one line.
    server.close("test over");
    let text = captured(&logs);
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("handshakes refused (no_certificate)"))
        .collect();
    assert_eq!(summaries.len(), 1, "{text}");
    assert!(
        summaries[0].contains(&format!("{} more incoming", ATTEMPTS - 1)),
        "{}",
        summaries[0]
    );
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_reason() {
    init_logs();
    let server = bind(&secret(SECRET_ONE), "node-server");
    // A node of another cluster: the certificates do not verify (bad signature), both ways.
    let stranger = bind(&secret(SECRET_TWO), "node-stranger");
    for _ in 0..3 {
        assert!(stranger.connect(server.local_addr()).await.is_err());
    }
    // A client speaking another protocol.
    let (client, config) = raw_client(b"h3");
    for _ in 0..2 {
        refused_handshake(&client, &config, server.local_addr()).await;
    }
    assert_eq!(
        wait_for_count(&server, Direction::Incoming, RefusalReason::BadSignature, 3).await,
        3
    );
    assert_eq!(
        wait_for_count(&server, Direction::Incoming, RefusalReason::WrongAlpn, 2).await,
        2
    );
    // The dialer counts its own failures too.
    assert_eq!(
        wait_for_count(
            &stranger,
            Direction::Outgoing,
            RefusalReason::BadSignature,
            3
        )
        .await,
        3
    );
    eprintln!(
        "server: {:?}\nstranger: {:?}",
        server.refusals(),
        stranger.refusals()
    );
}
