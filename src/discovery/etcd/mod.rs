//! etcd discovery (cargo feature `etcd`): each node registers its gossip address under
//! `/services/{service_name}/{node_id}`, attached to a lease it keeps alive, and finds the others with a prefix
//! get of `/services/{service_name}/` plus a watch.
//!
//! Guarantees:
//! - [`EtcdDiscovery::new`] contacts nothing: a node starts while etcd is down and registers when it comes
//!   back (the discovery loop retries [`Discovery::register`] every round).
//! - Every etcd call — connecting included — is bounded by `discovery.dial_timeout`: the calls made for the
//!   discovery loop (register, discover, deregister) give up at 4/5 of it, so the loop logs the backend's own
//!   error, naming the endpoints, rather than a bare timeout. A failure is a [`DiscoveryError`] naming the
//!   endpoints and the cause (`Unreachable` for a connection problem or no answer in time — with the result of
//!   a plain TCP connect when that tells more, e.g. "Connection refused" —, `Forbidden` for an auth refusal
//!   naming the permission, `BadAnswer` otherwise).
//! - The key lives exactly as long as this node keeps its lease: the lease (TTL [`EtcdOptions::lease_ttl`],
//!   30 s by default) is renewed every TTL/3 by a background task. If renewing fails (etcd unreachable, the
//!   lease expired), the failure is logged ("etcd client error") and the next round, TTL/3 later, grants a new
//!   lease and puts the key again, until it succeeds. A node that dies without leaving therefore disappears
//!   from etcd one TTL after its last renewal; [`Discovery::deregister`] (graceful leave) stops the renewals
//!   and revokes the lease, so the key disappears at once.
//! - [`Discovery::discover`] returns every value under the prefix that parses as `ip:port`; a value that does
//!   not is skipped and logged with its key (once per key and value; counted in `bad_values`). After the first successful get, a watch from the next revision
//!   runs in the background (reconnecting with backoff after errors, resuming from the last revision seen)
//!   and wakes the discovery loop through [`Discovery::changed`] on every put and delete under the prefix.
//! - Dropping the backend (the node's handle dropped without `shutdown`) stops its background tasks and
//!   revokes nothing: the key then expires with the lease, like a crashed process.
//! - `https://` endpoints are spoken to over TLS (rustls with the ring provider; HTTP/2 negotiated by ALPN).
//!   The server's certificate must chain to the CA certificates in [`EtcdOptions::ca_file`] when it is set,
//!   otherwise to the system's trust store (the OS certificate store, e.g. `/etc/ssl/certs` on Debian, as
//!   loaded by `rustls-native-certs` at each connection), and must name the endpoint's host (DNS name or IP
//!   address SAN). With [`EtcdOptions::client_cert_file`] and [`EtcdOptions::client_key_file`] the node
//!   presents a client certificate (mutual TLS, etcd's `--client-cert-auth`). The files are read and checked
//!   when the backend is built (a [`DiscoveryError::Setup`] naming the file otherwise); a rotated file takes
//!   effect when the node restarts. All endpoints must use the same scheme: a list mixing `http://` and
//!   `https://` is a [`DiscoveryError::Setup`] naming `cluster_config.discovery.etcd_endpoints`, and so are
//!   TLS files given with `http://` endpoints.
//! - A TLS failure (untrusted certificate, wrong name, a server that does not speak TLS, a refused or
//!   missing client certificate) is an `Unreachable` error naming the endpoints, saying "TLS handshake
//!   failed", the cause, the trust used and what to check. When the etcd client's error lost the cause
//!   (HTTP/2 may keep only "connection closed" when etcd refuses the client certificate), or nothing
//!   answered, the backend makes one TLS handshake of its own per endpoint, bounded like the TCP diagnosis
//!   (1 s or 1/6 of `dial_timeout`): it presents the same client certificate, does not check etcd's
//!   certificate (the etcd client does, and says so), sends no application data, and reports etcd's alert.
//!
//! Layout: this file holds the backend, its options and the bounded call every request goes through; the
//! registration (lease grant, put, keep-alive, revoke) is in `lease.rs`, the background watch in `watch.rs`,
//! the TLS settings in `tls.rs`, and the mapping of etcd's errors to [`DiscoveryError`]s with the TCP and TLS
//! diagnosis in `diagnosis.rs`.

