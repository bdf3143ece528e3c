//! The HTTP surface's security (issue 14), black-box through the `run` binary on loopback: each attack of the
//! issue is a test here. Every child process is killed when its guard drops; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::free_port;

const CHECK_TOKEN: &str = "check-token-0123456789abcdef0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef0123456789abcdef";

/// Kills the child when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `run` with `http` (the members of `cluster_config.http` besides `listen`, as JSON text) on a free loopback
/// port, and `env` added; waits until `/health` answers.
fn start(http_extra: &str, env: &[(&str, &str)]) -> Node {
    wait_health(spawn(http_extra, env, false))
}

/// As [`start`], in cluster mode (the config map needs it), alone: an unreachable peer, no trust source.
fn start_cluster(http_extra: &str, env: &[(&str, &str)]) -> Node {
    wait_health(spawn(http_extra, env, true))
}

fn wait_health(mut node: Node) -> Node {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = send(node.addr, "GET", "/health", &[], None)
            && r.status == 200
        {
            return node;
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            panic!("run exited early ({status}): {}", node.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "no /health within 20 s: {}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run` as [`start`] does, without waiting.
fn spawn(http_extra: &str, env: &[(&str, &str)], cluster: bool) -> Node {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    let comma = if http_extra.is_empty() { "" } else { "," };
    let cluster = if cluster {
        format!(
            r#""enabled": true, "peers": ["127.0.0.1:{}"], "gossip": {{ "port": {} }},
               "security": {{ "insecure_dev": true }},"#,
            free_port(),
            free_port()
        )
    } else {
        r#""enabled": false,"#.to_owned()
    };
    std::fs::write(
        &config,
        format!(
            r#"{{ "cluster_config": {{ {cluster} "node_id": "sec",
                 "http": {{ "listen": "127.0.0.1:{port}"{comma} {http_extra} }} }} }}"#
        ),
    )
    .expect("write config");
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    cmd.args(["run", "--bind-ip", "127.0.0.1", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("BIFROST_CLUSTER_SECRET")
        .env_remove("BIFROST_HTTP_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn bifrost-cluster run");
    Node {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
        _dir: dir,
    }
}

/// Runs `cmd` to its end, at most 15 s (a `run` that does not refuse would serve forever): the output, or a
/// panic naming what it printed.
fn output_within(mut cmd: Command) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(Stdio::from(std::fs::File::create(&out).expect("out")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("err")))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 15 s; stderr: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}

struct Answer {
    status: u16,
    head: String,
    body: serde_json::Value,
}

/// One request on its own connection (`Connection: close`). `headers` are added as given; a body is sent
/// with its length (and with no `Content-Type` unless `headers` has one).
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Answer> {
    assert!(addr.ip().is_loopback());
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes())?;
    let mut raw = Vec::new();
    // A server may close after answering early (413): what was read counts.
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn tokens_env() -> String {
    format!(
        "gateway:check,read:{CHECK_TOKEN} dashboard:read:{READ_TOKEN} ops:admin,read:{ADMIN_TOKEN}"
    )
}

/// The error answer's shape: `{"error": text, "field": ...}`.
fn assert_json_error(a: &Answer, status: u16, field: Option<&str>) {
    assert_eq!(a.status, status, "head: {} body: {}", a.head, a.body);
    assert!(
        a.head.contains("content-type: application/json"),
        "{}",
        a.head
    );
    assert!(a.body["error"].is_string(), "{}", a.body);
    if let Some(field) = field {
        assert_eq!(a.body["field"], field, "{}", a.body);
    }
}

