//! Consul discovery against an in-test Consul agent double.
//!
//! Consul cannot be installed on this machine (no Debian package; the project installs nothing from HashiCorp's
//! site), so these tests run the backend against an HTTP server (axum on 127.0.0.1:0) that follows Consul's
//! documented agent and health API for the three endpoints the backend uses:
//! - `PUT /v1/agent/service/register` — <https://developer.hashicorp.com/consul/api-docs/agent/service#register-service>
//!   (JSON body with `ID`, `Name`, `Address`, `Port`, `Check` {`TCP`, `Interval`, `Timeout`,
//!   `DeregisterCriticalServiceAfter`}; `Name` required; 200 with an empty body; ACL `service:write`);
//! - `GET /v1/health/service/:service?passing` — <https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service>
//!   (an array of `{"Node": {...}, "Service": {...}, "Checks": [...]}`; `passing` keeps only instances whose
//!   checks all pass; ACL `node:read,service:read`);
//! - `PUT /v1/agent/service/deregister/:service_id` — <https://developer.hashicorp.com/consul/api-docs/agent/service#deregister-service>
//!   (200 with an empty body, 404 for an unknown ID; ACL `service:write`);
//! - the ACL token in the `X-Consul-Token` header — <https://developer.hashicorp.com/consul/api-docs/api-structure#authentication>;
//!   a refused token is answered 403 with `Permission denied: ...` or `ACL not found`
//!   (<https://developer.hashicorp.com/consul/docs/security/acl>).
//!
//! The double stores registrations, records every request (method, path, query, headers, JSON body) so the tests
//! assert the exact request shapes written down below, runs each registered TCP check when asked for health (a
//! real TCP connect to the registered loopback address; real Consul runs it every `Interval` instead), and lets a
//! test force an instance critical. Every address is on loopback; every wait is a bounded poll.
#![cfg(feature = "consul")]

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bifrost_cluster::config::{ClusterConfig, DiscoveryConfig, load_from_str};
use bifrost_cluster::counter::Window;
use bifrost_cluster::discovery::consul::ConsulDiscovery;
use bifrost_cluster::discovery::{Discovery, DiscoveryError, LocalNode};
use bifrost_cluster::membership::MemberState;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::TransportOptions;
use serde_json::{Value, json};

mod support;
use support::{free_port, wait_for};

const SECRET: &str = "XLiku60Z/GsF9yvrR1XJwpnqqQkgIfq/0KVLF9DVd4I=";

/// One request as the double received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Value>,
}

#[derive(Debug, Clone)]
struct Registered {
    id: String,
    name: String,
    address: String,
    port: u16,
    /// The TCP check's target, when the registration has one.
    tcp_check: Option<String>,
}

#[derive(Default)]
struct AgentState {
    services: BTreeMap<String, Registered>,
    /// Service IDs the test forces critical.
    critical: HashSet<String>,
    requests: Vec<Recorded>,
    /// When set, requests must carry this token in `X-Consul-Token`.
    required_token: Option<String>,
    /// When set, every request is answered with this status and body (an agent in trouble).
    fail_with: Option<(StatusCode, String)>,
}

/// The agent's own node address (what `Node.Address` says).
const AGENT_NODE_ADDRESS: &str = "127.0.0.1";

