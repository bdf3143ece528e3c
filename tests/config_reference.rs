//! Every config example of the reference document loads unchanged, through the library and through
//! `bifrost-cluster check-config`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bifrost_cluster::config::{
    ClusterConfig, ConfigDuration, DiscoveryType, LoadedConfig, PeerAddr, Trust,
    effective_document, load_from_path, load_from_str,
};

const FIXTURES: [&str; 8] = [
    "core_structure.json",
    "kubernetes.json",
    "consul.json",
    "etcd.json",
    "dns.json",
    "udp.json",
    "mdns.json",
    "k8s_configmap_gateway.json",
];

const A_SECRET: &str = "Y2CsLcCNXfePWqyNeD7zAZrMtZpOLRxCA0gLFuFdP/E=";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

fn load(name: &str) -> LoadedConfig {
    match load_from_path(&fixture(name)) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{name} should load, got:\n{e}"),
    }
}

fn check_config(path: &Path, secret: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    cmd.arg("check-config")
        .arg(path)
        .env_remove("BIFROST_CONFIG")
        .env_remove("BIFROST_CLUSTER_SECRET")
        .env_remove("BIFROST_HTTP_TOKENS");
    if let Some(secret) = secret {
        cmd.env("BIFROST_CLUSTER_SECRET", secret);
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run bifrost-cluster: {e}"),
    }
}

#[test]
fn every_fixture_loads_without_errors_or_warnings() {
    for name in FIXTURES {
        let loaded = load(name);
        assert!(
            loaded.warnings.is_empty(),
            "{name}: unexpected warnings {:?}",
            loaded.warnings
        );
        let c = &loaded.config;
        assert!(c.enabled, "{name}");
        assert!(c.discovery.enabled, "{name}");
        assert!(c.peers.is_empty(), "{name}");
        assert_eq!(c.gossip.port, 10101, "{name}");
        assert_eq!(c.gossip.config.timeout_seconds, 10, "{name}");
        assert_eq!(c.gossip.config.success_threshold, 3, "{name}");
        assert_eq!(c.gossip.config.failure_threshold, 3, "{name}");
        assert!(c.validate().is_empty(), "{name}: {:?}", c.validate());
        // Our own sections are absent from the reference and keep their defaults.
        let defaults = ClusterConfig::default();
        assert_eq!(c.security, defaults.security, "{name}");
        assert_eq!(c.replication, defaults.replication, "{name}");
        assert_eq!(c.http, defaults.http, "{name}");
        assert_eq!(c.limits, defaults.limits, "{name}");
        assert_eq!(c.node_id, None, "{name}");
    }
}

#[test]
fn typed_values_per_discovery_method() {
    let core = load("core_structure.json").config;
    assert_eq!(
        core.discovery.discovery_type,
        Some(DiscoveryType::Kubernetes)
    );
    assert_eq!(
        core.discovery.service_name.as_deref(),
        Some("bifrost-cluster")
    );
    assert_eq!(core.discovery.k8s_namespace, "default");
    assert_eq!(core.discovery.k8s_label_selector, None);
    assert_eq!(core.discovery.bind_port, 10101);
    assert_eq!(core.discovery.dial_timeout, ConfigDuration::from_secs(10));

    let k8s = load("kubernetes.json").config;
    assert_eq!(
        k8s.discovery.k8s_label_selector.as_deref(),
        Some("app=bifrost")
    );

    let consul = load("consul.json").config;
    assert_eq!(consul.discovery.discovery_type, Some(DiscoveryType::Consul));
    assert_eq!(
        consul.discovery.consul_address,
        "consul.service.consul:8500"
    );

    let etcd = load("etcd.json").config;
    assert_eq!(etcd.discovery.discovery_type, Some(DiscoveryType::Etcd));
    let hosts: Vec<_> = etcd
        .discovery
        .etcd_endpoints
        .iter()
        .map(|u| u.host_str().unwrap_or(""))
        .collect();
    assert_eq!(hosts, ["etcd-1", "etcd-2", "etcd-3"]);
    assert!(
        etcd.discovery
            .etcd_endpoints
            .iter()
            .all(|u| u.scheme() == "http" && u.port() == Some(2379))
    );
    assert_eq!(
        etcd.discovery.dial_timeout.as_std(),
        std::time::Duration::from_secs(10)
    );

    let dns = load("dns.json").config;
    assert_eq!(
        dns.discovery.dns_names,
        [
            "bifrost-cluster.local",
            "bifrost-nodes.internal.company.com"
        ]
    );
    assert_eq!(dns.discovery.bind_port, 10101);

    let udp = load("udp.json").config;
    assert_eq!(udp.discovery.udp_broadcast_port, Some(9999));
    let nets: Vec<String> = udp
        .discovery
        .allowed_address_space
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["192.168.1.0/24", "10.0.0.0/8"]);

    let mdns = load("mdns.json").config;
    assert_eq!(mdns.discovery.mdns_service, "_bifrost._tcp");
    assert_eq!(mdns.discovery.service_name.as_deref(), Some("bifrost"));

    let gateway = load("k8s_configmap_gateway.json").config;
    assert_eq!(gateway.discovery.k8s_namespace, "bifrost");
    assert_eq!(
        gateway.discovery.k8s_label_selector.as_deref(),
        Some("app=bifrost,component=gateway")
    );
}