#[test]
fn unauthenticated_saturating_add_is_refused_and_the_ceiling_holds_even_with_a_good_token() {
    let env = tokens_env();
    let node = start("", &[("BIFROST_HTTP_TOKENS", &env)]);
    let attack = r#"{"window":"1Y","n":18446744073709551615}"#;
    let path = "/v1/counters/tenant-42/gpt-4o/add";

    let a = send(node.addr, "POST", path, &[JSON], Some(attack)).expect("post");
    assert_json_error(&a, 401, Some("authorization"));
    assert!(a.head.contains("www-authenticate: bearer"), "{}", a.head);

    let wrong = bearer("not-a-token-0123456789abcdef0123456789abcdef");
    let a = send(
        node.addr,
        "POST",
        path,
        &[JSON, ("Authorization", &wrong)],
        Some(attack),
    )
    .expect("post");
    assert_json_error(&a, 401, Some("authorization"));

    let check = bearer(CHECK_TOKEN);
    let a = send(
        node.addr,
        "POST",
        path,
        &[JSON, ("Authorization", &check)],
        Some(attack),
    )
    .expect("post");
    assert_json_error(&a, 400, Some("n"));
    let over = r#"{"key":"k","window":"1m","limit":10,"cost":1000000001}"#;
    let a = send(
        node.addr,
        "POST",
        "/v1/ratelimit/check",
        &[JSON, ("Authorization", &check)],
        Some(over),
    )
    .expect("check");
    assert_json_error(&a, 400, Some("cost"));

    let a = send(
        node.addr,
        "POST",
        path,
        &[JSON, ("Authorization", &check)],
        Some(r#"{"window":"1Y","n":5}"#),
    )
    .expect("post");
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(
        node.addr,
        "GET",
        "/v1/counters/tenant-42/gpt-4o?window=1Y",
        &[("Authorization", &check)],
        None,
    )
    .expect("get");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["global"], 5,
        "only the legitimate add counted: {}",
        a.body
    );
}

