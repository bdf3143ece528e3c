//! JSON value → typed [`ClusterConfig`], collecting every problem instead of stopping at the first.
//!
//! Each known field is read with its own rule; a refused value leaves the field at its default and records a
//! [`FieldError`] with the field's JSON path. Unknown members become [`ConfigWarning::UnknownField`]. A JSON `null`
//! counts as "not given" (the field keeps its default), as with the reference's Go decoder.
//!
//! The set of refused paths is kept so that cross-field rules ([`super::validate`]) do not pile a second,
//! misleading error on top of a refused value (e.g. "type required" after `"type": "k8s"` was refused).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};
use url::Url;

use super::duration::ConfigDuration;
use super::error::{ConfigWarning, FieldError};
use super::schema::{
    ClusterConfig, ClusterSecret, DiscoveryConfig, DiscoveryType, GossipConfig, GossipHealthConfig,
    HttpConfig, LimitsConfig, NodeId, PeerAddr, PeerHost, ReplicationConfig, SecurityConfig,
    validate_dns_name,
};
use super::schema::{
    HttpAuthConfig, HttpScope, HttpTlsConfig, HttpToken, HttpTokenConfig, HttpTokenSource,
};

/// The JSON path of the config object itself.
pub(crate) const ROOT: &str = "cluster_config";

/// Paths whose value was refused, with every ancestor (`cluster_config.peers[1]` also marks
/// `cluster_config.peers`), so a rule about a field can ask "was anything under it refused?".
#[derive(Debug, Default)]
pub(crate) struct Refused(BTreeSet<String>);

impl Refused {
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.0.contains(path)
    }

    fn insert(&mut self, path: &str) {
        for (i, c) in path.char_indices() {
            if c == '.' || c == '[' {
                self.0.insert(path[..i].to_owned());
            }
        }
        self.0.insert(path.to_owned());
    }
}

/// Result of [`parse_cluster_config`]: the config (refused fields at their defaults) and everything found.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) config: ClusterConfig,
    pub(crate) errors: Vec<FieldError>,
    pub(crate) warnings: Vec<ConfigWarning>,
    pub(crate) refused: Refused,
}

/// Parses the value of the `cluster_config` member.
pub(crate) fn parse_cluster_config(value: &Value) -> Parsed {
    let mut ctx = Ctx::default();
    let mut config = ClusterConfig::default();
    const KNOWN: &[&str] = &[
        "enabled",
        "node_id",
        "peers",
        "discovery",
        "gossip",
        "security",
        "replication",
        "http",
        "limits",
        "grpc",
        "storage",
    ];
    if let Some(map) = ctx.object(ROOT, value, KNOWN) {
        if let Some((path, v)) = member(ROOT, map, "enabled") {
            set(&mut config.enabled, ctx.bool(&path, v));
        }
        if let Some((path, v)) = member(ROOT, map, "node_id")
            && let Some(text) = ctx.string(&path, v)
        {
            match NodeId::new(text) {
                Ok(id) => config.node_id = Some(id),
                Err(rule) => ctx.fail(&path, rule),
            }
        }
        if let Some((path, v)) = member(ROOT, map, "peers") {
            config.peers = ctx.peers(&path, v);
        }
        if let Some((path, v)) = member(ROOT, map, "discovery") {
            ctx.discovery(&path, v, &mut config.discovery);
        }
        if let Some((path, v)) = member(ROOT, map, "gossip") {
            ctx.gossip(&path, v, &mut config.gossip);
        }
        if let Some((path, v)) = member(ROOT, map, "security") {
            ctx.security(&path, v, &mut config.security);
        }
        if let Some((path, v)) = member(ROOT, map, "replication") {
            ctx.replication(&path, v, &mut config.replication);
        }
        if let Some((path, v)) = member(ROOT, map, "http") {
            ctx.http(&path, v, &mut config.http);
        }
        if let Some((path, v)) = member(ROOT, map, "limits") {
            ctx.limits(&path, v, &mut config.limits);
        }
        if let Some((path, v)) = member(ROOT, map, "grpc") {
            let mut grpc = super::GrpcConfig::default();
            ctx.grpc(&path, v, &mut grpc);
            config.grpc = Some(grpc);
        }
        if let Some((path, v)) = member(ROOT, map, "storage") {
            ctx.storage(&path, v, &mut config.storage);
        }
    }
    Parsed {
        config,
        errors: ctx.errors,
        warnings: ctx.warnings,
        refused: ctx.refused,
    }
}