/// A Consul agent double on 127.0.0.1, stopped on drop.
struct ConsulDouble {
    addr: SocketAddr,
    state: Arc<Mutex<AgentState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ConsulDouble {
    async fn start(required_token: Option<&str>) -> ConsulDouble {
        let state = Arc::new(Mutex::new(AgentState {
            required_token: required_token.map(str::to_owned),
            ..AgentState::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the double");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ConsulDouble {
            addr,
            state,
            server,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().expect("double state")
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    fn registered_ids(&self) -> Vec<String> {
        self.state().services.keys().cloned().collect()
    }
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

/// The whole agent: records the request, checks the token, then serves the three documented endpoints.
async fn handle(State(state): State<Arc<Mutex<AgentState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let json_body = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: {e}"),
                );
            }
        }
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let (required_token, fail_with) = {
        let mut s = state.lock().expect("state");
        s.requests.push(Recorded {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            body: json_body.clone(),
        });
        (s.required_token.clone(), s.fail_with.clone())
    };
    if let Some((status, body)) = fail_with {
        return plain(status, body);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let token = parts
        .headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let acl = |permission: &str, on: &str| -> Option<Response> {
        let required = required_token.as_deref()?;
        match token.as_deref() {
            Some(t) if t == required => None,
            Some(_) => Some(plain(StatusCode::FORBIDDEN, "ACL not found")),
            None => Some(plain(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission denied: anonymous token lacks permission '{permission}' on {on:?}"
                ),
            )),
        }
    };
    match (parts.method.clone(), segments.as_slice()) {
        (Method::PUT, ["v1", "agent", "service", "register"]) => {
            let Some(body) = json_body else {
                return plain(StatusCode::BAD_REQUEST, "Request decode failed: empty body");
            };
            let Some(name) = body
                .get("Name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                return plain(StatusCode::BAD_REQUEST, "Missing service name");
            };
            if let Some(denied) = acl("service:write", name) {
                return denied;
            }
            let id = body
                .get("ID")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
                .unwrap_or(name);
            let port = match body.get("Port") {
                None => 0,
                Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()) {
                    Some(p) => p,
                    None => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "Request decode failed: Port: not a port number",
                        );
                    }
                },
            };
            let tcp_check = match body.get("Check") {
                None => None,
                Some(check) => {
                    let Some(tcp) = check.get("TCP").and_then(Value::as_str) else {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "Invalid check: only TCP checks are modelled by this double",
                        );
                    };
                    if check.get("Interval").and_then(Value::as_str).is_none() {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP or UDP checks",
                        );
                    }
                    Some(tcp.to_owned())
                }
            };
            let registered = Registered {
                id: id.to_owned(),
                name: name.to_owned(),
                address: body
                    .get("Address")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                port,
                tcp_check,
            };
            state
                .lock()
                .expect("state")
                .services
                .insert(registered.id.clone(), registered);
            plain(StatusCode::OK, "")
        }
        (Method::PUT, ["v1", "agent", "service", "deregister", id]) => {
            let mut s = state.lock().expect("state");
            let Some(name) = s.services.get(*id).map(|r| r.name.clone()) else {
                return plain(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}"));
            };
            drop(s);
            if let Some(denied) = acl("service:write", &name) {
                return denied;
            }
            s = state.lock().expect("state");
            s.services.remove(*id);
            plain(StatusCode::OK, "")
        }
        (Method::GET, ["v1", "health", "service", name]) => {
            if let Some(denied) = acl("service:read", name) {
                return denied;
            }
            // `?passing`, `?passing=true`, `?passing=1`: only instances whose checks all pass.
            let passing_only = query.as_deref().is_some_and(|q| {
                q.split('&').any(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    k == "passing" && matches!(v, "" | "true" | "1")
                })
            });
            let (instances, critical) = {
                let s = state.lock().expect("state");
                let instances: Vec<Registered> = s
                    .services
                    .values()
                    .filter(|r| r.name == *name)
                    .cloned()
                    .collect();
                (instances, s.critical.clone())
            };
            let mut entries = Vec::new();
            for r in instances {
                let status = if critical.contains(&r.id) {
                    "critical"
                } else {
                    match &r.tcp_check {
                        None => "passing",
                        Some(target) => tcp_check(target).await,
                    }
                };
                if passing_only && status != "passing" {
                    continue;
                }
                let mut checks = vec![json!({
                    "Node": "test-agent", "CheckID": "serfHealth", "Name": "Serf Health Status",
                    "Status": "passing", "ServiceID": "", "ServiceName": ""
                })];
                if r.tcp_check.is_some() || critical.contains(&r.id) {
                    checks.push(json!({
                        "Node": "test-agent", "CheckID": format!("service:{}", r.id),
                        "Name": format!("Service '{}' check", r.name), "Status": status,
                        "ServiceID": r.id, "ServiceName": r.name
                    }));
                }
                entries.push(json!({
                    "Node": {
                        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "test-agent",
                        "Address": AGENT_NODE_ADDRESS, "Datacenter": "dc1",
                        "TaggedAddresses": { "lan": AGENT_NODE_ADDRESS, "wan": AGENT_NODE_ADDRESS },
                        "Meta": {}
                    },
                    "Service": {
                        "ID": r.id, "Service": r.name, "Tags": [], "Address": r.address,
                        "Port": r.port, "Meta": {}
                    },
                    "Checks": checks
                }));
            }
            (
                StatusCode::OK,
                [
                    ("X-Consul-Index", "1"),
                    ("Content-Type", "application/json"),
                ],
                Value::Array(entries).to_string(),
            )
                .into_response()
        }
        (_, ["v1", "agent", "service", "register" | "deregister", ..])
        | (_, ["v1", "health", "service", _]) => plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", parts.method),
        ),
        _ => plain(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// The TCP check, as Consul runs it: passing when a TCP connection opens. Loopback targets only.
async fn tcp_check(target: &str) -> &'static str {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        return "critical";
    };
    if !addr.ip().is_loopback() {
        // Tests never send traffic off loopback.
        return "critical";
    }
    match tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(_)) => "passing",
        _ => "critical",
    }
}

