//! The deployment files under `deploy/` stay loadable and consistent with the binary and with each other.
//!
//! - Every `*.json` loads with the config loader, without warnings (an unknown field is a typo here), in cluster
//!   mode, and would run with only `BIFROST_CLUSTER_SECRET` from the environment (no trust in the file).
//! - Every `*.yaml`/`*.yml` parses (all documents). Kubernetes objects have `apiVersion` and `kind`; the
//!   ConfigMap's embedded `config.json` loads like a file; the StatefulSet, Services, RBAC, PDB and Secret agree
//!   on names, ports, probes and labels; the kustomization lists files that exist.
//! - Every compose file has `services`; every file a service mounts exists; each node gets the secret from the
//!   host environment and mounts a config whose discovery type is the setup's directory name; the udp and mdns
//!   networks' subnets are inside the config's `allowed_address_space`; nginx's upstream names are services.
//! - The Dockerfile is multi-stage, runs as a non-root user, and copies only what its ignore file lets through.
//! - The systemd unit starts `run` with the shipped config path and stops with SIGTERM.
//! - HTTP security: every node can run its HTTP listener: the Kubernetes config reads its tokens from files of
//!   a mounted Secret that has those keys; compose requires `BIFROST_HTTP_TOKENS` from the host; the systemd
//!   env file carries a `BIFROST_HTTP_TOKENS` line of the documented shape.
//! - Counter snapshots (issue 16): the image, the StatefulSet and the unit set `BIFROST_DATA_DIR` to
//!   `/var/lib/bifrost-cluster`, and that directory is a volume owned by the node's user, a mounted per-pod
//!   volume claim, or systemd's `StateDirectory=`.
//!
//! A guard fails the test when too few files were found, so it cannot pass on an empty or moved tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bifrost_cluster::config::{self, DiscoveryType, LoadedConfig, PeerHost, Trust};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// Where the deploy files keep the counter snapshots (`BIFROST_DATA_DIR`).
const DATA_DIR: &str = "/var/lib/bifrost-cluster";

/// A secret of valid length, standing in for `BIFROST_CLUSTER_SECRET`.
const TEST_SECRET: &str = "yNEkKUZIfswxB/Nh3pX9S8ecVhh4+Wxezg/IaJO1PGQ=";

/// Fewer files than this means the walk did not see the tree (7 JSON files + the ConfigMap's embedded config).
const MIN_CONFIGS: usize = 8;
const MIN_JSON_FILES: usize = 7;
const MIN_YAML_FILES: usize = 12;

/// The compose setups, each a directory of `deploy/docker-compose/` named after its discovery type (`static`:
/// the `peers` list).
const COMPOSE_SETUPS: [&str; 6] = ["static", "etcd", "consul", "dns", "udp", "mdns"];

/// The Kubernetes manifests (without the kustomization and the example Secret).
const K8S_RESOURCES: [&str; 11] = [
    "namespace.yaml",
    "configmap.yaml",
    // The Envoy rate-limit service (issue 15; also checked by tests/grpc_rls.rs).
    "limits-configmap.yaml",
    "service-rls.yaml",
    "serviceaccount.yaml",
    "role.yaml",
    "rolebinding.yaml",
    "statefulset.yaml",
    "service-headless.yaml",
    "service-loadbalancer.yaml",
    "pdb.yaml",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The path relative to the repository root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every file under `dir`, recursively, sorted.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", rel(dir)));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot list {}: {e}", rel(dir)))
                .path()
        })
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel(path)))
}

/// Problems found, each naming its file; the test fails with all of them at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

/// A config shipped for deployment: loads clean, is in cluster mode, and runs with only the environment's
/// secret (no secret, certificate files or insecure flag in the file itself).
fn check_deploy_config(origin: &str, loaded: &LoadedConfig, problems: &mut Problems) {
    let cfg = &loaded.config;
    problems.check(loaded.warnings.is_empty(), || {
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        format!("{origin}: loads with warnings: {warnings:?}")
    });
    problems.check(cfg.enabled, || {
        format!("{origin}: cluster_config.enabled is not true")
    });
    let requirements = cfg.run_requirements(Some(TEST_SECRET));
    problems.check(requirements.is_empty(), || {
        let reqs: Vec<String> = requirements.iter().map(ToString::to_string).collect();
        format!("{origin}: would not run with BIFROST_CLUSTER_SECRET set: {reqs:?}")
    });
    problems.check(
        matches!(cfg.trust(Some(TEST_SECRET)), Ok(Trust::Secret(_))),
        || format!("{origin}: the environment's cluster secret is not its trust source"),
    );
    // Without the environment's secret the file alone must not run: no secret, files or insecure_dev inside.
    problems.check(cfg.trust(None).is_err(), || {
        format!("{origin}: carries its own trust source (secret, files or insecure_dev); use BIFROST_CLUSTER_SECRET")
    });
    problems.check(cfg.http.listen.port() != cfg.gossip.port, || {
        format!("{origin}: http.listen and gossip.port share a port")
    });
}

/// Parses every document of a YAML file, with `<<` merge keys applied (compose files use anchors).
fn yaml_documents(path: &Path) -> Result<Vec<Value>, String> {
    yaml_stream(&read(path), &rel(path))
}

