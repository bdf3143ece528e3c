//! Linux network namespaces for tests of the interface-based discovery methods (`udp`, `mdns`): a private
//! Ethernet segment (a bridge in its own namespace) with one namespace per host on it, and `bifrost-cluster
//! run` children started inside them.
//!
//! Guarantees: every namespace name starts with `bfct<pid>-`, so runs never collide; namespaces left behind by
//! a run that died (its pid gone) are removed at the next start; everything a [`Lab`] created is removed when
//! it drops, a panicking test included. Nothing is configured in the root namespace: the bridge lives in a
//! namespace of its own, the hosts have no default route, and every packet stays on the lab's segment.
//! Needs root: [`available`] says "SKIPPED" and returns false when not root, unless `REQUIRE_NETNS=1`, then it
//! panics.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const PREFIX: &str = "bfct";

/// Whether this process may create network namespaces (effective uid 0 and `ip` installed). When it may not:
/// prints a SKIPPED line and returns false, or panics when `REQUIRE_NETNS=1`.
pub fn available(test: &str) -> bool {
    let required = std::env::var("REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|u| u.parse::<u32>().ok());
    if euid != Some(0) {
        assert!(
            !required,
            "{test}: REQUIRE_NETNS=1 but this process is not root (euid {euid:?}): network namespaces need root"
        );
        eprintln!("{test}: SKIPPED (needs root for network namespaces)");
        return false;
    }
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "{test}: running as root but `ip` (iproute2) is missing: install iproute2"
    );
    true
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces named by this harness whose process is gone.
fn remove_leftovers() {
    let out = run(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !pid_alive(pid)
        {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// One host of a lab: a namespace with `lo` and `eth0` (on the lab's bridge) up.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace name.
    pub ns: String,
    /// The address of `eth0`.
    pub ip: Ipv4Addr,
    /// `ip/prefix` as configured.
    pub cidr: String,
}

/// A bridge namespace and one namespace per host, removed on drop.
pub struct Lab {
    created: Vec<String>,
    /// The hosts, in the order given to [`Lab::new`].
    pub hosts: Vec<Host>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Lab {
    /// A segment with one host per `cidrs` entry (`"10.77.0.1/24"`), all on one bridge, so broadcast within
    /// a subnet and multicast reach every host whatever its subnet.
    pub fn new(cidrs: &[&str]) -> Lab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            created: Vec::new(),
            hosts: Vec::new(),
        };
        let bridge = format!("{base}-br");
        must(&["ip", "netns", "add", &bridge]);
        lab.created.push(bridge.clone());
        must(&["ip", "-n", &bridge, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "-n",
            &bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        must(&["ip", "-n", &bridge, "link", "set", "br0", "up"]);
        for (i, cidr) in cidrs.iter().enumerate() {
            let ns = format!("{base}-h{i}");
            must(&["ip", "netns", "add", &ns]);
            lab.created.push(ns.clone());
            let port = format!("p{i}");
            must(&[
                "ip", "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            must(&[
                "ip", "-n", &bridge, "link", "set", &port, "master", "br0", "up",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "ip", "-n", &ns, "addr", "add", cidr, "brd", "+", "dev", "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            let ip = cidr
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("not an ip/prefix: {cidr}"));
            lab.hosts.push(Host {
                ns,
                ip,
                cidr: (*cidr).to_owned(),
            });
        }
        lab.wait_for_carrier();
        lab
    }

    /// Waits (bounded) until every host's `eth0` is operationally up.
    fn wait_for_carrier(&self) {
        let start = Instant::now();
        for host in &self.hosts {
            loop {
                let out = run(&["ip", "-n", &host.ns, "-br", "link", "show", "eth0"]);
                if String::from_utf8_lossy(&out.stdout).contains(" UP ") {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "eth0 of {} never came up: {}",
                    host.ns,
                    String::from_utf8_lossy(&out.stdout)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A command run inside host `i`'s namespace (`ip netns exec NS program`).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// Runs `/usr/bin/python3 -c script args...` inside host `i`, bounded by `limit` (killed beyond it).
    /// Returns (success, stdout, stderr).
    pub fn python(
        &self,
        i: usize,
        script: &str,
        args: &[&str],
        limit: Duration,
    ) -> (bool, String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
        let mut child = self
            .command(i, "/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("out"))
            .stderr(std::fs::File::create(&err_path).expect("err"))
            .spawn()
            .expect("spawn python3 in the namespace");
        let start = Instant::now();
        let ok = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.success();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            ok,
            std::fs::read_to_string(out_path).unwrap_or_default(),
            std::fs::read_to_string(err_path).unwrap_or_default(),
        )
    }

    /// Starts `/usr/bin/python3 -c script args...` inside host `i` in the background; killed when the returned
    /// guard drops. Its output is discarded: use it for advertisers and other side effects.
    pub fn spawn_python(&self, i: usize, script: &str, args: &[&str]) -> Background {
        let child = self
            .command(i, "/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 in the namespace");
        Background(child)
    }

    /// An HTTP request to `127.0.0.1:port` *inside* host `i` (curl when installed, else Python's urllib).
    /// `None` when nothing answers.
    pub fn http(
        &self,
        i: usize,
        port: u16,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, Value)> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let out = if Path::new("/usr/bin/curl").exists() {
            let mut c = self.command(i, "/usr/bin/curl");
            c.args([
                "-s",
                "-m",
                "5",
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
            ]);
            c.args(["-w", "\n%{http_code}"]);
            if let Some(body) = body {
                c.args(["--data", body]);
            }
            c.arg(&url).stdin(Stdio::null()).output().ok()?
        } else {
            const SCRIPT: &str = r#"
import sys, urllib.request, urllib.error
url, method, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        code, text = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    code, text = e.code, e.read().decode()
sys.stdout.write(text + "\n" + str(code))
"#;
            self.command(i, "/usr/bin/python3")
                .args(["-c", SCRIPT, &url, method, body.unwrap_or("")])
                .stdin(Stdio::null())
                .output()
                .ok()?
        };
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        if code == 0 {
            return None;
        }
        Some((code, serde_json::from_str(body).unwrap_or(Value::Null)))
    }
}

/// A background child, killed on drop.
pub struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary under test: `$BIFROST_TEST_BIN` when set (with a target directory shared by several checkouts,
/// `debug/bifrost-cluster` may be another checkout's build; point this at `debug/deps/bifrost_cluster-<hash>`),
/// else cargo's `CARGO_BIN_EXE_bifrost-cluster`.
pub fn binary() -> PathBuf {
    std::env::var_os("BIFROST_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bifrost-cluster")))
}

/// A `bifrost-cluster run` child inside one host of a [`Lab`], killed on drop, its stderr in a log file
/// (printed when it drops during a panic, i.e. a failing test).
pub struct NsNode {
    /// The node id.
    pub name: String,
    /// Index of its host in the lab.
    pub host: usize,
    /// The HTTP port inside its namespace.
    pub http_port: u16,
    /// The config file.
    pub config: PathBuf,
    /// The log file (stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

impl NsNode {
    /// Writes `{ "cluster_config": config }` to `dir/<name>.json` and starts the node in host `host` with
    /// `RUST_LOG=rust_log`.
    pub fn start(
        lab: &Lab,
        host: usize,
        dir: &Path,
        name: &str,
        http_port: u16,
        config: &Value,
        rust_log: &str,
    ) -> NsNode {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&serde_json::json!({ "cluster_config": config }))
            .expect("config json");
        std::fs::write(&path, text).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = lab
            .command(host, binary())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .env_remove("BIFROST_CLUSTER_SECRET")
            .env_remove("BIFROST_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn bifrost-cluster run in the namespace");
        NsNode {
            name: name.to_owned(),
            host,
            http_port,
            config: path,
            log,
            child: Some(child),
        }
    }

    /// The log so far, without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM (graceful leave) and waits, bounded, for the exit.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `GET /cluster/status`.
    pub fn status(&self, lab: &Lab) -> Option<Value> {
        match lab.http(self.host, self.http_port, "GET", "/cluster/status", None) {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// `POST /v1/counters/{key}/add {"window":"1h","n":n}`; returns the epoch.
    pub fn add(&self, lab: &Lab, key: &str, n: u64) -> u64 {
        let (code, body) = lab
            .http(
                self.host,
                self.http_port,
                "POST",
                &format!("/v1/counters/{key}/add"),
                Some(&format!(r#"{{ "window": "1h", "n": {n} }}"#)),
            )
            .unwrap_or_else(|| panic!("{}: POST add got no answer", self.name));
        assert_eq!(code, 200, "{}: {body}", self.name);
        assert_eq!(body["outcome"], "added", "{}: {body}", self.name);
        body["epoch"].as_u64().expect("epoch")
    }

    /// `GET /v1/counters/{key}?window=1h&epoch=N` → `global`.
    pub fn global(&self, lab: &Lab, key: &str, epoch: u64) -> Option<u64> {
        let (code, body) = lab.http(
            self.host,
            self.http_port,
            "GET",
            &format!("/v1/counters/{key}?window=1h&epoch={epoch}"),
            None,
        )?;
        (code == 200).then(|| body["global"].as_u64()).flatten()
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
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

/// Node ids listed in a status (`member_details`, any state) besides the local node.
pub fn listed(status: &Value) -> Vec<String> {
    status["member_details"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|m| m["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `done` every 100 ms until it holds or `limit` passes, then panics (every [`NsNode`] prints its log
/// when it drops during the panic).
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() <= limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}
