//! The Envoy RLS v3 server (issue 15), driven by an independent client: Python grpcio (Debian
//! `python3-grpcio`) with messages built from the published `rls.proto` (`tests/support/rls_client.py`), against
//! three `bifrost-cluster run` processes on loopback that share one global count, with the descriptors of
//! envoyproxy/ratelimit's own `examples/ratelimit/config/example.yaml` (domain `rl`, loaded unchanged).
//!
//! Without python3-grpcio / python3-grpc-tools the test is skipped with a message, unless `REQUIRE_GRPCIO=1`
//! (CI), where it fails. Every child is killed when its guard drops; every wait is a bounded poll.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::free_port;
use support::http::{get, request_text};

const SECRET: &str = "Yf3kq3Wm1vN8x0aZc7eR2tHuL9pB4sD6gJ5oQ1iK8mE=";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoy-ratelimit")
}

/// Debian's interpreter (where python3-grpcio installs), or `BIFROST_PYTHON`.
fn python() -> String {
    std::env::var("BIFROST_PYTHON").unwrap_or_else(|_| {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".to_owned()
        } else {
            "python3".to_owned()
        }
    })
}

/// Whether the client's modules import; `None` to skip (after printing why).
fn client_available() -> bool {
    let required = std::env::var("REQUIRE_GRPCIO").is_ok_and(|v| v == "1");
    let ok = Command::new(python())
        .args(["-c", "import grpc, grpc_tools.protoc, google.protobuf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required,
            "REQUIRE_GRPCIO=1 but {} cannot import grpc, grpc_tools and google.protobuf (Debian python3-grpcio python3-grpc-tools)",
            python()
        );
        eprintln!(
            "SKIPPED: python3-grpcio / python3-grpc-tools not installed for {} (apt-get install python3-grpcio python3-grpc-tools); set REQUIRE_GRPCIO=1 to fail instead",
            python()
        );
    }
    ok
}

/// The protos shipped in the envoy-types crate source, in the cargo registry this build used.
fn envoy_protos() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .expect("envoy-types in Cargo.lock");
    let registry = home.join("registry/src");
    for entry in std::fs::read_dir(&registry).expect("cargo registry/src") {
        let proto = entry
            .expect("registry entry")
            .path()
            .join(format!("envoy-types-{version}/proto"));
        if proto
            .join("data-plane-api/envoy/service/ratelimit/v3/rls.proto")
            .exists()
        {
            return proto;
        }
    }
    panic!(
        "envoy-types-{version}/proto not found under {}",
        registry.display()
    );
}

/// The Python client process: one JSON command per line in, one answer per line out.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    fn start() -> Client {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rls_client.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(envoy_protos())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the python client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Client {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the client");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the client");
        assert!(!line.is_empty(), "the python client exited on {command}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// `ShouldRateLimit` on `node`; the response (panics on a gRPC error).
    fn check(&mut self, node: &Node, request: Value) -> Value {
        let answer =
            self.call(json!({"op": "check", "addr": node.grpc.to_string(), "request": request}));
        match answer.get("ok") {
            Some(ok) => ok.clone(),
            None => panic!("{request} on {}: {answer}", node.name),
        }
    }

    /// The gRPC status code of a refused `ShouldRateLimit`.
    fn refused(&mut self, node: &Node, request: Value) -> (String, String) {
        let answer =
            self.call(json!({"op": "check", "addr": node.grpc.to_string(), "request": request}));
        let e = answer
            .get("error")
            .unwrap_or_else(|| panic!("not refused: {answer}"));
        (
            e["code"].as_str().unwrap_or("").to_owned(),
            e["details"].as_str().unwrap_or("").to_owned(),
        )
    }
}