#[test]
fn scopes_read_token_reads_but_cannot_write_and_config_writes_need_admin() {
    let env = tokens_env();
    let node = start_cluster("", &[("BIFROST_HTTP_TOKENS", &env)]);
    let read = bearer(READ_TOKEN);
    let check = bearer(CHECK_TOKEN);
    let admin = bearer(ADMIN_TOKEN);

    // Probes stay open (joining alone: /ready says 503, never 401).
    let ready = send(node.addr, "GET", "/ready", &[], None).expect("ready");
    assert!(matches!(ready.status, 200 | 503), "{}", ready.body);
    assert!(ready.body["status"].is_string(), "{}", ready.body);
    // Reads: no token 401, read token 200.
    for path in [
        "/cluster/status",
        "/cluster/nodes",
        "/v1/config",
        "/v1/counters/k?window=1m",
        "/v1/traffic/x",
    ] {
        let a = send(node.addr, "GET", path, &[], None).expect("get");
        assert_json_error(&a, 401, Some("authorization"));
        let a = send(node.addr, "GET", path, &[("Authorization", &read)], None).expect("get");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    // Writes with the read token: 403.
    let a = send(
        node.addr,
        "POST",
        "/v1/counters/k/add",
        &[JSON, ("Authorization", &read)],
        Some(r#"{"window":"1m"}"#),
    )
    .expect("add");
    assert_json_error(&a, 403, Some("authorization"));
    let a = send(
        node.addr,
        "POST",
        "/v1/counters/k/reset",
        &[JSON, ("Authorization", &check)],
        Some(r#"{"window":"1m"}"#),
    )
    .expect("reset");
    assert_json_error(&a, 403, Some("authorization"));
    // PUT /v1/config without admin: 401 without a token, 403 with read or check.
    let a = send(
        node.addr,
        "PUT",
        "/v1/config/routing",
        &[JSON],
        Some(r#"{"x":1}"#),
    )
    .expect("put");
    assert_json_error(&a, 401, Some("authorization"));
    for token in [&read, &check] {
        let a = send(
            node.addr,
            "PUT",
            "/v1/config/routing",
            &[JSON, ("Authorization", token)],
            Some(r#"{"x":1}"#),
        )
        .expect("put");
        assert_json_error(&a, 403, Some("authorization"));
    }
    let a = send(
        node.addr,
        "PUT",
        "/v1/config/routing",
        &[JSON, ("Authorization", &admin)],
        Some(r#"{"x":1}"#),
    )
    .expect("put");
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(
        node.addr,
        "DELETE",
        "/v1/config/routing",
        &[("Authorization", &check)],
        None,
    )
    .expect("delete");
    assert_json_error(&a, 403, Some("authorization"));

    // /metrics needs read (public_metrics is off by default) and counts the rejections.
    let a = send(node.addr, "GET", "/metrics", &[], None).expect("metrics");
    assert_eq!(a.status, 401);
    let mut stream = TcpStream::connect(node.addr).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {read}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    assert!(sample("bifrost_http_rejected_total{status=\"401\",reason=\"missing_token\"}") >= 7.0);
    assert!(sample("bifrost_http_rejected_total{status=\"403\",reason=\"scope\"}") >= 5.0);
}

#[test]
fn without_tokens_cross_site_simple_requests_fail() {
    let node = start_cluster("", &[]);
    assert!(
        node.log_text()
            .contains("every route is served, to local clients only"),
        "{}",
        node.log_text()
    );
    let body = r#"{"window":"1m","n":1}"#;
    // A browser's "simple" cross-site POST: text/plain (or a form), no preflight.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let a = send(
            node.addr,
            "POST",
            "/v1/counters/k/add",
            &[("Content-Type", content_type)],
            Some(body),
        )
        .expect("post");
        assert_json_error(&a, 415, Some("content-type"));
    }
    let a = send(node.addr, "POST", "/v1/counters/k/add", &[], Some(body)).expect("post");
    assert_json_error(&a, 415, Some("content-type"));
    let a = send(
        node.addr,
        "PUT",
        "/v1/config/x",
        &[("Content-Type", "text/plain")],
        Some("v"),
    )
    .expect("put");
    assert_json_error(&a, 415, Some("content-type"));
    // A foreign Origin is refused even with the right type; DNS rebinding (a foreign Host) too.
    let a = send(
        node.addr,
        "POST",
        "/v1/counters/k/add",
        &[JSON, ("Origin", "http://evil.example")],
        Some(body),
    )
    .expect("post");
    assert_json_error(&a, 403, Some("origin"));
    let mut stream = TcpStream::connect(node.addr).expect("connect");
    write!(stream, "POST /v1/counters/k/add HTTP/1.1\r\nHost: evil.example:8080\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    // What a local client sends works: JSON, and config values as octet-stream.
    let a = send(node.addr, "POST", "/v1/counters/k/add", &[JSON], Some(body)).expect("post");
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(
        node.addr,
        "PUT",
        "/v1/config/x",
        &[("Content-Type", "application/octet-stream")],
        Some("v"),
    )
    .expect("put");
    assert_eq!(a.status, 200, "{}", a.body);
    let own = format!("http://{}", node.addr);
    let a = send(
        node.addr,
        "POST",
        "/v1/counters/k/add",
        &[JSON, ("Origin", &own)],
        Some(body),
    )
    .expect("post");
    assert_eq!(a.status, 200, "{}", a.body);
}

#[test]
fn body_and_uri_limits_answer_json() {
    let node = start("", &[]);
    let big = "x".repeat(300 * 1024);
    let a = send(node.addr, "POST", "/v1/counters/k/add", &[JSON], Some(&big)).expect("post");
    assert_json_error(&a, 413, Some("body"));
    let a = send(node.addr, "PUT", "/v1/config/big", &[JSON], Some(&big)).expect("put");
    assert_json_error(&a, 413, Some("body"));
    let long = format!("/v1/counters/{}?window=1m", "k".repeat(10 * 1024));
    let a = send(node.addr, "GET", &long, &[], None).expect("get");
    assert_json_error(&a, 414, Some("path"));
    // Past what the HTTP parser itself takes (64 KiB of URI; about 400 KB of head).
    let longer = format!("/v1/counters/{}?window=1m", "k".repeat(100 * 1024));
    let a = send(node.addr, "GET", &longer, &[], None).expect("get");
    assert_json_error(&a, 414, Some("path"));
    let huge = "v".repeat(500 * 1024);
    let a = send(node.addr, "GET", "/health", &[("X-Huge", &huge)], None).expect("get");
    assert_json_error(&a, 431, Some("headers"));
}

/// Without tokens, a write from a peer that is not loopback is refused even when the listener accepted it
/// (`http.allow_unauthenticated_reads`), while reads are served. In process: the peer address is the request's
/// `ConnectInfo`, as the server sets it; no traffic leaves the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_writes_from_a_non_loopback_peer_are_refused() {
    use axum::extract::ConnectInfo;
    use bifrost_cluster::http::{HttpAccess, HttpStats, router_with};

    let config =
        bifrost_cluster::config::load_from_str(r#"{ "cluster_config": { "node_id": "p" } }"#)
            .expect("config")
            .config;
    let node = bifrost_cluster::node::Cluster::start(config)
        .await
        .expect("node");
    let stats = std::sync::Arc::new(HttpStats::default());
    let router = router_with(node.clone(), HttpAccess::default(), stats.clone());
    let call = |peer: [u8; 4], method: &str, path: &str, body: &str| {
        let mut router = router.clone();
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .extension(ConnectInfo(SocketAddr::from((peer, 40000))))
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        async move {
            tower_service::Service::call(&mut router, request)
                .await
                .expect("infallible")
                .status()
                .as_u16()
        }
    };
    let add = r#"{"window":"1m"}"#;
    assert_eq!(
        call([10, 1, 2, 3], "POST", "/v1/counters/k/add", add).await,
        403
    );
    assert_eq!(
        call(
            [10, 1, 2, 3],
            "POST",
            "/v1/ratelimit/check",
            r#"{"key":"k","window":"1m","limit":1}"#
        )
        .await,
        403
    );
    assert_eq!(call([10, 1, 2, 3], "PUT", "/v1/config/x", "{}").await, 403);
    assert_eq!(
        call([10, 1, 2, 3], "GET", "/v1/counters/k?window=1m", "").await,
        200
    );
    assert_eq!(
        call([127, 0, 0, 1], "POST", "/v1/counters/k/add", add).await,
        200
    );
    assert_eq!(
        stats
            .rejected_not_loopback
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    node.shutdown().await;
}

#[test]
fn non_loopback_listen_without_tokens_makes_run_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |http: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            format!(r#"{{ "cluster_config": {{ "enabled": false, "http": {http} }} }}"#),
        )
        .expect("write");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
        cmd.args(["run", "--bind-ip", "127.0.0.1", "--config"])
            .arg(&path)
            .env_remove("BIFROST_HTTP_TOKENS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        output_within(cmd)
    };
    let out = run(r#"{ "listen": "0.0.0.0:1" }"#, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster_config.http.listen"), "{stderr}");
    assert!(stderr.contains("http.auth.tokens"), "{stderr}");
    // Tokens that cannot be used are refused naming where they came from, never echoing them.
    let out = run(
        r#"{ "listen": "0.0.0.0:1" }"#,
        &[("BIFROST_HTTP_TOKENS", "gw:check:too-short-token")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BIFROST_HTTP_TOKENS[0]") && !stderr.contains("too-short-token"),
        "{stderr}"
    );
    let missing = dir.path().join("missing-token");
    let out = run(
        &format!(
            r#"{{ "listen": "127.0.0.1:1", "auth": {{ "tokens": [{{ "name": "gw", "token_file": "{}", "scopes": ["check"] }}] }} }}"#,
            missing.display()
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cluster_config.http.auth.tokens[0].token_file"),
        "{out:?}"
    );
    let out = run(
        r#"{ "listen": "127.0.0.1:1", "auth": { "tokens": [{ "name": "gw", "token": "short", "scopes": ["check"] }] } }"#,
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster_config.http.auth.tokens[0].token") && stderr.contains("32"),
        "{stderr}"
    );
}

#[test]
fn the_explicit_flag_accepts_a_non_loopback_listen_with_a_loud_warning() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        format!(r#"{{ "cluster_config": {{ "enabled": false, "http": {{ "listen": "0.0.0.0:{port}", "allow_unauthenticated_reads": true }} }} }}"#),
    )
    .expect("write");
    let log = dir.path().join("log");
    let child = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
        .args(["run", "--bind-ip", "127.0.0.1", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("BIFROST_HTTP_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("spawn");
    let mut node = Node {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while send(node.addr, "GET", "/health", &[], None)
        .map(|a| a.status)
        .unwrap_or(0)
        != 200
    {
        assert!(
            node.child.try_wait().expect("try_wait").is_none(),
            "{}",
            node.log_text()
        );
        assert!(Instant::now() < deadline, "{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.log_text().contains("WITHOUT TOKENS"),
        "{}",
        node.log_text()
    );
    // Reads are open; writes from this (loopback) client still work.
    assert_eq!(
        send(node.addr, "GET", "/cluster/status", &[], None)
            .expect("status")
            .status,
        200
    );
    assert_eq!(
        send(
            node.addr,
            "POST",
            "/v1/counters/k/add",
            &[JSON],
            Some(r#"{"window":"1m"}"#)
        )
        .expect("add")
        .status,
        200
    );
}

/// Opens `n` connections that send an unfinished request head and never finish it.
fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            s
        })
        .collect()
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let _ = s.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error answer before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn two_thousand_half_open_sockets_are_closed_after_the_header_read_timeout() {
    let node = start(
        r#""header_read_timeout": "1s", "max_connections": 5000"#,
        &[],
    );
    let opened = Instant::now();
    let mut sockets = half_open(node.addr, 2000);
    let deadline = opened + Duration::from_secs(15);
    let mut still_open = 0;
    for s in &mut sockets {
        if !closed_within(s, deadline.saturating_duration_since(Instant::now())) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "sockets still open 15 s after a 1 s header-read timeout"
    );
    assert_eq!(
        send(node.addr, "GET", "/health", &[], None)
            .expect("health")
            .status,
        200
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let node = start(r#""header_read_timeout": "1s""#, &[]);
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("an answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Kept alive, then nothing: closed about 1 s later.
    assert!(
        closed_within(&mut s, Duration::from_secs(6)),
        "idle keep-alive connection still open"
    );
}

#[test]
fn the_connection_cap_is_logged_once_and_health_recovers_when_idle_sockets_close() {
    let node = start(
        r#""max_connections": 40, "header_read_timeout": "60s""#,
        &[],
    );
    let held = half_open(node.addr, 40);
    // Give the server time to accept all of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    while refused < 20 {
        assert!(
            Instant::now() < deadline,
            "no connection refused at the cap: {}",
            node.log_text()
        );
        if let Ok(a) = send(node.addr, "GET", "/health", &[], None)
            && a.status == 503
        {
            assert_eq!(
                a.body["error"]
                    .as_str()
                    .map(|e| e.contains("max_connections")),
                Some(true),
                "{}",
                a.body
            );
            refused += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let log = node.log_text();
    assert_eq!(
        log.matches("HTTP connection cap reached").count(),
        1,
        "{log}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(node.addr, "GET", "/health", &[], None)
        .map(|a| a.status)
        .unwrap_or(0)
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "/health not served again after the idle sockets closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node.log_text();
    assert_eq!(
        log.matches("HTTP connection cap reached").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("below the cap again").count(), 1, "{log}");
    let a = send(node.addr, "GET", "/metrics", &[], None).expect("metrics");
    assert_eq!(a.status, 200);
    let mut stream = TcpStream::connect(node.addr).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let refused_total: f64 = text
        .lines()
        .find(|l| l.starts_with("bifrost_http_connections_refused_total"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("no refused counter: {text}"));
    assert!(refused_total >= 20.0, "{refused_total}");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    // A body that stalls: the head is complete (the header timer stops), the body never comes.
    let node = start(r#""idle_timeout": "1s", "header_read_timeout": "60s""#, &[]);
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.write_all(b"POST /v1/counters/k/add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(8)),
        "stalled connection still open"
    );
}

#[test]
fn status_subcommand_sends_its_token() {
    let env = tokens_env();
    let node = start("", &[("BIFROST_HTTP_TOKENS", &env)]);
    let url = format!("http://{}", node.addr);
    let status = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
        cmd.args(["status", "--json", "--url", &url])
            .env_remove("BIFROST_HTTP_TOKEN");
        if let Some(t) = token {
            cmd.env("BIFROST_HTTP_TOKEN", t);
        }
        output_within(cmd)
    };
    let out = status(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = status(Some(READ_TOKEN));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"local_node\": \"sec\""),
        "{out:?}"
    );
}

fn write_pem(dir: &Path) -> (PathBuf, PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let cert_pem = cert.cert.pem();
    std::fs::write(&cert_path, &cert_pem).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    (cert_path, key_path, cert_pem)
}

/// `GET path` over TLS, trusting only `cert_pem`, with SNI `localhost`: the status line and the body.
fn tls_get(addr: SocketAddr, cert_pem: &str, path: &str) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    match tls.read_to_string(&mut out) {
        Ok(_) => Ok(out),
        // The server may close without close_notify after Connection: close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}

#[test]
fn tls_on_the_http_listener() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = write_pem(certs.path());
    let http = format!(
        r#""tls": {{ "cert_file": "{}", "key_file": "{}" }}"#,
        cert.display(),
        key.display()
    );
    let mut node = spawn(&http, &[], false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(text) = tls_get(node.addr, &cert_pem, "/health") {
            break text;
        }
        assert!(
            node.child.try_wait().expect("try_wait").is_none(),
            "{}",
            node.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no TLS /health within 20 s: {}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ok\""), "{answer}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = send(node.addr, "GET", "/health", &[], None)
        .map(|a| a.status)
        .unwrap_or(0);
    assert_ne!(plain, 200);

    // Missing or bad files: run exits 2 naming the field.
    let dir = tempfile::tempdir().expect("tempdir");
    for (tls, field) in [
        (
            format!(
                r#"{{ "cert_file": "{}", "key_file": "{}" }}"#,
                dir.path().join("none.pem").display(),
                key.display()
            ),
            "cluster_config.http.tls.cert_file",
        ),
        (
            format!(
                r#"{{ "cert_file": "{}", "key_file": "{}" }}"#,
                cert.display(),
                cert.display()
            ),
            "cluster_config.http.tls.key_file",
        ),
    ] {
        let path = dir.path().join("c.json");
        std::fs::write(&path, format!(r#"{{ "cluster_config": {{ "http": {{ "listen": "127.0.0.1:1", "tls": {tls} }} }} }}"#)).expect("write");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
        cmd.args(["run", "--config"]).arg(&path);
        let out = output_within(cmd);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{field}: {out:?}"
        );
    }
}

#[test]
fn the_status_page_is_served_without_a_token_and_the_json_it_reads_keeps_the_read_scope() {
    let env = tokens_env();
    let node = start_cluster("", &[("BIFROST_HTTP_TOKENS", &env)]);
    let read = bearer(READ_TOKEN);
    // The page's static files: no token needed, locked down by their headers.
    for (path, media) in [
        ("/", "text/html"),
        ("/ui", "text/html"),
        ("/ui/status.js", "text/javascript"),
        ("/ui/status.css", "text/css"),
    ] {
        let a = send(node.addr, "GET", path, &[], None).expect("page");
        assert_eq!(a.status, 200, "{path}: {}", a.head);
        assert!(
            a.head.contains(&format!("content-type: {media}")),
            "{path}: {}",
            a.head
        );
        assert!(
            a.head
                .contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{path}: {}",
            a.head
        );
        assert!(a.head.contains("frame-ancestors 'none'"), "{}", a.head);
        assert!(
            a.head.contains("x-content-type-options: nosniff"),
            "{}",
            a.head
        );
    }
    // Anything else under /ui, and any write to the page, is not open.
    let a = send(node.addr, "GET", "/ui/other.js", &[], None).expect("other");
    assert_json_error(&a, 401, Some("authorization"));
    let a = send(node.addr, "POST", "/ui", &[JSON], Some("{}")).expect("post");
    assert_json_error(&a, 401, Some("authorization"));
    // The JSON the page reads: 401 without a token, 200 with the read scope.
    for path in ["/cluster/peers", "/v1/keys/hot", "/v1/keys/hot?n=100"] {
        let a = send(node.addr, "GET", path, &[], None).expect("get");
        assert_json_error(&a, 401, Some("authorization"));
        let a = send(node.addr, "GET", path, &[("Authorization", &read)], None).expect("get");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    let a = send(
        node.addr,
        "GET",
        "/cluster/peers",
        &[("Authorization", &read)],
        None,
    )
    .expect("peers");
    assert!(
        a.body["peers"].is_array() && a.body["checks"]["sent"].is_u64(),
        "{}",
        a.body
    );
    // The hot keys are bounded: n in 1..=100.
    for bad in ["0", "101", "-1", "many"] {
        let a = send(
            node.addr,
            "GET",
            &format!("/v1/keys/hot?n={bad}"),
            &[("Authorization", &read)],
            None,
        )
        .expect("hot");
        assert_json_error(&a, 400, Some("n"));
    }
    let a = send(
        node.addr,
        "POST",
        "/v1/ratelimit/check",
        &[JSON, ("Authorization", &bearer(CHECK_TOKEN))],
        Some(r#"{"key": "page/k", "window": "1m", "limit": 1}"#),
    )
    .expect("check");
    assert_eq!(a.status, 200, "{}", a.body);
    // One scan answers for a second (HOT_KEYS_TTL_MS): the key shows in the next.
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = send(
            node.addr,
            "GET",
            "/v1/keys/hot?n=1",
            &[("Authorization", &read)],
            None,
        )
        .expect("hot");
        if a.body["keys"][0]["key"] == "page/k" {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the key never showed: {}",
            a.body
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(a.body["keys"][0]["limit"], 1, "{}", a.body);
    assert_eq!(a.body["keys"][0]["algorithm"], "fixed_window", "{}", a.body);
    assert!(
        a.body["decisions"]["admitted"].as_u64() >= Some(1),
        "{}",
        a.body
    );
}
