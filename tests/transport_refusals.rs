//! Refused handshakes through a whole node, on 127.0.0.1: a client without a certificate dials the gossip port
//! again and again; `/metrics` (real HTTP) counts every refusal by direction and reason.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bifrost_cluster::config::{ClusterSecret, NodeId, Trust, load_from_str};
use bifrost_cluster::http::HttpServer;
use bifrost_cluster::node::{Cluster, NodeOptions};
use bifrost_cluster::transport::{ALPN, SERVER_NAME, TlsSetup, TransportOptions};

mod support;
use support::free_port;
use support::http::{parse_prometheus, request_text};

const SECRET: &str = "eHMgL1J5UaN5h1rP/XT6d0eOB+7DGA7tH67tsXxEhrw=";

fn metric(text: &str, series: &str) -> Option<f64> {
    parse_prometheus(text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

async fn scrape(addr: SocketAddr) -> String {
    let (code, text) =
        tokio::task::spawn_blocking(move || request_text(addr, "GET", "/metrics", None))
            .await
            .expect("join")
            .expect("GET /metrics");
    assert_eq!(code, 200);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_counts_every_refused_handshake_in_metrics_by_reason() {
    let port = free_port();
    // Cluster mode needs a peer; nobody answers at this one (its dials count as outgoing, not incoming).
    let absent = free_port();
    let config = load_from_str(&format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "node-a", "peers": ["127.0.0.1:{absent}"],
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#
    ))
    .expect("valid test config")
    .config;
    let options = NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides: Default::default(),
    };
    let node = Cluster::start_with(config, options).await.expect("start");
    let http = HttpServer::start(node.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("http");
    let gossip = node
        .local_addr()
        .expect("cluster mode has a gossip address");

    let series = |reason: &str| {
        format!(
            "bifrost_transport_handshakes_refused_total{{direction=\"incoming\",reason=\"{reason}\"}}"
        )
    };
    let before = scrape(http.local_addr()).await;
    assert_eq!(
        metric(&before, &series("no_certificate")),
        Some(0.0),
        "{before}"
    );

    // A client that trusts the cluster's CA (it knows the secret's CA certificate) but has no certificate.
    let anchor = TlsSetup::from_trust(
        &Trust::Secret(ClusterSecret::new(SECRET).expect("secret")),
        &NodeId::new("x").expect("node id"),
    )
    .expect("tls")
    .ca_certificates()[0]
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor).expect("anchor");
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic config"),
    ));
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    const ATTEMPTS: u64 = 50;
    for _ in 0..ATTEMPTS {
        let connecting = client
            .connect_with(client_config.clone(), gossip, SERVER_NAME)
            .expect("connect");
        if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
        }
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(http.local_addr()).await;
        let n = metric(&text, &series("no_certificate")).unwrap_or(0.0);
        if n >= ATTEMPTS as f64 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(&text, &series("no_certificate")),
        Some(ATTEMPTS as f64),
        "{text}"
    );
    for reason in [
        "unknown_ca",
        "bad_signature",
        "expired",
        "wrong_alpn",
        "timeout",
    ] {
        assert_eq!(
            metric(&text, &series(reason)),
            Some(0.0),
            "{reason}: {text}"
        );
    }
    http.shutdown().await;
    node.shutdown().await;
}
