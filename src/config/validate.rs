//! Cross-field rules, and the "run requirements" that only `run` enforces.
//!
//! Two classes of rule:
//!
//! - **Errors** ([`ClusterConfig::validate`]): the config contradicts the reference or itself (cluster mode with
//!   nothing to join, `udp` discovery without a broadcast port, a secret *and* certificate files, ...). A config
//!   with errors does not load.
//! - **Run requirements** ([`ClusterConfig::run_requirements`]): things a config written for the reference
//!   legitimately omits but that `run` needs (a trust source; a Kubernetes label selector). `check-config` prints
//!   them as warnings and succeeds; `run` refuses to start while any remains.

use super::error::{ConfigWarning, FieldError};
use super::load::CLUSTER_SECRET_ENV;
use super::parse::{ROOT, Refused};
use super::schema::{
    ClusterConfig, ClusterSecret, DiscoveryConfig, DiscoveryType, GossipHealthConfig, LimitsConfig,
    ReplicationConfig, Trust,
};

impl ClusterConfig {
    /// Every rule that makes this config invalid, each with its JSON path; empty when the config is valid.
    ///
    /// [`super::load_from_str`] already runs this; call it on a config built in code.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = check_ranges(self);
        errors.extend(cross_field(self, &Refused::default()));
        errors
    }

    /// What `run` still needs that this (valid) config does not give, each with the JSON path to set (or the
    /// environment variable). `env_secret` is the value of `BIFROST_CLUSTER_SECRET`, if set; the caller reads
    /// the environment so this stays pure. Empty when `run` can start.
    pub fn run_requirements(&self, env_secret: Option<&str>) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self.enabled {
            match self.trust(env_secret) {
                Err(e) => out.push(e),
                Ok(Trust::Secret(secret)) => {
                    if let Some(rule) = secret.weakness() {
                        let path = if self.security.cluster_secret.is_some() {
                            format!("{ROOT}.security.cluster_secret")
                        } else {
                            CLUSTER_SECRET_ENV.to_owned()
                        };
                        out.push(FieldError::new(path, rule));
                    }
                }
                Ok(_) => {}
            }
        }
        out.extend(self.missing_backend(DiscoveryType::is_built));
        if self.discovery.enabled
            && self.discovery.discovery_type == Some(DiscoveryType::Kubernetes)
            && self.discovery.k8s_label_selector.is_none()
        {
            out.push(FieldError::new(
                format!("{ROOT}.discovery.k8s_label_selector"),
                "required when discovery.type is \"kubernetes\"; run will refuse to start without it",
            ));
        }
        out
    }

    /// The requirement a cluster-mode config breaks when its `discovery.type` backend is not in the build
    /// (`built` tells which are: [`DiscoveryType::is_built`], a parameter so tests can remove backends).
    fn missing_backend(&self, built: fn(DiscoveryType) -> bool) -> Option<FieldError> {
        let kind = self.discovery.discovery_type?;
        (self.enabled && self.discovery.enabled && !built(kind)).then(|| {
            FieldError::new(
                format!("{ROOT}.discovery.type"),
                format!("{}; run will refuse to start", kind.not_built_rule()),
            )
        })
    }

    /// The trust source `run` uses, from the config and `env_secret` (the value of `BIFROST_CLUSTER_SECRET`;
    /// an empty value counts as unset).
    ///
    /// Exactly one source must be configured: a secret (config or environment, not both), or the CA/cert/key
    /// files. With none, [`Trust::InsecureDev`] when `security.insecure_dev` is set, otherwise an error.
    pub fn trust(&self, env_secret: Option<&str>) -> Result<Trust, FieldError> {
        let sec = &self.security;
        let env_secret = env_secret.filter(|s| !s.is_empty());
        let files = match (&sec.ca_file, &sec.cert_file, &sec.key_file) {
            (Some(ca), Some(cert), Some(key)) => Some(Trust::Files {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            (None, None, None) => None,
            _ => {
                return Err(FieldError::new(
                    format!("{ROOT}.security"),
                    "ca_file, cert_file and key_file must be given together",
                ));
            }
        };
        match (&sec.cluster_secret, env_secret, files) {
            (Some(_), Some(_), _) => Err(FieldError::new(
                format!("{ROOT}.security.cluster_secret"),
                format!(
                    "set both here and in {CLUSTER_SECRET_ENV}; run will refuse to start: keep one"
                ),
            )),
            (Some(_), None, Some(_)) => Err(FieldError::new(
                format!("{ROOT}.security.cluster_secret"),
                "cannot be combined with ca_file/cert_file/key_file: choose one trust source",
            )),
            (None, Some(_), Some(_)) => Err(FieldError::new(
                CLUSTER_SECRET_ENV,
                "is set while security.ca_file/cert_file/key_file are configured; run will refuse to start: keep one trust source",
            )),
            (Some(secret), None, None) => Ok(Trust::Secret(secret.clone())),
            (None, Some(env), None) => ClusterSecret::new(env)
                .map(Trust::Secret)
                .map_err(|rule| FieldError::new(CLUSTER_SECRET_ENV, rule)),
            (None, None, Some(files)) => Ok(files),
            (None, None, None) if sec.insecure_dev => Ok(Trust::InsecureDev),
            (None, None, None) => Err(FieldError::new(
                format!("{ROOT}.security"),
                format!(
                    "run needs a cluster secret (security.cluster_secret or {CLUSTER_SECRET_ENV}), CA/cert/key files, or security.insecure_dev"
                ),
            )),
        }
    }
}

/// Cross-field rules on a parsed config, plus warnings about values that have no effect. Rules that involve a
/// refused field are skipped: its error is already reported and the default left in its place means nothing.
pub(crate) fn validate_parsed(
    config: &ClusterConfig,
    refused: &Refused,
) -> (Vec<FieldError>, Vec<ConfigWarning>) {
    let errors = cross_field(config, refused);
    let mut warnings = Vec::new();
    let sec = &config.security;
    let has_trust = sec.cluster_secret.is_some()
        || sec.ca_file.is_some()
        || sec.cert_file.is_some()
        || sec.key_file.is_some();
    if sec.insecure_dev && has_trust {
        warnings.push(ConfigWarning::Ineffective {
            path: format!("{ROOT}.security.insecure_dev"),
            reason: "has no effect: a trust source is configured and will be used".to_owned(),
        });
    } else if sec.insecure_dev && config.enabled {
        warnings.push(ConfigWarning::Insecure {
            path: format!("{ROOT}.security.insecure_dev"),
            reason: "INSECURE: without a cluster secret or certificate files (or BIFROST_CLUSTER_SECRET) any \
                     process that reaches the gossip port joins the cluster and can write every counter; \
                     development only"
                .to_owned(),
        });
    }
    (errors, warnings)
}

fn cross_field(config: &ClusterConfig, refused: &Refused) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ok = |field: &str| !refused.contains(&format!("{ROOT}.{field}"));
    let mut fail =
        |field: &str, rule: String| errors.push(FieldError::new(format!("{ROOT}.{field}"), rule));
    let d = &config.discovery;

    if config.enabled
        && config.peers.is_empty()
        && !d.enabled
        && ok("peers")
        && ok("discovery.enabled")
    {
        fail(
            "enabled",
            "cluster mode needs a non-empty peers list or discovery.enabled: true".to_owned(),
        );
    }

    if d.enabled && ok("discovery.type") {
        match d.discovery_type {
            None => fail(
                "discovery.type",
                "required when discovery.enabled is true (one of kubernetes, consul, etcd, dns, udp, mdns)".to_owned(),
            ),
            Some(t) => {
                let when = format!("when discovery.type is \"{t}\"");
                let needs_service = matches!(t, DiscoveryType::Consul | DiscoveryType::Etcd | DiscoveryType::Udp);
                if needs_service && d.service_name.is_none() && ok("discovery.service_name") {
                    fail("discovery.service_name", format!("required {when}"));
                }
                if t == DiscoveryType::Etcd && d.etcd_endpoints.is_empty() && ok("discovery.etcd_endpoints") {
                    fail(
                        "discovery.etcd_endpoints",
                        format!("required {when} (a non-empty array of http:// or https:// URLs)"),
                    );
                }
                if t == DiscoveryType::Dns && d.dns_names.is_empty() && ok("discovery.dns_names") {
                    fail("discovery.dns_names", format!("required {when} (a non-empty array of DNS names)"));
                }
                if t == DiscoveryType::Udp {
                    if d.udp_broadcast_port.is_none() && ok("discovery.udp_broadcast_port") {
                        fail("discovery.udp_broadcast_port", format!("required {when}"));
                    }
                    if d.allowed_address_space.is_empty() && ok("discovery.allowed_address_space") {
                        fail(
                            "discovery.allowed_address_space",
                            format!("required {when} (a non-empty array of CIDRs such as \"192.168.1.0/24\")"),
                        );
                    }
                }
            }
        }
    }

    if let Some(udp) = d.udp_broadcast_port
        && udp == config.gossip.port
        && ok("gossip.port")
    {
        fail(
            "discovery.udp_broadcast_port",
            format!("must differ from gossip.port ({udp})"),
        );
    }

    if config.enabled
        && config.http.listen.port() == config.gossip.port
        && ok("http.listen")
        && ok("gossip.port")
    {
        fail(
            "http.listen",
            format!(
                "port {} is also gossip.port, which has a TCP listener for health checks: use another port",
                config.gossip.port
            ),
        );
    }

    let sec = &config.security;
    let files = [
        ("ca_file", &sec.ca_file),
        ("cert_file", &sec.cert_file),
        ("key_file", &sec.key_file),
    ];
    let given: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_some())
        .map(|(k, _)| *k)
        .collect();
    if !given.is_empty() && given.len() < files.len() {
        for (key, file) in files {
            if file.is_none() && ok(&format!("security.{key}")) {
                fail(
                    &format!("security.{key}"),
                    format!(
                        "required when {} is set: ca_file, cert_file and key_file go together",
                        given.join(" and ")
                    ),
                );
            }
        }
    }
    if sec.cluster_secret.is_some() && !given.is_empty() {
        fail(
            "security.cluster_secret",
            format!(
                "cannot be combined with {}: choose one trust source (a secret, or CA/cert/key files)",
                given.join(", ")
            ),
        );
    }
    errors
}