mod diagnosis;
mod lease;
mod tls;
mod watch;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BoxFuture, Discovery, DiscoveryError, LocalNode};
use crate::config::DiscoveryConfig;
use crate::sync::LockClean;
use tls::{TLS_FAILED, Tls};

const BACKEND: &str = "etcd";

/// Knobs of the etcd backend that are not part of `cluster_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Time to live of the lease the node's key is attached to: how long the key outlives a node that died
    /// without leaving. Renewed every `lease_ttl / 3`. Default: 30 s (the reference's). Constraints: at least
    /// 1 s; rounded up to whole seconds (etcd counts in seconds and may raise a very short TTL to its own
    /// minimum, about 2 s with default server settings).
    pub lease_ttl: Duration,
    /// PEM file with the CA certificate(s) that the certificates of `https://` endpoints must chain to,
    /// replacing the system's trust store. Default: `None` (the system's trust store). Constraints: only with
    /// `https://` endpoints; at least one certificate; read once, when the backend is built.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate (chain, leaf first) presented to `https://` endpoints, for
    /// etcd's `--client-cert-auth`. Default: `None` (no client certificate). Constraints: given together with
    /// [`EtcdOptions::client_key_file`]; only with `https://` endpoints; read once, when the backend is
    /// built.
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the private key of [`EtcdOptions::client_cert_file`] (PKCS#8, PKCS#1 or SEC1).
    /// Default: `None`. Constraints: given together with `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl EtcdOptions {
    /// Default `lease_ttl`: 30 s.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
    /// Smallest `lease_ttl`: 1 s.
    pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
}

