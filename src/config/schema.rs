//! The typed `cluster_config`, with its defaults.
//!
//! Field names are exactly the JSON member names. The reference's fields come first in each struct; our own
//! sections (`node_id`, `security`, `replication`, `http`, `limits`) are optional and default to the values
//! documented on each field. A value of this type produced by [`super::load_from_str`] has passed every rule in
//! [`super::validate`]; a value built by hand (or [`ClusterConfig::default`]) has not been checked.
//!
//! [`serde::Serialize`] writes the *effective* config: every default filled in, optional fields without a value
//! as `null`, durations in canonical form, and the cluster secret as `"<redacted>"`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Serialize, Serializer};
use url::Url;

use super::duration::ConfigDuration;

/// The whole `cluster_config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// Cluster mode on or off. Default: `false` (the node runs alone and replicates nothing).
    ///
    /// When `true`, `peers` must be non-empty or `discovery.enabled` must be `true`.
    pub enabled: bool,
    /// This node's stable name. Default: none, and the runtime uses the hostname.
    ///
    /// Constraints: 1..=128 characters of `[A-Za-z0-9._-]`.
    pub node_id: Option<NodeId>,
    /// Static peers to join, each `"host:port"` or `"host"` (then `gossip.port` is used). `host` is an IPv4
    /// address, a bracketed IPv6 address (`"[fd00::1]:10101"`; a bare IPv6 address without port is accepted too)
    /// or a DNS name. Ports are 1..=65535. Default: empty.
    pub peers: Vec<PeerAddr>,
    /// How peers are found. Default: disabled.
    pub discovery: DiscoveryConfig,
    /// The inter-node port and health thresholds.
    pub gossip: GossipConfig,
    /// Trust between nodes (mutual TLS).
    pub security: SecurityConfig,
    /// Delta replication tuning.
    pub replication: ReplicationConfig,
    /// The HTTP surface (health, status, metrics, rate-limit API).
    pub http: HttpConfig,
    /// Memory bounds of the counter store.
    pub limits: LimitsConfig,
    /// The Envoy rate-limit service (issue 15). Default: none (no gRPC listener).
    pub grpc: Option<super::grpc::GrpcConfig>,
    /// Counter snapshots in a local data directory (issue 16). Default: no `path`, memory only.
    pub storage: super::storage::StorageConfig,
}

impl Default for ClusterConfig {
    /// Cluster mode off, everything else at its documented default.
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            peers: Vec::new(),
            discovery: DiscoveryConfig::default(),
            gossip: GossipConfig::default(),
            security: SecurityConfig::default(),
            replication: ReplicationConfig::default(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            grpc: None,
            storage: super::storage::StorageConfig::default(),
        }
    }
}

/// A validated node name: 1..=128 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Longest accepted node id, in characters (all ASCII, so also bytes).
    pub const MAX_LEN: usize = 128;

    /// Checks `name` against the node id rules; the error is the rule in words.
    ///
    /// The runtime uses this on the hostname when `node_id` is not configured.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(format!(
                "must be 1..={} characters, got {}",
                Self::MAX_LEN,
                name.chars().count()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "may only contain A-Z, a-z, 0-9, '.', '_' and '-', found {bad:?}"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of a peer address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerHost {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved by the runtime.
    Name(String),
}

/// One entry of `peers`: a host and an optional port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// Where the peer is.
    pub host: PeerHost,
    /// The peer's gossip port, when written; otherwise the runtime uses this node's `gossip.port`.
    pub port: Option<u16>,
}

impl PeerAddr {
    /// Parses `"host"` or `"host:port"` (IPv6 in brackets when a port follows). The error is the reason in words.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        // Bare IPv6 without port: "fd00::1".
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self {
                host: PeerHost::Ip(ip),
                port: None,
            });
        }
        let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err("missing ']' after the IPv6 address".to_owned());
            };
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err("expected ':port' after ']'".to_owned()),
                },
            };
            match inside.parse::<std::net::Ipv6Addr>() {
                Ok(_) => {}
                Err(_) => return Err(format!("\"{inside}\" is not an IPv6 address")),
            }
            (inside, port)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => {
                    if host.contains(':') {
                        return Err("an IPv6 address with a port must be written in brackets, e.g. \"[fd00::1]:10101\"".to_owned());
                    }
                    (host, Some(port))
                }
                None => (text, None),
            }
        };
        let port = match port_text {
            None => None,
            Some(p) => Some(
                parse_port(p)
                    .ok_or_else(|| format!("port must be an integer 1..=65535, got \"{p}\""))?,
            ),
        };
        let host = if let Ok(ip) = host_text.parse::<IpAddr>() {
            PeerHost::Ip(ip)
        } else {
            validate_dns_name(host_text)?;
            PeerHost::Name(host_text.to_owned())
        };
        Ok(Self { host, port })
    }

    /// The port to dial: the written one, or `default_port` (the runtime passes `gossip.port`).
    pub fn port_or(&self, default_port: u16) -> u16 {
        self.port.unwrap_or(default_port)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (PeerHost::Ip(IpAddr::V6(ip)), Some(port)) => write!(f, "[{ip}]:{port}"),
            (PeerHost::Ip(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (PeerHost::Ip(ip), None) => write!(f, "{ip}"),
            (PeerHost::Name(name), Some(port)) => write!(f, "{name}:{port}"),
            (PeerHost::Name(name), None) => f.write_str(name),
        }
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses a decimal port 1..=65535 (no sign, no spaces).
pub(crate) fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Checks a DNS name: labels of 1..=63 characters of `[A-Za-z0-9_-]`, not starting or ending with `-`, at most
/// 253 characters in all, one optional trailing dot. A name made only of digits and dots must be an IPv4 address
/// (so a typo like `10.0.0.256` is caught instead of being looked up).
pub(crate) fn validate_dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("the host name is empty".to_owned());
    }
    if trimmed.len() > 253 {
        return Err(format!(
            "the host name is {} characters long; at most 253",
            trimmed.len()
        ));
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not a valid IPv4 address".to_owned());
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(
                "not a valid host name: each dot-separated label must be 1..=63 characters"
                    .to_owned(),
            );
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "not a valid host name: unexpected character {bad:?}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("not a valid host name: a label may not start or end with '-'".to_owned());
        }
    }
    Ok(())
}

