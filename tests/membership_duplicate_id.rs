//! A second live process started with a node id already in the cluster, black-box: four `bifrost-cluster run`
//! child processes on 127.0.0.1, observed through their HTTP surface and their logs. Three form a cluster; a
//! fourth reuses node-1's id on another port. It must be refused and logged (on the members and in itself, with
//! both addresses) while node-1 stays alive and healthy everywhere and the cluster stays HEALTHY; when node-1
//! leaves gracefully, the waiting process takes the node id over.
//!
//! Every child is killed when its guard drops; every wait is a bounded poll; every address is 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::free_port;
use support::http::{get, parse_prometheus, request_text};

const SECRET: &str = "CJG/w+bJxgQIFMJQQFSOJRtaQV+oq3nZDQfesmjjDJU=";
const TIMEOUT_SECONDS: u64 = 2;
const FAILURE_THRESHOLD: u64 = 3;

struct Node {
    label: String,
    gossip: u16,
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
    /// `label` names the process in the test (and its files); `node_id` is what it claims to be.
    fn new(dir: &Path, label: &str, node_id: &str, gossip: u16, peers: &[u16]) -> Node {
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let config = dir.join(format!("{label}.json"));
        std::fs::write(
            &config,
            format!(
                r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{node_id}", "peers": [{}],
                     "gossip": {{ "port": {gossip}, "config": {{ "timeout_seconds": {TIMEOUT_SECONDS},
                        "success_threshold": 3, "failure_threshold": {FAILURE_THRESHOLD} }} }},
                     "http": {{ "listen": "{http}" }},
                     "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#,
                peers.join(",")
            ),
        )
        .expect("write config");
        Node {
            label: label.to_string(),
            gossip,
            http,
            log: dir.join(format!("{label}.log")),
            config,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
                .args(["run", "--bind-ip", "127.0.0.1", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .env_remove("BIFROST_CLUSTER_SECRET")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn bifrost-cluster run"),
        );
    }

    fn gossip_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gossip)
    }