fn discovery_config(service: &str, agent: &str, token: Option<&str>) -> DiscoveryConfig {
    let token = token.map_or(String::new(), |t| format!(r#", "consul_token": "{t}""#));
    let text = format!(
        r#"{{ "cluster_config": {{ "enabled": true, "discovery": {{
            "enabled": true, "type": "consul", "service_name": "{service}",
            "consul_address": "{agent}", "dial_timeout": "2s"{token} }},
            "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#
    );
    load_from_str(&text)
        .expect("valid test config")
        .config
        .discovery
}

fn local(node_id: &str, gossip: SocketAddr) -> LocalNode {
    LocalNode {
        node_id: node_id.into(),
        gossip_addr: gossip,
        gossip_port: gossip.port(),
        secret: None,
    }
}

/// A backend whose token is exactly `token` (never the environment's `CONSUL_HTTP_TOKEN`).
fn backend(
    double: &ConsulDouble,
    service: &str,
    node: &str,
    gossip: SocketAddr,
    token: Option<&str>,
) -> ConsulDiscovery {
    ConsulDiscovery::with_token(
        &discovery_config(service, &double.addr.to_string(), None),
        &local(node, gossip),
        token.map(str::to_owned),
    )
    .expect("backend")
}

/// A TCP listener standing in for a node's gossip port (its TCP health listener).
fn gossip_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_sends_the_documented_body_with_a_tcp_check_and_the_token() {
    let double = ConsulDouble::start(Some("tok-123")).await;
    let gossip: SocketAddr = "127.0.0.1:10101".parse().expect("addr");
    // The token from `discovery.consul_token`, through the public constructor.
    let d = ConsulDiscovery::new(
        &discovery_config("bifrost-reg", &double.addr.to_string(), Some("tok-123")),
        &local("node-a", gossip),
    )
    .await
    .expect("backend");
    d.register().await.expect("registered");

    let requests = double.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, Method::PUT);
    assert_eq!(r.path, "/v1/agent/service/register");
    assert_eq!(r.query, None);
    assert_eq!(
        r.headers
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok()),
        Some("tok-123")
    );
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    // The documented shape (agent/service#register-service, agent/check#tcp for the check fields).
    assert_eq!(
        r.body,
        Some(json!({
            "ID": "node-a",
            "Name": "bifrost-reg",
            "Address": "127.0.0.1",
            "Port": 10101,
            "Check": {
                "TCP": "127.0.0.1:10101",
                "Interval": "10s",
                "Timeout": "5s",
                "DeregisterCriticalServiceAfter": "1m"
            }
        }))
    );
    assert_eq!(double.registered_ids(), ["node-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_asks_for_passing_instances_only_and_falls_back_to_the_node_address() {
    let double = ConsulDouble::start(None).await;
    let service = "bifrost-health";
    let (_a_port, a) = gossip_listener();
    let (_b_port, b) = gossip_listener();
    let (_c_port, c) = gossip_listener();
    let (d_port, d_addr) = gossip_listener();
    let nodes: Vec<ConsulDiscovery> = [("a", a), ("b", b), ("c", c), ("d", d_addr)]
        .into_iter()
        .map(|(id, addr)| backend(&double, service, id, addr, None))
        .collect();
    for n in &nodes {
        n.register().await.expect("registered");
    }
    // Another service on the same agent is never returned.
    backend(&double, "someone-else", "x", a, None)
        .register()
        .await
        .expect("registered");
    // An instance registered by someone else without an Address: Consul's answer carries the node's address.
    let external = reqwest_free_put(
        double.addr,
        "/v1/agent/service/register",
        &json!({ "ID": "external", "Name": service, "Port": 4555 }),
    )
    .await;
    assert_eq!(external, 200);

    double.state().critical.insert("b".into()); // forced critical (e.g. failing checks)
    drop(d_port); // its gossip port is gone: the TCP check fails

    let mut found = nodes[0].discover().await.expect("discover");
    found.sort();
    let mut want = vec![
        a,
        c,
        SocketAddr::new(AGENT_NODE_ADDRESS.parse().expect("ip"), 4555),
    ];
    want.sort();
    assert_eq!(found, want);

    let health: Vec<Recorded> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::GET)
        .collect();
    assert_eq!(health.len(), 1, "{health:?}");
    assert_eq!(health[0].path, format!("/v1/health/service/{service}"));
    assert_eq!(health[0].query.as_deref(), Some("passing"));
    assert_eq!(health[0].body, None);

    // Once b passes again it is back.
    double.state().critical.clear();
    let found = nodes[0].discover().await.expect("discover");
    assert!(found.contains(&b) && !found.contains(&d_addr), "{found:?}");
}