/// The discovery backends of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryType {
    /// Pods matching `k8s_label_selector` in `k8s_namespace`, via the Kubernetes API.
    Kubernetes,
    /// Services named `service_name` registered with the Consul agent at `consul_address`.
    Consul,
    /// Keys under `/services/{service_name}/` in etcd at `etcd_endpoints`.
    Etcd,
    /// A/AAAA (or SRV, for names starting with `_`) records of `dns_names`, dialed on `bind_port`.
    Dns,
    /// Broadcast beacons on `udp_broadcast_port`, accepted only from `allowed_address_space`.
    Udp,
    /// Multicast DNS advertisement and browsing of `mdns_service`.
    Mdns,
}

impl DiscoveryType {
    /// Every type, in the reference's order.
    pub const ALL: [DiscoveryType; 6] = [
        DiscoveryType::Kubernetes,
        DiscoveryType::Consul,
        DiscoveryType::Etcd,
        DiscoveryType::Dns,
        DiscoveryType::Udp,
        DiscoveryType::Mdns,
    ];

    /// The JSON spelling (`"kubernetes"`, `"consul"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            DiscoveryType::Kubernetes => "kubernetes",
            DiscoveryType::Consul => "consul",
            DiscoveryType::Etcd => "etcd",
            DiscoveryType::Dns => "dns",
            DiscoveryType::Udp => "udp",
            DiscoveryType::Mdns => "mdns",
        }
    }

    /// Whether this build has the backend (its cargo feature is on).
    pub const fn is_built(self) -> bool {
        match self {
            DiscoveryType::Kubernetes => cfg!(feature = "kubernetes"),
            DiscoveryType::Consul => cfg!(feature = "consul"),
            DiscoveryType::Etcd => cfg!(feature = "etcd"),
            DiscoveryType::Dns => cfg!(feature = "dns"),
            DiscoveryType::Udp => cfg!(feature = "udp"),
            DiscoveryType::Mdns => cfg!(feature = "mdns"),
        }
    }

    /// The rule a config breaks when it asks for a backend this build does not have.
    pub fn not_built_rule(self) -> String {
        format!(
            "this build has no {:?} backend (its cargo feature is off)",
            self.as_str()
        )
    }

    /// The type spelled `name` exactly (lowercase), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for DiscoveryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `cluster_config.discovery`.
///
/// Type-specific requirements (e.g. `etcd_endpoints` for etcd) apply only while `enabled` is `true`; value rules
/// (a CIDR must be a CIDR) apply whenever a field is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveryConfig {
    /// Run discovery. Default: `false`.
    pub enabled: bool,
    /// Which backend. JSON name `type`. Default: none; required when `enabled` is `true`.
    #[serde(rename = "type")]
    pub discovery_type: Option<DiscoveryType>,
    /// Service name to register and look up. Default: none. Required for `consul`, `etcd` and `udp`.
    ///
    /// Constraints: 1..=128 characters of `[A-Za-z0-9._-]` (it becomes part of an etcd key and a Consul service).
    pub service_name: Option<String>,
    /// Port appended to addresses found by discovery (e.g. DNS A records). Default: 10101. Range 1..=65535.
    pub bind_port: u16,
    /// How long one discovery round may take (connect, query, wait for answers). Default: `"10s"`.
    /// Range 1ms..=1h.
    pub dial_timeout: ConfigDuration,
    /// CIDR ranges (e.g. `"10.0.0.0/8"`) a discovered address must fall in to be used. Default: empty (no
    /// filter). Required non-empty for `udp`. Host bits may be set (`"10.1.2.3/8"` means `10.0.0.0/8`).
    pub allowed_address_space: Vec<IpNet>,
    /// Kubernetes namespace to list pods in. Default: `"default"`. Constraints: a DNS-1123 label (1..=63 of
    /// `[a-z0-9-]`, not starting or ending with `-`).
    pub k8s_namespace: String,
    /// Kubernetes label selector, e.g. `"app=bifrost"`. Default: none. Required by `run` for `kubernetes` (a
    /// run requirement, not a load error, because the reference's core example omits it).
    pub k8s_label_selector: Option<String>,
    /// Consul agent address: `"host:port"`, `"host"` or an `http(s)://` URL. Default: `"localhost:8500"`.
    pub consul_address: String,
    /// etcd endpoints, each an `http://` or `https://` URL with a host. Default: empty. Required non-empty for
    /// `etcd`. Serialized in normalised form (lowercase scheme and host), without a trailing `/` on an empty path.
    #[serde(serialize_with = "serialize_urls")]
    pub etcd_endpoints: Vec<Url>,
    /// DNS names to resolve; a name starting with `_` is looked up as SRV. Default: empty. Required non-empty
    /// for `dns`.
    pub dns_names: Vec<String>,
    /// UDP port for broadcast beacons. Default: none. Range 1..=65535. Required for `udp`, and must differ from
    /// `gossip.port`.
    pub udp_broadcast_port: Option<u16>,
    /// mDNS service type to advertise and browse, `"_name._tcp"` or `"_name._udp"` (a `.local` suffix is
    /// allowed). Default: `"_bifrost._tcp"`.
    pub mdns_service: String,
    /// *(this crate)* How often discovery runs. Default: `"10s"`. Range 1s..=1h. Watches (Kubernetes, etcd)
    /// trigger an extra run as soon as they see a change.
    pub interval: ConfigDuration,
    /// *(this crate)* Consul ACL token, sent as `X-Consul-Token`. Default: none, then the `CONSUL_HTTP_TOKEN`
    /// environment variable if set. Never printed (shown as `"<redacted>"`, which the loader refuses).
    #[serde(serialize_with = "serialize_redacted")]
    pub consul_token: Option<String>,
    /// *(this crate)* Nameserver for `dns` discovery, `"ip:port"` or `"ip"` (port 53). Default: none, and the
    /// system resolver (`/etc/resolv.conf`) is used.
    pub dns_nameserver: Option<PeerAddr>,
    /// *(this crate)* Kubernetes API server URL, e.g. `"http://127.0.0.1:8001"` behind `kubectl proxy`.
    /// Default: none, and the in-cluster config (service account) is used, else `~/.kube/config`.
    #[serde(serialize_with = "serialize_opt_url")]
    pub k8s_api_url: Option<Url>,
}