struct Node {
    name: String,
    http: SocketAddr,
    grpc: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(dir: &Path, name: &str, gossip: u16, peers: &[u16], limits: &Path) -> Node {
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let config = dir.join(format!("{name}.json"));
        let text = format!(
            r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": [{}],
                 "gossip": {{ "port": {gossip} }},
                 "replication": {{ "flush_interval": "20ms" }},
                 "http": {{ "listen": "{http}", "max_request_n": 1000 }},
                 "grpc": {{ "listen": "{grpc}", "limits_file": {:?}, "response_headers": true,
                            "reload_interval": "200ms" }},
                 "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#,
            peers.join(","),
            limits.display().to_string()
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
            .args(["run", "--bind-ip", "127.0.0.1", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("BIFROST_CLUSTER_SECRET")
            .env_remove("BIFROST_HTTP_TOKENS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn bifrost-cluster run");
        Node {
            name: name.to_owned(),
            http,
            grpc,
            log,
            child,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn healthy_cluster(&self) -> bool {
        matches!(get(self.http, "/cluster/status"), Ok((200, s))
            if s["members"] == 3 && s["healthy_members"] == 3 && s["cluster_health"] == "HEALTHY")
    }

    /// The global count of a counter key in the current 1-minute window, as this node sees it.
    fn global(&self, key: &str) -> u64 {
        let path: String = key
            .chars()
            .map(|c| match c {
                '|' => "%7C".to_owned(),
                '=' => "%3D".to_owned(),
                c => c.to_string(),
            })
            .collect();
        match get(self.http, &format!("/v1/counters/{path}?window=1m")) {
            Ok((200, v)) => v["global"].as_u64().unwrap_or(0),
            _ => 0,
        }
    }

    fn metric(&self, sample: &str) -> Option<f64> {
        let (code, text) = request_text(self.http, "GET", "/metrics", None).ok()?;
        assert_eq!(code, 200, "{text}");
        text.lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
    }
}

fn wait_until(limit: Duration, what: &str, nodes: &[Node], mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            for node in nodes {
                eprintln!("---- log of {} ----\n{}", node.name, node.log_text());
            }
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn descriptor(entries: &[(&str, &str)]) -> Value {
    json!({ "entries": entries.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>() })
}

fn header(response: &Value, name: &str) -> Option<String> {
    response["response_headers_to_add"]
        .as_array()?
        .iter()
        .find(|h| h["key"] == name)
        .and_then(|h| h["value"].as_str().map(str::to_owned))
}

#[test]
fn envoy_examples_hold_global_limits_across_three_nodes() {
    if !client_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A limits directory (as a ConfigMap mount): envoyproxy/ratelimit's example, unchanged.
    let limits = dir.path().join("limits");
    std::fs::create_dir(&limits).expect("limits dir");
    std::fs::copy(
        fixtures().join("examples-example.yaml"),
        limits.join("example.yaml"),
    )
    .expect("copy the example");
    let ports = [free_port(), free_port(), free_port()];
    let nodes: Vec<Node> = ["rls-a", "rls-b", "rls-c"]
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let others: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
            Node::start(dir.path(), name, port, &others, &limits)
        })
        .collect();
    wait_until(
        Duration::from_secs(40),
        "a HEALTHY 3-node cluster",
        &nodes,
        || nodes.iter().all(Node::healthy_cluster),
    );
    let mut client = Client::start();
    for node in &nodes {
        for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
            let answer = client
                .call(json!({"op": "health", "addr": node.grpc.to_string(), "service": service}));
            assert_eq!(
                answer["ok"]["status"], "SERVING",
                "{} {service:?}: {answer}",
                node.name
            );
        }
    }
    // Every limit below is per minute: start early in a minute so no boundary resets the counts mid-test.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if second > 30 {
        std::thread::sleep(Duration::from_secs(61 - second));
    }
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];

    // ("foo", any) ("bar", any other than bkthomps/banned): 3 per minute, one count per foo value, global.
    let bar = descriptor(&[("foo", "run"), ("bar", "other")]);
    let key = "rls|rl|foo=run|bar=other";
    let r = client.check(
        a,
        json!({"domain": "rl", "descriptors": [bar], "hits_addend": 2}),
    );
    assert_eq!(r["overall_code"], "OK", "{r}");
    let status = &r["statuses"][0];
    assert_eq!(status["code"], "OK");
    assert_eq!(status["current_limit"]["requests_per_unit"], 3);
    assert_eq!(status["current_limit"]["unit"], "MINUTE");
    assert_eq!(status["limit_remaining"], 1);
    assert!(status["duration_until_reset"].is_string(), "{status}");
    assert_eq!(header(&r, "RateLimit-Limit").as_deref(), Some("3"));
    assert_eq!(header(&r, "RateLimit-Remaining").as_deref(), Some("1"));
    assert!(header(&r, "Retry-After").is_none(), "{r}");
    wait_until(Duration::from_secs(10), "b to see 2 hits", &nodes, || {
        b.global(key) == 2
    });
    let r = client.check(b, json!({"domain": "rl", "descriptors": [bar]}));
    assert_eq!(r["overall_code"], "OK", "{r}");
    assert_eq!(r["statuses"][0]["limit_remaining"], 0);
    wait_until(Duration::from_secs(10), "c to see 3 hits", &nodes, || {
        c.global(key) == 3
    });
    // The third node: over the one global limit.
    let r = client.check(c, json!({"domain": "rl", "descriptors": [bar]}));
    assert_eq!(r["overall_code"], "OVER_LIMIT", "{r}");
    assert_eq!(r["statuses"][0]["code"], "OVER_LIMIT");
    assert_eq!(r["statuses"][0]["limit_remaining"], 0);
    assert_eq!(header(&r, "RateLimit-Remaining").as_deref(), Some("0"));
    let reset: u64 = header(&r, "RateLimit-Reset")
        .and_then(|v| v.parse().ok())
        .expect("reset");
    assert!((1..=60).contains(&reset), "{r}");
    assert_eq!(header(&r, "Retry-After"), header(&r, "RateLimit-Reset"));
    // Another foo value has its own count.
    let r = client.check(c, json!({"domain": "rl", "descriptors": [descriptor(&[("foo", "other-run"), ("bar", "other")])]}));
    assert_eq!(r["overall_code"], "OK", "{r}");

    // Descriptor-level hits_addend overrides the request's: ("foo", x) ("bar", "bkthomps") is 1 per minute.
    let mut one = descriptor(&[("foo", "run"), ("bar", "bkthomps")]);
    one["hits_addend"] = json!(1);
    let r = client.check(
        a,
        json!({"domain": "rl", "descriptors": [one], "hits_addend": 5}),
    );
    assert_eq!(
        r["overall_code"], "OK",
        "descriptor hits_addend 1 fits a limit of 1: {r}"
    );
    wait_until(
        Duration::from_secs(10),
        "b to see the bkthomps hit",
        &nodes,
        || b.global("rls|rl|foo=run|bar=bkthomps") == 1,
    );
    // hits_addend 0 means 1: over the limit now.
    let r = client.check(
        b,
        json!({"domain": "rl", "hits_addend": 0,
        "descriptors": [descriptor(&[("foo", "run"), ("bar", "bkthomps")])]}),
    );
    assert_eq!(r["overall_code"], "OVER_LIMIT", "{r}");
    // replaces: ("category", "account") replaces the rule named bkthomps, whose descriptor is then not limited.
    let r = client.check(
        c,
        json!({"domain": "rl", "descriptors": [
            descriptor(&[("category", "account")]),
            descriptor(&[("foo", "run"), ("bar", "bkthomps")]),
        ]}),
    );
    assert_eq!(r["overall_code"], "OK", "{r}");
    assert_eq!(
        r["statuses"][0]["current_limit"]["requests_per_unit"], 4,
        "{r}"
    );
    assert!(r["statuses"][1]["current_limit"].is_null(), "replaced: {r}");

    // Shadow mode: ("foo", x) ("baz", "shady") is 3 per minute in shadow mode: 4 hits are answered OK and
    // counted as shadow_mode; the same hits on "not-so-shady" (no shadow) are refused.
    let shady = json!({"domain": "rl", "hits_addend": 4, "descriptors": [descriptor(&[("foo", "run"), ("baz", "shady")])]});
    let r = client.check(a, shady);
    assert_eq!(r["overall_code"], "OK", "{r}");
    assert_eq!(r["statuses"][0]["code"], "OK", "{r}");
    let r = client.check(
        a,
        json!({"domain": "rl", "hits_addend": 4,
        "descriptors": [descriptor(&[("foo", "run"), ("baz", "not-so-shady")])]}),
    );
    assert_eq!(r["overall_code"], "OVER_LIMIT", "{r}");
    let shadow = a.metric("bifrost_rls_rule_shadow_mode_total{rule=\"rl.foo.baz_shady\"}");
    assert_eq!(shadow, Some(4.0));
    let hits = a.metric("bifrost_rls_rule_total_hits_total{rule=\"rl.foo.baz_not-so-shady\"}");
    assert_eq!(hits, Some(4.0));
    let over = a.metric("bifrost_rls_rule_over_limit_total{rule=\"rl.foo.baz_not-so-shady\"}");
    assert_eq!(over, Some(4.0));
    // near_limit: hits past floor(0.8 x 3) = 2 of the global count, per node as envoyproxy/ratelimit counts them:
    // node a's 2 hits reached 2 (not past it), node b's hit reached 3.
    let near = |n: &Node| n.metric("bifrost_rls_rule_near_limit_total{rule=\"rl.foo.bar\"}");
    assert_eq!(near(a), Some(0.0));
    assert_eq!(near(b), Some(1.0));

    // Unlimited, no rule, unknown domain.
    let r = client.check(
        b,
        json!({"domain": "rl", "descriptors": [descriptor(&[("foo", "run"), ("bay", "z")])]}),
    );
    assert_eq!(r["overall_code"], "OK", "{r}");
    assert_eq!(r["statuses"][0]["limit_remaining"], 4294967295u64);
    let r = client.check(
        b,
        json!({"domain": "rl", "descriptors": [descriptor(&[("nothing", "here")])]}),
    );
    assert_eq!(r["overall_code"], "OK", "{r}");
    assert!(r["statuses"][0]["current_limit"].is_null(), "{r}");
    let r = client.check(b, json!({"domain": "nowhere", "descriptors": [bar]}));
    assert_eq!(r["overall_code"], "OK", "{r}");

    // Bounds, each with a clear error.
    let many: Vec<Value> = (0..65)
        .map(|i| descriptor(&[("k", &i.to_string())]))
        .collect();
    let (code, details) = client.refused(a, json!({"domain": "rl", "descriptors": many}));
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        details.contains("descriptors: 65 descriptors; at most 64"),
        "{details}"
    );
    let deep: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let deep: Vec<(&str, &str)> = deep.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, details) = client.refused(
        a,
        json!({"domain": "rl", "descriptors": [descriptor(&deep)]}),
    );
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        details.contains("descriptors[0].entries: 17 entries; at most 16"),
        "{details}"
    );
    let (code, details) = client.refused(
        a,
        json!({"domain": "rl", "hits_addend": 1001, "descriptors": [bar]}),
    );
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        details.contains("hits_addend: 1001 is above the per-request ceiling of 1000"),
        "{details}"
    );
    let huge = "x".repeat(70_000);
    let (code, details) = client.refused(
        a,
        json!({"domain": "rl", "descriptors": [descriptor(&[("foo", &huge)])]}),
    );
    assert_eq!(code, "OUT_OF_RANGE", "{details}");
    assert!(details.contains("the limit is: 65536 bytes"), "{details}");
    let (code, _) = client.refused(a, json!({"domain": "", "descriptors": [bar]}));
    assert_eq!(code, "INVALID_ARGUMENT");

    // Hot reload: a new file is picked up; a bad one is refused with its problems named, the policy kept.
    std::fs::write(
        limits.join("extra.yaml"),
        "domain: reloaded\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
    )
    .expect("write extra.yaml");
    let reloaded = json!({"domain": "reloaded", "descriptors": [descriptor(&[("k", "v")])]});
    wait_until(
        Duration::from_secs(10),
        "every node to load extra.yaml",
        &nodes,
        || {
            nodes.iter().all(|n| {
                !client.check(
                    n,
                    json!({"domain": "reloaded", "descriptors": [descriptor(&[("k", "probe")])]}),
                )["statuses"][0]["current_limit"]
                    .is_null()
            })
        },
    );
    let r = client.check(a, reloaded.clone());
    assert_eq!(r["overall_code"], "OK", "{r}");
    std::fs::write(
        limits.join("extra.yaml"),
        "domain: reloaded\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .expect("write a bad extra.yaml");
    wait_until(
        Duration::from_secs(10),
        "the bad file to be refused",
        &nodes,
        || a.metric("bifrost_rls_policy_reloads_total{result=\"refused\"}") == Some(1.0),
    );
    assert!(
        a.log_text()
            .contains("descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight'"),
        "{}",
        a.log_text()
    );
    wait_until(
        Duration::from_secs(10),
        "c to see the reloaded hit",
        &nodes,
        || {
            c.metric("bifrost_rls_rules").is_some()
                && matches!(
                    get(c.http, "/v1/counters/rls%7Creloaded%7Ck%3Dv?window=1h"),
                    Ok((200, v)) if v["global"] == 1
                )
        },
    );
    // The old policy still answers: the hit of node a counts on node c.
    let r = client.check(c, reloaded);
    assert_eq!(r["overall_code"], "OVER_LIMIT", "{r}");
}