/// Every non-empty document of a YAML stream (`---` separated), merge keys applied; errors name `origin`.
fn yaml_stream(text: &str, origin: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let mut value = Value::deserialize(document).map_err(|e| format!("{origin}: {e}"))?;
        value
            .apply_merge()
            .map_err(|e| format!("{origin}: merge keys: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    if docs.is_empty() {
        return Err(format!("{origin}: no YAML document"));
    }
    Ok(docs)
}

#[test]
fn yaml_stream_yields_every_document_and_resolves_merge_keys() {
    let text = "# comment\na: &base {x: 1}\n---\nkind: B\nb:\n  <<: *base\n  y: 2\n---\n";
    // Anchors do not cross documents: the alias in the second one is an error, which proves documents are
    // parsed one by one. Within one document the merge key is applied.
    assert!(yaml_stream(text, "t").is_err());
    let text =
        "a: 1\n---\nkind: B\nbase: &base {x: 1}\nb:\n  <<: *base\n  y: 2\n---\n# only a comment\n";
    let docs = yaml_stream(text, "t").expect("two documents");
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(str_at(&docs[1], &["kind"]), Some("B"));
    assert_eq!(at(&docs[1], &["b", "x"]).and_then(Value::as_u64), Some(1));
    assert!(at(&docs[1], &["b", "<<"]).is_none());
    assert!(yaml_stream("a: [1,\n", "t").is_err());
    assert!(yaml_stream("# nothing\n", "t").is_err());
}

/// `value[k1][k2]...`, `None` when any step is missing.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(*k))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// `key=value,key=value` of a label mapping, sorted.
fn selector_text(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> = labels
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        k.as_str().unwrap_or("?"),
                        v.as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs.join(",")
}

fn sorted_selector(text: &str) -> String {
    let mut pairs: Vec<&str> = text.split(',').map(str::trim).collect();
    pairs.sort_unstable();
    pairs.join(",")
}

#[test]
fn every_deploy_file_loads_and_agrees() {
    let deploy = deploy_dir();
    assert!(deploy.is_dir(), "{} is missing", rel(&deploy));
    let mut files = Vec::new();
    walk(&deploy, &mut files);
    let mut problems = Problems::default();

    // ---- every JSON file is a deployable config
    let mut json_files = 0;
    let mut configs_loaded = 0;
    let mut json_configs: BTreeMap<PathBuf, LoadedConfig> = BTreeMap::new();
    // deploy/grafana holds a Grafana dashboard, not a node config (tests/deploy_monitoring.rs checks it).
    let grafana = deploy.join("grafana");
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.starts_with(&grafana))
    {
        json_files += 1;
        match config::load_from_path(path) {
            Ok(loaded) => {
                configs_loaded += 1;
                check_deploy_config(&rel(path), &loaded, &mut problems);
                json_configs.insert(path.clone(), loaded);
            }
            Err(e) => problems
                .0
                .push(format!("{}: does not load: {:?}", rel(path), e.lines())),
        }
    }

    // ---- every YAML file parses
    let mut yaml_files = 0;
    let mut yaml: BTreeMap<PathBuf, Vec<Value>> = BTreeMap::new();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    {
        yaml_files += 1;
        match yaml_documents(path) {
            Ok(docs) => {
                yaml.insert(path.clone(), docs);
            }
            Err(e) => problems.0.push(e),
        }
    }

    configs_loaded += check_kubernetes(&deploy.join("kubernetes"), &yaml, &mut problems);
    check_compose(
        &deploy.join("docker-compose"),
        &yaml,
        &json_configs,
        &mut problems,
    );
    check_dockerfile(&deploy, &mut problems);
    check_systemd(&deploy.join("systemd"), &json_configs, &mut problems);

    let readme = deploy.join("README.md");
    let readme_text = std::fs::read_to_string(&readme).unwrap_or_default();
    for setup in COMPOSE_SETUPS {
        problems.check(
            readme_text.contains(&format!("docker-compose/{setup}")),
            || format!("{}: no section for docker-compose/{setup}", rel(&readme)),
        );
    }
    for part in ["kubernetes", "systemd", "Dockerfile"] {
        problems.check(readme_text.contains(part), || {
            format!("{}: does not mention {part}", rel(&readme))
        });
    }

    // ---- the guard: an empty or moved tree must not pass
    problems.check(json_files >= MIN_JSON_FILES, || {
        format!("found {json_files} JSON files under deploy/, expected at least {MIN_JSON_FILES}")
    });
    problems.check(configs_loaded >= MIN_CONFIGS, || {
        format!("loaded {configs_loaded} configs (files and the ConfigMap), expected at least {MIN_CONFIGS}")
    });
    problems.check(yaml_files >= MIN_YAML_FILES, || {
        format!("found {yaml_files} YAML files under deploy/, expected at least {MIN_YAML_FILES}")
    });

    println!(
        "deploy/: {json_files} JSON files, {configs_loaded} configs loaded, {yaml_files} YAML files ({} documents)",
        yaml.values().map(Vec::len).sum::<usize>()
    );
    assert!(
        problems.0.is_empty(),
        "{} problem(s) in deploy/:\n  {}",
        problems.0.len(),
        problems.0.join("\n  ")
    );
}

