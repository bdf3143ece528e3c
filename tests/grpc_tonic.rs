//! The Envoy RLS server with a Rust client (tonic and envoy-types' generated client), in process on
//! 127.0.0.1: bearer tokens and the `check` scope, TLS, quota mode, sliding windows, Envoy's per-descriptor
//! limit override, a month window, and the bounds of a bad request.

use std::net::SocketAddr;

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::grpc::{GrpcOptions, GrpcServer};
use bifrost_cluster::http::TokenSet;
use bifrost_cluster::node::Cluster;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const CHECK_TOKEN: &str = "check-token-0123456789abcdef0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef0123456789abcdef";

const LIMITS: &str = r#"
domain: tonic
descriptors:
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: sliding
    rate_limit: {unit: hour, requests_per_unit: 2, algorithm: sliding_window}
  - key: monthly
    rate_limit: {unit: month, requests_per_unit: 1}
"#;

/// A standalone node with the RLS server; `http` is the `http` member of the config (tokens), `grpc_extra`
/// more members of `grpc`.
async fn server(http: &str, grpc_extra: &str, dir: &std::path::Path) -> (GrpcServer, SocketAddr) {
    let limits = dir.join("limits.yaml");
    std::fs::write(&limits, LIMITS).expect("limits");
    let text = format!(
        r#"{{ "cluster_config": {{ "enabled": false, "node_id": "solo", "http": {{ {http} }},
             "grpc": {{ "listen": "127.0.0.1:0", "limits_file": {:?} {grpc_extra} }} }} }}"#,
        limits.display().to_string()
    );
    let config = load_from_str(&text).expect("config").config;
    let tokens = TokenSet::load(&config.http, None, |_| None).expect("tokens");
    let grpc = config.grpc.clone().expect("grpc section");
    let node = Cluster::start(config.clone()).await.expect("node");
    let options =
        GrpcOptions::from_config(&grpc, tokens, config.http.max_request_n).expect("options");
    let server = GrpcServer::start(node, options).await.expect("grpc server");
    let addr = server.local_addr();
    (server, addr)
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "tonic".to_owned(),
        descriptors,
        hits_addend: hits,
    }
}

fn descriptor(key: &str, value: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.to_owned(),
            value: value.to_owned(),
        }],
        ..Default::default()
    }
}

async fn client(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

fn with_token(req: RateLimitRequest, token: &str) -> tonic::Request<RateLimitRequest> {
    let mut r = tonic::Request::new(req);
    let value = format!("Bearer {token}").parse().expect("metadata value");
    r.metadata_mut().insert("authorization", value);
    r
}

#[tokio::test]
async fn tokens_need_the_check_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!(
        r#""listen": "127.0.0.1:0", "auth": {{ "tokens": [
            {{ "name": "gw", "token": "{CHECK_TOKEN}", "scopes": ["check"] }},
            {{ "name": "ro", "token": "{READ_TOKEN}", "scopes": ["read"] }} ] }}"#
    );
    let (server, addr) = server(&http, "", dir.path()).await;
    let mut c = client(addr).await;
    let req = || request(vec![descriptor("monthly", "t")], 1);
    let e = c.should_rate_limit(req()).await.expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = c
        .should_rate_limit(with_token(req(), "wrong-token-0123456789abcdef0123456789"))
        .await
        .expect_err("unknown token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = c
        .should_rate_limit(with_token(req(), READ_TOKEN))
        .await
        .expect_err("read scope");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("check scope"), "{e}");
    let ok = c
        .should_rate_limit(with_token(req(), CHECK_TOKEN))
        .await
        .expect("check scope")
        .into_inner();
    assert_eq!(ok.overall_code, Code::Ok as i32);
    // A month window, counted: the second hit is over.
    let over = c
        .should_rate_limit(with_token(req(), CHECK_TOKEN))
        .await
        .expect("check scope")
        .into_inner();
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(
        over.statuses[0].current_limit.as_ref().map(|l| l.unit),
        Some(5), // MONTH
    );
    // The health service stays open.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    server.shutdown().await;
}