impl DiscoveryConfig {
    /// Default `bind_port`.
    pub const DEFAULT_BIND_PORT: u16 = 10101;
    /// Default `dial_timeout`: 10 s.
    pub const DEFAULT_DIAL_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(10_000);
    /// Smallest `dial_timeout`: 1 ms.
    pub const MIN_DIAL_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(1);
    /// Largest `dial_timeout`: 1 h.
    pub const MAX_DIAL_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(3_600_000);
    /// Default `k8s_namespace`.
    pub const DEFAULT_K8S_NAMESPACE: &'static str = "default";
    /// Default `consul_address`.
    pub const DEFAULT_CONSUL_ADDRESS: &'static str = "localhost:8500";
    /// Default `mdns_service`.
    pub const DEFAULT_MDNS_SERVICE: &'static str = "_bifrost._tcp";
    /// Default `interval`: 10 s.
    pub const DEFAULT_INTERVAL: ConfigDuration = ConfigDuration::from_millis(10_000);
    /// Smallest `interval`: 1 s.
    pub const MIN_INTERVAL: ConfigDuration = ConfigDuration::from_millis(1_000);
    /// Largest `interval`: 1 h.
    pub const MAX_INTERVAL: ConfigDuration = ConfigDuration::from_millis(3_600_000);
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            discovery_type: None,
            service_name: None,
            bind_port: Self::DEFAULT_BIND_PORT,
            dial_timeout: Self::DEFAULT_DIAL_TIMEOUT,
            allowed_address_space: Vec::new(),
            k8s_namespace: Self::DEFAULT_K8S_NAMESPACE.to_owned(),
            k8s_label_selector: None,
            consul_address: Self::DEFAULT_CONSUL_ADDRESS.to_owned(),
            etcd_endpoints: Vec::new(),
            dns_names: Vec::new(),
            udp_broadcast_port: None,
            mdns_service: Self::DEFAULT_MDNS_SERVICE.to_owned(),
            interval: Self::DEFAULT_INTERVAL,
            consul_token: None,
            dns_nameserver: None,
            k8s_api_url: None,
        }
    }
}

fn serialize_redacted<S: Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str(ClusterSecret::REDACTED),
        None => serializer.serialize_none(),
    }
}

fn serialize_opt_url<S: Serializer>(value: &Option<Url>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => serializer.serialize_str(url_text(url)),
        None => serializer.serialize_none(),
    }
}

/// Writes each URL as the user would: without the `/` that URL normalisation adds to an empty path.
fn serialize_urls<S: Serializer>(urls: &[Url], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(url_text))
}

/// A URL as the user wrote it: without the `/` that normalisation adds to an empty path.
fn url_text(url: &Url) -> &str {
    let text = url.as_str();
    match text.strip_suffix('/') {
        Some(short) if url.path() == "/" && url.query().is_none() && url.fragment().is_none() => {
            short
        }
        _ => text,
    }
}

/// `cluster_config.gossip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GossipConfig {
    /// The one UDP port every node listens on and dials for all inter-node traffic (QUIC); a TCP listener on the
    /// same number answers health checks. Default: 10101. Range 1..=65535.
    pub port: u16,
    /// Health thresholds.
    pub config: GossipHealthConfig,
    /// *(this crate)* The address other nodes reach this one at, `"ip"` or `"ip:port"` (`"[fd00::1]:10101"`);
    /// an IP address, never a host name. Without a port, `port` is used. Default: none, and the runtime picks
    /// the bind IP when it is specific, else the first private IPv4 address of an interface that is up (like
    /// memberlist), else any non-loopback address, else `127.0.0.1`. Set it when the node sits behind NAT or
    /// a port mapping (`docker run -p 10102:10101`).
    pub advertise_address: Option<PeerAddr>,
}