/// Checks `deploy/kubernetes/`; returns how many configs it loaded (the ConfigMap's).
fn check_kubernetes(
    dir: &Path,
    yaml: &BTreeMap<PathBuf, Vec<Value>>,
    problems: &mut Problems,
) -> usize {
    // Every document of every file there is an object with apiVersion and kind.
    let mut objects: Vec<(String, &Value)> = Vec::new();
    for (path, docs) in yaml.range(dir.to_path_buf()..) {
        if !path.starts_with(dir) {
            break;
        }
        for (i, doc) in docs.iter().enumerate() {
            let origin = format!("{} (document {})", rel(path), i + 1);
            let api = str_at(doc, &["apiVersion"]).unwrap_or("");
            let kind = str_at(doc, &["kind"]).unwrap_or("");
            problems.check(!api.is_empty() && !kind.is_empty(), || {
                format!("{origin}: no apiVersion or kind")
            });
            if kind != "Kustomization" {
                problems.check(str_at(doc, &["metadata", "name"]).is_some(), || {
                    format!("{origin}: no metadata.name")
                });
            }
            objects.push((origin, doc));
        }
    }
    for name in K8S_RESOURCES
        .iter()
        .chain(["kustomization.yaml", "secret.example.yaml"].iter())
    {
        problems.check(yaml.contains_key(&dir.join(name)), || {
            format!("{}: missing or unparsable", rel(&dir.join(name)))
        });
    }
    let find = |kind: &str| -> Option<&Value> {
        objects
            .iter()
            .map(|(_, doc)| *doc)
            .find(|doc| str_at(doc, &["kind"]) == Some(kind))
    };

    // Namespace: every namespaced object lives in the one the config searches.
    let namespace = find("Namespace")
        .and_then(|ns| str_at(ns, &["metadata", "name"]))
        .unwrap_or("");
    for (origin, doc) in &objects {
        let kind = str_at(doc, &["kind"]).unwrap_or("");
        if kind != "Namespace" && kind != "Kustomization" {
            problems.check(
                str_at(doc, &["metadata", "namespace"]) == Some(namespace),
                || format!("{origin}: metadata.namespace is not {namespace:?}"),
            );
        }
    }

    // The ConfigMap's config.json, loaded through the config loader.
    let mut loaded_configs = 0;
    let mut config_selector = String::new();
    let configmap = find("ConfigMap");
    match configmap.and_then(|cm| str_at(cm, &["data", "config.json"])) {
        None => problems
            .0
            .push("deploy/kubernetes: no ConfigMap with data.config.json".to_owned()),
        Some(text) => match config::load_from_str(text) {
            Err(e) => problems.0.push(format!(
                "deploy/kubernetes/configmap.yaml: config.json does not load: {:?}",
                e.lines()
            )),
            Ok(loaded) => {
                loaded_configs += 1;
                let origin = "deploy/kubernetes/configmap.yaml (config.json)";
                check_deploy_config(origin, &loaded, problems);
                let d = &loaded.config.discovery;
                problems.check(
                    d.enabled && d.discovery_type == Some(DiscoveryType::Kubernetes),
                    || format!("{origin}: discovery is not kubernetes"),
                );
                problems.check(d.k8s_namespace == namespace, || {
                    format!("{origin}: k8s_namespace {:?} is not the manifests' namespace {namespace:?}", d.k8s_namespace)
                });
                problems.check(
                    d.k8s_label_selector.as_deref() == Some("app=bifrost,component=gateway"),
                    || format!("{origin}: k8s_label_selector is {:?}", d.k8s_label_selector),
                );
                config_selector = sorted_selector(d.k8s_label_selector.as_deref().unwrap_or(""));
                let sts_ports = find("StatefulSet")
                    .map(|s| seq_at(s, &["spec", "template", "spec", "containers"]))
                    .and_then(|c| c.first())
                    .map(|c| seq_at(c, &["ports"]))
                    .unwrap_or(&[]);
                let has_port = |port: u16, proto: &str| {
                    sts_ports.iter().any(|p| {
                        at(p, &["containerPort"]).and_then(Value::as_u64) == Some(u64::from(port))
                            && str_at(p, &["protocol"]).unwrap_or("TCP") == proto
                    })
                };
                let gossip = loaded.config.gossip.port;
                let http = loaded.config.http.listen.port();
                problems.check(
                    has_port(gossip, "UDP") && has_port(gossip, "TCP") && has_port(http, "TCP"),
                    || format!("deploy/kubernetes/statefulset.yaml: container ports are not {http}/TCP, {gossip}/UDP and {gossip}/TCP (config's http.listen and gossip.port)"),
                );
            }
        },
    }

    // The StatefulSet.
    let sa_name = find("ServiceAccount").and_then(|s| str_at(s, &["metadata", "name"]));
    let cm_name = configmap.and_then(|c| str_at(c, &["metadata", "name"]));
    let secret = find("Secret");
    match find("StatefulSet") {
        None => problems
            .0
            .push("deploy/kubernetes: no StatefulSet".to_owned()),
        Some(sts) => {
            let origin = "deploy/kubernetes/statefulset.yaml";
            let pod = at(sts, &["spec", "template", "spec"]).unwrap_or(&Value::Null);
            problems.check(
                str_at(sts, &["spec", "podManagementPolicy"]) == Some("Parallel"),
                || format!("{origin}: podManagementPolicy is not Parallel"),
            );
            let grace = at(pod, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64);
            problems.check(grace.is_some_and(|g| g >= 15), || {
                format!("{origin}: terminationGracePeriodSeconds {grace:?} < 15")
            });
            problems.check(str_at(pod, &["serviceAccountName"]) == sa_name, || {
                format!("{origin}: serviceAccountName is not the ServiceAccount {sa_name:?}")
            });
            let selector = selector_text(at(sts, &["spec", "selector", "matchLabels"]));
            problems.check(
                selector == config_selector
                    && selector_text(at(sts, &["spec", "template", "metadata", "labels"])) == selector,
                || format!("{origin}: selector/template labels {selector:?} are not the config's k8s_label_selector {config_selector:?}"),
            );
            let container = seq_at(pod, &["containers"]).first().unwrap_or(&Value::Null);
            let probe_path = |probe: &str| str_at(container, &[probe, "httpGet", "path"]);
            problems.check(probe_path("livenessProbe") == Some("/health"), || {
                format!("{origin}: livenessProbe is not GET /health")
            });
            problems.check(probe_path("readinessProbe") == Some("/ready"), || {
                format!("{origin}: readinessProbe is not GET /ready")
            });
            for resource in ["requests", "limits"] {
                for what in ["cpu", "memory"] {
                    problems.check(
                        str_at(container, &["resources", resource, what]).is_some(),
                        || format!("{origin}: no resources.{resource}.{what}"),
                    );
                }
            }
            let env = seq_at(container, &["env"]);
            let env_var = |name: &str| env.iter().find(|e| str_at(e, &["name"]) == Some(name));
            let secret_ref = env_var("BIFROST_CLUSTER_SECRET")
                .and_then(|e| at(e, &["valueFrom", "secretKeyRef"]));
            match secret_ref {
                None => problems.0.push(format!(
                    "{origin}: BIFROST_CLUSTER_SECRET does not come from a secretKeyRef"
                )),
                Some(r) => {
                    let (name, key) = (str_at(r, &["name"]), str_at(r, &["key"]).unwrap_or(""));
                    let secret_name = secret.and_then(|s| str_at(s, &["metadata", "name"]));
                    let secret_has_key = secret.is_some_and(|s| {
                        at(s, &["stringData", key]).is_some() || at(s, &["data", key]).is_some()
                    });
                    problems.check(name.is_some() && name == secret_name && secret_has_key, || {
                        format!("{origin}: secretKeyRef {name:?}/{key:?} is not the example Secret {secret_name:?} with that key")
                    });
                }
            }
            // BIFROST_CONFIG points into the ConfigMap's mount.
            let config_path = env_var("BIFROST_CONFIG").and_then(|e| str_at(e, &["value"]));
            let volume = seq_at(pod, &["volumes"])
                .iter()
                .find(|v| {
                    str_at(v, &["configMap", "name"]).is_some()
                        && str_at(v, &["configMap", "name"]) == cm_name
                })
                .and_then(|v| str_at(v, &["name"]));
            let mount = seq_at(container, &["volumeMounts"])
                .iter()
                .find(|m| volume.is_some() && str_at(m, &["name"]) == volume)
                .and_then(|m| str_at(m, &["mountPath"]));
            problems.check(
                mount.is_some_and(|m| config_path == Some(&format!("{}/config.json", m.trim_end_matches('/')))),
                || format!("{origin}: BIFROST_CONFIG {config_path:?} is not config.json in the ConfigMap's mount {mount:?}"),
            );

            // Snapshots: BIFROST_DATA_DIR is the mount of a volume claim template (one volume per pod).
            let data_dir = env_var(bifrost_cluster::config::StorageConfig::PATH_ENV)
                .and_then(|e| str_at(e, &["value"]));
            let data_mount = seq_at(container, &["volumeMounts"])
                .iter()
                .find(|m| data_dir.is_some() && str_at(m, &["mountPath"]) == data_dir)
                .and_then(|m| str_at(m, &["name"]));
            let claims: Vec<&str> = seq_at(sts, &["spec", "volumeClaimTemplates"])
                .iter()
                .filter_map(|c| str_at(c, &["metadata", "name"]))
                .collect();
            problems.check(
                data_dir == Some(DATA_DIR) && data_mount.is_some_and(|m| claims.contains(&m)),
                || format!("{origin}: BIFROST_DATA_DIR {data_dir:?} is not {DATA_DIR}, mounted from a volumeClaimTemplate (mount {data_mount:?}, claims {claims:?})"),
            );
            problems.check(
                at(pod, &["securityContext", "fsGroup"]).and_then(Value::as_u64) == Some(10001),
                || format!("{origin}: no pod securityContext.fsGroup 10001: the data volume would not be writable"),
            );

            // HTTP security: every token file of the config is a key of the tokens Secret, mounted read-only.
            check_kubernetes_tokens(origin, pod, container, &objects, configmap, problems);

            // The headless Service is the StatefulSet's serviceName and carries both gossip protocols.
            let service_name = str_at(sts, &["spec", "serviceName"]);
            let headless = objects.iter().map(|(_, d)| *d).find(|d| {
                str_at(d, &["kind"]) == Some("Service")
                    && str_at(d, &["metadata", "name"]) == service_name
            });
            match headless {
                None => problems.0.push(format!(
                    "{origin}: no Service named after serviceName {service_name:?}"
                )),
                Some(svc) => {
                    let ports = seq_at(svc, &["spec", "ports"]);
                    let has = |proto: &str| {
                        ports.iter().any(|p| {
                            at(p, &["port"]).and_then(Value::as_u64) == Some(10101)
                                && str_at(p, &["protocol"]).unwrap_or("TCP") == proto
                        })
                    };
                    problems.check(
                        str_at(svc, &["spec", "clusterIP"]) == Some("None") && has("UDP") && has("TCP"),
                        || "deploy/kubernetes/service-headless.yaml: not headless with 10101/UDP and 10101/TCP".to_owned(),
                    );
                }
            }
        }
    }

    // Services select the pods; the load balancer exists.
    let services: Vec<&Value> = objects
        .iter()
        .map(|(_, d)| *d)
        .filter(|d| str_at(d, &["kind"]) == Some("Service"))
        .collect();
    problems.check(
        services
            .iter()
            .any(|s| str_at(s, &["spec", "type"]) == Some("LoadBalancer")),
        || "deploy/kubernetes: no LoadBalancer Service".to_owned(),
    );
    for svc in &services {
        problems.check(
            selector_text(at(svc, &["spec", "selector"])) == config_selector,
            || {
                format!(
                    "deploy/kubernetes: Service {:?} does not select {config_selector:?}",
                    str_at(svc, &["metadata", "name"])
                )
            },
        );
    }

    // RBAC: the Role grants get/list/watch on pods, bound to the ServiceAccount.
    let role = find("Role");
    let grants = role.is_some_and(|r| {
        seq_at(r, &["rules"]).iter().any(|rule| {
            let has = |field: &str, item: &str| {
                seq_at(rule, &[field])
                    .iter()
                    .any(|v| v.as_str() == Some(item))
            };
            has("apiGroups", "")
                && has("resources", "pods")
                && ["get", "list", "watch"].iter().all(|v| has("verbs", v))
        })
    });
    problems.check(grants, || {
        "deploy/kubernetes/role.yaml: no rule granting get, list, watch on pods".to_owned()
    });
    let binding = find("RoleBinding");
    problems.check(
        binding.is_some_and(|b| {
            str_at(b, &["roleRef", "name"]) == role.and_then(|r| str_at(r, &["metadata", "name"]))
                && seq_at(b, &["subjects"]).iter().any(|s| {
                    str_at(s, &["kind"]) == Some("ServiceAccount")
                        && str_at(s, &["name"]) == sa_name
                })
        }),
        || {
            "deploy/kubernetes/rolebinding.yaml: does not bind the Role to the ServiceAccount"
                .to_owned()
        },
    );

    // PDB keeps two members.
    problems.check(
        find("PodDisruptionBudget")
            .and_then(|p| at(p, &["spec", "minAvailable"]))
            .and_then(Value::as_u64)
            == Some(2),
        || "deploy/kubernetes/pdb.yaml: minAvailable is not 2".to_owned(),
    );

    // The example Secret's placeholder must be refused by run (it is published).
    let placeholder = secret.and_then(|s| {
        at(s, &["stringData"])
            .and_then(Value::as_mapping)
            .and_then(|m| m.values().next())
            .and_then(Value::as_str)
    });
    if let (Some(placeholder), Some(cm)) = (
        placeholder,
        configmap.and_then(|c| str_at(c, &["data", "config.json"])),
    ) {
        if let Ok(loaded) = config::load_from_str(cm) {
            problems.check(!loaded.config.run_requirements(Some(placeholder)).is_empty(), || {
                "deploy/kubernetes/secret.example.yaml: run would accept the published placeholder".to_owned()
            });
        }
    } else {
        problems
            .0
            .push("deploy/kubernetes/secret.example.yaml: no stringData value".to_owned());
    }

    // The kustomization lists every manifest (not the example Secret), and each exists.
    let kustomization = yaml
        .get(&dir.join("kustomization.yaml"))
        .and_then(|d| d.first());
    let listed: BTreeSet<&str> = kustomization
        .map(|k| {
            seq_at(k, &["resources"])
                .iter()
                .filter_map(Value::as_str)
                .collect()
        })
        .unwrap_or_default();
    for name in &listed {
        problems.check(dir.join(name).is_file(), || {
            format!("deploy/kubernetes/kustomization.yaml: lists {name}, which does not exist")
        });
    }
    let expected: BTreeSet<&str> = K8S_RESOURCES.into_iter().collect();
    problems.check(listed == expected, || {
        format!("deploy/kubernetes/kustomization.yaml: resources {listed:?}, expected {expected:?}")
    });
    loaded_configs
}