/// A raw `PUT` with a JSON body to the double (what another Consul client would send).
async fn reqwest_free_put(addr: SocketAddr, path: &str, body: &Value) -> u16 {
    let body = body.to_string();
    tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || {
            support::http::request(addr, "PUT", &path, Some(&body))
                .expect("request")
                .0
        }
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_fails_naming_its_address() {
    let port = free_port(); // nobody listens here
    let agent = format!("127.0.0.1:{port}");
    let d = ConsulDiscovery::with_token(
        &discovery_config("bifrost-down", &agent, None),
        &local("lonely", "127.0.0.1:4000".parse().expect("addr")),
        None,
    )
    .expect("construction contacts nothing");
    let register = d.register().await.expect_err("register");
    let discover = d.discover().await.expect_err("discover");
    let deregister = d.deregister().await.expect_err("deregister");
    for (what, error) in [
        ("register", register),
        ("discover", discover),
        ("deregister", deregister),
    ] {
        eprintln!("{what}: {error}");
        assert!(
            matches!(&error, DiscoveryError::Unreachable { backend: "consul", target, .. }
                if target.contains(&agent)),
            "{what}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_forbidden_naming_the_missing_permission() {
    let double = ConsulDouble::start(Some("the-right-token")).await;
    let gossip: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
    for token in [None, Some("a-wrong-token")] {
        let d = backend(&double, "bifrost-acl", "n1", gossip, token);
        let error = d.register().await.expect_err("register");
        eprintln!("token {token:?}: register: {error}");
        assert!(
            matches!(&error, DiscoveryError::Forbidden { backend: "consul", reason }
                if reason.contains("service:write") && reason.contains("bifrost-acl")
                    && reason.contains("403") && reason.contains(&double.addr.to_string())),
            "{error:?}"
        );
        let error = d.discover().await.expect_err("discover");
        assert!(
            matches!(&error, DiscoveryError::Forbidden { reason, .. }
                if reason.contains("service:read") && reason.contains("node:read")),
            "{error:?}"
        );
        // The token itself never shows up in an error.
        if let Some(token) = token {
            assert!(!error.to_string().contains(token), "{error}");
        }
    }
    assert!(double.registered_ids().is_empty());
    // With the right token the same calls succeed.
    let d = backend(
        &double,
        "bifrost-acl",
        "n1",
        gossip,
        Some("the-right-token"),
    );
    d.register().await.expect("registered");
    d.deregister().await.expect("deregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_error_status_is_reported_with_status_and_body() {
    let double = ConsulDouble::start(None).await;
    double.state().fail_with = Some((
        StatusCode::INTERNAL_SERVER_ERROR,
        "rpc error making call: No cluster leader".into(),
    ));
    let d = backend(
        &double,
        "bifrost-500",
        "n1",
        "127.0.0.1:4000".parse().expect("addr"),
        None,
    );
    for error in [
        d.register().await.expect_err("register"),
        d.discover().await.expect_err("discover"),
    ] {
        assert!(
            matches!(&error, DiscoveryError::BadAnswer { backend: "consul", reason }
                if reason.contains("500") && reason.contains("No cluster leader")),
            "{error:?}"
        );
    }
    // An answer that is not the documented array is a BadAnswer too, naming the endpoint.
    double.state().fail_with = Some((StatusCode::OK, "{\"not\": \"a list\"}".into()));
    let error = d.discover().await.expect_err("discover");
    assert!(
        matches!(&error, DiscoveryError::BadAnswer { reason, .. } if reason.contains("/v1/health/service/bifrost-500")),
        "{error:?}"
    );
}

fn node_config(node: &str, port: u16, service: &str, agent: SocketAddr) -> ClusterConfig {
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}",
            "discovery": {{
                "enabled": true, "type": "consul", "service_name": "{service}",
                "consul_address": "{agent}", "consul_token": "cluster-token",
                "dial_timeout": "2s", "interval": "1s"
            }},
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "replication": {{ "anti_entropy_interval": "1s" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#
    );
    load_from_str(&text).expect("valid test config").config
}

fn node_options() -> NodeOptions {
    NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides: Default::default(),
    }
}

fn alive_peers(node: &ClusterHandle) -> usize {
    node.members().map_or(0, |t| {
        t.members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_through_consul_converge_and_deregister_on_leave() {
    let double = ConsulDouble::start(Some("cluster-token")).await;
    let service = "bifrost-cluster";
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            Cluster::start_with(
                node_config(&format!("node-{i}"), free_port(), service, double.addr),
                node_options(),
            )
            .await
            .expect("node starts"),
        );
    }
    let took = wait_for(
        Duration::from_secs(30),
        "every member table to show the two others alive",
        || nodes.iter().all(|n| alive_peers(n) == 2),
    )
    .await;
    eprintln!("three nodes found each other through the Consul double in {took:?}");

    // Each node registered its advertised gossip address, with the TCP check on it (which the double ran
    // against the node's TCP health listener: every node passed, or the others could not have found it).
    {
        let s = double.state();
        assert_eq!(s.services.len(), 3);
        for n in &nodes {
            let r = &s.services[n.node_id()];
            let addr = n.advertised_addr().expect("cluster mode");
            assert_eq!(r.name, service);
            assert_eq!(r.address, addr.ip().to_string());
            assert_eq!(r.port, addr.port());
            assert_eq!(r.tcp_check.as_deref(), Some(addr.to_string().as_str()));
        }
    }

    let window = Window::parse("1h").expect("window");
    let epoch = window.epoch_at(nodes[0].clock().now_unix_ms());
    let per_node = [11_u64, 2_000, 98_765];
    for (node, n) in nodes.iter().zip(per_node) {
        node.store()
            .handle("vk/consul", window)
            .expect("handle")
            .add(n);
    }
    let total: u64 = per_node.iter().sum();
    wait_for(
        Duration::from_secs(15),
        "every node to read the exact total",
        || {
            nodes.iter().all(|n| {
                n.store()
                    .handle("vk/consul", window)
                    .expect("handle")
                    .global_at(epoch)
                    == total
            })
        },
    )
    .await;

    // Graceful leave: the node deregisters itself (after its final flush).
    let leaving = nodes.pop().expect("three nodes");
    let leaving_id = leaving.node_id().to_owned();
    leaving.shutdown().await;
    let deregs: Vec<Recorded> = double
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/agent/service/deregister/"))
        .collect();
    assert_eq!(deregs.len(), 1, "{deregs:?}");
    assert_eq!(deregs[0].method, Method::PUT);
    assert_eq!(
        deregs[0].path,
        format!("/v1/agent/service/deregister/{leaving_id}")
    );
    assert_eq!(
        deregs[0]
            .headers
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok()),
        Some("cluster-token")
    );
    let mut left: Vec<String> = nodes.iter().map(|n| n.node_id().to_owned()).collect();
    left.sort();
    assert_eq!(double.registered_ids(), left);
    // Every health query the nodes sent was `?passing`.
    assert!(
        double
            .requests()
            .iter()
            .filter(|r| r.method == Method::GET)
            .all(|r| r.path == format!("/v1/health/service/{service}")
                && r.query.as_deref() == Some("passing"))
    );
    for n in &nodes {
        n.shutdown().await;
    }
    assert!(double.registered_ids().is_empty());
}