impl GossipConfig {
    /// Default `port`.
    pub const DEFAULT_PORT: u16 = 10101;
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            port: Self::DEFAULT_PORT,
            config: GossipHealthConfig::default(),
            advertise_address: None,
        }
    }
}

/// `cluster_config.gossip.config`: when a member counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GossipHealthConfig {
    /// Bound on one health check, in whole seconds. Default: 10. Range 1..=3600.
    pub timeout_seconds: u32,
    /// Consecutive successful checks that mark a member healthy. Default: 3. Range 1..=100.
    pub success_threshold: u32,
    /// Consecutive failed checks that mark a member unhealthy. Default: 3. Range 1..=100.
    pub failure_threshold: u32,
}

impl GossipHealthConfig {
    /// Default `timeout_seconds`.
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10;
    /// Largest `timeout_seconds`.
    pub const MAX_TIMEOUT_SECONDS: u32 = 3600;
    /// Default for both thresholds.
    pub const DEFAULT_THRESHOLD: u32 = 3;
    /// Largest value of either threshold.
    pub const MAX_THRESHOLD: u32 = 100;

    /// `timeout_seconds` as a [`std::time::Duration`].
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_seconds))
    }
}

impl Default for GossipHealthConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: Self::DEFAULT_TIMEOUT_SECONDS,
            success_threshold: Self::DEFAULT_THRESHOLD,
            failure_threshold: Self::DEFAULT_THRESHOLD,
        }
    }
}

/// `cluster_config.security`: how nodes trust each other (mutual TLS, always).
///
/// Exactly one trust source is used: a cluster secret (here or in `BIFROST_CLUSTER_SECRET`), or the three files.
/// A secret together with files is an error. With neither, `run` refuses cluster mode unless `insecure_dev` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SecurityConfig {
    /// Shared secret every node derives the cluster CA from. Default: none. Constraints: at least 16 bytes.
    /// Serialized as `"<redacted>"`. May instead come from the `BIFROST_CLUSTER_SECRET` environment variable.
    pub cluster_secret: Option<ClusterSecret>,
    /// PEM file of the CA that signs every node's certificate. Default: none. `ca_file`, `cert_file` and
    /// `key_file` are given all three or not at all; a relative path is relative to the working directory.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate chain. Default: none. See `ca_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of this node's private key. Default: none. See `ca_file`.
    pub key_file: Option<PathBuf>,
    /// Explicit insecure development flag: lets cluster mode start without any trust source (loud warning at
    /// start). Default: `false`. Never use it in production.
    pub insecure_dev: bool,
}

/// A cluster secret. Its `Debug` and `Serialize` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    /// Shortest accepted secret, in bytes.
    pub const MIN_BYTES: usize = 16;
    /// What `Debug` and `Serialize` print instead of the secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Accepts a secret of at least [`Self::MIN_BYTES`] bytes; the error is the rule in words (it never contains
    /// the secret).
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < Self::MIN_BYTES {
            return Err(format!(
                "must be at least {} bytes, got {}",
                Self::MIN_BYTES,
                secret.len()
            ));
        }
        Ok(Self(secret.to_owned()))
    }

    /// Least estimated strength `run` accepts, in bits (see [`ClusterSecret::estimated_bits`]).
    pub const MIN_BITS: u32 = 128;

    /// A conservative estimate of the secret's entropy, in bits: the Shannon entropy of its own characters
    /// times the number of characters that do not merely repeat or step their predecessor (`aaaa`, `1234`,
    /// `abcd` count once). Over 200 samples each, `openssl rand -base64 32` scored 181-224 bits and
    /// `openssl rand -hex 32` 164-238; `password12345678` scores 31, `aaaaaaaaaaaaaaaa` 0.
    ///
    /// The estimate can only under-credit random secrets (a string of n characters from an alphabet of k
    /// never scores above n·log2(min(n, k))), and over-credits words written out by hand (it cannot see dictionary
    /// words: `correct-horse-battery-staple` scores 80 and is refused, but a 37-character phrase scores 130
    /// and passes): [`Self::MIN_BITS`] only makes such phrases long and varied. No key stretching is applied: with at least 128 bits of
    /// real entropy an offline guess from a captured handshake is hopeless at any rate, and stretching would
    /// only slow down the guessing of secrets this check already refuses.
    pub fn estimated_bits(&self) -> u32 {
        estimated_bits(&self.0)
    }

    /// The rule a weak secret breaks, in words (never containing the secret), or `None` when it is strong
    /// enough for `run`.
    pub fn weakness(&self) -> Option<String> {
        let bits = self.estimated_bits();
        (bits < Self::MIN_BITS).then(|| {
            format!(
                "too weak: estimated {bits} bits of entropy, run needs at least {}; generate one with \
                 `openssl rand -base64 32`",
                Self::MIN_BITS
            )
        })
    }

    /// The secret itself, for key derivation. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// See [`ClusterSecret::estimated_bits`].
