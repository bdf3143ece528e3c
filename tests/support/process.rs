//! A `bifrost-cluster run` child process on loopback with its config file and log, killed when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node process. Its config and log live in the test's temporary directory.
pub struct NodeProcess {
    /// The node id (for messages).
    pub name: String,
    /// The HTTP listener.
    pub http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NodeProcess {
    /// Writes `config` (the whole JSON file) to `dir/<name>.json`; the node is not started yet.
    pub fn new(dir: &Path, name: &str, http: SocketAddr, config: &str) -> NodeProcess {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, config).expect("write config");
        NodeProcess {
            name: name.to_string(),
            http,
            log: dir.join(format!("{name}.log")),
            config: path,
            child: None,
        }
    }

    /// A handle on a node's HTTP address only (for a worker thread), not a process.
    pub fn probe(http: SocketAddr) -> NodeProcess {
        NodeProcess {
            name: http.to_string(),
            http,
            config: PathBuf::new(),
            log: PathBuf::new(),
            child: None,
        }
    }

    /// Starts `run` (logs appended to the node's log file).
    pub fn spawn(&mut self) {
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
                .env_remove("BIFROST_DATA_DIR")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn bifrost-cluster run"),
        );
    }

    /// Sends `signal` (`"TERM"`, `"KILL"`) to the process without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits (at most `limit`) for the process to exit; its exit code (`None`: killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            assert!(
                start.elapsed() < limit,
                "{} did not exit within {limit:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl NodeProcess {
    /// `POST /v1/counters/{key}/add` of 1 in `window`: the epoch it counted in, `None` when it did not count
    /// (not up yet, or refused).
    pub fn add(&self, key: &str, window: &str) -> Option<u64> {
        let (code, body) = super::http::post(
            self.http,
            &format!("/v1/counters/{key}/add"),
            &format!(r#"{{ "window": "{window}", "n": 1 }}"#),
        )
        .ok()?;
        (code == 200 && body["outcome"] == "added").then(|| body["epoch"].as_u64())?
    }

    /// Like [`NodeProcess::add`], retried for at most 20 s (the node may still be starting); the epoch.
    pub fn add_retrying(&self, key: &str, window: &str) -> u64 {
        let start = Instant::now();
        loop {
            if let Some(epoch) = self.add(key, window) {
                return epoch;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} never counted",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node's global count of `key` in `window`'s epoch `epoch`; `None` when it does not answer.
    pub fn global(&self, key: &str, window: &str, epoch: u64) -> Option<u64> {
        let (code, body) = super::http::get(
            self.http,
            &format!("/v1/counters/{key}?window={window}&epoch={epoch}"),
        )
        .ok()?;
        (code == 200).then(|| body["global"].as_u64()).flatten()
    }
}

/// Polls `done` every 20 ms for at most `limit`; on timeout prints every node's log and panics naming `what`.
pub fn wait_until(
    limit: Duration,
    what: &str,
    nodes: &[NodeProcess],
    mut done: impl FnMut() -> bool,
) {
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

/// Three nodes `node-a`, `node-b`, `node-c` on loopback, each with the other two as static peers, free gossip
/// and HTTP ports and `secret`; `extra(name)` adds members to each node's `cluster_config` (text starting
/// with a comma, or empty). Not started yet.
pub fn static_trio(dir: &Path, secret: &str, extra: impl Fn(&str) -> String) -> Vec<NodeProcess> {
    let ports = [super::free_port(), super::free_port(), super::free_port()];
    ["node-a", "node-b", "node-c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let http = SocketAddr::from((Ipv4Addr::LOCALHOST, super::free_port()));
            let peers: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
                .collect();
            let config = format!(
                r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": [{}],
                     "gossip": {{ "port": {} }}, "http": {{ "listen": "{http}" }},
                     "security": {{ "cluster_secret": "{secret}" }}{} }} }}"#,
                peers.join(","),
                ports[i],
                extra(name)
            );
            NodeProcess::new(dir, name, http, &config)
        })
        .collect()
}
