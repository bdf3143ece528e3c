//! The status page in a real browser: three `run` processes on loopback form a cluster, a key is incremented,
//! and headless Chromium (Debian's `chromium-headless-shell`, or `chromium`) loads node-1's page. The DOM it
//! renders (`--dump-dom`) must list three healthy alive members, the leader and the key with its count (which
//! reached node-1 by replication); a `--screenshot` must be a PNG of the window's size that is not blank. Then
//! node-3 is killed and node-1's page, loaded again until it does (bounded), must show node-3 as suspect or down.
//! node-2 has a read token: its page is served without one, but shows the token form and no data.
//!
//! Without Chromium the test is skipped with a message, unless `REQUIRE_CHROMIUM=1` (CI), where it fails.
//! Every process it starts (the nodes, each browser and the browser's own children, in their own process
//! group) is killed when its guard drops, on failure too.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::free_port;

const SECRET: &str = "Zm9yIHRoZSBzdGF0dXMgcGFnZSB0ZXN0IG9ubHkgMTIzNDU2Nzg5MA==";
const TOKEN: &str = "page-test-token-0123456789abcdef0123456789";
const KEY: &str = "ui-test/requests";
/// The window size of the screenshot.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;
/// How long a killed node may take to show as suspect or down on a survivor's page: with three members each is
/// probed about every 2 probe intervals (1 s each), suspected one probe later and declared down after the
/// suspicion minimum (4 s at this size, docs/membership.md); then the page refreshes every 2 s. 30 s leaves
/// room for a loaded CI machine.
const DETECTION_BOUND: Duration = Duration::from_secs(30);

/// The browser to use: `BIFROST_CHROMIUM`, else the first of Debian's names found in `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BIFROST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ];
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A `run` process; killed when dropped.
struct Node {
    name: String,
    child: Child,
    http: SocketAddr,
    log: PathBuf,
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

fn start_node(dir: &Path, name: &str, gossip: u16, peers: &[u16], tokens: Option<&str>) -> Node {
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = dir.join(format!("{name}.json"));
    std::fs::write(
        &config,
        format!(
            r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": [{}],
                 "gossip": {{ "port": {gossip} }}, "http": {{ "listen": "{http}" }},
                 "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#,
            peers.join(",")
        ),
    )
    .expect("write config");
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    command
        .args(["run", "--bind-ip", "127.0.0.1", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("BIFROST_CLUSTER_SECRET")
        .env_remove("BIFROST_HTTP_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")));
    if let Some(tokens) = tokens {
        command.env("BIFROST_HTTP_TOKENS", tokens);
    }
    let child = command.spawn().expect("spawn run");
    Node {
        name: name.to_string(),
        child,
        http,
        log,
    }
}

/// One request on its own connection; `(status, body)`. `Err` while the node is not up.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    support::http::request_text_with_token(addr, method, path, token, body)
}

