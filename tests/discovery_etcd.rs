//! etcd discovery against a REAL etcd (the Debian `etcd-server` binary), started by each test on free loopback
//! ports with its data in a temporary directory and killed when the test ends (a guard). Nodes are real
//! in-process nodes over QUIC on 127.0.0.1; registrations are checked with the real `etcdctl`.
//!
//! The TLS tests generate their CA and certificates with rcgen and start etcd with `--cert-file`/`--key-file`
//! (and `--client-cert-auth` for mutual TLS) on an `https://127.0.0.1:P` client URL.
//!
//! Without the `etcd` binary the tests print "SKIPPED" and pass, unless `REQUIRE_ETCD=1` (CI), then they fail.
//! Every wait is a bounded poll; every address is on loopback.
#![cfg(feature = "etcd")]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bifrost_cluster::config::{ClusterConfig, DiscoveryConfig, load_from_str};
use bifrost_cluster::counter::Window;
use bifrost_cluster::discovery::etcd::{EtcdDiscovery, EtcdOptions};
use bifrost_cluster::discovery::{Discovery, DiscoveryError, DiscoveryOverrides, LocalNode};
use bifrost_cluster::membership::MemberState;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::TransportOptions;

mod support;
use support::{free_port, wait_for};

const SECRET: &str = "Yf/FTvb6XBsCl476S3Ew/4pLfxiDCgFl8fNHd7Q1Mhs=";

/// A real etcd on loopback, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    /// `etcdctl` TLS flags (`--cacert`, `--cert`, `--key`) when the etcd serves https.
    etcdctl_tls: Vec<String>,
    _dir: tempfile::TempDir,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, generated with rcgen, as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    /// A fresh CA named `ca_name` and its two leaves.
    fn generate(ca_name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: &str| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let leaf = |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("leaf key");
            // `CertificateParams::new` turns "127.0.0.1" into an IP address SAN.
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (
                write(&format!("{cn}.crt"), &cert.pem()),
                write(&format!("{cn}.key"), &key.serialize_pem()),
            )
        };
        // etcd also dials itself (its gRPC gateway) with the server certificate: it is a client too.
        let (server_cert, server_key) = leaf(
            "etcd-server",
            vec!["127.0.0.1".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            "bifrost-node",
            vec!["bifrost-node.test".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        Pki {
            ca: write(&format!("{ca_name}.pem"), &ca_cert.pem()),
            server_cert,
            server_key,
            client_cert,
            client_key,
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Starts etcd, or returns `None` (after printing SKIPPED) when the binary is missing and
    /// `REQUIRE_ETCD` is not `1`.
    fn start(test: &str) -> Option<Etcd> {
        Etcd::start_with(test, None, false)
    }

    /// Starts etcd serving clients over https with `pki`'s server certificate; with `client_cert_auth`,
    /// clients must present a certificate issued by `pki`'s CA.
    fn start_tls(test: &str, pki: &Pki, client_cert_auth: bool) -> Option<Etcd> {
        Etcd::start_with(test, Some(pki), client_cert_auth)
    }

    fn start_with(test: &str, tls: Option<&Pki>, client_cert_auth: bool) -> Option<Etcd> {
        let found = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("etcdctl")
                .arg("version")
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var("REQUIRE_ETCD").as_deref() != Ok("1"),
                "{test}: the etcd and etcdctl binaries are required (REQUIRE_ETCD=1) but not found; \
                 install the Debian packages etcd-server and etcd-client"
            );
            eprintln!(
                "SKIPPED {test}: no etcd/etcdctl binary (install etcd-server + etcd-client; set REQUIRE_ETCD=1 to fail instead)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let client_port = free_port();
        let peer_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let mut command = Command::new("etcd");
        let mut etcdctl_tls = Vec::new();
        if let Some(pki) = tls {
            command
                .arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key);
            if client_cert_auth {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&pki.ca);
            }
            etcdctl_tls = vec![
                format!("--cacert={}", pki.ca.display()),
                format!("--cert={}", pki.client_cert.display()),
                format!("--key={}", pki.client_key.display()),
            ];
        }
        let child = command
            .arg("--name")
            .arg("bifrost-test")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("bifrost-test={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd {
            child,
            endpoint,
            etcdctl_tls,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = etcd.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd did not become healthy within 20 s: {}\n--- etcd log ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    etcd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(etcd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs the real `etcdctl` against this etcd (bounded by its own `--command-timeout`).
    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .args(&self.etcdctl_tls)
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// `etcdctl get --prefix {prefix}`: the (key, value) pairs, in key order.
    fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", prefix]);
        assert!(
            out.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len().is_multiple_of(2), "etcdctl output: {text:?}");
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }
}

fn config(node: &str, port: u16, service: &str, endpoint: &str) -> ClusterConfig {
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}",
            "discovery": {{
                "enabled": true, "type": "etcd", "service_name": "{service}",
                "etcd_endpoints": ["{endpoint}"], "dial_timeout": "2s", "interval": "1s"
            }},
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "replication": {{ "anti_entropy_interval": "1s" }},
            "http": {{ "listen": "127.0.0.1:0" }}
        }} }}"#
    );
    load_from_str(&text).expect("valid test config").config
}

