//! Invalid configs: every error comes back at once, each with its exact JSON path; unknown fields are warnings;
//! the config path comes from FILE or `BIFROST_CONFIG`; `check-config` exits 2 and prints every error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bifrost_cluster::config::{
    ConfigError, ConfigWarning, FieldError, LoadedConfig, load_from_path, load_from_str,
    resolve_config_path,
};

/// The errors of a config that must not load.
fn errors(text: &str) -> Vec<FieldError> {
    match load_from_str(text) {
        Err(ConfigError::Invalid(errors)) => errors,
        Err(other) => panic!("expected field errors, got {other:?}"),
        Ok(loaded) => panic!("expected field errors, the config loaded: {loaded:?}"),
    }
}

fn paths(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

fn loads(text: &str) -> LoadedConfig {
    match load_from_str(text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected the config to load, got:\n{e}"),
    }
}

/// A config that loads, with `discovery` replaced.
fn with_discovery(discovery: &str) -> String {
    format!(r#"{{"cluster_config": {{"enabled": true, "discovery": {discovery}}}}}"#)
}

struct Case {
    name: &'static str,
    json: String,
    /// Every expected error path, in order.
    paths: &'static [&'static str],
}

fn case(name: &'static str, json: impl Into<String>, paths: &'static [&'static str]) -> Case {
    Case {
        name,
        json: json.into(),
        paths,
    }
}

#[test]
fn table_of_invalid_configs() {
    let cases = [
        case(
            "wrong types everywhere",
            r#"{"cluster_config": {"enabled": "yes", "peers": "10.0.0.1", "node_id": 7,
                "discovery": {"enabled": 1, "type": 3, "bind_port": -1, "allowed_address_space": "10.0.0.0/8"},
                "gossip": {"port": "abc", "config": {"timeout_seconds": 10.5, "success_threshold": "3", "failure_threshold": null}},
                "security": {"insecure_dev": "false"}, "replication": [], "http": {"listen": 8080}, "limits": true}}"#,
            &[
                "cluster_config.enabled",
                "cluster_config.node_id",
                "cluster_config.peers",
                "cluster_config.discovery.enabled",
                "cluster_config.discovery.type",
                "cluster_config.discovery.bind_port",
                "cluster_config.discovery.allowed_address_space",
                "cluster_config.gossip.port",
                "cluster_config.gossip.config.timeout_seconds",
                "cluster_config.gossip.config.success_threshold",
                "cluster_config.security.insecure_dev",
                "cluster_config.replication",
                "cluster_config.http.listen",
                "cluster_config.limits",
            ],
        ),
        case(
            "bad CIDR",
            with_discovery(
                r#"{"enabled": true, "type": "udp", "service_name": "b", "udp_broadcast_port": 9999,
                    "allowed_address_space": ["10.0.0.0/8", "10.0.0/8", "192.168.1.1", "fd00::/129"]}"#,
            ),
            &[
                "cluster_config.discovery.allowed_address_space[1]",
                "cluster_config.discovery.allowed_address_space[2]",
                "cluster_config.discovery.allowed_address_space[3]",
            ],
        ),
        case(
            "bad etcd URLs",
            with_discovery(
                r#"{"enabled": true, "type": "etcd", "service_name": "b",
                    "etcd_endpoints": ["etcd-1:2379", "http://etcd-2:2379", 2379, "ftp://etcd-3:2379", "http://"]}"#,
            ),
            &[
                "cluster_config.discovery.etcd_endpoints[0]",
                "cluster_config.discovery.etcd_endpoints[2]",
                "cluster_config.discovery.etcd_endpoints[3]",
                "cluster_config.discovery.etcd_endpoints[4]",
            ],
        ),
        case(
            "bad durations",
            r#"{"cluster_config": {"discovery": {"dial_timeout": "10"},
                "replication": {"flush_interval": "0ms", "anti_entropy_interval": "2h"}}}"#,
            &[
                "cluster_config.discovery.dial_timeout",
                "cluster_config.replication.flush_interval",
                "cluster_config.replication.anti_entropy_interval",
            ],
        ),
        case(
            "duration as a number, fraction, unknown unit, overflow",
            r#"{"cluster_config": {"discovery": {"dial_timeout": 10},
                "replication": {"flush_interval": "1.5ms", "anti_entropy_interval": "99999999999999999999h"}}}"#,
            &[
                "cluster_config.discovery.dial_timeout",
                "cluster_config.replication.flush_interval",
                "cluster_config.replication.anti_entropy_interval",
            ],
        ),
        case(
            "udp without service name, port or address space",
            with_discovery(r#"{"enabled": true, "type": "udp"}"#),
            &[
                "cluster_config.discovery.service_name",
                "cluster_config.discovery.udp_broadcast_port",
                "cluster_config.discovery.allowed_address_space",
            ],
        ),
        case(
            "udp with an empty address space and the gossip port",
            with_discovery(
                r#"{"enabled": true, "type": "udp", "service_name": "b", "udp_broadcast_port": 10101,
                    "allowed_address_space": []}"#,
            ),
            &[
                "cluster_config.discovery.allowed_address_space",
                "cluster_config.discovery.udp_broadcast_port",
            ],
        ),
        case(
            "cluster mode with no peers and no discovery",
            r#"{"cluster_config": {"enabled": true, "peers": [], "discovery": {"enabled": false}}}"#,
            &["cluster_config.enabled"],
        ),
        case(
            "discovery enabled without a type",
            with_discovery(r#"{"enabled": true}"#),
            &["cluster_config.discovery.type"],
        ),
        case(
            "consul and etcd need a service name, etcd endpoints",
            with_discovery(r#"{"enabled": true, "type": "etcd", "etcd_endpoints": []}"#),
            &[
                "cluster_config.discovery.service_name",
                "cluster_config.discovery.etcd_endpoints",
            ],
        ),
        case(
            "dns needs names, each a valid DNS name",
            r#"{"cluster_config": {"enabled": true, "peers": ["10.0.0.2"],
                "discovery": {"enabled": false, "dns_names": ["ok.local", "bad name", ""]}}}"#,
            &[
                "cluster_config.discovery.dns_names[1]",
                "cluster_config.discovery.dns_names[2]",
            ],
        ),
        case(
            "dns without names",
            with_discovery(r#"{"enabled": true, "type": "dns"}"#),
            &["cluster_config.discovery.dns_names"],
        ),
        case(
            "invalid field values",
            r#"{"cluster_config": {"node_id": "node 1", "peers": ["10.0.0.1:99999", "ok-host", "bad host", "[::1"],
                "discovery": {"service_name": "a/b", "k8s_namespace": "Prod", "k8s_label_selector": "",
                    "consul_address": "consul:0", "mdns_service": "bifrost", "bind_port": 0, "udp_broadcast_port": 70000},
                "gossip": {"port": 0, "config": {"timeout_seconds": 3601, "success_threshold": 0, "failure_threshold": 101}},
                "security": {"cluster_secret": "too-short", "ca_file": ""},
                "replication": {"max_batch_bytes": 511},
                "http": {"listen": "localhost:8080"},
                "limits": {"max_keys": 0, "max_key_length": 4097}}}"#,
            &[
                "cluster_config.node_id",
                "cluster_config.peers[0]",
                "cluster_config.peers[2]",
                "cluster_config.peers[3]",
                "cluster_config.discovery.service_name",
                "cluster_config.discovery.bind_port",
                "cluster_config.discovery.k8s_namespace",
                "cluster_config.discovery.k8s_label_selector",
                "cluster_config.discovery.consul_address",
                "cluster_config.discovery.udp_broadcast_port",
                "cluster_config.discovery.mdns_service",
                "cluster_config.gossip.port",
                "cluster_config.gossip.config.timeout_seconds",
                "cluster_config.gossip.config.success_threshold",
                "cluster_config.gossip.config.failure_threshold",
                "cluster_config.security.cluster_secret",
                "cluster_config.security.ca_file",
                "cluster_config.replication.max_batch_bytes",
                "cluster_config.http.listen",
                "cluster_config.limits.max_keys",
                "cluster_config.limits.max_key_length",
            ],
        ),
        case(
            "secret and files together; files incomplete",
            r#"{"cluster_config": {"security": {"cluster_secret": "0123456789abcdef", "ca_file": "/etc/ca.pem"}}}"#,
            &[
                "cluster_config.security.cert_file",
                "cluster_config.security.key_file",
                "cluster_config.security.cluster_secret",
            ],
        ),
        case(
            "http port equal to the gossip port in cluster mode",
            r#"{"cluster_config": {"enabled": true, "peers": ["10.0.0.2"], "gossip": {"port": 9000},
                "http": {"listen": "0.0.0.0:9000"}}}"#,
            &["cluster_config.http.listen"],
        ),
        case(
            "sections that are not objects",
            r#"{"cluster_config": {"discovery": 5, "gossip": {"config": "fast"}, "security": null}}"#,
            &["cluster_config.discovery", "cluster_config.gossip.config"],
        ),
        case(
            "cluster_config that is not an object",
            r#"{"cluster_config": []}"#,
            &["cluster_config"],
        ),
    ];
    for c in cases {
        let errors = errors(&c.json);
        assert_eq!(paths(&errors), c.paths, "{}: {errors:#?}", c.name);
    }
}