/// The source of a compose bind mount (`./config.json:/etc/...:ro` or `{source, target}`), with its target.
fn bind_mount(volume: &Value) -> Option<(String, String)> {
    if let Some(short) = volume.as_str() {
        let mut parts = short.split(':');
        let source = parts.next()?.to_owned();
        let target = parts.next()?.to_owned();
        return Some((source, target));
    }
    Some((
        str_at(volume, &["source"])?.to_owned(),
        str_at(volume, &["target"])?.to_owned(),
    ))
}

/// An environment variable of a compose service (mapping or `KEY=value` list syntax).
fn compose_env(service: &Value, name: &str) -> Option<String> {
    let env = at(service, &["environment"])?;
    if let Some(map) = env.as_mapping() {
        return map.get(name).and_then(Value::as_str).map(str::to_owned);
    }
    env.as_sequence()?.iter().find_map(|item| {
        item.as_str()?
            .strip_prefix(name)?
            .strip_prefix('=')
            .map(str::to_owned)
    })
}

fn check_compose(
    dir: &Path,
    yaml: &BTreeMap<PathBuf, Vec<Value>>,
    configs: &BTreeMap<PathBuf, LoadedConfig>,
    problems: &mut Problems,
) {
    for setup in COMPOSE_SETUPS {
        let setup_dir = dir.join(setup);
        let file = setup_dir.join("docker-compose.yml");
        let origin = rel(&file);
        let Some(doc) = yaml.get(&file).and_then(|d| d.first()) else {
            problems.0.push(format!("{origin}: missing or unparsable"));
            continue;
        };
        let Some(services) = at(doc, &["services"]).and_then(Value::as_mapping) else {
            problems.0.push(format!("{origin}: no services"));
            continue;
        };
        let service_names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
        let mut nodes = 0;
        for (name, service) in services {
            let name = name.as_str().unwrap_or("?");
            // Every bind-mounted file exists.
            for volume in seq_at(service, &["volumes"]) {
                let Some((source, _)) = bind_mount(volume) else {
                    problems.0.push(format!(
                        "{origin}: service {name}: unreadable volume {volume:?}"
                    ));
                    continue;
                };
                if source.starts_with('.') || source.starts_with('/') {
                    problems.check(setup_dir.join(&source).exists(), || {
                        format!("{origin}: service {name} mounts {source}, which does not exist")
                    });
                }
            }
            // A node: the config it reads is mounted, loads, and fits the setup.
            let Some(config_path) = compose_env(service, "BIFROST_CONFIG") else {
                continue;
            };
            nodes += 1;
            let secret = compose_env(service, "BIFROST_CLUSTER_SECRET").unwrap_or_default();
            problems.check(secret.starts_with("${BIFROST_CLUSTER_SECRET"), || {
                format!("{origin}: service {name}: BIFROST_CLUSTER_SECRET is not taken from the host environment")
            });
            let mounted = seq_at(service, &["volumes"])
                .iter()
                .filter_map(bind_mount)
                .find(|(_, target)| *target == config_path);
            let Some((source, _)) = mounted else {
                problems.0.push(format!(
                    "{origin}: service {name}: nothing mounted at BIFROST_CONFIG {config_path}"
                ));
                continue;
            };
            let config_file = setup_dir.join(source.trim_start_matches("./"));
            let Some(loaded) = configs.get(&config_file) else {
                problems.0.push(format!(
                    "{origin}: service {name}: {} did not load",
                    rel(&config_file)
                ));
                continue;
            };
            let cfg = &loaded.config;
            // HTTP security: the tokens come from the host environment, and with them the node may run.
            let tokens = compose_env(service, "BIFROST_HTTP_TOKENS").unwrap_or_default();
            problems.check(tokens.starts_with("${BIFROST_HTTP_TOKENS:?"), || {
                format!("{origin}: service {name}: BIFROST_HTTP_TOKENS is not required from the host environment")
            });
            problems.check(cfg.http.auth_requirement(true).is_none(), || {
                format!("{origin}: service {name}: would not run even with BIFROST_HTTP_TOKENS")
            });
            let http_port = cfg.http.listen.port().to_string();
            problems.check(
                seq_at(service, &["ports"]).iter().filter_map(Value::as_str).all(|p| p.ends_with(&format!(":{http_port}"))),
                || format!("{origin}: service {name}: published ports do not map http.listen's port {http_port}"),
            );
            if setup == "static" {
                problems.check(!cfg.discovery.enabled && !cfg.peers.is_empty(), || {
                    format!("{}: not a static-peers config", rel(&config_file))
                });
                for peer in &cfg.peers {
                    if let PeerHost::Name(host) = &peer.host {
                        problems.check(service_names.contains(host.as_str()), || {
                            format!(
                                "{}: peer {host} is not a service of {origin}",
                                rel(&config_file)
                            )
                        });
                    }
                }
            } else {
                problems.check(
                    cfg.discovery.enabled
                        && cfg.discovery.discovery_type.map(DiscoveryType::as_str) == Some(setup),
                    || format!("{}: discovery.type is not {setup:?}", rel(&config_file)),
                );
            }
            // A fixed subnet must be inside allowed_address_space (udp needs one; mdns limits its interfaces).
            if matches!(setup, "udp" | "mdns") {
                let subnets: Vec<ipnet::IpNet> = at(doc, &["networks"])
                    .and_then(Value::as_mapping)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .flat_map(|net| seq_at(net, &["ipam", "config"]))
                    .filter_map(|c| str_at(c, &["subnet"])?.parse().ok())
                    .collect();
                let allowed = &cfg.discovery.allowed_address_space;
                problems.check(
                    !subnets.is_empty() && subnets.iter().all(|s| allowed.iter().any(|a| a.contains(s))),
                    || format!("{origin}: the network subnets {subnets:?} are not inside allowed_address_space {allowed:?} of {}", rel(&config_file)),
                );
            }
        }
        problems.check(nodes >= 3, || {
            format!("{origin}: {nodes} bifrost nodes, expected at least 3")
        });

        if setup == "static" {
            let nginx = setup_dir.join("nginx.conf");
            let text = std::fs::read_to_string(&nginx).unwrap_or_default();
            let upstreams: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.ends_with(';'))
                .filter_map(|l| l.strip_prefix("server "))
                .filter_map(|l| l.split_whitespace().next()?.split(':').next())
                .collect();
            problems.check(upstreams.len() >= 3, || {
                format!("{}: fewer than 3 upstream servers", rel(&nginx))
            });
            for host in &upstreams {
                problems.check(service_names.contains(host), || {
                    format!(
                        "{}: upstream {host} is not a service of {origin}",
                        rel(&nginx)
                    )
                });
            }
            problems.check(
                text.contains("least_conn;")
                    && text.contains("location = /health")
                    && !text.contains("return 200"),
                || {
                    format!(
                        "{}: expected least_conn and /health proxied to the nodes (no fixed 200)",
                        rel(&nginx)
                    )
                },
            );
        }
    }
}