impl Default for EtcdOptions {
    fn default() -> EtcdOptions {
        EtcdOptions {
            lease_ttl: EtcdOptions::DEFAULT_LEASE_TTL,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// The etcd discovery backend. See the module docs for what it guarantees.
pub struct EtcdDiscovery {
    inner: Arc<Inner>,
    tasks: Mutex<Tasks>,
}

impl std::fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("endpoints", &self.inner.endpoints)
            .field("key", &self.inner.key)
            .field("value", &self.inner.value)
            .field("lease_ttl_s", &self.inner.lease_ttl_s)
            .field("tls", &self.inner.tls.as_ref().map(|t| &t.summary))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Tasks {
    keep_alive: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
}

impl Tasks {
    fn abort_all(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        if let Some(task) = self.watch.take() {
            task.abort();
        }
    }
}

struct Inner {
    /// The endpoints as configured (normalised, no trailing `/`).
    endpoints: Vec<String>,
    /// `endpoints` joined, for errors and logs.
    target: String,
    prefix: String,
    key: String,
    value: String,
    dial_timeout: Duration,
    lease_ttl_s: i64,
    /// TLS settings, for `https://` endpoints (`None`: plain `http://`).
    tls: Option<Tls>,
    /// The connected client (connecting is lazy; dropped after a connection error so the next call redials).
    client: Mutex<Option<Client>>,
    /// The lease the key is attached to now (updated by the keep-alive task when it re-grants).
    lease: Mutex<Option<i64>>,
    changed: Arc<Notify>,
    lease_regrants: AtomicU64,
    keep_alive_failures: AtomicU64,
    /// Distinct bad values seen (counted in `bad_values`).
    bad_values: AtomicU64,
    /// The (key, value) pairs already logged as bad, so each is warned about once.
    bad_seen: Mutex<HashSet<(Vec<u8>, Vec<u8>)>>,
    watch_events: AtomicU64,
    watch_restarts: AtomicU64,
}

impl EtcdDiscovery {
    /// The backend for `config` (`etcd_endpoints`, `service_name`, `dial_timeout`) with the default
    /// [`EtcdOptions`]. Contacts nothing.
    pub async fn new(
        config: &DiscoveryConfig,
        local: &LocalNode,
    ) -> Result<EtcdDiscovery, DiscoveryError> {
        EtcdDiscovery::with_options(config, local, EtcdOptions::default()).await
    }

    /// [`EtcdDiscovery::new`] with explicit [`EtcdOptions`] (e.g. a short lease TTL in tests). Contacts
    /// nothing.
    pub async fn with_options(
        config: &DiscoveryConfig,
        local: &LocalNode,
        options: EtcdOptions,
    ) -> Result<EtcdDiscovery, DiscoveryError> {
        let Some(service) = config.service_name.as_deref().filter(|s| !s.is_empty()) else {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: "cluster_config.discovery.service_name: required for etcd".into(),
            });
        };
        if config.etcd_endpoints.is_empty() {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: "cluster_config.discovery.etcd_endpoints: required non-empty for etcd"
                    .into(),
            });
        }
        let mut endpoints = Vec::with_capacity(config.etcd_endpoints.len());
        let mut schemes = Vec::new();
        for url in &config.etcd_endpoints {
            let text = url.as_str().strip_suffix('/').unwrap_or(url.as_str());
            match url.scheme() {
                scheme @ ("http" | "https") => {
                    endpoints.push(text.to_owned());
                    if !schemes.contains(&scheme) {
                        schemes.push(scheme);
                    }
                }
                other => {
                    return Err(DiscoveryError::Setup {
                        backend: BACKEND,
                        reason: format!(
                            "cluster_config.discovery.etcd_endpoints: {text}: scheme {other:?} is neither http \
                             nor https"
                        ),
                    });
                }
            }
        }
        let tls_files = options.ca_file.is_some()
            || options.client_cert_file.is_some()
            || options.client_key_file.is_some();
        let tls = match schemes.as_slice() {
            ["https"] => Some(Tls::load(&options)?),
            ["http"] if tls_files => {
                return Err(DiscoveryError::Setup {
                    backend: BACKEND,
                    reason: "cluster_config.discovery.etcd_endpoints: TLS files (EtcdOptions::ca_file, \
                             client_cert_file, client_key_file) are given but the endpoints are http://; \
                             use https:// endpoints"
                        .into(),
                });
            }
            ["http"] => None,
            _ => {
                return Err(DiscoveryError::Setup {
                    backend: BACKEND,
                    reason: format!(
                        "cluster_config.discovery.etcd_endpoints: mixes http:// and https:// endpoints ({}); \
                         all must use the same scheme",
                        endpoints.join(", ")
                    ),
                });
            }
        };
        if options.lease_ttl < EtcdOptions::MIN_LEASE_TTL {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!(
                    "lease TTL {:?} is below the minimum {:?}",
                    options.lease_ttl,
                    EtcdOptions::MIN_LEASE_TTL
                ),
            });
        }
        let lease_ttl_s =
            i64::try_from(options.lease_ttl.as_millis().div_ceil(1000)).map_err(|_| {
                DiscoveryError::Setup {
                    backend: BACKEND,
                    reason: format!("lease TTL {:?} is too large", options.lease_ttl),
                }
            })?;
        let prefix = format!("/services/{service}/");
        let key = format!("{prefix}{}", local.node_id);
        Ok(EtcdDiscovery {
            inner: Arc::new(Inner {
                target: endpoints.join(", "),
                endpoints,
                prefix,
                key,
                value: local.gossip_addr.to_string(),
                dial_timeout: Duration::from_millis(config.dial_timeout.as_millis().max(1)),
                lease_ttl_s,
                tls,
                client: Mutex::new(None),
                lease: Mutex::new(None),
                changed: Arc::new(Notify::new()),
                lease_regrants: AtomicU64::new(0),
                keep_alive_failures: AtomicU64::new(0),
                bad_values: AtomicU64::new(0),
                bad_seen: Mutex::new(HashSet::new()),
                watch_events: AtomicU64::new(0),
                watch_restarts: AtomicU64::new(0),
            }),
            tasks: Mutex::new(Tasks::default()),
        })
    }

    /// The key this node registers: `/services/{service_name}/{node_id}`.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The lease TTL in whole seconds, as sent to etcd.
    pub fn lease_ttl_secs(&self) -> i64 {
        self.inner.lease_ttl_s
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // Poison policy (crate::sync): the handles are still valid after a panic elsewhere.
        self.tasks.lock_clean()
    }

    async fn do_discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let inner = &self.inner;
        let deadline = inner.loop_deadline();
        let mut client = inner.client(deadline).await?;
        let response = inner
            .call(
                "get",
                deadline,
                client.get(inner.prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut found = Vec::with_capacity(response.kvs().len());
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            match std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.trim().parse::<SocketAddr>().ok())
            {
                Some(addr) => found.push(addr),
                None => {
                    let first_time = inner
                        .bad_seen
                        .lock_clean()
                        .insert((kv.key().to_vec(), kv.value().to_vec()));
                    let value = String::from_utf8_lossy(kv.value());
                    if first_time {
                        inner.bad_values.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            endpoints = %inner.target,
                            %key,
                            %value,
                            "etcd: ignoring a registration whose value is not an ip:port"
                        );
                    } else {
                        tracing::debug!(%key, %value, "etcd: still ignoring a value that is not an ip:port");
                    }
                }
            }
        }
        self.ensure_watch(response.header().map_or(0, |h| h.revision() + 1));
        Ok(found)
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        // Like a crash: the renewals stop and the key expires with the lease.
        self.tasks.lock_clean().abort_all();
    }
}