#[test]
#[cfg_attr(
    not(feature = "kubernetes"),
    ignore = "a build without the kubernetes backend adds a warning for the reference's kubernetes examples: run with default features"
)]
fn run_requirements_of_the_reference_examples() {
    // No example configures trust: run needs a secret (config or env), files, or insecure_dev.
    for name in FIXTURES {
        let c = load(name).config;
        let paths: Vec<String> = c
            .run_requirements(None)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(
            paths.contains(&"cluster_config.security".to_owned()),
            "{name}: {paths:?}"
        );
        assert!(
            matches!(c.trust(Some(A_SECRET)), Ok(Trust::Secret(_))),
            "{name}"
        );
    }
    // The core example omits the Kubernetes label selector its own table marks required.
    let core = load("core_structure.json").config;
    let reqs = core.run_requirements(Some(A_SECRET));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].to_string(),
        "cluster_config.discovery.k8s_label_selector: required when discovery.type is \"kubernetes\"; run will refuse to start without it"
    );
    assert!(
        load("kubernetes.json")
            .config
            .run_requirements(Some(A_SECRET))
            .is_empty()
    );
}

#[test]
fn effective_config_round_trips() {
    for name in FIXTURES {
        let loaded = load(name);
        let text = effective_document(&loaded.config).unwrap().to_string();
        let again = match load_from_str(&text) {
            Ok(l) => l,
            Err(e) => panic!("{name}: effective config does not load again:\n{e}\n{text}"),
        };
        assert_eq!(again.config, loaded.config, "{name}");
        assert!(again.warnings.is_empty(), "{name}: {:?}", again.warnings);
    }
}

#[test]
fn effective_config_fills_every_default() {
    let doc = effective_document(&load("core_structure.json").config).unwrap();
    let c = &doc["cluster_config"];
    assert_eq!(c["peers"], serde_json::json!([]));
    assert_eq!(c["discovery"]["dial_timeout"], "10s");
    assert_eq!(c["discovery"]["consul_address"], "localhost:8500");
    assert_eq!(c["discovery"]["mdns_service"], "_bifrost._tcp");
    assert_eq!(c["discovery"]["type"], "kubernetes");
    assert_eq!(
        c["discovery"]["k8s_label_selector"],
        serde_json::Value::Null
    );
    assert_eq!(c["replication"]["flush_interval"], "5ms");
    assert_eq!(c["replication"]["max_batch_bytes"], 1200);
    assert_eq!(c["replication"]["anti_entropy_interval"], "10s");
    assert_eq!(c["http"]["listen"], "0.0.0.0:8080");
    let etcd = effective_document(&load("etcd.json").config).unwrap();
    assert_eq!(
        etcd["cluster_config"]["discovery"]["etcd_endpoints"],
        serde_json::json!([
            "http://etcd-1:2379",
            "http://etcd-2:2379",
            "http://etcd-3:2379"
        ])
    );
    assert_eq!(c["limits"]["max_keys"], 100_000);
    assert_eq!(c["limits"]["max_key_length"], 256);
    assert_eq!(c["security"]["insecure_dev"], false);
    assert_eq!(c["node_id"], serde_json::Value::Null);
}