fn estimated_bits(secret: &str) -> u32 {
    let chars: Vec<char> = secret.chars().collect();
    if chars.is_empty() {
        return 0;
    }
    let mut counts: std::collections::HashMap<char, u32> = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0) += 1;
    }
    let n = chars.len() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = f64::from(k) / n;
            -p * p.log2()
        })
        .sum();
    let novel = 1 + chars
        .windows(2)
        .filter(|w| (i64::from(u32::from(w[1])) - i64::from(u32::from(w[0]))).abs() > 1)
        .count();
    // At most a few thousand bits for any secret that fits in a config file: the cast cannot truncate.
    (per_char * novel as f64).floor().min(f64::from(u32::MAX)) as u32
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({})", Self::REDACTED)
    }
}

impl Serialize for ClusterSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

/// The trust source `run` will use, resolved from the config and `BIFROST_CLUSTER_SECRET`
/// (see [`ClusterConfig::trust`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Every node derives the same CA from this secret.
    Secret(ClusterSecret),
    /// CA, certificate and key files.
    Files {
        /// CA certificate (PEM).
        ca_file: PathBuf,
        /// This node's certificate chain (PEM).
        cert_file: PathBuf,
        /// This node's private key (PEM).
        key_file: PathBuf,
    },
    /// No trust at all: `security.insecure_dev` is set.
    InsecureDev,
}

/// `cluster_config.replication`: how local changes are shipped to peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationConfig {
    /// How often dirty counters are collected into delta batches. Default: `"5ms"`. Range 1ms..=1s.
    pub flush_interval: ConfigDuration,
    /// Largest delta batch, in bytes (one QUIC datagram). Default: 1200. Range 512..=65527.
    pub max_batch_bytes: usize,
    /// How often a node exchanges state digests with a peer to repair lost deltas. Default: `"10s"`.
    /// Range 100ms..=1h.
    pub anti_entropy_interval: ConfigDuration,
    /// Members (this node included) from which the cluster replicates in groups (two-level aggregation, see
    /// docs/replication.md); smaller clusters keep the full mesh. Default: 16. Range 4..=1000000 (a value above
    /// the cluster's size keeps the full mesh).
    pub full_mesh_below: usize,
    /// Members of each group that publish the group's totals to the other groups. Default: 2. Range 1..=8.
    pub publishers_per_group: usize,
    /// Fixed and sliding windows decide against a *predicted* remote count: the last-known count of each peer
    /// plus its recent rate × the age of that count (at most 30 ms), instead of the last-known count alone.
    /// Cuts the overshoot of the replication lag; may refuse a little before the limit when a peer's traffic
    /// drops. Default: `false`.
    pub predict_remote: bool,
}

impl ReplicationConfig {
    /// Default `flush_interval`: 5 ms.
    pub const DEFAULT_FLUSH_INTERVAL: ConfigDuration = ConfigDuration::from_millis(
        crate::replication::ReplicatorOptions::DEFAULT_FLUSH_INTERVAL_MS,
    );
    /// Smallest `flush_interval`: 1 ms.
    pub const MIN_FLUSH_INTERVAL: ConfigDuration = ConfigDuration::from_millis(1);
    /// Largest `flush_interval`: 1 s.
    pub const MAX_FLUSH_INTERVAL: ConfigDuration = ConfigDuration::from_millis(1_000);
    /// Default `max_batch_bytes`.
    pub const DEFAULT_MAX_BATCH_BYTES: usize =
        crate::replication::ReplicatorOptions::DEFAULT_MAX_BATCH_BYTES;
    /// Smallest `max_batch_bytes`.
    pub const MIN_MAX_BATCH_BYTES: usize = 512;
    /// Largest `max_batch_bytes` (the largest UDP payload over IPv4).
    pub const MAX_MAX_BATCH_BYTES: usize = 65527;
    /// Default `anti_entropy_interval`: 10 s.
    pub const DEFAULT_ANTI_ENTROPY_INTERVAL: ConfigDuration = ConfigDuration::from_millis(
        crate::replication::ReplicatorOptions::DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
    );
    /// Smallest `anti_entropy_interval`: 100 ms.
    pub const MIN_ANTI_ENTROPY_INTERVAL: ConfigDuration = ConfigDuration::from_millis(100);
    /// Largest `anti_entropy_interval`: 1 h.
    pub const MAX_ANTI_ENTROPY_INTERVAL: ConfigDuration = ConfigDuration::from_millis(3_600_000);
    /// Default `full_mesh_below`.
    pub const DEFAULT_FULL_MESH_BELOW: usize =
        crate::replication::TopologyOptions::DEFAULT_FULL_MESH_BELOW;
    /// Smallest `full_mesh_below`.
    pub const MIN_FULL_MESH_BELOW: usize = 4;
    /// Largest `full_mesh_below`.
    pub const MAX_FULL_MESH_BELOW: usize = 1_000_000;
    /// Default `publishers_per_group`.
    pub const DEFAULT_PUBLISHERS_PER_GROUP: usize =
        crate::replication::TopologyOptions::DEFAULT_PUBLISHERS_PER_GROUP;
    /// Largest `publishers_per_group`.
    pub const MAX_PUBLISHERS_PER_GROUP: usize =
        crate::replication::TopologyOptions::MAX_PUBLISHERS_PER_GROUP;
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
            anti_entropy_interval: Self::DEFAULT_ANTI_ENTROPY_INTERVAL,
            full_mesh_below: Self::DEFAULT_FULL_MESH_BELOW,
            publishers_per_group: Self::DEFAULT_PUBLISHERS_PER_GROUP,
            predict_remote: false,
        }
    }
}

