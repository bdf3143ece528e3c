//! The HTTP surface against a node with cluster mode off, on 127.0.0.1: routes, answers, and bad requests
//! answered 400 with the field at fault.

use std::net::SocketAddr;

use bifrost_cluster::UnixMs;
use bifrost_cluster::config::load_from_str;
use bifrost_cluster::http::HttpServer;
use bifrost_cluster::node::Cluster;

mod support;
use support::http::{
    Headers, get, parse_prometheus, post, post_with_headers, request, request_text,
};

async fn server() -> (bifrost_cluster::node::ClusterHandle, HttpServer, SocketAddr) {
    let config = load_from_str(r#"{ "cluster_config": { "enabled": false, "node_id": "solo" } }"#)
        .expect("config")
        .config;
    let node = Cluster::start(config).await.expect("node");
    let http = HttpServer::start(node.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("http");
    let addr = http.local_addr();
    (node, http, addr)
}

/// Runs a blocking HTTP call off the runtime's worker threads.
async fn call(
    f: impl FnOnce() -> std::io::Result<(u16, serde_json::Value)> + Send + 'static,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .expect("http call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_status_of_a_node_alone() {
    let (node, http, addr) = server().await;
    let (code, body) = call(move || get(addr, "/health")).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
    let (code, _) = call(move || get(addr, "/ready")).await;
    assert_eq!(code, 200, "cluster mode off: ready at once");
    let (code, status) = call(move || get(addr, "/cluster/status")).await;
    assert_eq!(code, 200);
    assert_eq!(status["local_node"], "solo");
    assert_eq!(status["members"], 1);
    assert_eq!(status["healthy_members"], 1);
    assert_eq!(status["cluster_health"], "HEALTHY");
    assert_eq!(status["member_details"].as_array().map(Vec::len), Some(0));
    let (code, body) = call(move || get(addr, "/no/such/route")).await;
    assert_eq!(code, 404, "{body}");
    http.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_rate_limit_decisions() {
    let (node, http, addr) = server().await;
    // Keys may contain slashes.
    let (code, body) = call(move || {
        post(
            addr,
            "/v1/counters/vk/openai/gpt-4o/add",
            r#"{"window":"1h","n":5}"#,
        )
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["key"], "vk/openai/gpt-4o");
    assert_eq!(body["outcome"], "added");
    assert_eq!(body["local"], 5);
    assert_eq!(body["global"], 5);
    let epoch = body["epoch"].as_u64().expect("epoch");
    let (code, body) = call(move || {
        get(
            addr,
            &format!("/v1/counters/vk/openai/gpt-4o?window=1h&epoch={epoch}"),
        )
    })
    .await;
    assert_eq!((code, body["global"].as_u64()), (200, Some(5)), "{body}");
    // Reading an unknown key answers zeros and does not create it.
    let before = node.store().stats().keys;
    let (code, body) = call(move || get(addr, "/v1/counters/never-written?window=1m")).await;
    assert_eq!((code, body["global"].as_u64()), (200, Some(0)));
    assert_eq!(node.store().stats().keys, before);

    // A limit of 3 per hour: three allowed, the fourth refused.
    let check = r#"{"key":"rl/x","window":"1h","limit":3,"cost":1,"algorithm":"sliding_window"}"#;
    for expected_remaining in [2, 1, 0] {
        let (code, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
        assert_eq!(code, 200, "{d}");
        assert_eq!(d["allowed"], true);
        assert_eq!(d["remaining"], expected_remaining);
    }
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["used"], 3);
    assert!(d["reset_at_ms"].as_u64().is_some());
    http.shutdown().await;
    node.shutdown().await;
}

/// `"admission": "bounded"`: with cluster mode off no owner grants leases, so the default rule decides (exact on
/// one node); it is refused beside any algorithm but a fixed window, and an unknown value is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_admission_on_a_node_alone_and_its_bad_values() {
    let (node, http, addr) = server().await;
    let check = r#"{"key":"rl/b","window":"1h","limit":2,"admission":"bounded"}"#;
    for expected in [true, true, false] {
        let (code, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
        assert_eq!((code, d["allowed"].as_bool()), (200, Some(expected)), "{d}");
        assert_eq!(d["limit"], 2);
    }
    assert_eq!(
        node.store()
            .lease_stats()
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed), // Relaxed: statistics
        3
    );
    for (body, field) in [
        (
            r#"{"key":"k","window":"1h","limit":2,"admission":"bounded","algorithm":"sliding_window"}"#,
            "admission",
        ),
        (
            r#"{"key":"k","window":"1h","limit":2,"admission":"strict"}"#,
            "admission",
        ),
    ] {
        let (code, d) = call(move || post(addr, "/v1/ratelimit/check", body)).await;
        assert_eq!(code, 400, "{d}");
        assert!(d.to_string().contains(field), "{d}");
    }
    http.shutdown().await;
    node.shutdown().await;
}

/// A budget window anchored at its start resets at the anchor plus whole lengths; only the phase matters, so
/// any anchor of the same phase names the same counter. Months cannot be anchored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchored_window_resets_on_its_anchor_grid() {
    let (node, http, addr) = server().await;
    let phase = 17 * 60_000 + 30_250;
    let check = r#"{"key":"budget/a","window":"1h@2026-12-01T10:17:30.250Z","limit":2,"cost":1}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!(
        (code, &d["allowed"]),
        (200, &serde_json::json!(true)),
        "{d}"
    );
    let reset = d["reset_at_ms"].as_u64().expect("reset_at_ms");
    assert_eq!(reset % 3_600_000, phase, "{d}");
    // The same phase in Unix ms, a day later: the same counter.
    let same = format!(
        r#"{{"key":"budget/a","window":"1h@{}","limit":2,"cost":1}}"#,
        1_796_119_200_000u64 + 86_400_000 + phase
    );
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", &same)).await;
    assert_eq!(
        (&d["allowed"], &d["used"]),
        (&serde_json::json!(true), &serde_json::json!(2)),
        "{d}"
    );
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!(d["allowed"], false, "{d}");
    // A counter read names the window canonically.
    let (code, body) = call(move || {
        post(
            addr,
            "/v1/counters/budget/b/add",
            r#"{"window":"30d@2026-12-01T10:00:00Z","n":5}"#,
        )
    })
    .await;
    assert_eq!((code, body["local"].as_u64()), (200, Some(5)), "{body}");
    let bad = r#"{"key":"budget/a","window":"1M@2026-12-01T00:00:00Z","limit":2}"#;
    let (code, answer) = call(move || post(addr, "/v1/ratelimit/check", bad)).await;
    assert_eq!(
        (code, &answer["field"]),
        (400, &serde_json::json!("window")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be anchored")),
        "{answer}"
    );
    http.shutdown().await;
    node.shutdown().await;
}

/// Several limits in one check are counted all or nothing; a dry run counts nothing; a report counts without
/// a limit; every answer carries the RateLimit headers of the limit closest to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_checks_count_all_or_nothing_dry_runs_count_nothing_and_reports_count_the_cost() {
    let (node, http, addr) = server().await;
    let two = r#"{"checks":[
        {"key":"vk/42","window":"1h","limit":10,"cost":3},
        {"key":"team/7","window":"1h","limit":4,"cost":3}]}"#;
    let (code, headers, d) =
        call_h(move || post_with_headers(addr, "/v1/ratelimit/check", two)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["allowed"], true, "{d}");
    assert_eq!(d["results"][0]["used"], 3);
    assert_eq!(d["results"][1]["remaining"], 1);
    // The headers describe team/7, the closer of the two to its limit.
    let header = |h: &[(String, String)], name: &str| {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    assert_eq!(header(&headers, "ratelimit-limit").as_deref(), Some("4"));
    assert_eq!(
        header(&headers, "ratelimit-remaining").as_deref(),
        Some("1")
    );
    let reset: u64 = header(&headers, "ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("RateLimit-Reset in seconds");
    assert!((1..=3_600).contains(&reset), "{reset}");
    assert_eq!(header(&headers, "retry-after"), None);

    // team/7 has one unit left: the request is refused and vk/42 is not counted either.
    let (code, headers, d) =
        call_h(move || post_with_headers(addr, "/v1/ratelimit/check", two)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["results"][1]["allowed"], false);
    assert_eq!(
        header(&headers, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&headers, "retry-after"),
        header(&headers, "ratelimit-reset")
    );
    let window = bifrost_cluster::counter::Window::parse("1h").expect("window");
    assert_eq!(node.store().global("vk/42", window), 3, "nothing counted");
    assert_eq!(node.store().global("team/7", window), 3);

    // A dry run decides without counting.
    let dry = r#"{"key":"vk/42","window":"1h","limit":10,"cost":7,"dry_run":true}"#;
    let (_, _, d) = call_h(move || post_with_headers(addr, "/v1/ratelimit/check", dry)).await;
    // It would be allowed; what it reports is the usage as it is (nothing counted).
    assert_eq!(
        (d["allowed"].as_bool(), d["used"].as_u64()),
        (Some(true), Some(3)),
        "{d}"
    );
    assert_eq!(node.store().global("vk/42", window), 3);

    // The report after the response: 5 tokens on vk/42, no limit, nothing refused.
    let report = r#"{"reports":[{"key":"vk/42","window":"1h","cost":5}]}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/report", report)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["results"][0]["used"], 8, "{d}");
    assert_eq!(d["results"][0]["outcome"], "added");
    assert_eq!(node.store().global("vk/42", window), 8);

    // A bad member is named by its place, and nothing of the request is counted.
    let bad = r#"{"checks":[{"key":"vk/42","window":"1h","limit":10},{"key":"x","window":"1 hour","limit":1}]}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/check", bad)).await;
    assert_eq!(
        (code, d["field"].as_str()),
        (400, Some("checks[1].window")),
        "{d}"
    );
    let bad = r#"{"reports":[{"key":"vk/42","window":"1h"}]}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/report", bad)).await;
    assert_eq!(
        (code, d["field"].as_str()),
        (400, Some("reports[0].cost")),
        "{d}"
    );
    let many = format!(
        r#"{{"checks":[{}]}}"#,
        vec![r#"{"key":"k","window":"1m","limit":1}"#; 65].join(",")
    );
    let (code, d) = call(move || post(addr, "/v1/ratelimit/check", &many)).await;
    assert_eq!((code, d["field"].as_str()), (400, Some("checks")), "{d}");
    assert_eq!(node.store().global("vk/42", window), 8);
    http.shutdown().await;
    node.shutdown().await;
}

/// A refund gives a reserved unit back; a concurrency limit holds its slots until they are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_and_concurrency_limits_give_back_what_a_request_reserved() {
    let (node, http, addr) = server().await;
    let check = r#"{"key":"vk/9","window":"1h","limit":2}"#;
    for _ in 0..2 {
        let (_, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
        assert_eq!(d["allowed"], true, "{d}");
    }
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!(d["allowed"], false, "{d}");
    // The second request failed upstream: its unit goes back, and the next request gets it.
    let refund = r#"{"key":"vk/9","window":"1h","cost":1}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/release", refund)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(
        (
            d["results"][0]["released"].as_u64(),
            d["results"][0]["used"].as_u64()
        ),
        (Some(1), Some(1)),
        "{d}"
    );
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["used"].as_u64()),
        (Some(true), Some(2)),
        "{d}"
    );
    // More than was counted here is not given back.
    let big = r#"{"key":"vk/9","window":"1h","cost":5}"#;
    let (_, d) = call(move || post(addr, "/v1/ratelimit/release", big)).await;
    assert_eq!(
        (
            d["results"][0]["released"].as_u64(),
            d["results"][0]["unmatched"].as_u64()
        ),
        (Some(2), Some(3)),
        "{d}"
    );

    // Two requests in flight at most.
    let take = r#"{"key":"model/gpt-4o","algorithm":"concurrency","limit":2}"#;
    for held in [1, 2] {
        let (_, d) = call(move || post(addr, "/v1/ratelimit/check", take)).await;
        assert_eq!(
            (d["allowed"].as_bool(), d["used"].as_u64()),
            (Some(true), Some(held)),
            "{d}"
        );
    }
    let (_, headers, d) =
        call_h(move || post_with_headers(addr, "/v1/ratelimit/check", take)).await;
    assert_eq!(d["allowed"], false, "{d}");
    // A slot frees when a holder releases it, not at the end of its lease (an hour away here).
    let retry = headers
        .iter()
        .find(|(n, _)| n == "retry-after")
        .map(|(_, v)| v.as_str());
    assert_eq!(retry, Some("1"), "{headers:?}");
    let done = r#"{"releases":[{"key":"model/gpt-4o","algorithm":"concurrency"}]}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/release", done)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["results"][0]["key"], "model/gpt-4o", "{d}");
    assert_eq!(d["results"][0]["used"], 1, "{d}");
    let (_, d) = call(move || post(addr, "/v1/ratelimit/check", take)).await;
    assert_eq!(d["allowed"], true, "{d}");
    // The in-flight count is its own counter: the plain key of the same name is untouched.
    let window = bifrost_cluster::counter::Window::parse("1h").expect("window");
    assert_eq!(node.store().global("model/gpt-4o", window), 0);
    let bad = r#"{"key":"m","algorithm":"concurrency","limit":1,"window":"soon"}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/check", bad)).await;
    assert_eq!((code, d["field"].as_str()), (400, Some("window")), "{d}");
    http.shutdown().await;
    node.shutdown().await;
}