impl Inner {
    /// The cached client, or a new one (connecting is lazy: the first call dials, bounded by `call`).
    async fn client(&self, deadline: Instant) -> Result<Client, DiscoveryError> {
        if let Some(client) = self.client.lock_clean().clone() {
            return Ok(client);
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            // Detects a dead connection under a long-lived watch (etcd accepts pings every 5 s or slower).
            .with_keep_alive(Duration::from_secs(10), self.dial_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            // The etcd client picks the process-default rustls provider when one is installed (and ring
            // otherwise); make it ring, as in the rest of the process. An error only means one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            options = options.with_tls(tls.client.clone());
        }
        let client = self
            .call(
                "connect",
                deadline,
                Client::connect(&self.endpoints, Some(options)),
            )
            .await?;
        *self.client.lock_clean() = Some(client.clone());
        Ok(client)
    }

    /// The deadline of a call made for the discovery loop (register, discover, deregister): 4/5 of
    /// `dial_timeout`, so that with the diagnosis (at most 1/6 of it) the backend's own error, naming the
    /// endpoints, is reported before the loop's bound ends the call.
    fn loop_deadline(&self) -> Instant {
        Instant::now() + self.dial_timeout * 4 / 5
    }

    /// The deadline of a call made by a background task (keep-alive, watch): `dial_timeout`.
    fn task_deadline(&self) -> Instant {
        Instant::now() + self.dial_timeout
    }

    /// Runs one etcd call bounded by `deadline`, mapping its error; a connection problem drops the cached
    /// client so the next call redials.
    async fn call<T>(
        &self,
        what: &str,
        deadline: Instant,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DiscoveryError> {
        let result = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => match (self.map_error(what, &error), &self.tls) {
                (DiscoveryError::Unreachable { reason, .. }, Some(tls))
                    if !reason.contains(TLS_FAILED) =>
                {
                    DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: format!("{reason}{}", self.probe_all(tls).await),
                    }
                }
                (mapped, _) => mapped,
            },
            Err(_) => DiscoveryError::Unreachable {
                backend: BACKEND,
                target: self.target.clone(),
                reason: format!(
                    "{what}: no answer in time (discovery.dial_timeout {:?}){}",
                    self.dial_timeout,
                    self.diagnose().await
                ),
            },
        };
        if matches!(result, DiscoveryError::Unreachable { .. }) {
            *self.client.lock_clean() = None;
        }
        Err(result)
    }
}