/// `cluster_config.http`.
///
/// Who may call what is decided by `auth` (bearer tokens with scopes); without any token the node serves
/// writes only to loopback clients, and `run` refuses a non-loopback `listen` unless
/// `allow_unauthenticated_reads` accepts it (see the README's "HTTP security").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpConfig {
    /// Socket address of the HTTP listener, `"ip:port"` (`"[::]:8080"` for IPv6). Default: `"0.0.0.0:8080"`.
    /// Port 0 asks the OS for a free port (tests, demos). In cluster mode the port must differ from
    /// `gossip.port` (the gossip port also has a TCP listener).
    pub listen: SocketAddr,
    // ---- HTTP security (issue 14): authentication, limits, TLS.
    /// Bearer tokens and what they may do. Default: no token (then see `allow_unauthenticated_reads`).
    pub auth: HttpAuthConfig,
    /// Accepts a non-loopback `listen` without any token: reads are served to anyone who reaches the port,
    /// writes (checks, adds, resets, config writes) only to loopback clients (`403` to others), and `run`
    /// logs a loud warning. Default: `false`, and `run` refuses a non-loopback `listen` without tokens
    /// (`check-config` warns). Has no effect once a token is configured.
    pub allow_unauthenticated_reads: bool,
    /// Longest time a client may take to send a request's headers, from the moment the node waits for them
    /// (also between keep-alive requests) and including the TLS handshake. Default: `"10s"`. Range 100ms..=5m.
    pub header_read_timeout: ConfigDuration,
    /// A connection that moves no byte in either direction for this long is closed (a stalled body, a client
    /// that stopped reading). Default: `"60s"`. Range 1s..=1h.
    pub idle_timeout: ConfigDuration,
    /// Most connections served at once; past it a new connection gets a `503` JSON answer and is closed,
    /// counted in `bifrost_http_connections_refused_total` and logged once until the count recovers.
    /// Default: 512 (below the usual 1,024 file-descriptor limit). Range 1..=1000000.
    pub max_connections: usize,
    /// Largest `n` (add) and `cost` (check) one request may carry; a larger value is a `400` naming the
    /// field. Default: 1000000000 (10^9, far below saturation at 2^64-1). Range 1..=2^64-1.
    pub max_request_n: u64,
    /// TLS on the HTTP listener. Default: none (plain HTTP).
    pub tls: Option<HttpTlsConfig>,
}

impl HttpConfig {
    /// Default `listen`: `0.0.0.0:8080`.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);
    /// Default `header_read_timeout`: 10 s.
    pub const DEFAULT_HEADER_READ_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(10_000);
    /// Smallest `header_read_timeout`: 100 ms.
    pub const MIN_HEADER_READ_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(100);
    /// Largest `header_read_timeout`: 5 min.
    pub const MAX_HEADER_READ_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(300_000);
    /// Default `idle_timeout`: 60 s.
    pub const DEFAULT_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(60_000);
    /// Smallest `idle_timeout`: 1 s.
    pub const MIN_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(1_000);
    /// Largest `idle_timeout`: 1 h.
    pub const MAX_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(3_600_000);
    /// Default `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    /// Largest `max_connections`.
    pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
    /// Default `max_request_n`: 10^9.
    pub const DEFAULT_MAX_REQUEST_N: u64 = 1_000_000_000;

    /// Whether any token is configured here (tokens from `BIFROST_HTTP_TOKENS` come on top).
    pub fn has_config_tokens(&self) -> bool {
        !self.auth.tokens.is_empty()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN,
            auth: HttpAuthConfig::default(),
            allow_unauthenticated_reads: false,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_request_n: Self::DEFAULT_MAX_REQUEST_N,
            tls: None,
        }
    }
}

/// `cluster_config.http.auth`: bearer tokens, each with a name and scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HttpAuthConfig {
    /// The tokens. Default: empty. Names are unique. More tokens may come from `BIFROST_HTTP_TOKENS`.
    pub tokens: Vec<HttpTokenConfig>,
    /// Serve `/metrics` without a token even when tokens are configured. Default: `false`: a scrape then needs
    /// a token with the `read` scope (Prometheus: `authorization: { credentials_file: ... }`), because the
    /// metrics name peers, keys counts and addresses. `/health` and `/ready` are always open.
    pub public_metrics: bool,
}

/// What a token may do. A token has exactly the scopes it lists (`admin` does not imply `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpScope {
    /// `GET` routes: `/cluster/status`, `/cluster/nodes`, `/v1/counters/...`, `/v1/traffic/...`,
    /// `/v1/config...`, and `/metrics` unless `public_metrics`.
    Read,
    /// `POST /v1/ratelimit/check` and `POST /v1/counters/{key}/add`.
    Check,
    /// `PUT`/`DELETE /v1/config/...`, `POST /v1/counters/{key}/reset`, and every other write.
    Admin,
}