fn check_dockerfile(deploy: &Path, problems: &mut Problems) {
    let path = deploy.join("Dockerfile");
    let origin = rel(&path);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    problems.check(!text.is_empty(), || format!("{origin}: missing or empty"));
    // Instructions, with continuation lines joined.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .filter_map(|l| {
            let (op, rest) = l.trim().split_once(char::is_whitespace)?;
            Some((op.to_ascii_uppercase(), rest.trim().to_owned()))
        })
        .collect();
    let args = |op: &'static str| {
        instructions
            .iter()
            .filter(move |(o, _)| o == op)
            .map(|(_, a)| a.as_str())
    };

    let stages: Vec<&str> = args("FROM").collect();
    problems.check(
        stages.len() >= 2
            && stages
                .iter()
                .any(|f| f.to_ascii_uppercase().contains(" AS ")),
        || format!("{origin}: not a multi-stage build (FROM ... AS ...): {stages:?}"),
    );
    let users: Vec<&str> = args("USER").collect();
    problems.check(
        users.last().is_some_and(|u| {
            let user = u.split(':').next().unwrap_or("");
            !user.is_empty() && user != "root" && user != "0"
        }),
        || format!("{origin}: the final USER is not a non-root user: {users:?}"),
    );
    problems.check(
        args("ENTRYPOINT").any(|e| e.contains("\"bifrost-cluster\"")),
        || format!("{origin}: ENTRYPOINT is not bifrost-cluster"),
    );
    problems.check(
        args("ENV").any(|e| e == "BIFROST_CONFIG=/etc/bifrost/config.json"),
        || format!("{origin}: no ENV BIFROST_CONFIG=/etc/bifrost/config.json"),
    );
    problems.check(
        args("ENV").any(|e| e == format!("BIFROST_DATA_DIR={DATA_DIR}"))
            && args("VOLUME").any(|v| v == DATA_DIR)
            && joined.contains(&format!("chown 10001:10001 {DATA_DIR}")),
        || format!("{origin}: no ENV BIFROST_DATA_DIR={DATA_DIR} on a VOLUME owned by 10001"),
    );
    let exposed: BTreeSet<&str> = args("EXPOSE").flat_map(str::split_whitespace).collect();
    for port in ["8080", "10101/udp", "10101/tcp"] {
        problems.check(exposed.contains(port), || {
            format!("{origin}: does not EXPOSE {port}")
        });
    }
    problems.check(joined.contains("cargo build --release --locked"), || {
        format!("{origin}: no `cargo build --release --locked`")
    });

    // COPY from the context: each source exists and gets through the Dockerfile's ignore file.
    let ignore_path = deploy.join("Dockerfile.dockerignore");
    let ignore = std::fs::read_to_string(&ignore_path).unwrap_or_default();
    let ignores_all = ignore.lines().any(|l| l.trim() == "**" || l.trim() == "*");
    let mut copied = 0;
    for copy in args("COPY").filter(|a| !a.starts_with("--from")) {
        let mut parts: Vec<&str> = copy
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        parts.pop(); // the destination
        for source in parts {
            copied += 1;
            let source = source.trim_end_matches('/');
            problems.check(repo_root().join(source).exists(), || {
                format!("{origin}: COPY {source}: not in the repository root (the build context)")
            });
            problems.check(
                !ignores_all
                    || ignore
                        .lines()
                        .any(|l| l.trim().trim_end_matches('/') == format!("!{source}")),
                || {
                    format!(
                        "{}: excludes {source}, which the Dockerfile copies",
                        rel(&ignore_path)
                    )
                },
            );
        }
    }
    problems.check(copied >= 3, || {
        format!("{origin}: copies fewer than 3 sources")
    });
}