#[test]
fn secret_is_redacted_in_the_effective_config() {
    let text = r#"{"cluster_config": {"enabled": true, "peers": ["10.0.0.2:10101", "node-3"],
        "security": {"cluster_secret": "correct-horse-battery-staple"}}}"#;
    let loaded = load_from_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.peers[1],
        PeerAddr::parse("node-3").unwrap_or_else(|e| panic!("{e}"))
    );
    let json = effective_document(&loaded.config).unwrap().to_string();
    assert!(!json.contains("correct-horse"), "{json}");
    assert!(json.contains("\"cluster_secret\":\"<redacted>\""), "{json}");
    assert!(!format!("{:?}", loaded.config).contains("correct-horse"));
    // A passphrase loads (reference compatibility) but is too weak for `run`, which names the field.
    let requirements = loaded.config.run_requirements(None);
    assert_eq!(requirements.len(), 1, "{requirements:?}");
    assert_eq!(
        requirements[0].path,
        "cluster_config.security.cluster_secret"
    );
    assert!(
        requirements[0].rule.contains("too weak"),
        "{requirements:?}"
    );
    assert!(!requirements[0].rule.contains("correct-horse"));
}

#[test]
fn check_config_accepts_every_fixture() {
    for name in FIXTURES {
        let out = check_config(&fixture(name), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: stderr:\n{stderr}");
        let doc: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => panic!(
                "{name}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ),
        };
        assert_eq!(
            doc,
            effective_document(&load(name).config).unwrap(),
            "{name}"
        );
        // Printed in schema order, not sorted.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("{\n  \"cluster_config\": {\n    \"enabled\": true,\n"),
            "{name}: {stdout}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l
                    .starts_with("warning: cluster_config.security: run needs a cluster secret")),
            "{name}: stderr:\n{stderr}"
        );
        assert!(
            stderr.lines().all(|l| l.starts_with("warning: ")),
            "{name}: stderr:\n{stderr}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "kubernetes"),
    ignore = "a build without the kubernetes backend adds a warning for the reference's kubernetes examples: run with default features"
)]
fn check_config_with_a_secret_in_the_environment_warns_only_about_what_is_missing() {
    // The reference's configs keep the default `http.listen` (0.0.0.0:8080) and have no HTTP token: loading
    // succeeds, and the one warning left is the one `run` would refuse for (HTTP security, issue 14).
    let http_warning = "warning: cluster_config.http.listen: 0.0.0.0:8080 is not a loopback address and no HTTP token is configured";
    let out = check_config(&fixture("kubernetes.json"), Some(A_SECRET));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(http_warning), "{stderr}");

    let out = check_config(&fixture("core_structure.json"), Some(A_SECRET));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        "warning: cluster_config.discovery.k8s_label_selector: required when discovery.type is \"kubernetes\"; run will refuse to start without it"
    );
    assert!(lines[1].starts_with(http_warning), "{stderr}");
}

/// The fixtures are the reference's text, byte for byte (checked when the reference sits next to the repo, as
/// in development and CI).
#[test]
fn fixtures_match_the_reference_document() {
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/bifrost-clustering.md");
    let Ok(text) = std::fs::read_to_string(&reference) else {
        eprintln!("skipped: {} not found", reference.display());
        return;
    };
    for name in FIXTURES {
        let fixture_text =
            std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = fixture_text.strip_suffix('\n').unwrap_or(&fixture_text);
        assert!(
            text.contains(body),
            "{name} is not verbatim in the reference"
        );
        if name != "k8s_configmap_gateway.json" {
            assert!(
                text.contains(&format!("```json {fixture_text}```")),
                "{name} is not a whole ```json block"
            );
        }
    }
}