fn options(lease_ttl: Option<Duration>) -> NodeOptions {
    let mut discovery_overrides = DiscoveryOverrides::default();
    if let Some(ttl) = lease_ttl {
        discovery_overrides.etcd.lease_ttl = ttl;
    }
    NodeOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        env_secret: None,
        transport: TransportOptions::default(),
        membership: None,
        discovery_overrides,
    }
}

async fn start(
    node: &str,
    service: &str,
    etcd: &Etcd,
    lease_ttl: Option<Duration>,
) -> ClusterHandle {
    Cluster::start_with(
        config(node, free_port(), service, &etcd.endpoint),
        options(lease_ttl),
    )
    .await
    .expect("node starts")
}

fn alive_peers(node: &ClusterHandle) -> usize {
    node.members().map_or(0, |t| {
        t.members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    })
}

fn hour() -> Window {
    Window::parse("1h").expect("window")
}

fn local(node_id: &str, gossip: SocketAddr) -> LocalNode {
    LocalNode {
        node_id: node_id.into(),
        gossip_addr: gossip,
        gossip_port: gossip.port(),
        secret: None,
    }
}

fn discovery_config(service: &str, endpoint: &str, dial_timeout: &str) -> DiscoveryConfig {
    let text = format!(
        r#"{{ "cluster_config": {{ "enabled": true, "discovery": {{
            "enabled": true, "type": "etcd", "service_name": "{service}",
            "etcd_endpoints": ["{endpoint}"], "dial_timeout": "{dial_timeout}" }},
            "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#
    );
    load_from_str(&text)
        .expect("valid test config")
        .config
        .discovery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_find_each_other_through_etcd_and_counters_converge_exactly() {
    let Some(etcd) = Etcd::start("three_nodes_find_each_other_through_etcd") else {
        return;
    };
    let service = "bifrost-three";
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(&format!("node-{i}"), service, &etcd, None).await);
    }
    let took = wait_for(
        Duration::from_secs(30),
        "every member table to show the two others alive",
        || nodes.iter().all(|n| alive_peers(n) == 2),
    )
    .await;
    eprintln!("three nodes found each other through etcd in {took:?}");

    // The registrations, as the real etcdctl sees them: one key per node, holding its gossip address.
    let registered = etcd.get_prefix("/services/");
    let mut expected: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            (
                format!("/services/{service}/{}", n.node_id()),
                n.advertised_addr().expect("cluster mode").to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(registered, expected);

    let epoch = hour().epoch_at(nodes[0].clock().now_unix_ms());
    let per_node = [7_u64, 1_000, 123_456];
    for (node, n) in nodes.iter().zip(per_node) {
        let handle = node.store().handle("vk/etcd", hour()).expect("handle");
        for _ in 0..n / 1000 {
            handle.add(1000);
        }
        handle.add(n % 1000);
    }
    let total: u64 = per_node.iter().sum();
    wait_for(
        Duration::from_secs(15),
        "every node to read the exact total",
        || {
            nodes.iter().all(|n| {
                n.store()
                    .handle("vk/etcd", hour())
                    .expect("handle")
                    .global_at(epoch)
                    == total
            })
        },
    )
    .await;
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_without_leaving_disappears_when_its_lease_expires() {
    let Some(etcd) = Etcd::start("a_node_killed_without_leaving_disappears") else {
        return;
    };
    let service = "bifrost-killed";
    let ttl = Duration::from_secs(3);
    let survivor = start("survivor", service, &etcd, Some(ttl)).await;
    let victim = start("victim", service, &etcd, Some(ttl)).await;
    wait_for(Duration::from_secs(30), "the two nodes to meet", || {
        alive_peers(&survivor) == 1 && alive_peers(&victim) == 1
    })
    .await;
    let keys = |etcd: &Etcd| -> Vec<String> {
        etcd.get_prefix(&format!("/services/{service}/"))
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys(&etcd),
        [
            format!("/services/{service}/survivor"),
            format!("/services/{service}/victim")
        ]
    );

    // Killed: the handle dropped without `shutdown()` — no leave, no deregistration; renewals stop.
    drop(victim);
    let dropped = Instant::now();
    let victim_key = format!("/services/{service}/victim");
    loop {
        let now = keys(&etcd);
        if !now.contains(&victim_key) {
            break;
        }
        assert!(
            dropped.elapsed() < ttl + Duration::from_secs(10),
            "the killed node's key outlived its {ttl:?} lease by 10 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = dropped.elapsed();
    eprintln!(
        "the killed node's key disappeared {gone_after:?} after the kill (lease TTL {ttl:?})"
    );
    // It cannot have been removed by anything but the expiry: nothing revoked it.
    assert!(
        gone_after >= ttl / 3,
        "the key vanished after {gone_after:?}, before the lease could have expired"
    );

    // Meanwhile the survivor's keep-alive kept its own key through more than two TTLs.
    tokio::time::sleep((ttl * 2).saturating_sub(gone_after)).await;
    assert_eq!(keys(&etcd), [format!("/services/{service}/survivor")]);
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_removes_the_key_at_once() {
    let Some(etcd) = Etcd::start("a_graceful_leave_removes_the_key_at_once") else {
        return;
    };
    let service = "bifrost-leave";
    // The default 30 s lease: an expiry cannot explain the key going away during this test.
    let a = start("stay", service, &etcd, None).await;
    let b = start("leave", service, &etcd, None).await;
    wait_for(Duration::from_secs(30), "the two nodes to meet", || {
        alive_peers(&a) == 1 && alive_peers(&b) == 1
    })
    .await;
    assert_eq!(etcd.get_prefix(&format!("/services/{service}/")).len(), 2);
    b.shutdown().await;
    // Right after the leave: the key is gone (the lease was revoked), the other one is still there.
    let left = etcd.get_prefix(&format!("/services/{service}/"));
    assert_eq!(
        left,
        [(
            format!("/services/{service}/stay"),
            a.advertised_addr().expect("addr").to_string()
        )]
    );
    a.shutdown().await;
    assert!(etcd.get_prefix(&format!("/services/{service}/")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_wakes_the_loop_on_puts_and_deletes_and_bad_values_are_skipped() {
    let Some(etcd) = Etcd::start("the_watch_wakes_the_loop") else {
        return;
    };
    let service = "bifrost-watch";
    let gossip: SocketAddr = "127.0.0.1:4001".parse().expect("addr");
    let d = EtcdDiscovery::new(
        &discovery_config(service, &etcd.endpoint, "2s"),
        &local("watcher", gossip),
    )
    .await
    .expect("backend");
    d.register().await.expect("registered");
    assert_eq!(d.discover().await.expect("discover"), vec![gossip]);
    let changed = d.changed().expect("etcd has a watch");

    // A put under the prefix (after the get) wakes the loop.
    let put = etcd.etcdctl(&[
        "put",
        &format!("/services/{service}/other"),
        "127.0.0.1:4002",
    ]);
    assert!(put.status.success(), "{put:?}");
    notified(&changed, "a put").await;
    let mut found = d.discover().await.expect("discover");
    found.sort();
    assert_eq!(found, vec![gossip, "127.0.0.1:4002".parse().expect("addr")]);

    // A value that is not ip:port is skipped (and counted), the others are still returned.
    let bad = etcd.etcdctl(&[
        "put",
        &format!("/services/{service}/broken"),
        "not-an-address",
    ]);
    assert!(bad.status.success(), "{bad:?}");
    notified(&changed, "a put of a bad value").await;
    let mut found = d.discover().await.expect("discover");
    found.sort();
    assert_eq!(found, vec![gossip, "127.0.0.1:4002".parse().expect("addr")]);
    assert!(
        d.counters().contains(&("bad_values", 1)),
        "{:?}",
        d.counters()
    );

    // A delete wakes it too.
    let del = etcd.etcdctl(&["del", &format!("/services/{service}/other")]);
    assert!(del.status.success(), "{del:?}");
    notified(&changed, "a delete").await;
    assert_eq!(d.discover().await.expect("discover"), vec![gossip]);
    let events = d
        .counters()
        .into_iter()
        .find(|(name, _)| *name == "watch_events")
        .map(|(_, n)| n);
    assert_eq!(events, Some(3), "{:?}", d.counters());

    d.deregister().await.expect("deregistered");
    assert!(
        etcd.get_prefix(&format!("/services/{service}/watcher"))
            .is_empty()
    );
}

async fn notified(changed: &Arc<tokio::sync::Notify>, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), changed.notified())
        .await
        .unwrap_or_else(|_| panic!("the watch did not signal {what} within 5 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_granted_again_and_the_key_put_back() {
    let Some(etcd) = Etcd::start("a_revoked_lease_is_granted_again") else {
        return;
    };
    let service = "bifrost-regrant";
    let gossip: SocketAddr = "127.0.0.1:4101".parse().expect("addr");
    let d = EtcdDiscovery::with_options(
        &discovery_config(service, &etcd.endpoint, "2s"),
        &local("phoenix", gossip),
        EtcdOptions {
            lease_ttl: Duration::from_secs(3),
            ..EtcdOptions::default()
        },
    )
    .await
    .expect("backend");
    d.register().await.expect("registered");
    let key = format!("/services/{service}/phoenix");
    let lease_of = |etcd: &Etcd| -> Option<String> {
        // `-w fields` prints `"Lease" : <decimal>` for each key.
        let out = etcd.etcdctl(&["get", &key, "-w", "fields"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("\"Lease\" : ").map(str::to_owned))
    };
    let first = lease_of(&etcd).expect("registered key has a lease");
    let first_hex = format!("{:x}", first.parse::<i64>().expect("lease id"));

    // Someone revokes our lease: the key disappears at once; the keep-alive notices and registers again.
    let revoke = etcd.etcdctl(&["lease", "revoke", &first_hex]);
    assert!(revoke.status.success(), "{revoke:?}");
    assert!(etcd.get_prefix(&key).is_empty());
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        if let Some(lease) = lease_of(&etcd) {
            break lease;
        }
        assert!(
            Instant::now() < deadline,
            "the key was not put back within 15 s of the revoke"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(first, second, "put back on a new lease");
    assert_eq!(etcd.get_prefix(&key), [(key.clone(), gossip.to_string())]);
    assert!(
        d.counters().contains(&("lease_regrants", 1)),
        "{:?}",
        d.counters()
    );
    d.deregister().await.expect("deregistered");
    assert!(etcd.get_prefix(&key).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_within_dial_timeout_naming_it() {
    // No etcd needed. Two kinds of dead endpoint on loopback: a port nobody listens on (refused at once),
    // and a port that accepts TCP connections but never answers (only the dial timeout ends the wait).
    let refused = format!("http://127.0.0.1:{}", free_port());
    let silent_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let silent = format!(
        "http://127.0.0.1:{}",
        silent_listener.local_addr().expect("addr").port()
    );
    let dial_timeout = Duration::from_millis(800);
    for (endpoint, cause) in [(&refused, Some("refused")), (&silent, None)] {
        let d = EtcdDiscovery::new(
            &discovery_config("bifrost-down", endpoint, "800ms"),
            &local("lonely", "127.0.0.1:4201".parse().expect("addr")),
        )
        .await
        .expect("construction contacts nothing");
        let register = timed(d.register()).await;
        let (discovered, took) = timed(d.discover()).await;
        for (what, (result, took)) in [
            ("register", register),
            ("discover", (discovered.map(|_| ()), took)),
        ] {
            let error = result.expect_err(what);
            eprintln!("{endpoint} {what}: failed after {took:?}: {error}");
            assert!(
                matches!(error, DiscoveryError::Unreachable { ref target, .. } if target == endpoint),
                "{what}: not Unreachable naming {endpoint}: {error:?}"
            );
            if let Some(cause) = cause {
                assert!(
                    error.to_string().to_lowercase().contains(cause),
                    "{what}: the cause is missing: {error}"
                );
            }
            // Within the dial timeout (the backend gives up at 4/5 of it and diagnoses within 1/6), plus
            // scheduling slack; never hanging.
            assert!(
                took < dial_timeout + Duration::from_millis(500),
                "{what}: took {took:?} with a {dial_timeout:?} dial timeout"
            );
        }
    }
    drop(silent_listener);
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, DiscoveryError>>,
) -> (Result<T, DiscoveryError>, Duration) {
    let start = Instant::now();
    // Outer bound so a bug cannot hang the test.
    let r = tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the call did not return within 30 s");
    (r, start.elapsed())
}

fn tls_options(ca: Option<&Pki>, identity: Option<&Pki>) -> EtcdOptions {
    EtcdOptions {
        ca_file: ca.map(|p| p.ca.clone()),
        client_cert_file: identity.map(|p| p.client_cert.clone()),
        client_key_file: identity.map(|p| p.client_key.clone()),
        ..EtcdOptions::default()
    }
}

/// Registers, discovers (seeing the key also through the real `etcdctl` over TLS) and deregisters.
async fn register_discover_deregister(etcd: &Etcd, service: &str, options: EtcdOptions) {
    let gossip: SocketAddr = "127.0.0.1:4301".parse().expect("addr");
    let d = EtcdDiscovery::with_options(
        &discovery_config(service, &etcd.endpoint, "2s"),
        &local("secure", gossip),
        options,
    )
    .await
    .expect("backend");
    d.register().await.expect("registered over TLS");
    let key = format!("/services/{service}/secure");
    assert_eq!(etcd.get_prefix(&key), [(key.clone(), gossip.to_string())]);
    // Another registration, put with etcdctl, is found too.
    let other = format!("/services/{service}/other");
    let put = etcd.etcdctl(&["put", &other, "127.0.0.1:4302"]);
    assert!(put.status.success(), "{put:?}");
    let mut found = d.discover().await.expect("discovered over TLS");
    found.sort();
    assert_eq!(found, vec![gossip, "127.0.0.1:4302".parse().expect("addr")]);
    d.deregister().await.expect("deregistered over TLS");
    assert!(etcd.get_prefix(&key).is_empty());
}

/// `register()` with `options` fails: returns the error, after checking it is `Unreachable` naming the
/// endpoint and saying "TLS".
async fn tls_failure(etcd: &Etcd, service: &str, options: EtcdOptions) -> String {
    let d = EtcdDiscovery::with_options(
        &discovery_config(service, &etcd.endpoint, "2s"),
        &local("refused", "127.0.0.1:4303".parse().expect("addr")),
        options,
    )
    .await
    .expect("construction contacts nothing");
    let (result, took) = timed(d.register()).await;
    let error = result.expect_err("the TLS connection must fail");
    eprintln!("{}: register failed after {took:?}: {error}", etcd.endpoint);
    assert!(
        matches!(error, DiscoveryError::Unreachable { ref target, .. } if *target == etcd.endpoint),
        "not Unreachable naming {}: {error:?}",
        etcd.endpoint
    );
    let text = error.to_string();
    assert!(text.contains(&etcd.endpoint), "{text}");
    assert!(text.contains("TLS"), "the error does not say TLS: {text}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(500),
        "took {took:?} with a 2 s dial timeout"
    );
    // Nothing was registered.
    assert!(
        etcd.get_prefix(&format!("/services/{service}/refused"))
            .is_empty()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_work_with_the_ca_file_and_fail_without_it_naming_endpoint_and_tls() {
    let pki = Pki::generate("bifrost-test-ca");
    let Some(etcd) = Etcd::start_tls("https_endpoints_work_with_the_ca_file", &pki, false) else {
        return;
    };
    assert!(etcd.endpoint.starts_with("https://127.0.0.1:"));
    let service = "bifrost-https";
    register_discover_deregister(&etcd, service, tls_options(Some(&pki), None)).await;

    // Without the CA file the system trust store is used, which does not know this test CA.
    let text = tls_failure(&etcd, service, tls_options(None, None)).await;
    assert!(text.contains("certificate"), "{text}");
    // With another CA's file: refused the same way.
    let other = Pki::generate("another-ca");
    let text = tls_failure(&etcd, service, tls_options(Some(&other), None)).await;
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_and_fails_without_it() {
    let pki = Pki::generate("bifrost-mtls-ca");
    let Some(etcd) = Etcd::start_tls("mutual_tls_presents_the_client_certificate", &pki, true)
    else {
        return;
    };
    let service = "bifrost-mtls";
    register_discover_deregister(&etcd, service, tls_options(Some(&pki), Some(&pki))).await;
    // The server is trusted but no client certificate is presented: etcd refuses the connection.
    let text = tls_failure(&etcd, service, tls_options(Some(&pki), None)).await;
    assert!(
        text.contains("received fatal alert") && text.contains("client_cert_file"),
        "{text}"
    );
    // A client certificate from another CA is refused too.
    let other = Pki::generate("another-mtls-ca");
    let text = tls_failure(
        &etcd,
        service,
        EtcdOptions {
            ca_file: Some(pki.ca.clone()),
            client_cert_file: Some(other.client_cert.clone()),
            client_key_file: Some(other.client_key.clone()),
            ..EtcdOptions::default()
        },
    )
    .await;
    assert!(
        text.contains("received fatal alert") && text.contains("refused the client certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn mixed_schemes_and_tls_files_with_http_are_setup_errors() {
    // No etcd needed: construction checks the endpoints and the files.
    let pki = Pki::generate("bifrost-setup-ca");
    let mixed = load_from_str(&format!(
        r#"{{ "cluster_config": {{ "enabled": true, "discovery": {{
            "enabled": true, "type": "etcd", "service_name": "s",
            "etcd_endpoints": ["http://127.0.0.1:1", "https://127.0.0.1:2"] }},
            "security": {{ "cluster_secret": "{SECRET}" }} }} }}"#
    ))
    .expect("valid config")
    .config
    .discovery;
    let node = local("n", "127.0.0.1:4304".parse().expect("addr"));
    let error = EtcdDiscovery::new(&mixed, &node)
        .await
        .expect_err("mixed schemes");
    assert!(matches!(error, DiscoveryError::Setup { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("cluster_config.discovery.etcd_endpoints"),
        "{error}"
    );
    assert!(error.to_string().contains("http://127.0.0.1:1"), "{error}");

    let http = discovery_config("s", "http://127.0.0.1:1", "1s");
    let error = EtcdDiscovery::with_options(&http, &node, tls_options(Some(&pki), None))
        .await
        .expect_err("ca_file with http");
    assert!(error.to_string().contains("ca_file"), "{error}");

    let https = discovery_config("s", "https://127.0.0.1:1", "1s");
    // A file that is not a certificate, and half a key pair, are named.
    let error = EtcdDiscovery::with_options(
        &https,
        &node,
        EtcdOptions {
            ca_file: Some(pki.client_key.clone()),
            ..EtcdOptions::default()
        },
    )
    .await
    .expect_err("a key is no CA");
    assert!(
        error
            .to_string()
            .contains(&pki.client_key.display().to_string()),
        "{error}"
    );
    let error = EtcdDiscovery::with_options(
        &https,
        &node,
        EtcdOptions {
            client_cert_file: Some(pki.client_cert.clone()),
            ..EtcdOptions::default()
        },
    )
    .await
    .expect_err("no key");
    assert!(error.to_string().contains("together"), "{error}");
    // And a good configuration builds without contacting anything.
    EtcdDiscovery::with_options(&https, &node, tls_options(Some(&pki), Some(&pki)))
        .await
        .expect("https with TLS files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_on_a_plain_http_etcd_is_a_tls_error() {
    let Some(etcd) = Etcd::start("an_https_endpoint_on_a_plain_http_etcd") else {
        return;
    };
    let https = etcd.endpoint.replacen("http://", "https://", 1);
    let d = EtcdDiscovery::new(
        &discovery_config("bifrost-plain", &https, "2s"),
        &local("confused", "127.0.0.1:4305".parse().expect("addr")),
    )
    .await
    .expect("construction contacts nothing");
    let (result, took) = timed(d.register()).await;
    let error = result.expect_err("TLS to a plain-http etcd must fail");
    eprintln!("{https}: register failed after {took:?}: {error}");
    assert!(
        matches!(error, DiscoveryError::Unreachable { ref target, .. } if *target == https),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("TLS handshake failed") && text.contains("http://"),
        "{text}"
    );
    assert!(
        etcd.get_prefix("/services/bifrost-plain/").is_empty(),
        "nothing registered"
    );
}
