//! Fuzzes the HTTP request bodies of the write routes through the real router and its request gate:
//! `POST /v1/ratelimit/check` (one check or a batch), `POST /v1/ratelimit/report` and `/release`,
//! `POST /v1/counters/{key}/add` and `PUT /v1/config/{key}`, with the key, the `Content-Type` and the body
//! taken from the input. Whatever the bytes, the answer is never a 5xx other than the documented 503/507,
//! every error answer is JSON `{"error": ...}`, and an accepted add or check answers its JSON shape. The
//! node's `http.max_request_n` is 1000, so the ceiling's 400 is reached often.
//!
//! Input layout: byte 0 picks the route (low 2 bits; route 0 is the release when bit 5 is set, else the
//! report when bit 4 is) and the content type (bits 2 and 3); the bytes up to the first `\n` are the key;
//! the rest is the body.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, header};
use bifrost_cluster::config::load_from_str;
use bifrost_cluster::http::{HttpAccess, HttpStats, router_with};
use bifrost_cluster::node::{Cluster, NodeOptions};
use libfuzzer_sys::fuzz_target;

/// The ceiling of this node (`http.max_request_n`).
const CEILING: u64 = 1_000;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // Cluster mode (alone, an unreachable loopback peer) so that config writes reach the config map.
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let text = format!(
            r#"{{ "cluster_config": {{ "enabled": true, "node_id": "fuzz", "peers": ["127.0.0.1:9"],
                 "gossip": {{ "port": {port} }}, "security": {{ "insecure_dev": true }},
                 "http": {{ "listen": "127.0.0.1:0", "max_request_n": {CEILING} }} }} }}"#
        );
        let config = load_from_str(&text).expect("config").config;
        let node = runtime
            .block_on(Cluster::start_with(
                config,
                NodeOptions {
                    bind_ip: Ipv4Addr::LOCALHOST.into(),
                    env_secret: None,
                    ..NodeOptions::default()
                },
            ))
            .expect("node");
        let access = HttpAccess {
            max_request_n: CEILING,
            ..HttpAccess::default()
        };
        let router = router_with(node, access, Arc::new(HttpStats::default()));
        Harness { runtime, router }
    })
}

fn percent_encode(key: &[u8]) -> String {
    let mut out = String::new();
    for &b in key {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (key, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"fuzz/key"[..], rest),
    };
    let key = percent_encode(key);
    let (method, path) = match selector & 3 {
        0 if selector & 32 != 0 => ("POST", "/v1/ratelimit/release".to_owned()),
        0 if selector & 16 != 0 => ("POST", "/v1/ratelimit/report".to_owned()),
        0 => ("POST", "/v1/ratelimit/check".to_owned()),
        1 => ("POST", format!("/v1/counters/{key}/add")),
        2 => ("PUT", format!("/v1/config/{key}")),
        _ => ("POST", format!("/v1/counters/{key}")),
    };
    let content_type = match (selector >> 2) & 3 {
        0 => "application/json",
        1 => "application/octet-stream",
        2 => "text/plain",
        _ => "application/json; charset=utf-8",
    };
    let Ok(mut request) = Request::builder()
        .method(method)
        .uri(&path)
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
    else {
        return; // not a valid URI: never reaches a server
    };
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 40000))));
    let h = harness();
    let mut router = h.router.clone();
    let (status, json) = h.runtime.block_on(async move {
        let response = tower_service::Service::call(&mut router, request)
            .await
            .expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a readable answer");
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&bytes).ok(),
        )
    });
    assert!(
        status < 500 || status == 503 || status == 507,
        "{method} {path}: status {status}"
    );
    let route = selector & 3;
    match (status, json) {
        (400.., Some(json)) => assert!(json["error"].is_string(), "{method} {path}: {json}"),
        (400.., None) => panic!("{method} {path}: {status} is not JSON"),
        (200, Some(json)) if route == 1 => assert!(json["local"].as_u64().is_some(), "{json}"),
        (200, Some(json)) if route == 0 && selector & 48 != 0 => {
            assert!(json["results"].is_array(), "{json}")
        }
        (200, Some(json)) if route == 0 => assert!(json["allowed"].is_boolean(), "{json}"),
        (200, None) if route <= 1 => panic!("{method} {path}: 200 without JSON"),
        _ => {}
    }
});