/// The ```` ```yaml ```` blocks of the README's "Use with Envoy" section: the limits file, then Envoy's config.
fn readme_yaml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("## Use with Envoy")
        .expect("a Use with Envoy section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn the_readme_limits_file_loads() {
    let blocks = readme_yaml_blocks();
    assert_eq!(blocks.len(), 2, "limits file and Envoy config");
    let policy = bifrost_cluster::policy::Policy::load([("README.md", blocks[0].as_str())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.domains(), vec!["gateway"]);
    assert!(matches!(
        policy.lookup("gateway", &[("virtual_key", "vk-1"), ("model", "gpt-4o")]),
        bifrost_cluster::policy::Match::Rule { .. }
    ));
}

#[test]
fn the_readme_envoy_snippet_is_an_envoy_v3_bootstrap() {
    if !client_available() {
        return;
    }
    let blocks = readme_yaml_blocks();
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&blocks[1]).expect("the snippet is YAML");
    let mut client = Client::start();
    let answer = client
        .call(json!({"op": "parse", "type": "envoy.config.bootstrap.v3.Bootstrap", "json": yaml}));
    assert!(answer.get("ok").is_some(), "{answer}");
    // The check can fail: a misspelled field is refused.
    let mut bad = yaml.clone();
    bad["static_resources"]["clusters"][0]["conect_timeout"] = json!("1s");
    let answer = client
        .call(json!({"op": "parse", "type": "envoy.config.bootstrap.v3.Bootstrap", "json": bad}));
    assert!(answer.get("error").is_some(), "{answer}");
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kubernetes: the limits ConfigMap loads, is mounted where the config's `grpc.limits_file` points, and the
/// gRPC port is the container's and the `bifrost-rls` Service's.
#[test]
fn deploy_kubernetes_wires_the_rls_port_and_the_limits() {
    let k8s = deploy().join("kubernetes");
    let cm = yaml_file(&k8s.join("configmap.yaml"));
    let config = bifrost_cluster::config::load_from_str(
        cm["data"]["config.json"].as_str().expect("config.json"),
    )
    .expect("the ConfigMap's config loads")
    .config;
    let grpc = config.grpc.expect("a grpc section");
    let limits = yaml_file(&k8s.join("limits-configmap.yaml"));
    assert_eq!(limits["metadata"]["name"], "bifrost-limits");
    let files: Vec<(String, String)> = limits["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_owned()))
        .collect();
    assert!(!files.is_empty());
    bifrost_cluster::policy::Policy::load(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .unwrap_or_else(|e| panic!("limits-configmap.yaml: {e}"));
    let sts = yaml_file(&k8s.join("statefulset.yaml"));
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a grpc container port");
    assert_eq!(port["containerPort"], u64::from(grpc.listen.port()));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "bifrost-limits")
        .expect("a volume of bifrost-limits");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the limits volume mounted");
    assert_eq!(
        Some(Path::new(mount["mountPath"].as_str().expect("path"))),
        grpc.limits_file.as_deref()
    );
    let svc = yaml_file(&k8s.join("service-rls.yaml"));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "grpc");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "grpc");
}

