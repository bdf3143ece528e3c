//! Three `bifrost-cluster run` child processes on loopback, observed only through their HTTP surface and
//! their logs: they join and turn HEALTHY; `kill -9` of one is marked down by the others within
//! `timeout_seconds × failure_threshold` plus the suspicion time; restarted, it rejoins under a new replica id
//! and the counters continue exactly; SIGTERM of another is seen as left, not down.
//!
//! Every child is killed when its guard drops, so a failing test leaves no process behind; every wait is a
//! bounded poll; every address is 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bifrost_cluster::membership::{MembershipOptions, suspicion_timeout_ms};
use serde_json::Value;

mod support;
use support::free_port;
use support::http::{get, parse_prometheus, post, request_text};

const SECRET: &str = "1ZoiRMEskCoa53C4bi4WQhUMUnMhp9AqRQYNdtHZE/s=";
/// `gossip.config` of the test: short health timeout so the bound below is tight.
const TIMEOUT_SECONDS: u64 = 2;
const FAILURE_THRESHOLD: u64 = 3;

struct Node {
    name: String,
    http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Node {
    fn new(dir: &Path, name: &str, gossip: u16, peers: &[u16]) -> Node {
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let config = dir.join(format!("{name}.json"));
        std::fs::write(
            &config,
            format!(
                r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": [{}],
                     "gossip": {{ "port": {gossip}, "config": {{ "timeout_seconds": {TIMEOUT_SECONDS},
                        "success_threshold": 3, "failure_threshold": {FAILURE_THRESHOLD} }} }},
                     "http": {{ "listen": "{http}" }},
                     "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#,
                peers.join(",")
            ),
        )
        .expect("write config");
        Node {
            name: name.to_string(),
            http,
            log: dir.join(format!("{name}.log")),
            config,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
                .args(["run", "--bind-ip", "127.0.0.1", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .env_remove("BIFROST_CLUSTER_SECRET")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn bifrost-cluster run"),
        );
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn status(&self) -> Option<Value> {
        match get(self.http, "/cluster/status") {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `(state, healthy, replica_id)` of `other` in `node`'s status: its current identity (an old identity
/// replaced by a restart is listed `left` beside the new one).
fn member(status: &Value, other: &str) -> Option<(String, bool, String)> {
    let entries: Vec<&Value> = status["member_details"]
        .as_array()?
        .iter()
        .filter(|m| m["node_id"] == other)
        .collect();
    entries
        .iter()
        .find(|m| m["state"] != "left")
        .or(entries.last())
        .map(|m| {
            (
                m["state"].as_str().unwrap_or("").to_string(),
                m["healthy"].as_bool().unwrap_or(false),
                m["replica_id"].as_str().unwrap_or("").to_string(),
            )
        })
}

fn wait_until(
    limit: Duration,
    what: &str,
    nodes: &[&Node],
    mut done: impl FnMut() -> bool,
) -> Duration {
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
    start.elapsed()
}

fn add(node: &Node, n: u64) -> u64 {
    let (code, body) = post(
        node.http,
        "/v1/counters/budget/team-a/add",
        &format!(r#"{{ "window": "1h", "n": {n} }}"#),
    )
    .expect("POST add");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["outcome"], "added", "{body}");
    body["epoch"].as_u64().expect("epoch")
}

fn global(node: &Node, epoch: u64) -> Option<u64> {
    let (code, body) = get(
        node.http,
        &format!("/v1/counters/budget/team-a?window=1h&epoch={epoch}"),
    )
    .ok()?;
    (code == 200).then(|| body["global"].as_u64()).flatten()
}

fn healthy_cluster_of(node: &Node, n: u64) -> bool {
    node.status().is_some_and(|s| {
        s["members"] == n && s["healthy_members"] == n && s["cluster_health"] == "HEALTHY"
    })
}

#[test]
fn kill_nine_is_detected_the_restart_rejoins_and_counting_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let others: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
            Node::new(dir.path(), name, port, &others)
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let formed = wait_until(
        Duration::from_secs(30),
        "3 members, 3 healthy, HEALTHY on every node",
        &refs,
        || nodes.iter().all(|n| healthy_cluster_of(n, 3)),
    );
    eprintln!("cluster formed and healthy after {formed:?}");
    for node in &nodes {
        let (code, _) = get(node.http, "/health").expect("health");
        assert_eq!(code, 200);
        let (code, _) = get(node.http, "/ready").expect("ready");
        assert_eq!(code, 200);
        let log = node.log_text();
        assert!(log.contains("successfully joined"), "{}: {log}", node.name);
        assert!(
            log.contains("cluster health: HEALTHY"),
            "{}: {log}",
            node.name
        );
    }

    // /metrics parses as Prometheus text and shows the three healthy members.
    for node in &nodes {
        let (code, text) = request_text(node.http, "GET", "/metrics", None).expect("metrics");
        assert_eq!(code, 200);
        let samples =
            parse_prometheus(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", node.name));
        let alive = samples
            .iter()
            .find(|(s, _)| s == "bifrost_members{state=\"alive\",healthy=\"true\"}")
            .map(|(_, v)| *v);
        assert_eq!(alive, Some(3.0), "{}: {text}", node.name);
    }

    // One global limit through the HTTP rate-limit API, requests spread over the three nodes: the cluster
    // allows the limit, not three times it. Requests are 30 ms apart (six flush intervals), so each node has
    // seen the others' counts; the documented overshoot is what other nodes admit within one replication delay.
    const LIMIT: u64 = 40;
    let mut allowed = 0;
    for i in 0..(3 * LIMIT) {
        let node = &nodes[(i % 3) as usize];
        let (code, decision) = post(
            node.http,
            "/v1/ratelimit/check",
            &format!(r#"{{"key":"rl/global","window":"1h","limit":{LIMIT},"cost":1,"algorithm":"fixed_window"}}"#),
        )
        .expect("ratelimit check");
        assert_eq!(code, 200, "{decision}");
        allowed += u64::from(decision["allowed"] == true);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        (LIMIT..=LIMIT + 2).contains(&allowed),
        "{allowed} allowed across three nodes for a global limit of {LIMIT}"
    );

    // Count on every node; every node agrees on the exact total.
    let mut total = 0;
    let mut epoch = 0;
    for (i, node) in nodes.iter().enumerate() {
        let n = 10 * (i as u64 + 1);
        epoch = add(node, n);
        total += n;
    }
    wait_until(
        Duration::from_secs(10),
        "every node to hold 60",
        &refs,
        || nodes.iter().all(|n| global(n, epoch) == Some(total)),
    );

    // kill -9 node-c: no leave, no final flush.
    let old_c = member(&nodes[0].status().expect("status"), "node-c")
        .expect("c listed")
        .2;
    let victim = nodes[2].child.take().expect("c running");
    let mut victim = victim;
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reaped");
    let killed = Instant::now();
    let suspicion_ms = {
        let o = MembershipOptions::default();
        // 3 live members: below K + 2, so no confirmations are awaited and the minimum applies.
        suspicion_timeout_ms(
            o.suspicion_min_ms(3),
            o.suspicion_max_ms(3),
            o.suspicion_k(3),
            0,
        )
    };
    let bound = Duration::from_millis(TIMEOUT_SECONDS * 1000 * FAILURE_THRESHOLD + suspicion_ms);
    let refs: Vec<&Node> = nodes[..2].iter().collect();
    wait_until(bound, "a and b to mark node-c down", &refs, || {
        nodes[..2].iter().all(|n| {
            n.status()
                .and_then(|s| member(&s, "node-c"))
                .is_some_and(|(state, healthy, _)| state == "down" && !healthy)
        })
    });
    let detected = killed.elapsed();
    eprintln!("node-c marked down by a and b {detected:?} after kill -9 (bound {bound:?})");
    for node in &nodes[..2] {
        let status = node.status().expect("status");
        // Three known members (one down), two healthy: a strict majority, so HEALTHY by the documented rule.
        assert_eq!(status["members"], 3, "{status}");
        assert_eq!(status["healthy_members"], 2, "{status}");
        assert_eq!(status["cluster_health"], "HEALTHY", "{status}");
        assert!(
            node.log_text().contains("node marked as suspect"),
            "{}",
            node.name
        );
        // The dead replica's counts stay until their window expires.
        assert_eq!(global(node, epoch), Some(total));
    }

    // Restart node-c: a new replica id, it rejoins and its counting continues on top of its old life's.
    nodes[2].spawn();
    let refs: Vec<&Node> = nodes.iter().collect();
    let rejoined = wait_until(
        Duration::from_secs(30),
        "the restarted node-c alive and healthy everywhere",
        &refs,
        || {
            nodes[..2].iter().all(|n| {
                n.status().and_then(|s| member(&s, "node-c")).is_some_and(
                    |(state, healthy, replica)| state == "alive" && healthy && replica != old_c,
                )
            }) && healthy_cluster_of(&nodes[2], 3)
        },
    );
    eprintln!("node-c rejoined and healthy {rejoined:?} after its restart");
    wait_until(
        Duration::from_secs(10),
        "the new node-c to receive the state",
        &refs,
        || global(&nodes[2], epoch) == Some(total),
    );
    assert_eq!(
        add(&nodes[2], 7),
        epoch,
        "an hour boundary passed during the test"
    );
    assert_eq!(
        add(&nodes[0], 5),
        epoch,
        "an hour boundary passed during the test"
    );
    total += 12;
    wait_until(
        Duration::from_secs(10),
        "every node to hold the exact total",
        &refs,
        || nodes.iter().all(|n| global(n, epoch) == Some(total)),
    );

    // SIGTERM node-b: it leaves gracefully and exits 0; a sees it left, never down.
    let pid = nodes[1].pid();
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("sh kill");
    assert!(status.success());
    let left = Instant::now();
    let mut b = nodes[1].child.take().expect("b running");
    let code = loop {
        if let Some(code) = b.try_wait().expect("try_wait") {
            break code;
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "b did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code.code(), Some(0), "exit status after SIGTERM: {code}");
    let refs: Vec<&Node> = vec![&nodes[0], &nodes[2]];
    wait_until(Duration::from_secs(3), "a to see b left", &refs, || {
        nodes[0]
            .status()
            .and_then(|s| member(&s, "node-b"))
            .is_some_and(|(state, _, _)| state == "left")
    });
    assert!(nodes[1].log_text().contains("left the cluster"));
    assert_eq!(global(&nodes[0], epoch), Some(total), "b's counts stay");
}

#[test]
fn a_node_whose_peers_never_answer_logs_failed_to_join_and_runs_alone_while_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), "lonely", free_port(), &[free_port()]);
    // Give up the start-up join after 1 s (discovery.dial_timeout) instead of the default 10 s.
    let text = std::fs::read_to_string(&node.config).expect("config");
    let text = text.replacen(
        r#""enabled": true,"#,
        r#""enabled": true, "discovery": { "dial_timeout": "1s" },"#,
        1,
    );
    std::fs::write(&node.config, text).expect("config");
    node.spawn();
    let refs = [&node];
    wait_until(
        Duration::from_secs(10),
        "\"failed to join cluster\" in the log",
        &refs,
        || node.log_text().contains("failed to join cluster"),
    );
    // It gave up the start-up join: ready (it serves, alone), but the cluster is NOT HEALTHY.
    wait_until(
        Duration::from_secs(5),
        "/ready 200 and NOT HEALTHY",
        &refs,
        || {
            matches!(get(node.http, "/ready"), Ok((200, _)))
                && node
                    .status()
                    .is_some_and(|s| s["cluster_health"] == "NOT HEALTHY" && s["members"] == 1)
        },
    );
    assert!(node.log_text().contains("cluster health: NOT HEALTHY"));
}
