//! `bifrost-cluster status` through the binary against real `run` nodes on loopback: the table of a two-node
//! cluster, `--json`, https with a private CA, and the errors (unreachable, 401, 403), each naming the URL.
//! Every child process is killed when its guard drops; every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::free_port;

const SECRET: &str = "LdogM7+eww0KBwaOpO4pCAeGGGlevGy6RnrQ8T7idMM=";
const CHECK_TOKEN: &str = "check-token-5d1c0a9e7b3f46a28c9e01d7f4b2a6c3";
const READ_TOKEN: &str = "read-token-8f2e4b6a1c9d47e3b05a7c2e9f1d3b8a";

/// A `run` process; killed when dropped.
struct Node {
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
    /// `run` with node id `name`; `cluster` is the cluster part of the config (JSON members with a trailing
    /// comma), `http_extra` members of `http` besides `listen` (with a leading comma).
    fn start(
        dir: &Path,
        name: &str,
        cluster: &str,
        http_extra: &str,
        env: &[(&str, &str)],
    ) -> Node {
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = dir.join(format!("{name}.json"));
        std::fs::write(
            &config,
            format!(
                r#"{{ "cluster_config": {{ {cluster} "node_id": "{name}",
                     "http": {{ "listen": "{http}" {http_extra} }} }} }}"#
            ),
        )
        .expect("write config");
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
        cmd.args(["run", "--bind-ip", "127.0.0.1", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("BIFROST_CLUSTER_SECRET")
            .env_remove("BIFROST_HTTP_TOKENS")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut node = Node {
            child: cmd.spawn().expect("spawn run"),
            http,
            log,
        };
        // The HTTP listener accepts TCP (plain or TLS).
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&http, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("run exited early ({status}): {}", node.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "HTTP not listening within 20 s: {}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    /// A node without cluster mode.
    fn standalone(dir: &Path, name: &str, http_extra: &str, env: &[(&str, &str)]) -> Node {
        Node::start(dir, name, r#""enabled": false,"#, http_extra, env)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// `status ARGS` to its end (at most 20 s), with no token from the environment unless `env` gives one.
fn status(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    cmd.arg("status")
        .args(args)
        .env_remove("BIFROST_HTTP_TOKEN")
        .env_remove("BIFROST_HTTP_TOKENS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn status");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("status still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cluster_part(gossip: u16, peer: u16) -> String {
    format!(
        r#""enabled": true, "peers": ["127.0.0.1:{peer}"],
           "gossip": {{ "port": {gossip}, "config": {{ "timeout_seconds": 2, "success_threshold": 2,
              "failure_threshold": 3 }} }},
           "security": {{ "cluster_secret": "{SECRET}" }},"#
    )
}

#[test]
fn table_and_json_of_a_two_node_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ga, gb) = (free_port(), free_port());
    let alpha = Node::start(dir.path(), "alpha", &cluster_part(ga, gb), "", &[]);
    let _beta = Node::start(dir.path(), "beta", &cluster_part(gb, ga), "", &[]);
    let url = alpha.url();

    // --json: the node's own JSON, until both members are healthy.
    let deadline = Instant::now() + Duration::from_secs(40);
    let json = loop {
        let out = status(&["--json", "--url", &url], &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let value: serde_json::Value =
            serde_json::from_str(&stdout).expect("status --json is JSON");
        if value["healthy_members"] == 2 {
            break value;
        }
        assert!(
            Instant::now() < deadline,
            "not 2 healthy members within 40 s: {value:#}\n{}",
            alpha.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(json["local_node"], "alpha");
    assert_eq!(json["cluster_health"], "HEALTHY");

    // The default: a table, this node first, then beta alive and healthy.
    let out = status(&["--url", &url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("node alpha  cluster HEALTHY  members 2  healthy 2  leader alpha"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("MEMBER") && l.contains("HEALTHY")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("alpha (this node)")),
        "{stdout}"
    );
    let beta: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("beta "))
        .unwrap_or_else(|| panic!("no beta row: {stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(beta[1], format!("127.0.0.1:{gb}"), "{stdout}");
    assert_eq!(&beta[2..4], ["alive", "yes"], "{stdout}");
    assert!(serde_json::from_str::<serde_json::Value>(&stdout).is_err());
}

#[test]
fn an_unreachable_node_is_named() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = status(&["--url", &url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("{url}/cluster/status: the node is unreachable")),
        "{stderr}"
    );
    let out = status(&["--url", "ftp://127.0.0.1:1"], &[]);
    assert!(
        text(&out).1.contains("expected http:// or https://"),
        "{out:?}"
    );
}

#[test]
fn refused_tokens_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = format!("gateway:check:{CHECK_TOKEN} dashboard:read:{READ_TOKEN}");
    let node = Node::standalone(dir.path(), "sec", "", &[("BIFROST_HTTP_TOKENS", &tokens)]);
    let url = node.url();
    let target = format!("{url}/cluster/status");

    let out = status(&["--url", &url], &[]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{target}: 401 Unauthorized"))
            && stderr.contains("pass --token or set BIFROST_HTTP_TOKEN"),
        "{stderr}"
    );

    let wrong = "wrong-token-0123456789abcdef0123456789abcdef";
    let out = status(&["--url", &url, "--token", wrong], &[]);
    let stderr = text(&out).1;
    assert!(
        stderr.contains(&format!(
            "{target}: 401 Unauthorized: the node refused the token"
        )),
        "{stderr}"
    );

    let out = status(&["--url", &url], &[("BIFROST_HTTP_TOKEN", CHECK_TOKEN)]);
    let stderr = text(&out).1;
    assert!(
        stderr.contains(&format!(
            "{target}: 403 Forbidden: the token lacks the read scope"
        )),
        "{stderr}"
    );

    let out = status(&["--url", &url, "--token", READ_TOKEN], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("node sec  cluster HEALTHY"), "{stdout}");

    // Without --token, a read token of BIFROST_HTTP_TOKENS (the node's own variable) is used.
    let out = status(&["--url", &url], &[("BIFROST_HTTP_TOKENS", &tokens)]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let tls = format!(
        r#", "tls": {{ "cert_file": "{}", "key_file": "{}" }}"#,
        cert_path.display(),
        key_path.display()
    );
    let node = Node::standalone(dir.path(), "tls", &tls, &[]);
    let url = format!("https://localhost:{}", node.http.port());
    let ca = cert_path.to_str().expect("utf-8 path");

    let out = status(&["--json", "--url", &url, "--ca-file", ca], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{}", node.log_text());
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["local_node"], "tls");

    // Without the CA the certificate is not trusted: unreachable, with the cause.
    let out = status(&["--url", &url], &[]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{url}/cluster/status: the node is unreachable"))
            && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );

    // Plain http:// to the TLS listener fails too, naming the URL.
    let plain = format!("http://{}", node.http);
    let out = status(&["--url", &plain], &[]);
    assert!(
        text(&out).1.contains(&format!("{plain}/cluster/status")),
        "{out:?}"
    );

    // A --ca-file without a certificate is refused by name.
    let out = status(
        &[
            "--url",
            &url,
            "--ca-file",
            key_path.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(text(&out).1.contains("--ca-file"), "{out:?}");
}