async fn call_h(
    f: impl FnOnce() -> std::io::Result<(u16, Headers, serde_json::Value)> + Send + 'static,
) -> (u16, Headers, serde_json::Value) {
    tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .expect("http call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_naming_the_field() {
    let (node, http, addr) = server().await;
    let cases: Vec<(&str, &str, Option<&str>, &str)> = vec![
        ("POST", "/v1/ratelimit/check", Some("not json"), "body"),
        ("POST", "/v1/ratelimit/check", Some("[1,2]"), "body"),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"window":"1m","limit":1}"#),
            "key",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","limit":1}"#),
            "window",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1x","limit":1}"#),
            "window",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m"}"#),
            "limit",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":-1}"#),
            "limit",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":1,"cost":"2"}"#),
            "cost",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":1,"algorithm":"leaky"}"#),
            "algorithm",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"","window":"1m","limit":1}"#),
            "key",
        ),
        ("POST", "/v1/counters/k/add", Some(r#"{"n":1}"#), "window"),
        (
            "POST",
            "/v1/counters/k/add",
            Some(r#"{"window":"1m","n":1.5}"#),
            "n",
        ),
        ("POST", "/v1/counters/k", Some(r#"{"window":"1m"}"#), "path"),
        ("GET", "/v1/counters/k", None, "window"),
        ("GET", "/v1/counters/k?window=1m&epoch=x", None, "epoch"),
        (
            "POST",
            "/v1/counters/@traffic/openai/requests/add",
            Some(r#"{"window":"1m"}"#),
            "key",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"@x","window":"1m","limit":1}"#),
            "key",
        ),
        ("GET", "/v1/counters/%FF%FE?window=1m", None, "path"),
        // Bodies the fast path of a single check must not take: each answered as the general path does.
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"["k","1m",5]"#),
            "body",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":5,"checks":null}"#),
            "checks",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":5,"x":1e400}"#),
            "body",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"k","window":"1m","limit":5,"x":"\ud800"}"#),
            "body",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(
                r#"{"checks":[{"key":"d","window":"1m","limit":1},{"key":"d","window":"1m","limit":1}]}"#,
            ),
            "checks[1]",
        ),
        (
            "POST",
            "/v1/ratelimit/check",
            Some(r#"{"key":"","algorithm":"concurrency","limit":1}"#),
            "key",
        ),
        (
            "POST",
            "/v1/ratelimit/release",
            Some(r#"{"releases":[{"key":"a","window":"1m"},{"key":"","window":"1m"}]}"#),
            "releases[1].key",
        ),
    ];
    for (method, path, body, field) in cases {
        let (code, answer) = call(move || request(addr, method, path, body)).await;
        assert_eq!(code, 400, "{method} {path} {body:?}: {answer}");
        assert_eq!(answer["field"], field, "{method} {path} {body:?}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Nothing above was counted.
    for key in ["k", "d"] {
        let dry = format!(r#"{{"key":"{key}","window":"1m","limit":5,"dry_run":true}}"#);
        let (_, d) = call(move || post(addr, "/v1/ratelimit/check", &dry)).await;
        assert_eq!(d["used"], 0, "{key}: {d}");
    }
    // A limit's key leaves room for the counters of its refunds (10 bytes; 20 for an in-flight limit), so
    // whatever is taken can be given back; the length named is the client's.
    let long = "x".repeat(250);
    let body = format!(r#"{{"key":"{long}","window":"1m","limit":5}}"#);
    let (code, answer) = call(move || post(addr, "/v1/ratelimit/check", &body)).await;
    assert_eq!(
        (code, &answer["field"]),
        (400, &serde_json::json!("key")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("250 bytes") && e.contains("246")),
        "{answer}"
    );
    let slot = "y".repeat(236);
    let take = format!(r#"{{"key":"{slot}","algorithm":"concurrency","limit":1}}"#);
    let (code, answer) = call(move || post(addr, "/v1/ratelimit/check", &take)).await;
    assert_eq!(
        (code, &answer["allowed"]),
        (200, &serde_json::json!(true)),
        "{answer}"
    );
    let give = format!(r#"{{"key":"{slot}","algorithm":"concurrency"}}"#);
    let (code, answer) = call(move || post(addr, "/v1/ratelimit/release", &give)).await;
    assert_eq!(
        (code, &answer["results"][0]["released"]),
        (200, &serde_json::json!(1)),
        "{answer}"
    );
    let too_long = format!(r#"{{"key":"{slot}y","algorithm":"concurrency","limit":1}}"#);
    let (code, answer) = call(move || post(addr, "/v1/ratelimit/check", &too_long)).await;
    assert_eq!(
        (code, &answer["field"]),
        (400, &serde_json::json!("key")),
        "{answer}"
    );
    // Other errors are JSON too.
    let (code, answer) = call(move || request(addr, "DELETE", "/health", None)).await;
    assert_eq!(code, 405, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("DELETE"))
    );
    // Still serving after all that.
    let (code, _) = call(move || get(addr, "/health")).await;
    assert_eq!(code, 200);
    http.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_hot_path_calls() {
    let (node, http, addr) = server().await;
    let handle = node
        .store()
        .handle(
            "m",
            bifrost_cluster::counter::Window::parse("1m").expect("window"),
        )
        .expect("handle");
    for _ in 0..10 {
        handle.add(1);
        handle.try_acquire(100, 1);
    }
    let (code, text) = call_text(move || request_text(addr, "GET", "/metrics", None)).await;
    assert_eq!(code, 200);
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value("bifrost_members{state=\"alive\",healthy=\"true\"}"),
        1.0
    );
    assert_eq!(value("bifrost_cluster_healthy"), 1.0);
    assert!(value("bifrost_counter_calls_total{op=\"add\"}") >= 10.0);
    assert!(value("bifrost_counter_calls_total{op=\"acquire\"}") >= 10.0);
    assert!(value("bifrost_counter_keys") >= 1.0);
    assert_eq!(value("bifrost_counter_refused_keys_total"), 0.0);
    http.shutdown().await;
    node.shutdown().await;
}

async fn call_text(
    f: impl FnOnce() -> std::io::Result<(u16, String)> + Send + 'static,
) -> (u16, String) {
    tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .expect("http call")
}

/// A token bucket over HTTP: `limit` is the burst, `remaining` the tokens left, the RateLimit headers follow;
/// batch checks take it beside a window; a bad or misplaced `burst` is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_checks_report_the_burst_and_bad_bursts_get_400() {
    let (node, http, addr) = server().await;
    // One unit per hour, a burst of 2 (refill within the hour rounds down to nothing).
    let check = r#"{"key":"tb/a","window":"1h","limit":1,"algorithm":"token_bucket","burst":2}"#;
    for expected_remaining in [1, 0] {
        let (code, headers, d) =
            call_h(move || post_with_headers(addr, "/v1/ratelimit/check", check)).await;
        assert_eq!(code, 200, "{d}");
        assert_eq!(
            (d["allowed"].as_bool(), d["limit"].as_u64()),
            (Some(true), Some(2)),
            "{d}"
        );
        assert_eq!(d["remaining"], expected_remaining, "{d}");
        let limit = headers.iter().find(|(n, _)| n == "ratelimit-limit");
        assert_eq!(limit.map(|(_, v)| v.as_str()), Some("2"));
    }
    let (code, headers, d) =
        call_h(move || post_with_headers(addr, "/v1/ratelimit/check", check)).await;
    assert_eq!((code, d["allowed"].as_bool()), (200, Some(false)), "{d}");
    assert_eq!(
        (d["used"].as_u64(), d["remaining"].as_u64()),
        (Some(2), Some(0))
    );
    // Full again for good when this hour leaves the ring (4 hours on): before, when it is the horizon's
    // start, its 3 units of refill less the 2 taken leave 1 token.
    let window = bifrost_cluster::counter::Window::parse("1h").expect("window");
    let now = node.clock().now_unix_ms().get();
    let reset = d["reset_at_ms"].as_u64().expect("reset_at_ms");
    assert_eq!(
        reset,
        window.start_ms(window.epoch_at(UnixMs::new(now)) + 4),
        "{d}"
    );
    let retry = headers
        .iter()
        .find(|(n, _)| n == "retry-after")
        .map(|(_, v)| v.clone());
    let retry: u64 = retry.and_then(|s| s.parse().ok()).expect("Retry-After");
    // But the request needs one token, and the next hour's start refills one: Retry-After says then (this
    // hour's end), not when the bucket is full again (it said 3 to 4 hours before).
    let hour_end_s = window
        .end_ms(window.epoch_at(UnixMs::new(now)))
        .saturating_sub(now)
        .div_ceil(1000);
    assert!(
        retry <= hour_end_s + 1 && retry + 5 >= hour_end_s,
        "{retry} vs {hour_end_s}"
    );
    assert_eq!(
        node.store().global("tb/a", window),
        2,
        "the refusal counted nothing"
    );

    // In a batch, beside a fixed window: refused as a whole, nothing counted.
    let batch = r#"{"checks":[{"key":"tb/b","window":"1h","limit":10},
        {"key":"tb/a","window":"1h","limit":1,"algorithm":"token_bucket","burst":2}]}"#;
    let (code, d) = call(move || post(addr, "/v1/ratelimit/check", batch)).await;
    assert_eq!((code, d["allowed"].as_bool()), (200, Some(false)), "{d}");
    assert_eq!(d["results"][1]["limit"], 2, "{d}");
    assert_eq!(node.store().global("tb/b", window), 0);

    for (body, field, needle) in [
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"token_bucket"}"#,
            "burst",
            "required",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"token_bucket","burst":0}"#,
            "burst",
            "at least 1",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"token_bucket","burst":16}"#,
            "burst",
            "above 15",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"token_bucket","burst":"2"}"#,
            "burst",
            "integer",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"burst":2}"#,
            "burst",
            "fixed_window",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"sliding_window","burst":2}"#,
            "burst",
            "sliding_window",
        ),
        (
            r#"{"key":"k","window":"1h","limit":5,"algorithm":"bucket"}"#,
            "algorithm",
            "token_bucket",
        ),
        (
            r#"{"checks":[{"key":"k","window":"1h","limit":5},{"key":"j","window":"1h","limit":5,"algorithm":"token_bucket","burst":99}]}"#,
            "checks[1].burst",
            "above 15",
        ),
        (
            r#"{"checks":[{"key":"k","window":"1h","limit":5}],"burst":2}"#,
            "burst",
            "inside each member",
        ),
    ] {
        let (code, d) = call(move || post(addr, "/v1/ratelimit/check", body)).await;
        assert_eq!(
            (code, d["field"].as_str()),
            (400, Some(field)),
            "{body}: {d}"
        );
        let message = d.to_string();
        assert!(message.contains(needle), "{body}: {d}");
    }
    assert_eq!(node.store().global("k", window), 0);
    http.shutdown().await;
    node.shutdown().await;
}