impl Discovery for EtcdDiscovery {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.do_discover())
    }

    fn register(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(self.do_register())
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(self.do_deregister())
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.inner.changed))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let inner = &self.inner;
        vec![
            (
                "lease_regrants",
                inner.lease_regrants.load(Ordering::Relaxed),
            ),
            (
                "keep_alive_failures",
                inner.keep_alive_failures.load(Ordering::Relaxed),
            ),
            ("bad_values", inner.bad_values.load(Ordering::Relaxed)),
            ("watch_events", inner.watch_events.load(Ordering::Relaxed)),
            (
                "watch_restarts",
                inner.watch_restarts.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalNode {
        LocalNode {
            node_id: "node-a".into(),
            gossip_addr: "127.0.0.1:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: None,
        }
    }

    fn config(endpoints: &[&str]) -> DiscoveryConfig {
        DiscoveryConfig {
            enabled: true,
            service_name: Some("bifrost".into()),
            etcd_endpoints: endpoints
                .iter()
                .map(|e| url::Url::parse(e).expect("url"))
                .collect(),
            ..DiscoveryConfig::default()
        }
    }

    #[tokio::test]
    async fn key_and_value_follow_the_reference_layout() {
        let d = EtcdDiscovery::new(&config(&["http://127.0.0.1:2379"]), &local())
            .await
            .expect("built");
        assert_eq!(d.key(), "/services/bifrost/node-a");
        assert_eq!(d.inner.value, "127.0.0.1:10101");
        assert_eq!(d.inner.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(d.lease_ttl_secs(), 30);
        assert!(d.inner.tls.is_none());
    }

    #[tokio::test]
    async fn https_endpoints_use_tls_with_the_system_trust_store_by_default() {
        let d = EtcdDiscovery::new(
            &config(&["https://127.0.0.1:2379/", "https://[::1]:2379"]),
            &local(),
        )
        .await
        .expect("https endpoints are accepted, and nothing is contacted");
        assert_eq!(
            d.inner.endpoints,
            ["https://127.0.0.1:2379", "https://[::1]:2379"]
        );
        let tls = d.inner.tls.as_ref().expect("TLS");
        assert!(!tls.custom_ca && !tls.client_cert);
        assert_eq!(tls.summary, "trusting the system trust store");
    }

    #[tokio::test]
    async fn setup_errors_name_the_field() {
        let mut no_service = config(&["http://127.0.0.1:2379"]);
        no_service.service_name = None;
        let e = EtcdDiscovery::new(&no_service, &local())
            .await
            .expect_err("no service");
        assert!(e.to_string().contains("service_name"), "{e}");
        let e = EtcdDiscovery::new(&config(&[]), &local())
            .await
            .expect_err("no endpoints");
        assert!(e.to_string().contains("etcd_endpoints"), "{e}");
        let e = EtcdDiscovery::new(
            &config(&["https://127.0.0.1:2379", "http://127.0.0.1:2380"]),
            &local(),
        )
        .await
        .expect_err("mixed schemes");
        assert!(
            e.to_string()
                .contains("cluster_config.discovery.etcd_endpoints: mixes http:// and https://"),
            "{e}"
        );
        let e = EtcdDiscovery::new(&config(&["unix:///run/etcd.sock"]), &local())
            .await
            .expect_err("unix");
        assert!(e.to_string().contains("unix:///run/etcd.sock"), "{e}");
        let e = EtcdDiscovery::with_options(
            &config(&["http://127.0.0.1:2379"]),
            &local(),
            EtcdOptions {
                lease_ttl: Duration::from_millis(500),
                ..EtcdOptions::default()
            },
        )
        .await
        .expect_err("ttl");
        assert!(e.to_string().contains("lease TTL"), "{e}");
    }

    #[tokio::test]
    async fn a_sub_second_remainder_rounds_the_ttl_up() {
        let d = EtcdDiscovery::with_options(
            &config(&["http://127.0.0.1:2379"]),
            &local(),
            EtcdOptions {
                lease_ttl: Duration::from_millis(2_100),
                ..EtcdOptions::default()
            },
        )
        .await
        .expect("built");
        assert_eq!(d.lease_ttl_secs(), 3);
        assert_eq!(d.inner.renew_every(), Duration::from_secs(1));
    }
}