impl HttpScope {
    /// Every scope.
    pub const ALL: [HttpScope; 3] = [HttpScope::Read, HttpScope::Check, HttpScope::Admin];

    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpScope::Read => "read",
            HttpScope::Check => "check",
            HttpScope::Admin => "admin",
        }
    }

    /// The scope spelled `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for HttpScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `http.auth.tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpTokenConfig {
    /// A name for logs and metrics (never the token). Constraints: 1..=128 characters of `[A-Za-z0-9._-]`,
    /// unique.
    pub name: String,
    /// Where the token comes from: exactly one of `token`, `token_env`, `token_file`.
    #[serde(flatten)]
    pub source: HttpTokenSource,
    /// What it may do: a non-empty array of `"read"`, `"check"`, `"admin"`.
    pub scopes: Vec<HttpScope>,
}

/// Where a token comes from. The config itself stays free of I/O: the HTTP server reads the variable or the
/// file when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HttpTokenSource {
    /// `token`: the token inline (at least 32 bytes). Serialized as `"<redacted>"`.
    #[serde(rename = "token")]
    Inline(HttpToken),
    /// `token_env`: the name of an environment variable holding the token.
    #[serde(rename = "token_env")]
    Env(String),
    /// `token_file`: a file holding the token (surrounding whitespace trimmed), e.g. a Kubernetes Secret
    /// mounted as a file.
    #[serde(rename = "token_file")]
    File(PathBuf),
}

/// A bearer token. Its `Debug` and `Serialize` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpToken(String);

impl HttpToken {
    /// Shortest accepted token, in bytes (`openssl rand -base64 32` gives 44).
    pub const MIN_BYTES: usize = 32;
    /// Longest accepted token, in bytes.
    pub const MAX_BYTES: usize = 4096;

    /// Accepts a token of [`Self::MIN_BYTES`]..=[`Self::MAX_BYTES`] bytes of visible ASCII (what an
    /// `Authorization` header can carry); the error is the rule in words and never contains the token.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.len() < Self::MIN_BYTES || token.len() > Self::MAX_BYTES {
            return Err(format!(
                "a token must be {}..={} bytes, got {} (make one with `openssl rand -base64 32`)",
                Self::MIN_BYTES,
                Self::MAX_BYTES,
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token may only contain visible ASCII characters (no spaces)".to_owned());
        }
        Ok(Self(token.to_owned()))
    }

    /// The token itself, for hashing. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpToken({})", ClusterSecret::REDACTED)
    }
}

impl Serialize for HttpToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(ClusterSecret::REDACTED)
    }
}

/// `cluster_config.http.tls`: serve HTTPS with this certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpTlsConfig {
    /// PEM file of the certificate chain (leaf first). Required.
    pub cert_file: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_file: PathBuf,
}

/// `cluster_config.limits`: memory bounds of the counter store and of the cluster-wide config map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsConfig {
    /// Most counter keys one node holds; past it a new key is refused (existing keys keep working).
    /// Default: 100000. Range 1..=100000000.
    pub max_keys: usize,
    /// Longest counter key, in bytes (UTF-8). Default: 256. Range 1..=4096.
    pub max_key_length: usize,
    // --- replication bounds (counter plane) ---
    /// Most counter keys one node holds that only other nodes' values created (keys it has not used itself);
    /// past it, values of new keys from peers are refused (counted, logged once) and local keys are unaffected:
    /// `max_keys` budgets local keys alone. Default: `null`, meaning equal to `max_keys`. Range 1..=100000000.
    pub max_remote_keys: Option<usize>,
    /// Most relayed origins (replica ids other than the sending peer's) one counter key holds per window;
    /// values of further origins are refused (counted, logged once). Values a peer sends for its own replica
    /// id are never refused by this cap. Default: 4096 (a 1,000-node cluster with three restarts of every node
    /// within one window). Range 1..=1000000.
    pub max_origins_per_key: usize,
    /// Most distinct origins other than its own one peer may relay (anti-entropy state transfer) while it is
    /// linked; origins that no longer hold values stop counting at the next anti-entropy round. Further relays
    /// from that peer are refused (counted per peer, logged once per peer). Default: 4096. Range 0..=1000000.
    pub max_relayed_origins_per_peer: usize,
    // --- Config map bounds (cluster-wide config entries, `state::config_map`). ---
    /// Most live config entries (keys with a value; tombstones not included); past it a new key is answered
    /// 507 locally and a replicated one waits for room (anti-entropy offers it again). Default: 10000.
    /// Range 1..=1000000.
    pub config_max_entries: usize,
    /// Most bytes of live config keys and values (sum of key and value lengths), same behaviour at the cap.
    /// Default: 16777216 (16 MiB). Range 131072..=1073741824 (at least one largest entry must fit).
    pub config_max_bytes: usize,
    /// Most tombstones (deletes) kept, outside the two bounds above; past it the oldest is collected before its
    /// 24 h TTL, so deleting never fills the map. Default: 10000. Range 1..=1000000.
    pub config_max_tombstones: usize,
}

impl LimitsConfig {
    /// Default `max_keys`.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;
    /// Largest `max_keys`.
    pub const MAX_MAX_KEYS: usize = 100_000_000;
    /// Default `max_key_length`.
    pub const DEFAULT_MAX_KEY_LENGTH: usize = 256;
    /// Largest `max_key_length`.
    pub const MAX_MAX_KEY_LENGTH: usize = 4096;
    /// Default `max_origins_per_key`.
    pub const DEFAULT_MAX_ORIGINS_PER_KEY: usize = crate::counter::DEFAULT_MAX_ORIGINS_PER_KEY;
    /// Default `max_relayed_origins_per_peer`.
    pub const DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER: usize =
        crate::replication::DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER;
    /// Largest `max_origins_per_key` and `max_relayed_origins_per_peer`.
    pub const MAX_ORIGIN_CAP: usize = 1_000_000;