/// The ConfigMap's config reads its HTTP tokens from files of a Secret volume the container mounts, one key per
/// file, and with them it may run (HTTP security, issue 14).
fn check_kubernetes_tokens(
    origin: &str,
    pod: &Value,
    container: &Value,
    objects: &[(String, &Value)],
    configmap: Option<&Value>,
    problems: &mut Problems,
) {
    let Some(loaded) = configmap
        .and_then(|cm| str_at(cm, &["data", "config.json"]))
        .and_then(|text| config::load_from_str(text).ok())
    else {
        return; // reported above
    };
    let http = &loaded.config.http;
    problems.check(http.auth_requirement(false).is_none(), || {
        "deploy/kubernetes/configmap.yaml (config.json): no HTTP token, so run refuses http.listen".to_owned()
    });
    problems.check(!http.auth.tokens.is_empty(), || {
        "deploy/kubernetes/configmap.yaml (config.json): http.auth.tokens is empty".to_owned()
    });
    for token in &http.auth.tokens {
        let config::HttpTokenSource::File(path) = &token.source else {
            problems.0.push(format!(
                "deploy/kubernetes/configmap.yaml (config.json): token {:?} is not a token_file (tokens belong in the Secret)",
                token.name
            ));
            continue;
        };
        let path = path.to_string_lossy();
        let mounted = seq_at(container, &["volumeMounts"]).iter().find_map(|m| {
            let dir = str_at(m, &["mountPath"])?.trim_end_matches('/');
            let key = path.strip_prefix(dir)?.strip_prefix('/')?;
            let volume = seq_at(pod, &["volumes"])
                .iter()
                .find(|v| str_at(v, &["name"]) == str_at(m, &["name"]))?;
            let secret_name = str_at(volume, &["secret", "secretName"])?;
            Some((m, key.to_owned(), secret_name))
        });
        let Some((mount, key, secret_name)) = mounted else {
            problems.0.push(format!(
                "{origin}: token file {path} of token {:?} is not in a mounted Secret volume",
                token.name
            ));
            continue;
        };
        problems.check(
            at(mount, &["readOnly"]).and_then(Value::as_bool) == Some(true),
            || format!("{origin}: the token volume at {path} is not mounted readOnly"),
        );
        let secret = objects.iter().map(|(_, d)| *d).find(|d| {
            str_at(d, &["kind"]) == Some("Secret")
                && str_at(d, &["metadata", "name"]) == Some(secret_name)
        });
        problems.check(
            secret.is_some_and(|s| {
                at(s, &["stringData", key.as_str()]).is_some() || at(s, &["data", key.as_str()]).is_some()
            }),
            || format!("{origin}: Secret {secret_name:?} (secret.example.yaml) has no key {key:?} for token {:?}", token.name),
        );
    }
}