#[test]
fn a_non_loopback_listener_without_tokens_is_refused() {
    let config = load_from_str(r#"{ "cluster_config": { "grpc": { "listen": "0.0.0.0:8081" } } }"#)
        .expect("config")
        .config;
    let grpc = config.grpc.expect("grpc");
    let e = GrpcOptions::from_config(&grpc, TokenSet::default(), 1000).expect_err("refused");
    assert!(e.to_string().contains("cluster_config.grpc.listen"), "{e}");
}

#[tokio::test]
async fn quota_mode_sliding_windows_and_envoy_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = server(r#""listen": "127.0.0.1:0""#, "", dir.path()).await;
    let mut c = client(addr).await;
    let call = |req| {
        let mut c = c.clone();
        async move { c.should_rate_limit(req).await.expect("answer").into_inner() }
    };
    // Quota mode: one quota descriptor over its limit is not enough for OVER_LIMIT, all of them are.
    let both = || {
        request(
            vec![descriptor("quota_a", "q"), descriptor("quota_b", "q")],
            1,
        )
    };
    assert_eq!(call(both()).await.overall_code, Code::Ok as i32);
    let r = call(both()).await;
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32, "{r:?}");
    assert_eq!(
        r.overall_code,
        Code::Ok as i32,
        "quota_b still has room: {r:?}"
    );
    let r = call(request(vec![descriptor("quota_a", "q")], 1)).await;
    assert_eq!(
        r.overall_code,
        Code::OverLimit as i32,
        "the only quota descriptor is over: {r:?}"
    );
    // A sliding window limits like a fixed one inside its first window.
    assert_eq!(
        call(request(vec![descriptor("sliding", "s")], 2))
            .await
            .overall_code,
        Code::Ok as i32
    );
    assert_eq!(
        call(request(vec![descriptor("sliding", "s")], 1))
            .await
            .overall_code,
        Code::OverLimit as i32
    );
    // Envoy's per-descriptor limit override replaces the rule: 1 per minute for an otherwise unknown key.
    let mut o = descriptor("not_in_the_file", "x");
    o.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 2,
    });
    assert_eq!(
        call(request(vec![o.clone()], 1)).await.overall_code,
        Code::Ok as i32
    );
    let r = call(request(vec![o.clone()], 1)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    // Bad requests name the field.
    o.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 0,
    });
    let e = c
        .should_rate_limit(request(vec![o], 1))
        .await
        .expect_err("UNKNOWN unit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("descriptors[0].limit.unit"), "{e}");
    let e = c
        .should_rate_limit(request(vec![RateLimitDescriptor::default()], 1))
        .await
        .expect_err("no entries");
    assert!(
        e.message()
            .contains("descriptors[0].entries: must not be empty"),
        "{e}"
    );
    // A descriptor whose counter key is too long (limits.max_key_length) refuses the whole request before
    // anything is counted: the monthly limit of 1 is still free afterwards.
    let long = "x".repeat(300);
    let e = c
        .should_rate_limit(request(
            vec![descriptor("monthly", "kept"), descriptor("sliding", &long)],
            1,
        ))
        .await
        .expect_err("key too long");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("descriptors[1].entries"), "{e}");
    let r = c
        .should_rate_limit(request(vec![descriptor("monthly", "kept")], 1))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(
        r.overall_code,
        Code::Ok as i32,
        "nothing was counted by the refused request: {r:?}"
    );
    let e = c
        .should_rate_limit(request(vec![], 1))
        .await
        .expect_err("no descriptors");
    assert!(
        e.message().contains("descriptors: must not be empty"),
        "{e}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn tls_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key");
    let tls = format!(
        r#", "tls": {{ "cert_file": {:?}, "key_file": {:?} }}"#,
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let (server, addr) = server(r#""listen": "127.0.0.1:0""#, &tls, dir.path()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(cert.cert.pem()))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connect");
    let mut c = RateLimitServiceClient::new(channel);
    let r = c
        .should_rate_limit(request(vec![descriptor("monthly", "tls")], 1))
        .await
        .expect("answer over TLS")
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    // Plaintext to the TLS port fails.
    let plain = RateLimitServiceClient::connect(format!("http://{addr}")).await;
    if let Ok(mut plain) = plain {
        assert!(
            plain
                .should_rate_limit(request(vec![descriptor("monthly", "p")], 1))
                .await
                .is_err()
        );
    }
    server.shutdown().await;
}