#[test]
fn messages_name_the_rule_and_the_value() {
    let errs = errors(
        r#"{"cluster_config": {"enabled": true, "gossip": {"port": "abc"},
            "discovery": {"enabled": true, "type": "udp", "service_name": "b", "allowed_address_space": ["10.0.0.0/8", "10.0.0/8"]}}}"#,
    );
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "cluster_config.discovery.allowed_address_space[1]: invalid CIDR \"10.0.0/8\": expected address/prefix-length such as \"10.0.0.0/8\"",
            "cluster_config.gossip.port: expected an integer 1..=65535, got \"abc\"",
            "cluster_config.discovery.udp_broadcast_port: required when discovery.type is \"udp\"",
        ]
    );
}

#[test]
fn specific_messages() {
    let one = |json: &str| -> String {
        let errs = errors(json);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs[0].to_string()
    };
    assert_eq!(
        one(r#"{"cluster_config": {"enabled": true}}"#),
        "cluster_config.enabled: cluster mode needs a non-empty peers list or discovery.enabled: true"
    );
    assert_eq!(
        one(&with_discovery(r#"{"enabled": true, "type": "k8s"}"#)),
        "cluster_config.discovery.type: expected one of kubernetes, consul, etcd, dns, udp, mdns, got \"k8s\""
    );
    assert_eq!(
        one(r#"{"cluster_config": {"replication": {"flush_interval": "2s"}}}"#),
        "cluster_config.replication.flush_interval: must be between 1ms and 1s, got \"2s\""
    );
    assert_eq!(
        one(r#"{"cluster_config": {"discovery": {"dial_timeout": "10x"}}}"#),
        "cluster_config.discovery.dial_timeout: invalid duration \"10x\": unknown unit \"x\": use ms, s, m or h"
    );
    assert_eq!(
        one(r#"{"cluster_config": {"security": {"cluster_secret": "hunter2"}}}"#),
        "cluster_config.security.cluster_secret: must be at least 16 bytes, got 7"
    );
    assert_eq!(
        one(r#"{"cluster_config": {"peers": ["10.0.0.1:http"]}}"#),
        "cluster_config.peers[0]: invalid peer \"10.0.0.1:http\": port must be an integer 1..=65535, got \"http\""
    );
    assert_eq!(
        one(r#"{"cluster_config": {"gossip": {"config": {"failure_threshold": 0}}}}"#),
        "cluster_config.gossip.config.failure_threshold: expected an integer 1..=100, got 0"
    );
}

#[test]
fn a_refused_value_does_not_cause_a_second_misleading_error() {
    // The peer is refused; "cluster mode needs peers" would only confuse.
    let errs = errors(r#"{"cluster_config": {"enabled": true, "peers": ["bad host"]}}"#);
    assert_eq!(paths(&errs), ["cluster_config.peers[0]"]);
    // An unknown type is reported once, not also as "type required".
    let errs = errors(&with_discovery(
        r#"{"enabled": true, "type": "Kubernetes"}"#,
    ));
    assert_eq!(paths(&errs), ["cluster_config.discovery.type"]);
    // A refused port is not also "required".
    let errs = errors(&with_discovery(
        r#"{"enabled": true, "type": "udp", "service_name": "b", "udp_broadcast_port": "9999", "allowed_address_space": ["10.0.0.0/8"]}"#,
    ));
    assert_eq!(
        paths(&errs),
        ["cluster_config.discovery.udp_broadcast_port"]
    );
}

#[test]
fn invalid_display_lists_every_error_one_per_line() {
    let err = match load_from_str(r#"{"cluster_config": {"enabled": 1, "gossip": {"port": 0}}}"#) {
        Err(e) => e,
        Ok(_) => panic!("should not load"),
    };
    assert_eq!(
        err.to_string(),
        "cluster_config.enabled: expected true or false, got 1\ncluster_config.gossip.port: expected an integer 1..=65535, got 0"
    );
    assert_eq!(err.lines().len(), 2);
}

#[test]
fn type_requirements_apply_only_while_discovery_is_enabled() {
    // A disabled udp discovery without its fields is accepted: the reference only uses discovery when enabled.
    let loaded = loads(r#"{"cluster_config": {"discovery": {"enabled": false, "type": "udp"}}}"#);
    assert!(loaded.warnings.is_empty());
    // ...but a known field with a wrong value is an error either way.
    let errs = errors(
        r#"{"cluster_config": {"discovery": {"enabled": false, "type": "carrier-pigeon"}}}"#,
    );
    assert_eq!(paths(&errs), ["cluster_config.discovery.type"]);
}

#[test]
fn unknown_fields_are_warnings_not_errors() {
    let loaded = loads(
        r#"{"config_store": {"enabled": true}, "logging": 5,
            "cluster_config": {"enabled": false, "region": "eu",
                "discovery": {"color": "blue", "type": "dns"},
                "gossip": {"config": {"probe_interval": "1s"}},
                "replication": {"compression": true}}}"#,
    );
    let warned: Vec<&str> = loaded.warnings.iter().map(ConfigWarning::path).collect();
    assert_eq!(
        warned,
        [
            "cluster_config.region",
            "cluster_config.discovery.color",
            "cluster_config.gossip.config.probe_interval",
            "cluster_config.replication.compression",
        ]
    );
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| matches!(w, ConfigWarning::UnknownField { .. }))
    );
    assert_eq!(
        loaded.warnings[0].to_string(),
        "cluster_config.region: unknown field, ignored"
    );
}

#[test]
fn null_means_default() {
    let loaded =
        loads(r#"{"cluster_config": {"enabled": null, "peers": null, "gossip": {"port": null}}}"#);
    assert_eq!(
        loaded.config,
        bifrost_cluster::config::ClusterConfig::default()
    );
}

#[test]
fn insecure_dev_next_to_a_trust_source_is_a_warning() {
    let loaded = loads(
        r#"{"cluster_config": {"security": {"cluster_secret": "0123456789abcdef", "insecure_dev": true}}}"#,
    );
    assert_eq!(
        loaded.warnings,
        [ConfigWarning::Ineffective {
            path: "cluster_config.security.insecure_dev".into(),
            reason: "has no effect: a trust source is configured and will be used".into(),
        }]
    );
}

#[test]
fn documents_without_cluster_config_or_invalid_json() {
    for text in [r#"{"config_store": {}}"#, "[]", "42", "{}"] {
        assert!(
            matches!(
                load_from_str(text),
                Err(ConfigError::MissingClusterConfig { .. })
            ),
            "{text}"
        );
    }
    let missing = load_from_str("{}").err().map(|e| e.to_string());
    assert_eq!(
        missing.as_deref(),
        Some(
            "<string>: no top-level \"cluster_config\" member: expected a JSON object like {\"cluster_config\": {...}}"
        )
    );
    match load_from_str("{\"cluster_config\": {\n  \"enabled\": true,\n  \"peers\": [\"a\",]\n}}") {
        Err(ConfigError::Json { line, column, .. }) => assert_eq!((line, column), (3, 17)),
        other => panic!("expected a JSON error, got {other:?}"),
    }
    match load_from_str("") {
        Err(ConfigError::Json { line: 1, .. }) => {}
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.json");
    match load_from_path(&path) {
        Err(e @ ConfigError::Io { .. }) => assert!(e.to_string().contains("nope.json"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn config_path_comes_from_the_command_line_or_bifrost_config() {
    let env = Some(OsString::from("/etc/bifrost/config.json"));
    assert_eq!(
        resolve_config_path(Some(PathBuf::from("./local.json")), env.clone()).ok(),
        Some(PathBuf::from("./local.json"))
    );
    assert_eq!(
        resolve_config_path(None, env).ok(),
        Some(PathBuf::from("/etc/bifrost/config.json"))
    );
    assert!(matches!(
        resolve_config_path(None, None),
        Err(ConfigError::NoConfigPath)
    ));
    assert!(matches!(
        resolve_config_path(None, Some(OsString::new())),
        Err(ConfigError::NoConfigPath)
    ));
}

// --- the binary ---

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    cmd.env_remove("BIFROST_CONFIG")
        .env_remove("BIFROST_CLUSTER_SECRET");
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run bifrost-cluster: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_exits_2_and_prints_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"{"cluster_config": {"enabled": true, "gossip": {"port": "abc"},
            "discovery": {"enabled": true, "type": "udp", "service_name": "b", "allowed_address_space": ["10.0.0/8"], "shade": 1}}}"#,
    );
    let (code, stdout, stderr) = run(bin().arg("check-config").arg(&path));
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: cluster_config.discovery.allowed_address_space[0]: invalid CIDR \"10.0.0/8\": expected address/prefix-length such as \"10.0.0.0/8\"\n\
         error: cluster_config.gossip.port: expected an integer 1..=65535, got \"abc\"\n\
         error: cluster_config.discovery.udp_broadcast_port: required when discovery.type is \"udp\"\n"
    );
}

#[test]
fn check_config_reads_bifrost_config_when_no_file_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"{"cluster_config": {"enabled": true, "peers": ["10.0.0.2:10101"], "future_knob": 1}}"#,
    );
    let (code, stdout, stderr) = run(bin()
        .arg("check-config")
        .env("BIFROST_CONFIG", &path)
        .env_remove("BIFROST_HTTP_TOKENS"));
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        doc["cluster_config"]["peers"],
        serde_json::json!(["10.0.0.2:10101"])
    );
    assert_eq!(
        stderr,
        "warning: cluster_config.future_knob: unknown field, ignored\n\
         warning: cluster_config.security: run needs a cluster secret (security.cluster_secret or BIFROST_CLUSTER_SECRET), CA/cert/key files, or security.insecure_dev\n\
         warning: cluster_config.http.listen: 0.0.0.0:8080 is not a loopback address and no HTTP token is configured: anyone reaching the port could write counters and config; run will refuse to start. Add tokens (http.auth.tokens or BIFROST_HTTP_TOKENS; make one with `openssl rand -base64 32`), listen on 127.0.0.1, or set http.allow_unauthenticated_reads: true (reads open to all, writes only from loopback)\n"
    );
    // FILE wins over BIFROST_CONFIG.
    let (code, _, stderr) = run(bin()
        .arg("check-config")
        .arg(&path)
        .env("BIFROST_CONFIG", dir.path().join("missing.json")));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn check_config_without_any_path_or_with_a_missing_file_exits_2() {
    let (code, _, stderr) = run(bin().arg("check-config"));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: no config file given: pass FILE or set BIFROST_CONFIG\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let (code, _, stderr) = run(bin().arg("check-config").arg(&missing));
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("error: ") && stderr.contains(&*missing.to_string_lossy()),
        "{stderr}"
    );

    let bad = write_config(dir.path(), "{ \"cluster_config\": ");
    let (code, _, stderr) = run(bin().arg("check-config").arg(&bad));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("config.json:1:") && stderr.contains("invalid JSON"),
        "{stderr}"
    );

    let no_section = write_config(dir.path(), r#"{"config_store": {}}"#);
    let (code, _, stderr) = run(bin().arg("check-config").arg(&no_section));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no top-level \"cluster_config\" member"),
        "{stderr}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|n| serde_json::json!(n)),
            any::<bool>().prop_map(|b| serde_json::json!(b)),
            ".{0,40}".prop_map(|s| serde_json::json!(s)),
            proptest::collection::vec(".{0,20}", 0..4).prop_map(|v| serde_json::json!(v)),
        ]
    }

    proptest! {
        /// Any value in any known field either loads or is refused with paths inside `cluster_config`; never a
        /// panic.
        #[test]
        fn arbitrary_values_never_panic(
            section in proptest::sample::select(vec![
                "", "discovery", "gossip", "gossip.config", "security", "replication", "http", "limits",
            ]),
            field in proptest::sample::select(vec![
                "enabled", "peers", "type", "port", "timeout_seconds", "allowed_address_space", "etcd_endpoints",
                "dial_timeout", "flush_interval", "listen", "max_keys", "cluster_secret", "node_id", "mdns_service",
                "udp_broadcast_port", "consul_address", "dns_names", "ca_file",
            ]),
            value in any_json(),
        ) {
            let mut inner = serde_json::json!({ field: value });
            for part in section.split('.').filter(|p| !p.is_empty()).rev() {
                inner = serde_json::json!({ part: inner });
            }
            let doc = serde_json::json!({ "cluster_config": inner });
            match load_from_str(&doc.to_string()) {
                Ok(_) => {}
                Err(ConfigError::Invalid(errors)) => {
                    prop_assert!(!errors.is_empty());
                    for e in errors {
                        prop_assert!(e.path.starts_with("cluster_config"), "{}", e);
                    }
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

// --- Config map bounds (`limits.config_max_*`). ---
#[test]
fn config_map_bounds_have_defaults_and_ranges() {
    let defaults = loads(r#"{"cluster_config": {}}"#).config.limits;
    assert_eq!(
        (
            defaults.config_max_entries,
            defaults.config_max_bytes,
            defaults.config_max_tombstones
        ),
        (10_000, 16 << 20, 10_000)
    );
    let set = loads(
        r#"{"cluster_config": {"limits": {"config_max_entries": 5, "config_max_bytes": 131072, "config_max_tombstones": 7}}}"#,
    )
    .config
    .limits;
    assert_eq!(
        (
            set.config_max_entries,
            set.config_max_bytes,
            set.config_max_tombstones
        ),
        (5, 131_072, 7)
    );
    let bad = errors(
        r#"{"cluster_config": {"limits": {"config_max_entries": 0, "config_max_bytes": 131071, "config_max_tombstones": 1000001}}}"#,
    );
    assert_eq!(
        paths(&bad),
        [
            "cluster_config.limits.config_max_entries",
            "cluster_config.limits.config_max_bytes",
            "cluster_config.limits.config_max_tombstones",
        ]
    );
}