    fn status(&self) -> Option<Value> {
        match get(self.http, "/cluster/status") {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The log with ANSI escapes removed.
    fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Log lines that contain every one of `parts`.
    fn log_lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    fn metric(&self, sample: &str) -> Option<f64> {
        let (code, text) = request_text(self.http, "GET", "/metrics", None).ok()?;
        if code != 200 {
            return None;
        }
        parse_prometheus(&text)
            .ok()?
            .into_iter()
            .find(|(s, _)| s == sample)
            .map(|(_, v)| v)
    }

    /// SIGTERM: the process leaves gracefully.
    fn terminate(&mut self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not exit within 10 s of SIGTERM", self.label);
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every entry of `other` in `node`'s `member_details`: `(state, healthy, replica_id, address)`.
fn entries(status: &Value, other: &str) -> Vec<(String, bool, String, String)> {
    status["member_details"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["node_id"] == other)
                .map(|m| {
                    (
                        m["state"].as_str().unwrap_or("").to_string(),
                        m["healthy"].as_bool().unwrap_or(false),
                        m["replica_id"].as_str().unwrap_or("").to_string(),
                        m["address"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn healthy_cluster_of(status: &Value, n: u64) -> bool {
    status["members"] == n
        && status["healthy_members"] == n
        && status["cluster_health"] == "HEALTHY"
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
                eprintln!("---- log of {} ----\n{}", node.label, node.log_text());
            }
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn a_second_process_with_a_members_node_id_is_refused_and_logged_and_the_member_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let names = ["node-1", "node-2", "node-3"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let others: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
            Node::new(dir.path(), name, name, port, &others)
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        let formed = wait_until(
            Duration::from_secs(30),
            "3 members, 3 healthy, HEALTHY on every node",
            &refs,
            || {
                nodes
                    .iter()
                    .all(|n| n.status().is_some_and(|s| healthy_cluster_of(&s, 3)))
            },
        );
        eprintln!("cluster formed and healthy after {formed:?}");
    }
    let real_replica = nodes[0].status().expect("status")["local"]["replica_id"]
        .as_str()
        .expect("replica id")
        .to_string();
    let real_addr = nodes[0].gossip_addr();
    let not_healthy_before: Vec<usize> = nodes
        .iter()
        .map(|n| n.log_lines_with(&["cluster health: NOT HEALTHY"]).len())
        .collect();

    // The duplicate: node-1's id on another port, joining through node-2 and node-3.
    let mut dup = Node::new(
        dir.path(),
        "duplicate",
        "node-1",
        free_port(),
        &[ports[1], ports[2]],
    );
    dup.spawn();
    let dup_addr = dup.gossip_addr();
    {
        let refs: Vec<&Node> = nodes.iter().chain([&dup]).collect();
        let logged = wait_until(
            Duration::from_secs(20),
            "the refusal logged at ERROR with both addresses, on every member and in the duplicate",
            &refs,
            || {
                nodes.iter().all(|n| {
                    !n.log_lines_with(&["ERROR", "refused a second process", &real_addr, &dup_addr])
                        .is_empty()
                }) && !dup
                    .log_lines_with(&["ERROR", "\"node-1\"", "already held", &real_addr, &dup_addr])
                    .is_empty()
            },
        );
        eprintln!("refusal logged everywhere {logged:?} after the duplicate started");
        for line in nodes[1]
            .log_lines_with(&["refused a second process"])
            .iter()
            .chain(&dup.log_lines_with(&["already held"]))
        {
            eprintln!("  {line}");
        }
    }

    // Observe for longer than the eviction took before (about 12 s) and than detection would take
    // (timeout_seconds × failure_threshold + the 4 s suspicion minimum = 10 s): node-1 stays alive and healthy
    // under its own replica everywhere, the cluster stays HEALTHY with 3 members, the duplicate is no member.
    let observe = Duration::from_secs(16);
    let started = Instant::now();
    let mut polls = 0;
    while started.elapsed() < observe {
        for (i, node) in nodes.iter().enumerate() {
            let status = node
                .status()
                .unwrap_or_else(|| panic!("{} has no status", node.label));
            assert!(
                healthy_cluster_of(&status, 3),
                "{} after {:?}: {status:#}",
                node.label,
                started.elapsed()
            );
            if i > 0 {
                let seen = entries(&status, "node-1");
                assert_eq!(
                    seen,
                    vec![(
                        "alive".to_string(),
                        true,
                        real_replica.clone(),
                        real_addr.clone()
                    )],
                    "{} after {:?}",
                    node.label,
                    started.elapsed()
                );
            } else {
                assert_eq!(status["local"]["replica_id"], real_replica.as_str());
            }
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{polls} polls over {observe:?}: node-1 alive and healthy, cluster HEALTHY everywhere"
    );

    // Each member reports the refusal once (not per packet), and counts it in /metrics.
    for (node, before) in nodes.iter().zip(not_healthy_before) {
        let lines = node.log_lines_with(&["refused a second process", &dup_addr]);
        assert_eq!(lines.len(), 1, "{}: {lines:#?}", node.label);
        assert_eq!(
            node.metric("bifrost_membership_refused_duplicates"),
            Some(1.0),
            "{}",
            node.label
        );
        assert!(
            node.log_lines_with(&["node-1", "node marked as down"])
                .is_empty()
                && node
                    .log_lines_with(&["node-1", "node left the cluster"])
                    .is_empty()
                && node.log_lines_with(&["cluster health: NOT HEALTHY"]).len() == before,
            "{}: {}",
            node.label,
            node.log_text()
        );
    }
    // The duplicate says what it is: not healthy, not ready, refused.
    let status = dup.status().expect("duplicate status");
    assert_eq!(status["cluster_health"], "NOT HEALTHY", "{status:#}");
    assert_eq!(status["ready"], false, "{status:#}");
    let (code, _) = get(dup.http, "/ready").expect("ready");
    assert_eq!(code, 503);
    assert_eq!(dup.metric("bifrost_membership_local_refused"), Some(1.0));
    assert_eq!(
        dup.log_lines_with(&["ERROR", "already held"]).len(),
        1,
        "{}",
        dup.log_text()
    );

    // node-1 leaves gracefully: the waiting process takes the node id over at once.
    let dup_replica = status["local"]["replica_id"]
        .as_str()
        .expect("replica id")
        .to_string();
    nodes[0].terminate();
    let refs: Vec<&Node> = nodes[1..].iter().chain([&dup]).collect();
    let took_over = wait_until(
        Duration::from_secs(15),
        "the second process to be node-1 on node-2 and node-3, HEALTHY everywhere",
        &refs,
        || {
            nodes[1..].iter().all(|n| {
                n.status().is_some_and(|s| {
                    healthy_cluster_of(&s, 3)
                        && entries(&s, "node-1")
                            .iter()
                            .any(|e| e.0 == "alive" && e.1 && e.2 == dup_replica && e.3 == dup_addr)
                })
            }) && dup
                .status()
                .is_some_and(|s| healthy_cluster_of(&s, 3) && s["ready"] == true)
        },
    );
    eprintln!("the second process took node-1 over {took_over:?} after node-1 was sent SIGTERM");
    assert!(
        !dup.log_lines_with(&["this process is the member now"])
            .is_empty(),
        "{}",
        dup.log_text()
    );
}

#[test]
fn a_node_restarted_at_a_new_address_after_kill_nine_takes_over_once_the_old_one_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let names = ["node-1", "node-2", "node-3"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let others: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
            Node::new(dir.path(), name, name, port, &others)
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_until(
            Duration::from_secs(30),
            "3 members, 3 healthy, HEALTHY on every node",
            &refs,
            || {
                nodes
                    .iter()
                    .all(|n| n.status().is_some_and(|s| healthy_cluster_of(&s, 3)))
            },
        );
    }
    // kill -9 node-1, and start its replacement at once on another port (a new pod IP, say).
    if let Some(mut child) = nodes[0].child.take() {
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let mut new = Node::new(
        dir.path(),
        "node-1-new",
        "node-1",
        free_port(),
        &[ports[1], ports[2]],
    );
    new.spawn();
    let new_addr = new.gossip_addr();
    let refs: Vec<&Node> = nodes[1..].iter().chain([&new]).collect();
    let took = wait_until(
        Duration::from_secs(40),
        "the new node-1 to be alive and healthy on node-2 and node-3, HEALTHY everywhere",
        &refs,
        || {
            nodes[1..].iter().all(|n| {
                n.status().is_some_and(|s| {
                    healthy_cluster_of(&s, 3)
                        && entries(&s, "node-1")
                            .iter()
                            .any(|e| e.0 == "alive" && e.1 && e.3 == new_addr)
                })
            }) && new
                .status()
                .is_some_and(|s| healthy_cluster_of(&s, 3) && s["ready"] == true)
        },
    );
    eprintln!(
        "kill -9 + restart at a new address: the new node-1 alive and healthy everywhere {took:?} after the kill"
    );
    // Until the old one was declared down the new one was held back (and said so); then it took over.
    assert_eq!(
        new.log_lines_with(&["ERROR", "already held"]).len(),
        1,
        "{}",
        new.log_text()
    );
    assert!(
        !new.log_lines_with(&["this process is the member now"])
            .is_empty()
    );
    for node in &nodes[1..] {
        assert!(
            !node
                .log_lines_with(&["node-1", "node marked as down"])
                .is_empty(),
            "{}",
            node.log_text()
        );
    }
}