fn check_systemd(dir: &Path, configs: &BTreeMap<PathBuf, LoadedConfig>, problems: &mut Problems) {
    let path = dir.join("bifrost-cluster.service");
    let origin = rel(&path);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let directives: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| {
        directives
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    };
    let exec = value("ExecStart").unwrap_or("");
    problems.check(
        exec.starts_with("/usr/local/bin/bifrost-cluster run") && exec.contains("--config /etc/bifrost/config.json"),
        || format!("{origin}: ExecStart= is not `bifrost-cluster run --config /etc/bifrost/config.json`: {exec:?}"),
    );
    problems.check(value("KillSignal") == Some("SIGTERM"), || {
        format!("{origin}: no KillSignal=SIGTERM")
    });
    let stop: Option<u64> =
        value("TimeoutStopSec").and_then(|v| v.trim_end_matches('s').parse().ok());
    problems.check(stop.is_some_and(|s| s >= 15), || {
        format!("{origin}: TimeoutStopSec {stop:?} leaves less than 15 s for the graceful leave")
    });
    problems.check(
        value("User").is_some_and(|u| !u.is_empty() && u != "root"),
        || format!("{origin}: no non-root User="),
    );
    problems.check(value("EnvironmentFile").is_some(), || {
        format!("{origin}: no EnvironmentFile= for BIFROST_CLUSTER_SECRET")
    });
    let state_dir = value("StateDirectory");
    problems.check(
        state_dir.is_some_and(|d| format!("/var/lib/{d}") == DATA_DIR)
            && directives
                .iter()
                .any(|(k, v)| *k == "Environment" && *v == format!("BIFROST_DATA_DIR={DATA_DIR}")),
        || format!("{origin}: no StateDirectory= with Environment=BIFROST_DATA_DIR={DATA_DIR} (got {state_dir:?}); ProtectSystem=strict would make it read-only"),
    );
    for hardening in ["NoNewPrivileges", "ProtectSystem"] {
        problems.check(value(hardening).is_some(), || {
            format!("{origin}: no {hardening}=")
        });
    }
    // HTTP security: the env file carries BIFROST_HTTP_TOKENS entries of the documented shape.
    let env_path = dir.join("env.example");
    let env_text = std::fs::read_to_string(&env_path).unwrap_or_default();
    let tokens_line = env_text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("BIFROST_HTTP_TOKENS="))
        .map(|v| v.trim_matches('"'));
    problems.check(
        tokens_line.is_some_and(|v| {
            !v.is_empty()
                && v.split_whitespace().all(|entry| {
                    let parts: Vec<&str> = entry.splitn(3, ':').collect();
                    parts.len() == 3
                        && !parts[0].is_empty()
                        && parts[1]
                            .split(',')
                            .all(|s| config::HttpScope::from_name(s).is_some())
                })
        }),
        || {
            format!(
                "{}: no BIFROST_HTTP_TOKENS=\"name:scopes:token ...\" line",
                rel(&env_path)
            )
        },
    );
    let example = dir.join("config.json");
    problems.check(
        configs
            .get(&example)
            .is_some_and(|c| c.config.http.auth_requirement(true).is_none()),
        || {
            format!(
                "{}: would not run even with BIFROST_HTTP_TOKENS",
                rel(&example)
            )
        },
    );
    problems.check(
        configs
            .get(&example)
            .is_some_and(|c| !c.config.peers.is_empty()),
        || {
            format!(
                "{}: missing, not loaded, or without static peers",
                rel(&example)
            )
        },
    );
}