    /// `max_remote_keys`, or `max_keys` when it is not set.
    pub fn remote_keys(&self) -> usize {
        self.max_remote_keys.unwrap_or(self.max_keys)
    }
    // --- Config map bounds. ---
    /// Default `config_max_entries`.
    pub const DEFAULT_CONFIG_MAX_ENTRIES: usize =
        crate::state::ConfigMapOptions::DEFAULT_MAX_ENTRIES;
    /// Largest `config_max_entries` (and `config_max_tombstones`).
    pub const MAX_CONFIG_MAX_ENTRIES: usize = 1_000_000;
    /// Default `config_max_bytes`.
    pub const DEFAULT_CONFIG_MAX_BYTES: usize = crate::state::ConfigMapOptions::DEFAULT_MAX_BYTES;
    /// Smallest `config_max_bytes`: one largest key and value fit.
    pub const MIN_CONFIG_MAX_BYTES: usize = 128 * 1024;
    /// Largest `config_max_bytes`: 1 GiB.
    pub const MAX_CONFIG_MAX_BYTES: usize = 1 << 30;
    /// Default `config_max_tombstones`.
    pub const DEFAULT_CONFIG_MAX_TOMBSTONES: usize =
        crate::state::ConfigMapOptions::DEFAULT_MAX_TOMBSTONES;
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_keys: Self::DEFAULT_MAX_KEYS,
            max_key_length: Self::DEFAULT_MAX_KEY_LENGTH,
            max_remote_keys: None,
            max_origins_per_key: Self::DEFAULT_MAX_ORIGINS_PER_KEY,
            max_relayed_origins_per_peer: Self::DEFAULT_MAX_RELAYED_ORIGINS_PER_PEER,
            config_max_entries: Self::DEFAULT_CONFIG_MAX_ENTRIES,
            config_max_bytes: Self::DEFAULT_CONFIG_MAX_BYTES,
            config_max_tombstones: Self::DEFAULT_CONFIG_MAX_TOMBSTONES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        let ok = |s: &str| match PeerAddr::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?}: {e}"),
        };
        assert_eq!(ok("10.0.0.1:10101").port, Some(10101));
        assert_eq!(ok("10.0.0.1").port, None);
        assert_eq!(
            ok("node-1.bifrost.local:7000").to_string(),
            "node-1.bifrost.local:7000"
        );
        assert_eq!(ok("[fd00::1]:10101").to_string(), "[fd00::1]:10101");
        assert_eq!(ok("[fd00::1]").to_string(), "fd00::1");
        assert_eq!(
            ok("fd00::1").host,
            PeerHost::Ip("fd00::1".parse().unwrap_or(IpAddr::from([0; 4])))
        );
        assert_eq!(ok("localhost").port_or(10101), 10101);
        for bad in [
            "",
            ":10101",
            "host:",
            "host:0",
            "host:65536",
            "host:-1",
            "host:abc",
            "10.0.0.256",
            "fd00::1:99999x",
            "[fd00::1",
            "[fd00::1]x",
            "[nothost]:1",
            "bad host",
            "-node",
            "a..b",
            "fd00::1:abc:",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn node_ids() {
        assert!(NodeId::new("bifrost-0.bifrost_cluster").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new(&"a".repeat(129)).is_err());
        assert!(NodeId::new(&"a".repeat(128)).is_ok());
        assert!(NodeId::new("node 1").is_err());
        assert!(NodeId::new("nöde").is_err());
    }

    #[test]
    fn secret_is_never_shown() {
        let secret =
            ClusterSecret::new("0123456789abcdef-very-secret").unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{secret:?}").contains("very-secret"));
        assert_eq!(
            serde_json::to_string(&secret).ok().as_deref(),
            Some("\"<redacted>\"")
        );
        assert!(ClusterSecret::new("short").is_err());
    }

    #[test]
    fn weak_secrets_are_named() {
        let bits = |s: &str| estimated_bits(s);
        assert_eq!(bits("aaaaaaaaaaaaaaaa"), 0);
        assert!(
            bits("password12345678") < 64,
            "{}",
            bits("password12345678")
        );
        assert!(bits("0123456789abcdef0123456789abcdef") < 32);
        // Real outputs of `openssl rand -base64 32` and `openssl rand -hex 32`.
        for random in [
            "ibsreYG5avEFjZFiA0MM996ShNjkzdP5ku1De2oGdy0=",
            "c11a5a4cf2aefec0e29a8090af7557ba48b45e79b27eced7511ca2d66ac08b21",
        ] {
            assert!(bits(random) > 160, "{random}: {}", bits(random));
        }
        let weak = ClusterSecret::new("password12345678").unwrap_or_else(|e| panic!("{e}"));
        let rule = weak.weakness().unwrap_or_default();
        assert!(rule.contains("openssl rand -base64 32"), "{rule}");
        assert!(!rule.contains("password"), "{rule}");
        let strong = ClusterSecret::new("7bYq3Jx0s9F2mWc8TnLr5Ue1HkZpVd6Ga4Qo+Rj/iEw=")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(strong.weakness(), None);
    }
}
