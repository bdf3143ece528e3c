//! The `run` subcommand as a real child process: it links to a node in the test, leaves on SIGTERM with exit
//! code 0 within a bound, and refuses a config that cannot run with exit code 2. Loopback only; every child is
//! killed when its guard drops, so a failing test leaves no process behind.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::node::{Cluster, NodeOptions};
use bifrost_cluster::transport::TransportOptions;

mod support;
use support::free_port;

const SECRET: &str = "KaT/nzi5ZroCIPADV8+4BgyVmdIxfabxVss21BYPEb8=";

fn config_text(node: &str, port: u16, peer: u16) -> String {
    format!(
        r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{node}", "peers": ["127.0.0.1:{peer}"],
             "gossip": {{ "port": {port} }}, "http": {{ "listen": "127.0.0.1:0" }},
             "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#
    )
}

/// Kills the child when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_run(config_path: &std::path::Path) -> ChildGuard {
    ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
            .args(["run", "--bind-ip", "127.0.0.1", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "info")
            .env_remove("BIFROST_CLUSTER_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bifrost-cluster run"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_links_to_its_peer_and_leaves_on_sigterm_with_exit_code_zero() {
    let (observer_port, child_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("child.json");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(config_text("child", child_port, observer_port).as_bytes()))
        .expect("write config");
    let mut child = spawn_run(&path);

    let observer = Cluster::start_with(
        load_from_str(&config_text("observer", observer_port, child_port))
            .expect("config")
            .config,
        NodeOptions {
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            env_secret: None,
            transport: TransportOptions::default(),
            membership: None,
            discovery_overrides: Default::default(),
        },
    )
    .await
    .expect("observer starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !observer.peers().iter().any(|p| p.node_id == "child") {
        assert!(Instant::now() < deadline, "the child process never linked");
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "the child exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGTERM: graceful leave, then exit 0, within the documented bound (final flush ≤ 2 s + close ≤ 1 s).
    let pid = child.0.id().to_string();
    // The shell's builtin kill: no dependency on procps being installed.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("sh kill");
    assert!(status.success());
    let sent = Instant::now();
    let code = loop {
        if let Some(code) = child.0.try_wait().expect("try_wait") {
            break code;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the child did not exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code.code(), Some(0), "exit status after SIGTERM: {code}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.peers().iter().any(|p| p.node_id == "child") {
        assert!(
            Instant::now() < deadline,
            "the observer still lists the child's link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    observer.shutdown().await;
}

#[test]
fn run_refuses_a_config_that_cannot_run_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-trust.json");
    // Valid JSON for the reference, but no cluster secret, no CA files, no insecure flag: run must refuse.
    std::fs::write(
        &path,
        r#"{ "cluster_config": { "enabled": true, "peers": ["127.0.0.1:1"] } }"#,
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
        .args(["run", "--bind-ip", "127.0.0.1", "--config"])
        .arg(&path)
        .env_remove("BIFROST_CLUSTER_SECRET")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster_config.security"), "{stderr}");
}