fn json(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<serde_json::Value> {
    match request(addr, "GET", path, token, None) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// A browser run in its own process group (Chromium starts helper processes of its own). The group is killed
/// whole before the browser itself is reaped, so its id cannot have been reused by then: when the browser has
/// exited (a zombie, see [`Browser::exited`]) and when the guard drops.
struct Browser {
    child: Child,
    reaped: bool,
}

impl Browser {
    /// Whether the browser has exited and waits to be reaped (state `Z` in `/proc/PID/stat`).
    fn exited(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    fn kill_group(&self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    }

    /// Kills what is left of the group, then reaps the browser.
    fn finish(&mut self) -> std::process::ExitStatus {
        self.kill_group();
        self.reaped = true;
        self.child.wait().expect("wait chromium")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the browser headless on `url` with `args` added, for at most 60 s; returns its stdout.
fn browse(chromium: &Path, profile: &Path, url: &str, args: &[String]) -> String {
    let out_path = profile.with_extension("out");
    let err_path = profile.with_extension("err");
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox", // root in CI: Chromium refuses to run sandboxed as root
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(&out_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&err_path).expect("stderr file"),
        ))
        .process_group(0)
        .spawn()
        .expect("spawn chromium");
    let mut browser = Browser {
        child,
        reaped: false,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !browser.exited() {
        assert!(
            Instant::now() < deadline,
            "chromium did not exit within 60 s on {url}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = browser.finish();
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {err}");
    out
}

/// The page's DOM after its script ran (virtual time lets its timers and fetches finish first).
fn dump_dom(chromium: &Path, dir: &Path, run: &mut u32, url: &str) -> String {
    *run += 1;
    let profile = dir.join(format!("profile-{run}"));
    browse(
        chromium,
        &profile,
        url,
        &["--dump-dom".into(), "--virtual-time-budget=5000".into()],
    )
}

/// Every `<tr ...>` start tag's attributes, in document order.
fn rows(dom: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find("<tr") {
        let tag = &rest[start + 3..];
        let end = tag.find('>').unwrap_or(tag.len());
        out.push(attributes(&tag[..end]));
        rest = &tag[end..];
    }
    out
}

/// `name="value"` pairs of a start tag (as Chromium serializes them: double quotes, `&quot;` and `&amp;`).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let value_start = &rest[eq + 2..];
        let close = value_start.find('"').unwrap_or(value_start.len());
        let value = value_start[..close]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        out.insert(name, value);
        rest = &value_start[(close + 1).min(value_start.len())..];
    }
    out
}

/// The text of the element with `id` (its content up to the next tag).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let marker = format!("id=\"{id}\"");
    let at = dom.find(&marker)?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].to_string())
}

fn member_rows(dom: &str) -> Vec<BTreeMap<String, String>> {
    rows(dom)
        .into_iter()
        .filter(|r| r.contains_key("data-node"))
        .collect()
}

fn updates(dom: &str) -> u64 {
    dom.find("<body")
        .map(|at| attributes(&dom[at + 5..at + dom[at..].find('>').unwrap_or(0)]))
        .and_then(|a| a.get("data-updates").and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// PNG signature, then the IHDR chunk's width and height, and the total length of the IDAT chunks.
fn png_info(bytes: &[u8]) -> Result<(u32, u32, usize), String> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if bytes.len() < 33 || bytes[..8] != SIGNATURE {
        return Err(format!("not a PNG: {:02x?}", &bytes[..bytes.len().min(8)]));
    }
    if &bytes[12..16] != b"IHDR" {
        return Err("the first chunk is not IHDR".into());
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (width, height) = (be(16), be(20));
    let mut idat = 0usize;
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = be(at) as usize;
        if &bytes[at + 4..at + 8] == b"IDAT" {
            idat += len;
        }
        at += 12 + len;
    }
    Ok((width, height, idat))
}

fn screenshot(chromium: &Path, dir: &Path, name: &str, url: &str) -> Vec<u8> {
    let file = dir.join(format!("{name}.png"));
    browse(
        chromium,
        &dir.join(format!("profile-{name}")),
        url,
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
            "--force-device-scale-factor=1".into(),
            "--virtual-time-budget=5000".into(),
        ],
    );
    std::fs::read(&file).unwrap_or_else(|e| panic!("no screenshot {}: {e}", file.display()))
}

#[test]
fn the_status_page_in_a_browser_shows_the_cluster_and_a_killed_node() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "REQUIRE_CHROMIUM=1 but no chromium-headless-shell or chromium in PATH (apt-get install chromium-headless-shell)"
        );
        eprintln!(
            "SKIPPED status_page_browser: no chromium-headless-shell or chromium in PATH (apt-get install chromium-headless-shell, or set BIFROST_CHROMIUM)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let gossip: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let others = |i: usize| -> Vec<u16> {
        gossip
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| *p)
            .collect()
    };
    let tokens = format!("ui:check,read:{TOKEN}");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            start_node(
                dir,
                &name,
                gossip[i],
                &others(i),
                (i == 1).then_some(tokens.as_str()),
            )
        })
        .collect();
    let token_of = |i: usize| (i == 1).then_some(TOKEN);

    // The cluster forms: every node sees three healthy members.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healthy: Vec<u64> = (0..3)
            .map(|i| {
                json(nodes[i].http, "/cluster/status", token_of(i))
                    .and_then(|s| s["healthy_members"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if healthy.iter().all(|h| *h == 3) {
            break;
        }
        for n in &mut nodes {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("{} exited ({status}): {}", n.name, n.log_text());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no three healthy members within 60 s: {healthy:?}\n{}",
            nodes[0].log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 42 on node-2 (with its token); node-1's page must show it once replicated. Checks against a limit of 5
    // on node-3 (8 asked, 5 admitted): the key's limit is shown.
    let (status, body) = request(
        nodes[1].http,
        "POST",
        &format!("/v1/counters/{KEY}/add"),
        Some(TOKEN),
        Some(r#"{"window": "1h", "n": 42}"#),
    )
    .expect("add");
    assert_eq!(status, 200, "{body}");
    for _ in 0..8 {
        let (status, body) = request(
            nodes[2].http,
            "POST",
            "/v1/ratelimit/check",
            None,
            Some(r#"{"key": "ui-test/limited", "window": "1h", "limit": 5}"#),
        )
        .expect("check");
        assert_eq!(status, 200, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(
        nodes[0].http,
        &format!("/v1/counters/{KEY}?window=1h"),
        None,
    )
    .and_then(|c| c["global"].as_u64())
        != Some(42)
        || json(
            nodes[0].http,
            "/v1/counters/ui-test/limited?window=1h",
            None,
        )
        .and_then(|c| c["global"].as_u64())
            != Some(5)
    {
        assert!(Instant::now() < deadline, "node-1 never saw the counts");
        std::thread::sleep(Duration::from_millis(50));
    }

    // node-1's page, rendered.
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}/ui", n.http))
        .collect();
    let url = |i: usize| urls[i].clone();
    let mut runs = 0;
    let dom = dump_dom(&chromium, dir, &mut runs, &url(0));
    assert!(updates(&dom) >= 1, "the page never rendered data:\n{dom}");
    let members = member_rows(&dom);
    let names: Vec<&str> = members.iter().map(|r| r["data-node"].as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"], "{dom}");
    for r in &members {
        assert_eq!(
            (r["data-state"].as_str(), r["data-healthy"].as_str()),
            ("alive", "true"),
            "{r:?}"
        );
    }
    let leader = json(nodes[0].http, "/cluster/status", None)
        .and_then(|s| s["leader"].as_str().map(str::to_string))
        .expect("leader");
    assert_eq!(leader, "node-1", "the lowest healthy node id leads");
    assert_eq!(text_of(&dom, "leader").as_deref(), Some("node-1"), "{dom}");
    assert_eq!(
        members
            .iter()
            .filter(|r| r.get("data-leader").map(String::as_str) == Some("true"))
            .map(|r| r["data-node"].as_str())
            .collect::<Vec<_>>(),
        ["node-1"]
    );
    assert_eq!(text_of(&dom, "health").as_deref(), Some("HEALTHY"));
    let keys: Vec<BTreeMap<String, String>> = rows(&dom)
        .into_iter()
        .filter(|r| r.contains_key("data-key"))
        .collect();
    let used = |key: &str| {
        keys.iter()
            .find(|r| r["data-key"] == key)
            .map(|r| r["data-used"].clone())
    };
    assert_eq!(used(KEY).as_deref(), Some("42"), "{keys:?}");
    assert_eq!(used("ui-test/limited").as_deref(), Some("5"), "{keys:?}");
    // node-1 never acquired it: the limit is shown where the checks ran (node-3's page).
    assert!(dom.contains("42 / no limit"), "{dom}");
    let dom3 = dump_dom(&chromium, dir, &mut runs, &url(2));
    assert!(
        dom3.contains("5 / 5"),
        "node-3's page shows the limit it enforced:\n{dom3}"
    );

    // The screenshot: a PNG of the window's size, and not blank (a blank page of the same size compresses to
    // a fraction of it).
    let shot = screenshot(&chromium, dir, "page", &url(0));
    let (w, h, idat) = png_info(&shot).expect("page screenshot");
    assert_eq!((w, h), (WIDTH, HEIGHT), "screenshot size");
    let blank = screenshot(&chromium, dir, "blank", "data:text/html,<body></body>");
    let (bw, bh, blank_idat) = png_info(&blank).expect("blank screenshot");
    assert_eq!((bw, bh), (WIDTH, HEIGHT));
    assert!(
        idat > 5 * blank_idat && idat > 20_000,
        "the page's screenshot looks blank: {idat} bytes of image data, a blank page {blank_idat}"
    );

    // node-2 has a read token: its page is served, but shows the token form and no data.
    let (status, _) = request(nodes[1].http, "GET", "/ui", None, None).expect("page");
    assert_eq!(status, 200);
    let (status, _) = request(nodes[1].http, "GET", "/cluster/status", None, None).expect("json");
    assert_eq!(status, 401);
    let dom2 = dump_dom(&chromium, dir, &mut runs, &url(1));
    assert_eq!(
        text_of(&dom2, "health").as_deref(),
        Some("no access"),
        "{dom2}"
    );
    assert!(
        !dom2.contains(r#"id="token-form" hidden"#),
        "token form hidden:\n{dom2}"
    );
    assert!(member_rows(&dom2).is_empty(), "{dom2}");

    // Kill node-3: node-1's page shows it suspect or down within the detection bound.
    let killed = Instant::now();
    let _ = nodes[2].child.kill();
    let _ = nodes[2].child.wait();
    let shown = loop {
        let dom = dump_dom(&chromium, dir, &mut runs, &url(0));
        let node3 = member_rows(&dom)
            .into_iter()
            .find(|r| r["data-node"] == "node-3");
        if let Some(r) = &node3
            && matches!(r["data-state"].as_str(), "suspect" | "down")
        {
            break (r["data-state"].clone(), killed.elapsed());
        }
        assert!(
            killed.elapsed() < DETECTION_BOUND,
            "node-3 still shown as {node3:?} {DETECTION_BOUND:?} after it was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "node-3 shown {} on node-1's page {:.1} s after the kill ({runs} page loads)",
        shown.0,
        shown.1.as_secs_f64()
    );
}