/// `map[key]` with its path, or `None` when absent or `null`.
fn member<'v>(parent: &str, map: &'v Map<String, Value>, key: &str) -> Option<(String, &'v Value)> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some((format!("{parent}.{key}"), v)),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A short description of a JSON value for error messages: strings quoted (and cut when long), numbers and
/// literals as written, containers by kind.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// JSON-quotes `s`, keeping at most 64 characters of it.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let (text, cut) = match s.char_indices().nth(MAX) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    };
    let mut quoted = serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"));
    if cut {
        quoted.insert_str(quoted.len() - 1, "...");
    }
    quoted
}

/// Accepts 1..=128 characters of `[A-Za-z0-9._-]` (the node id rule); used for `service_name`.
fn check_name(text: &str) -> Result<(), String> {
    NodeId::new(text).map(|_| ())
}

#[derive(Default)]
struct Ctx {
    errors: Vec<FieldError>,
    warnings: Vec<ConfigWarning>,
    refused: Refused,
}

impl Ctx {
    fn fail(&mut self, path: &str, rule: impl Into<String>) {
        self.refused.insert(path);
        self.errors.push(FieldError::new(path, rule));
    }

    /// The value as an object; warns about every member not in `known`.
    fn object<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.fail(path, format!("expected an object, got {}", describe(value)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.warnings.push(ConfigWarning::UnknownField {
                    path: format!("{path}.{key}"),
                });
            }
        }
        Some(map)
    }

    fn bool(&mut self, path: &str, value: &Value) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.fail(
                    path,
                    format!("expected true or false, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// A JSON integer (no fraction, no string) in `min..=max`.
    fn integer(&mut self, path: &str, value: &Value, min: u64, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.fail(
                    path,
                    format!("expected an integer {min}..={max}, got {}", describe(value)),
                );
                None
            }
        }
    }

    fn port(&mut self, path: &str, value: &Value) -> Option<u16> {
        self.integer(path, value, 1, u64::from(u16::MAX))
            .and_then(|n| u16::try_from(n).ok())
    }

    fn u32_in(&mut self, path: &str, value: &Value, min: u32, max: u32) -> Option<u32> {
        self.integer(path, value, u64::from(min), u64::from(max))
            .and_then(|n| u32::try_from(n).ok())
    }

    fn usize_in(&mut self, path: &str, value: &Value, min: usize, max: usize) -> Option<usize> {
        // Both bounds are small constants; on any platform they fit in u64.
        self.integer(path, value, min as u64, max as u64)
            .and_then(|n| usize::try_from(n).ok())
    }

    fn string<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.fail(path, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    fn non_empty_string<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let s = self.string(path, value)?;
        if s.trim().is_empty() {
            self.fail(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn array<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v [Value]> {
        match value {
            Value::Array(items) => Some(items),
            other => {
                self.fail(path, format!("expected an array, got {}", describe(other)));
                None
            }
        }
    }

    /// Every element of an array of strings, converted by `convert`; a refused element is left out and reported
    /// as `path[i]: rule`.
    fn string_array<T>(
        &mut self,
        path: &str,
        value: &Value,
        mut convert: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(items) = self.array(path, value) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            if let Some(text) = self.string(&item_path, item) {
                match convert(text) {
                    Ok(v) => out.push(v),
                    Err(rule) => self.fail(&item_path, rule),
                }
            }
        }
        out
    }

    fn duration(
        &mut self,
        path: &str,
        value: &Value,
        min: ConfigDuration,
        max: ConfigDuration,
    ) -> Option<ConfigDuration> {
        let Value::String(text) = value else {
            self.fail(
                path,
                format!(
                    "expected a duration string such as \"10s\" (units ms, s, m, h), got {}",
                    describe(value)
                ),
            );
            return None;
        };
        match ConfigDuration::parse(text) {
            Ok(d) if d >= min && d <= max => Some(d),
            Ok(_) => {
                self.fail(
                    path,
                    format!("must be between {min} and {max}, got {}", quote(text)),
                );
                None
            }
            Err(e) => {
                self.fail(path, format!("invalid duration {}: {e}", quote(text)));
                None
            }
        }
    }

    fn peers(&mut self, path: &str, value: &Value) -> Vec<PeerAddr> {
        self.string_array(path, value, |text| {
            PeerAddr::parse(text)
                .map_err(|reason| format!("invalid peer {}: {reason}", quote(text)))
        })
    }

    fn discovery(&mut self, path: &str, value: &Value, out: &mut DiscoveryConfig) {
        const KNOWN: &[&str] = &[
            "enabled",
            "type",
            "service_name",
            "bind_port",
            "dial_timeout",
            "allowed_address_space",
            "k8s_namespace",
            "k8s_label_selector",
            "consul_address",
            "etcd_endpoints",
            "dns_names",
            "udp_broadcast_port",
            "mdns_service",
            "interval",
            "consul_token",
            "dns_nameserver",
            "k8s_api_url",
        ];
        let Some(map) = self.object(path, value, KNOWN) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "enabled") {
            set(&mut out.enabled, self.bool(&p, v));
        }
        if let Some((p, v)) = member(path, map, "type")
            && let Some(name) = self.string(&p, v)
        {
            match DiscoveryType::from_name(name) {
                Some(t) => out.discovery_type = Some(t),
                None => self.fail(
                    &p,
                    format!(
                        "expected one of kubernetes, consul, etcd, dns, udp, mdns, got {}",
                        quote(name)
                    ),
                ),
            }
        }
        if let Some((p, v)) = member(path, map, "service_name")
            && let Some(name) = self.string(&p, v)
        {
            match check_name(name) {
                Ok(()) => out.service_name = Some(name.to_owned()),
                Err(rule) => self.fail(&p, rule),
            }
        }
        if let Some((p, v)) = member(path, map, "bind_port") {
            set(&mut out.bind_port, self.port(&p, v));
        }
        if let Some((p, v)) = member(path, map, "dial_timeout") {
            set(
                &mut out.dial_timeout,
                self.duration(
                    &p,
                    v,
                    DiscoveryConfig::MIN_DIAL_TIMEOUT,
                    DiscoveryConfig::MAX_DIAL_TIMEOUT,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "allowed_address_space") {
            out.allowed_address_space = self.string_array(&p, v, |text| {
                text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
                    format!(
                        "invalid CIDR {}: expected address/prefix-length such as \"10.0.0.0/8\"",
                        quote(text)
                    )
                })
            });
        }
        if let Some((p, v)) = member(path, map, "k8s_namespace")
            && let Some(ns) = self.string(&p, v)
        {
            match check_dns1123_label(ns) {
                Ok(()) => out.k8s_namespace = ns.to_owned(),
                Err(rule) => self.fail(&p, rule),
            }
        }
        if let Some((p, v)) = member(path, map, "k8s_label_selector")
            && let Some(sel) = self.non_empty_string(&p, v)
        {
            out.k8s_label_selector = Some(sel.to_owned());
        }
        if let Some((p, v)) = member(path, map, "consul_address")
            && let Some(addr) = self.string(&p, v)
        {
            match check_consul_address(addr) {
                Ok(()) => out.consul_address = addr.to_owned(),
                Err(rule) => self.fail(&p, rule),
            }
        }
        if let Some((p, v)) = member(path, map, "etcd_endpoints") {
            out.etcd_endpoints = self.string_array(&p, v, parse_etcd_endpoint);
        }
        if let Some((p, v)) = member(path, map, "dns_names") {
            out.dns_names = self.string_array(&p, v, |text| {
                validate_dns_name(text)
                    .map(|()| text.to_owned())
                    .map_err(|reason| format!("invalid DNS name {}: {reason}", quote(text)))
            });
        }
        if let Some((p, v)) = member(path, map, "udp_broadcast_port")
            && let Some(port) = self.port(&p, v)
        {
            out.udp_broadcast_port = Some(port);
        }
        if let Some((p, v)) = member(path, map, "mdns_service")
            && let Some(service) = self.string(&p, v)
        {
            match check_mdns_service(service) {
                Ok(()) => out.mdns_service = service.to_owned(),
                Err(rule) => self.fail(&p, rule),
            }
        }
        if let Some((p, v)) = member(path, map, "interval") {
            set(
                &mut out.interval,
                self.duration(
                    &p,
                    v,
                    DiscoveryConfig::MIN_INTERVAL,
                    DiscoveryConfig::MAX_INTERVAL,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "consul_token")
            && let Some(token) = self.non_empty_string(&p, v)
        {
            if token == ClusterSecret::REDACTED {
                self.fail(
                    &p,
                    "is the redacted placeholder that `check-config` prints: put the real token here or \
                     set CONSUL_HTTP_TOKEN"
                        .to_owned(),
                );
            } else {
                out.consul_token = Some(token.to_owned());
            }
        }
        if let Some((p, v)) = member(path, map, "dns_nameserver")
            && let Some(text) = self.string(&p, v)
        {
            match PeerAddr::parse(text) {
                Ok(addr) if matches!(addr.host, PeerHost::Ip(_)) => out.dns_nameserver = Some(addr),
                Ok(_) => self.fail(
                    &p,
                    format!(
                        "expected an IP address, \"ip\" or \"ip:port\", got the host name {}",
                        quote(text)
                    ),
                ),
                Err(reason) => self.fail(&p, format!("invalid address {}: {reason}", quote(text))),
            }
        }
        if let Some((p, v)) = member(path, map, "k8s_api_url")
            && let Some(text) = self.string(&p, v)
        {
            match parse_etcd_endpoint(text) {
                Ok(url) => out.k8s_api_url = Some(url),
                Err(rule) => self.fail(&p, rule),
            }
        }
    }

    fn gossip(&mut self, path: &str, value: &Value, out: &mut GossipConfig) {
        let Some(map) = self.object(path, value, &["port", "config", "advertise_address"]) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "port") {
            set(&mut out.port, self.port(&p, v));
        }
        if let Some((p, v)) = member(path, map, "advertise_address")
            && let Some(text) = self.string(&p, v)
        {
            match PeerAddr::parse(text) {
                Ok(addr) if matches!(addr.host, PeerHost::Ip(_)) => {
                    out.advertise_address = Some(addr)
                }
                Ok(_) => self.fail(
                    &p,
                    format!(
                        "expected an IP address, \"ip\" or \"ip:port\", got the host name {}",
                        quote(text)
                    ),
                ),
                Err(reason) => self.fail(&p, format!("invalid address {}: {reason}", quote(text))),
            }
        }
        let Some((path, value)) = member(path, map, "config") else {
            return;
        };
        let out = &mut out.config;
        let known = &["timeout_seconds", "success_threshold", "failure_threshold"];
        let Some(map) = self.object(&path, value, known) else {
            return;
        };
        if let Some((p, v)) = member(&path, map, "timeout_seconds") {
            set(
                &mut out.timeout_seconds,
                self.u32_in(&p, v, 1, GossipHealthConfig::MAX_TIMEOUT_SECONDS),
            );
        }
        if let Some((p, v)) = member(&path, map, "success_threshold") {
            set(
                &mut out.success_threshold,
                self.u32_in(&p, v, 1, GossipHealthConfig::MAX_THRESHOLD),
            );
        }
        if let Some((p, v)) = member(&path, map, "failure_threshold") {
            set(
                &mut out.failure_threshold,
                self.u32_in(&p, v, 1, GossipHealthConfig::MAX_THRESHOLD),
            );
        }
    }

    fn security(&mut self, path: &str, value: &Value, out: &mut SecurityConfig) {
        let known = &[
            "cluster_secret",
            "ca_file",
            "cert_file",
            "key_file",
            "insecure_dev",
        ];
        let Some(map) = self.object(path, value, known) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "cluster_secret")
            && let Some(secret) = self.string(&p, v)
        {
            match ClusterSecret::new(secret) {
                Ok(s) => out.cluster_secret = Some(s),
                Err(rule) => self.fail(&p, rule),
            }
        }
        for (key, slot) in [
            ("ca_file", &mut out.ca_file),
            ("cert_file", &mut out.cert_file),
            ("key_file", &mut out.key_file),
        ] {
            if let Some((p, v)) = member(path, map, key)
                && let Some(file) = self.non_empty_string(&p, v)
            {
                *slot = Some(PathBuf::from(file));
            }
        }
        if let Some((p, v)) = member(path, map, "insecure_dev") {
            set(&mut out.insecure_dev, self.bool(&p, v));
        }
    }

    fn replication(&mut self, path: &str, value: &Value, out: &mut ReplicationConfig) {
        let known = &[
            "flush_interval",
            "max_batch_bytes",
            "anti_entropy_interval",
            "full_mesh_below",
            "publishers_per_group",
            "predict_remote",
        ];
        let Some(map) = self.object(path, value, known) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "flush_interval") {
            set(
                &mut out.flush_interval,
                self.duration(
                    &p,
                    v,
                    ReplicationConfig::MIN_FLUSH_INTERVAL,
                    ReplicationConfig::MAX_FLUSH_INTERVAL,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "max_batch_bytes") {
            set(
                &mut out.max_batch_bytes,
                self.usize_in(
                    &p,
                    v,
                    ReplicationConfig::MIN_MAX_BATCH_BYTES,
                    ReplicationConfig::MAX_MAX_BATCH_BYTES,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "anti_entropy_interval") {
            set(
                &mut out.anti_entropy_interval,
                self.duration(
                    &p,
                    v,
                    ReplicationConfig::MIN_ANTI_ENTROPY_INTERVAL,
                    ReplicationConfig::MAX_ANTI_ENTROPY_INTERVAL,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "full_mesh_below") {
            set(
                &mut out.full_mesh_below,
                self.usize_in(
                    &p,
                    v,
                    ReplicationConfig::MIN_FULL_MESH_BELOW,
                    ReplicationConfig::MAX_FULL_MESH_BELOW,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "publishers_per_group") {
            set(
                &mut out.publishers_per_group,
                self.usize_in(&p, v, 1, ReplicationConfig::MAX_PUBLISHERS_PER_GROUP),
            );
        }
        if let Some((p, v)) = member(path, map, "predict_remote") {
            set(&mut out.predict_remote, self.bool(&p, v));
        }
    }

    fn http(&mut self, path: &str, value: &Value, out: &mut HttpConfig) {
        const KNOWN: &[&str] = &[
            "listen",
            "auth",
            "allow_unauthenticated_reads",
            "header_read_timeout",
            "idle_timeout",
            "max_connections",
            "max_request_n",
            "tls",
        ];
        let Some(map) = self.object(path, value, KNOWN) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "listen")
            && let Some(text) = self.string(&p, v)
        {
            match text.parse::<SocketAddr>() {
                Ok(addr) => out.listen = addr,
                Err(_) => self.fail(
                    &p,
                    format!(
                        "expected a socket address \"ip:port\" such as \"0.0.0.0:8080\" or \"[::]:8080\", got {}",
                        quote(text)
                    ),
                ),
            }
        }
        // ---- HTTP security (issue 14).
        if let Some((p, v)) = member(path, map, "auth") {
            self.http_auth(&p, v, &mut out.auth);
        }
        if let Some((p, v)) = member(path, map, "allow_unauthenticated_reads") {
            set(&mut out.allow_unauthenticated_reads, self.bool(&p, v));
        }
        if let Some((p, v)) = member(path, map, "header_read_timeout") {
            set(
                &mut out.header_read_timeout,
                self.duration(
                    &p,
                    v,
                    HttpConfig::MIN_HEADER_READ_TIMEOUT,
                    HttpConfig::MAX_HEADER_READ_TIMEOUT,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "idle_timeout") {
            set(
                &mut out.idle_timeout,
                self.duration(
                    &p,
                    v,
                    HttpConfig::MIN_IDLE_TIMEOUT,
                    HttpConfig::MAX_IDLE_TIMEOUT,
                ),
            );
        }
        if let Some((p, v)) = member(path, map, "max_connections") {
            set(
                &mut out.max_connections,
                self.usize_in(&p, v, 1, HttpConfig::MAX_MAX_CONNECTIONS),
            );
        }
        if let Some((p, v)) = member(path, map, "max_request_n") {
            set(&mut out.max_request_n, self.integer(&p, v, 1, u64::MAX));
        }
        if let Some((p, v)) = member(path, map, "tls")
            && let Some(tls) = self.object(&p, v, &["cert_file", "key_file"])
        {
            let mut file = |key: &str| -> Option<PathBuf> {
                match member(&p, tls, key) {
                    Some((fp, fv)) => self.non_empty_string(&fp, fv).map(PathBuf::from),
                    None => {
                        self.fail(&format!("{p}.{key}"), "required when http.tls is given");
                        None
                    }
                }
            };
            let cert_file = file("cert_file");
            let key_file = file("key_file");
            if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
                out.tls = Some(HttpTlsConfig {
                    cert_file,
                    key_file,
                });
            }
        }
    }

    /// `storage` (issue 16): counter snapshots.
    fn storage(&mut self, path: &str, value: &Value, out: &mut super::StorageConfig) {
        use super::StorageConfig as S;
        const KNOWN: &[&str] = &["path", "interval", "min_window"];
        let Some(map) = self.object(path, value, KNOWN) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "path") {
            out.path = self.non_empty_string(&p, v).map(PathBuf::from);
        }
        if let Some((p, v)) = member(path, map, "interval") {
            set(
                &mut out.interval,
                self.duration(&p, v, S::MIN_INTERVAL, S::MAX_INTERVAL),
            );
        }
        if let Some((p, v)) = member(path, map, "min_window") {
            set(
                &mut out.min_window,
                self.duration(&p, v, S::MIN_MIN_WINDOW, S::MAX_MIN_WINDOW),
            );
        }
    }

    /// `grpc` (issue 15): the Envoy rate-limit service.
    fn grpc(&mut self, path: &str, value: &Value, out: &mut super::GrpcConfig) {
        use super::GrpcConfig as G;
        const KNOWN: &[&str] = &[
            "listen",
            "limits_file",
            "reload_interval",
            "response_headers",
            "max_descriptors",
            "max_entries",
            "max_message_bytes",
            "max_concurrent_streams",
            "tls",
        ];
        let Some(map) = self.object(path, value, KNOWN) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "listen")
            && let Some(text) = self.string(&p, v)
        {
            match text.parse::<SocketAddr>() {
                Ok(addr) => out.listen = addr,
                Err(_) => self.fail(
                    &p,
                    format!(
                        "expected a socket address \"ip:port\" such as \"127.0.0.1:8081\", got {}",
                        quote(text)
                    ),
                ),
            }
        }
        if let Some((p, v)) = member(path, map, "limits_file") {
            out.limits_file = self.non_empty_string(&p, v).map(PathBuf::from);
        }
        if let Some((p, v)) = member(path, map, "reload_interval") {
            set(
                &mut out.reload_interval,
                self.duration(&p, v, G::MIN_RELOAD_INTERVAL, G::MAX_RELOAD_INTERVAL),
            );
        }
        if let Some((p, v)) = member(path, map, "response_headers") {
            set(&mut out.response_headers, self.bool(&p, v));
        }
        if let Some((p, v)) = member(path, map, "max_descriptors") {
            set(
                &mut out.max_descriptors,
                self.usize_in(&p, v, 1, G::MAX_MAX_DESCRIPTORS),
            );
        }
        if let Some((p, v)) = member(path, map, "max_entries") {
            set(
                &mut out.max_entries,
                self.usize_in(&p, v, 1, G::MAX_MAX_ENTRIES),
            );
        }
        if let Some((p, v)) = member(path, map, "max_message_bytes") {
            set(
                &mut out.max_message_bytes,
                self.usize_in(&p, v, G::MIN_MAX_MESSAGE_BYTES, G::MAX_MAX_MESSAGE_BYTES),
            );
        }
        if let Some((p, v)) = member(path, map, "max_concurrent_streams") {
            set(
                &mut out.max_concurrent_streams,
                self.u32_in(&p, v, 1, G::MAX_MAX_CONCURRENT_STREAMS),
            );
        }
        if let Some((p, v)) = member(path, map, "tls")
            && let Some(tls) = self.object(&p, v, &["cert_file", "key_file"])
        {
            let mut file = |key: &str| -> Option<PathBuf> {
                match member(&p, tls, key) {
                    Some((fp, fv)) => self.non_empty_string(&fp, fv).map(PathBuf::from),
                    None => {
                        self.fail(&format!("{p}.{key}"), "required when grpc.tls is given");
                        None
                    }
                }
            };
            let cert_file = file("cert_file");
            let key_file = file("key_file");
            if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
                out.tls = Some(HttpTlsConfig {
                    cert_file,
                    key_file,
                });
            }
        }
    }

    fn http_auth(&mut self, path: &str, value: &Value, out: &mut HttpAuthConfig) {
        let Some(map) = self.object(path, value, &["tokens", "public_metrics"]) else {
            return;
        };
        if let Some((p, v)) = member(path, map, "public_metrics") {
            set(&mut out.public_metrics, self.bool(&p, v));
        }
        let Some((p, v)) = member(path, map, "tokens") else {
            return;
        };
        let Some(items) = self.array(&p, v) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{p}[{i}]");
            let known = &["name", "token", "token_env", "token_file", "scopes"];
            let Some(entry) = self.object(&item_path, item, known) else {
                continue;
            };
            let name = match member(&item_path, entry, "name") {
                Some((np, nv)) => self.string(&np, nv).and_then(|n| match check_name(n) {
                    Ok(()) if out.tokens.iter().any(|t| t.name == n) => {
                        self.fail(&np, format!("duplicate token name {}", quote(n)));
                        None
                    }
                    Ok(()) => Some(n.to_owned()),
                    Err(rule) => {
                        self.fail(&np, rule);
                        None
                    }
                }),
                None => {
                    self.fail(&format!("{item_path}.name"), "required");
                    None
                }
            };
            let given: Vec<&str> = ["token", "token_env", "token_file"]
                .into_iter()
                .filter(|k| member(&item_path, entry, k).is_some())
                .collect();
            let source = match given.as_slice() {
                ["token"] => member(&item_path, entry, "token").and_then(|(tp, tv)| {
                    // The rule never quotes the value: it is a secret.
                    let text = self.string(&tp, tv)?;
                    match HttpToken::new(text) {
                        Ok(t) => Some(HttpTokenSource::Inline(t)),
                        Err(rule) => {
                            self.fail(&tp, rule);
                            None
                        }
                    }
                }),
                ["token_env"] => member(&item_path, entry, "token_env").and_then(|(tp, tv)| {
                    let text = self.non_empty_string(&tp, tv)?;
                    if text.contains('=') || text.contains('\0') {
                        self.fail(&tp, "expected the name of an environment variable");
                        return None;
                    }
                    Some(HttpTokenSource::Env(text.to_owned()))
                }),
                ["token_file"] => member(&item_path, entry, "token_file").and_then(|(tp, tv)| {
                    self.non_empty_string(&tp, tv)
                        .map(|f| HttpTokenSource::File(PathBuf::from(f)))
                }),
                [] => {
                    self.fail(&item_path, "needs one of token, token_env or token_file");
                    None
                }
                _ => {
                    self.fail(
                        &item_path,
                        format!(
                            "give only one of token, token_env, token_file; got {}",
                            given.join(", ")
                        ),
                    );
                    None
                }
            };
            let scopes = match member(&item_path, entry, "scopes") {
                Some((sp, sv)) => {
                    let scopes = self.string_array(&sp, sv, |text| {
                        HttpScope::from_name(text).ok_or_else(|| {
                            format!("expected one of read, check, admin, got {}", quote(text))
                        })
                    });
                    if scopes.is_empty() && !self.refused.contains(&sp) {
                        self.fail(&sp, "must list at least one of read, check, admin");
                    }
                    let mut unique = scopes;
                    unique.sort_unstable();
                    unique.dedup();
                    Some(unique)
                }
                None => {
                    self.fail(
                        &format!("{item_path}.scopes"),
                        "required: an array of read, check, admin",
                    );
                    None
                }
            };
            if let (Some(name), Some(source), Some(scopes)) = (name, source, scopes)
                && !scopes.is_empty()
            {
                out.tokens.push(HttpTokenConfig {
                    name,
                    source,
                    scopes,
                });
            }
        }
    }

    fn limits(&mut self, path: &str, value: &Value, out: &mut LimitsConfig) {
        let fields: Vec<&str> = [
            "max_keys",
            "max_key_length",
            // replication bounds (counter plane)
            "max_remote_keys",
            "max_origins_per_key",
            "max_relayed_origins_per_peer",
        ]
        .into_iter()
        .chain(CONFIG_MAP_LIMITS)
        .collect();
        let Some(map) = self.object(path, value, &fields) else {
            return;
        };
        // Config map bounds.
        for (name, out, min, max) in [
            (
                "config_max_entries",
                &mut out.config_max_entries,
                1,
                LimitsConfig::MAX_CONFIG_MAX_ENTRIES,
            ),
            (
                "config_max_bytes",
                &mut out.config_max_bytes,
                LimitsConfig::MIN_CONFIG_MAX_BYTES,
                LimitsConfig::MAX_CONFIG_MAX_BYTES,
            ),
            (
                "config_max_tombstones",
                &mut out.config_max_tombstones,
                1,
                LimitsConfig::MAX_CONFIG_MAX_ENTRIES,
            ),
        ] {
            if let Some((p, v)) = member(path, map, name) {
                set(out, self.usize_in(&p, v, min, max));
            }
        }
        if let Some((p, v)) = member(path, map, "max_keys") {
            set(
                &mut out.max_keys,
                self.usize_in(&p, v, 1, LimitsConfig::MAX_MAX_KEYS),
            );
        }
        if let Some((p, v)) = member(path, map, "max_key_length") {
            set(
                &mut out.max_key_length,
                self.usize_in(&p, v, 1, LimitsConfig::MAX_MAX_KEY_LENGTH),
            );
        }
        // --- replication bounds (counter plane) ---
        if let Some((p, v)) = member(path, map, "max_remote_keys")
            && let Some(n) = self.usize_in(&p, v, 1, LimitsConfig::MAX_MAX_KEYS)
        {
            out.max_remote_keys = Some(n);
        }
        if let Some((p, v)) = member(path, map, "max_origins_per_key") {
            set(
                &mut out.max_origins_per_key,
                self.usize_in(&p, v, 1, LimitsConfig::MAX_ORIGIN_CAP),
            );
        }
        if let Some((p, v)) = member(path, map, "max_relayed_origins_per_peer") {
            set(
                &mut out.max_relayed_origins_per_peer,
                self.usize_in(&p, v, 0, LimitsConfig::MAX_ORIGIN_CAP),
            );
        }
    }
}

/// The config map bounds of `limits` (`state::config_map`).
const CONFIG_MAP_LIMITS: [&str; 3] = [
    "config_max_entries",
    "config_max_bytes",
    "config_max_tombstones",
];

/// A Kubernetes namespace name: a DNS-1123 label.
fn check_dns1123_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a Kubernetes namespace (1..=63 of a-z, 0-9 and '-', not starting or ending with '-'), got {}",
            quote(name)
        ))
    }
}