/// Compose (static setup): the nodes mount a limits file that loads where `grpc.limits_file` points; the
/// `envoy` profile's config is an Envoy v3 Bootstrap.
#[test]
fn deploy_compose_wires_the_limits_and_envoy() {
    let dir = deploy().join("docker-compose/static");
    let config = bifrost_cluster::config::load_from_path(&dir.join("config.json"))
        .expect("config.json")
        .config;
    let limits_file = config
        .grpc
        .and_then(|g| g.limits_file)
        .expect("grpc.limits_file");
    let compose = yaml_file(&dir.join("docker-compose.yml"));
    // The nodes' shared settings come through a YAML merge key (`<<: *bifrost-node`).
    let node = &compose["services"]["bifrost-1"];
    let node = if node["volumes"].is_array() {
        node
    } else {
        &node["<<"]
    };
    let source = node["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            (Path::new(target) == limits_file).then(|| source.to_owned())
        })
        .expect("the limits file is mounted at grpc.limits_file");
    let text = std::fs::read_to_string(dir.join(&source)).expect("the mounted limits file");
    bifrost_cluster::policy::Policy::load([(source.as_str(), text.as_str())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compose["services"]["envoy"]["profiles"][0], "envoy");
    if !client_available() {
        return;
    }
    let envoy = yaml_file(&dir.join("envoy.yaml"));
    let mut client = Client::start();
    let answer = client
        .call(json!({"op": "parse", "type": "envoy.config.bootstrap.v3.Bootstrap", "json": envoy}));
    assert!(
        answer.get("ok").is_some(),
        "deploy/docker-compose/static/envoy.yaml: {answer}"
    );
}