/// Range rules on typed values, for configs built in code (the parser already refuses out-of-range values, so
/// on a loaded config this finds nothing).
fn check_ranges(config: &ClusterConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut range = |field: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            errors.push(FieldError::new(
                format!("{ROOT}.{field}"),
                format!("expected an integer {min}..={max}, got {value}"),
            ));
        }
    };
    let d = &config.discovery;
    range("discovery.bind_port", d.bind_port.into(), 1, 65535);
    if let Some(p) = d.udp_broadcast_port {
        range("discovery.udp_broadcast_port", p.into(), 1, 65535);
    }
    range("gossip.port", config.gossip.port.into(), 1, 65535);
    let h = &config.gossip.config;
    range(
        "gossip.config.timeout_seconds",
        h.timeout_seconds.into(),
        1,
        GossipHealthConfig::MAX_TIMEOUT_SECONDS.into(),
    );
    range(
        "gossip.config.success_threshold",
        h.success_threshold.into(),
        1,
        GossipHealthConfig::MAX_THRESHOLD.into(),
    );
    range(
        "gossip.config.failure_threshold",
        h.failure_threshold.into(),
        1,
        GossipHealthConfig::MAX_THRESHOLD.into(),
    );
    let r = &config.replication;
    range(
        "replication.max_batch_bytes",
        r.max_batch_bytes as u64,
        ReplicationConfig::MIN_MAX_BATCH_BYTES as u64,
        ReplicationConfig::MAX_MAX_BATCH_BYTES as u64,
    );
    let l = &config.limits;
    range(
        "limits.max_keys",
        l.max_keys as u64,
        1,
        LimitsConfig::MAX_MAX_KEYS as u64,
    );
    range(
        "limits.max_key_length",
        l.max_key_length as u64,
        1,
        LimitsConfig::MAX_MAX_KEY_LENGTH as u64,
    );
    // --- replication bounds (counter plane) ---
    if let Some(n) = l.max_remote_keys {
        range(
            "limits.max_remote_keys",
            n as u64,
            1,
            LimitsConfig::MAX_MAX_KEYS as u64,
        );
    }
    range(
        "limits.max_origins_per_key",
        l.max_origins_per_key as u64,
        1,
        LimitsConfig::MAX_ORIGIN_CAP as u64,
    );
    range(
        "limits.max_relayed_origins_per_peer",
        l.max_relayed_origins_per_peer as u64,
        0,
        LimitsConfig::MAX_ORIGIN_CAP as u64,
    );
    // ---- HTTP security (issue 14).
    let http = &config.http;
    range(
        "http.max_connections",
        http.max_connections as u64,
        1,
        super::schema::HttpConfig::MAX_MAX_CONNECTIONS as u64,
    );
    range("http.max_request_n", http.max_request_n, 1, u64::MAX);
    // Config map bounds.
    for (field, value, min, max) in [
        (
            "limits.config_max_entries",
            l.config_max_entries,
            1,
            LimitsConfig::MAX_CONFIG_MAX_ENTRIES,
        ),
        (
            "limits.config_max_bytes",
            l.config_max_bytes,
            LimitsConfig::MIN_CONFIG_MAX_BYTES,
            LimitsConfig::MAX_CONFIG_MAX_BYTES,
        ),
        (
            "limits.config_max_tombstones",
            l.config_max_tombstones,
            1,
            LimitsConfig::MAX_CONFIG_MAX_ENTRIES,
        ),
    ] {
        range(field, value as u64, min as u64, max as u64);
    }
    for (field, value, min, max) in [
        (
            "http.header_read_timeout",
            http.header_read_timeout,
            super::schema::HttpConfig::MIN_HEADER_READ_TIMEOUT,
            super::schema::HttpConfig::MAX_HEADER_READ_TIMEOUT,
        ),
        (
            "http.idle_timeout",
            http.idle_timeout,
            super::schema::HttpConfig::MIN_IDLE_TIMEOUT,
            super::schema::HttpConfig::MAX_IDLE_TIMEOUT,
        ),
        (
            "discovery.dial_timeout",
            d.dial_timeout,
            DiscoveryConfig::MIN_DIAL_TIMEOUT,
            DiscoveryConfig::MAX_DIAL_TIMEOUT,
        ),
        (
            "replication.flush_interval",
            r.flush_interval,
            ReplicationConfig::MIN_FLUSH_INTERVAL,
            ReplicationConfig::MAX_FLUSH_INTERVAL,
        ),
        (
            "replication.anti_entropy_interval",
            r.anti_entropy_interval,
            ReplicationConfig::MIN_ANTI_ENTROPY_INTERVAL,
            ReplicationConfig::MAX_ANTI_ENTROPY_INTERVAL,
        ),
    ] {
        if value < min || value > max {
            errors.push(FieldError::new(
                format!("{ROOT}.{field}"),
                format!("must be between {min} and {max}, got \"{value}\""),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_needs_nothing() {
        let c = ClusterConfig::default();
        assert!(c.validate().is_empty());
        assert!(c.run_requirements(None).is_empty());
    }

    #[test]
    fn a_backend_missing_from_the_build_is_a_run_requirement() {
        let mut c = ClusterConfig {
            enabled: true,
            ..ClusterConfig::default()
        };
        c.discovery.enabled = true;
        for kind in DiscoveryType::ALL {
            c.discovery.discovery_type = Some(kind);
            let missing = c.missing_backend(|_| false).map(|e| (e.path, e.rule));
            let Some((path, rule)) = missing else {
                panic!("{kind:?}: a build without it must be named");
            };
            assert_eq!(path, "cluster_config.discovery.type");
            assert!(
                rule.contains(&format!("no {:?} backend", kind.as_str())),
                "{rule}"
            );
            assert!(c.missing_backend(|_| true).is_none(), "{kind:?}");
            assert_eq!(
                c.missing_backend(DiscoveryType::is_built).is_some(),
                !kind.is_built()
            );
        }
        c.discovery.enabled = false;
        assert!(c.missing_backend(|_| false).is_none());
    }

    #[test]
    fn hand_built_out_of_range_values_are_reported() {
        let mut c = ClusterConfig::default();
        c.gossip.port = 0;
        c.replication.max_batch_bytes = 10;
        c.replication.flush_interval = crate::config::ConfigDuration::ZERO;
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "cluster_config.gossip.port",
                "cluster_config.replication.max_batch_bytes",
                "cluster_config.replication.flush_interval"
            ]
        );
    }

    #[test]
    fn trust_sources() {
        let mut c = ClusterConfig {
            enabled: true,
            ..ClusterConfig::default()
        };
        assert!(c.trust(None).is_err());
        assert!(
            c.trust(Some("")).is_err(),
            "empty env value counts as unset"
        );
        assert!(matches!(
            c.trust(Some("0123456789abcdef")),
            Ok(Trust::Secret(_))
        ));
        let short = c.trust(Some("short")).err().map(|e| e.path);
        assert_eq!(short.as_deref(), Some("BIFROST_CLUSTER_SECRET"));
        c.security.insecure_dev = true;
        assert_eq!(c.trust(None), Ok(Trust::InsecureDev));
        c.security.cluster_secret = ClusterSecret::new("0123456789abcdef").ok();
        assert!(matches!(c.trust(None), Ok(Trust::Secret(_))));
        assert!(
            c.trust(Some("0123456789abcdef")).is_err(),
            "config and env secret both set"
        );
    }
}