/// `"host"`, `"host:port"` or an `http(s)://` URL with a host.
fn check_consul_address(addr: &str) -> Result<(), String> {
    if addr.contains("://") {
        return match Url::parse(addr) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
            _ => Err(format!(
                "invalid Consul address {}: expected \"host:port\" or an http:// or https:// URL",
                quote(addr)
            )),
        };
    }
    PeerAddr::parse(addr)
        .map(|_| ())
        .map_err(|reason| format!("invalid Consul address {}: {reason}", quote(addr)))
}

/// One etcd endpoint: an `http://` or `https://` URL with a host.
fn parse_etcd_endpoint(text: &str) -> Result<Url, String> {
    let bad = |why: &str| format!("invalid URL {}: {why}", quote(text));
    let url =
        Url::parse(text).map_err(|e| bad(&format!("{e}; expected e.g. \"http://etcd-1:2379\"")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            "expected an http:// or https:// URL such as \"http://etcd-1:2379\"",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    Ok(url)
}

/// `"_name._tcp"` or `"_name._udp"`, optionally followed by `".local"` or `".local."`.
fn check_mdns_service(service: &str) -> Result<(), String> {
    let base = service
        .strip_suffix(".local.")
        .or_else(|| service.strip_suffix(".local"))
        .unwrap_or(service);
    let ok = base
        .strip_suffix("._tcp")
        .or_else(|| base.strip_suffix("._udp"))
        .and_then(|name| name.strip_prefix('_'))
        .is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 15
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an mDNS service type such as \"_bifrost._tcp\" (\"_name._tcp\" or \"_name._udp\", name 1..=15 of A-Z, a-z, 0-9, '-'), got {}",
            quote(service)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_strings() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "x".repeat(100);
        let q = quote(&long);
        assert!(q.ends_with("...\""), "{q}");
        assert_eq!(q.len(), 64 + 5);
    }

    #[test]
    fn refused_marks_ancestors() {
        let mut r = Refused::default();
        r.insert("cluster_config.peers[1]");
        assert!(r.contains("cluster_config.peers"));
        assert!(r.contains("cluster_config"));
        assert!(!r.contains("cluster_config.enabled"));
    }

    #[test]
    fn mdns_service_types() {
        for ok in [
            "_bifrost._tcp",
            "_myapp._udp",
            "_bifrost._tcp.local",
            "_bifrost._tcp.local.",
        ] {
            assert!(check_mdns_service(ok).is_ok(), "{ok}");
        }
        for bad in [
            "bifrost",
            "_bifrost",
            "_._tcp",
            "bifrost._tcp",
            "_bifrost._sctp",
            "_a_b._tcp",
        ] {
            assert!(check_mdns_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consul_addresses() {
        for ok in [
            "localhost:8500",
            "consul.service.consul:8500",
            "consul",
            "http://10.0.0.1:8500",
            "https://c:8501",
        ] {
            assert!(check_consul_address(ok).is_ok(), "{ok}");
        }
        for bad in ["", "localhost:0", "ftp://c:1", "http://", "a b:1"] {
            assert!(check_consul_address(bad).is_err(), "{bad}");
        }
    }
}
