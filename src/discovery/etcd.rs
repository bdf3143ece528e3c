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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{BoxFuture, Discovery, DiscoveryError, LocalNode, error_chain};
use crate::config::DiscoveryConfig;
use crate::sync::LockClean;

const BACKEND: &str = "etcd";

/// Longest pause between two watch reconnection attempts.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(10);
/// First pause after a watch error (doubled on each further error, reset once a watch is created).
const MIN_WATCH_BACKOFF: Duration = Duration::from_millis(250);

// gRPC status codes (grpc/doc/statuscodes.md), compared as numbers: the `tonic` crate is not a direct
// dependency.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

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

/// TLS settings for `https://` endpoints, checked when the backend is built.
struct Tls {
    /// What the etcd client is given.
    client: TlsOptions,
    /// Whether `EtcdOptions::ca_file` replaces the system's trust store.
    custom_ca: bool,
    /// Whether a client certificate is presented (mutual TLS).
    client_cert: bool,
    /// For [`tls_probe`]: the same client certificate, any server certificate.
    probe: Arc<rustls::ClientConfig>,
    /// For logs: where the trust comes from, and whether a client certificate is presented.
    summary: String,
}

impl Tls {
    /// Reads and checks the files of `options`.
    fn load(options: &EtcdOptions) -> Result<Tls, DiscoveryError> {
        let mut client = TlsOptions::new();
        let mut summary = String::new();
        match &options.ca_file {
            Some(path) => {
                let pem = read_file(path, "ca_file")?;
                pem_certificates(&pem, path, "ca_file")?;
                client = client.ca_certificate(Certificate::from_pem(pem));
                summary.push_str(&format!("trusting the CA file {}", path.display()));
            }
            None => {
                client = client.with_native_roots();
                summary.push_str("trusting the system trust store");
            }
        }
        let probe = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!("TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))));
        let (client_cert, mut probe) = match (&options.client_cert_file, &options.client_key_file) {
            (None, None) => (false, probe.with_no_client_auth()),
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read_file(cert_path, "client_cert_file")?;
                let chain = pem_certificates(&cert_pem, cert_path, "client_cert_file")?;
                let key_pem = read_file(key_path, "client_key_file")?;
                let key =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| DiscoveryError::Setup {
                        backend: BACKEND,
                        reason: format!(
                            "EtcdOptions::client_key_file {}: no usable PEM private key: {e}",
                            key_path.display()
                        ),
                    })?;
                client = client.identity(Identity::from_pem(cert_pem, key_pem));
                summary.push_str(&format!(
                    ", presenting the client certificate {}",
                    cert_path.display()
                ));
                let probe = probe.with_client_auth_cert(chain, key).map_err(|e| {
                    DiscoveryError::Setup {
                        backend: BACKEND,
                        reason: format!(
                            "EtcdOptions::client_cert_file {} and client_key_file {} do not make a usable \
                             client certificate: {e}",
                            cert_path.display(),
                            key_path.display()
                        ),
                    }
                })?;
                (true, probe)
            }
            _ => {
                return Err(DiscoveryError::Setup {
                    backend: BACKEND,
                    reason:
                        "EtcdOptions::client_cert_file and client_key_file must be given together"
                            .into(),
                });
            }
        };
        probe.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            custom_ca: options.ca_file.is_some(),
            client,
            client_cert,
            probe: Arc::new(probe),
            summary,
        })
    }

    /// `TLS handshake failed: {cause} ({summary}){hint}`.
    fn failure(&self, cause: &str, hint: &str) -> String {
        format!("{TLS_FAILED}: {cause} ({}){hint}", self.summary)
    }
}

/// Starts the text of every TLS failure.
const TLS_FAILED: &str = "TLS handshake failed";

/// The server certificate verifier of [`tls_probe`]: accepts any chain (the etcd client checks etcd's
/// certificate, and its errors say so) but checks the handshake signatures with ring.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What etcd at `endpoint` (an `https://` URL) says to a TLS handshake of our own presenting the same
/// client certificate: the TLS failure and what to check (e.g. the alert refusing the client certificate,
/// or the connection closed during the handshake), or `None` when etcd accepts it (its first HTTP/2 frames
/// arrive), closes after the handshake without an alert, cannot be reached, or `deadline` passes first.
/// Sends no application data. Used when the etcd client's error lost the TLS cause (HTTP/2
/// keeps only a "connection closed" when etcd's alert races the client's first request).
async fn tls_probe(tls: &Tls, endpoint: &str, deadline: Instant) -> Option<(String, &'static str)> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default()?;
    let addr = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .ok()?
        .ok()?
        .next()?;
    let name = ServerName::try_from(host).ok()?;
    let config = Arc::clone(&tls.probe);
    let deadline = deadline.into_std();
    match tokio::task::spawn_blocking(move || blocking_tls_probe(config, name, addr, deadline))
        .await
        .ok()??
    {
        Ok(cause) => {
            let hint = rustls_hint(&cause, tls);
            Some((cause.to_string(), hint))
        }
        Err(ClosedInHandshake) => Some((CLOSED_IN_HANDSHAKE.into(), NOT_TLS_HINT)),
    }
}

/// The peer closed (or reset) the connection before the TLS handshake completed.
struct ClosedInHandshake;

fn blocking_tls_probe(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    addr: SocketAddr,
    deadline: std::time::Instant,
) -> Option<Result<rustls::Error, ClosedInHandshake>> {
    use std::io::Read;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut socket = std::net::TcpStream::connect_timeout(&addr, left()?).ok()?;
    let mut connection = rustls::ClientConnection::new(config, name).ok()?;
    loop {
        let timeout = left()?;
        socket.set_read_timeout(Some(timeout)).ok()?;
        socket.set_write_timeout(Some(timeout)).ok()?;
        if let Err(error) = connection.complete_io(&mut socket) {
            // A TLS error comes wrapped in an io::Error; the connection closed (or reset) in the handshake
            // tells too; anything else (a timeout) tells nothing.
            if let Some(cause) = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(Ok(cause.clone()));
            }
            let closed = matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            );
            if closed && connection.is_handshaking() {
                return Some(Err(ClosedInHandshake));
            }
            return None;
        }
        if connection.is_handshaking() {
            continue;
        }
        let mut byte = [0_u8; 1];
        match connection.reader().read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Data: etcd accepted us. Ok(0) or another error: closed without an alert.
            _ => return None,
        }
    }
}

fn read_file(path: &Path, option: &str) -> Result<Vec<u8>, DiscoveryError> {
    std::fs::read(path).map_err(|e| DiscoveryError::Setup {
        backend: BACKEND,
        reason: format!("EtcdOptions::{option} {}: cannot read: {e}", path.display()),
    })
}

/// The certificates of a PEM file: at least one, every `CERTIFICATE` block well-formed.
fn pem_certificates(
    pem: &[u8],
    path: &Path,
    option: &str,
) -> Result<Vec<CertificateDer<'static>>, DiscoveryError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!(
                "EtcdOptions::{option} {}: bad PEM certificate: {e}",
                path.display()
            ),
        })?;
    if certs.is_empty() {
        return Err(DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!(
                "EtcdOptions::{option} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                path.display()
            ),
        });
    }
    Ok(certs)
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

    async fn do_register(&self) -> Result<(), DiscoveryError> {
        if self
            .tasks()
            .keep_alive
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return Ok(());
        }
        let lease = match self.inner.grant_and_put(self.inner.loop_deadline()).await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(
                    endpoints = %self.inner.target,
                    key = %self.inner.key,
                    %error,
                    "failed to register with etcd"
                );
                return Err(error);
            }
        };
        tracing::info!(
            endpoints = %self.inner.target,
            key = %self.inner.key,
            value = %self.inner.value,
            lease = format_args!("{lease:x}"),
            ttl_s = self.inner.lease_ttl_s,
            tls = self.inner.tls.as_ref().map_or("none (http)", |t| t.summary.as_str()),
            "registered with etcd"
        );
        let task = tokio::spawn(Arc::clone(&self.inner).keep_alive_loop(lease));
        if let Some(old) = self.tasks().keep_alive.replace(task) {
            old.abort();
        }
        Ok(())
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
        let next_revision = response.header().map_or(0, |h| h.revision() + 1);
        let mut tasks = self.tasks();
        if tasks.watch.as_ref().is_none_or(JoinHandle::is_finished) {
            tasks.watch = Some(tokio::spawn(
                Arc::clone(&self.inner).watch_loop(next_revision),
            ));
        }
        Ok(found)
    }

    async fn do_deregister(&self) -> Result<(), DiscoveryError> {
        let keep_alive = self.tasks().keep_alive.take();
        if let Some(task) = keep_alive {
            task.abort();
            // Wait for it to stop so it cannot re-grant after the revoke.
            let _ = task.await;
        }
        if let Some(task) = self.tasks().watch.take() {
            task.abort();
        }
        let inner = &self.inner;
        let lease = inner.lease.lock_clean().take();
        let deadline = inner.loop_deadline();
        let mut client = inner.client(deadline).await?;
        if let Some(lease) = lease {
            inner
                .call("lease revoke", deadline, client.lease_revoke(lease))
                .await?;
        }
        // A registration cut short (the keep-alive task stopped between a grant and recording it) may have
        // left the key on a lease we do not know: delete it too, but only while it still holds our address, so
        // a replacement process with the same node id is never removed.
        let txn = Txn::new()
            .when([Compare::value(
                inner.key.as_str(),
                CompareOp::Equal,
                inner.value.as_str(),
            )])
            .and_then([TxnOp::delete(inner.key.as_str(), None)]);
        inner.call("delete", deadline, client.txn(txn)).await?;
        tracing::info!(endpoints = %inner.target, key = %inner.key, "deregistered from etcd (lease revoked)");
        Ok(())
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

    /// How long a diagnosis may take: 1 s or 1/6 of `dial_timeout`, whichever is shorter.
    fn diagnosis_deadline(&self) -> Instant {
        Instant::now() + (self.dial_timeout / 6).min(Duration::from_secs(1))
    }

    /// ` (endpoint: TLS handshake failed: ...; ...)` for the endpoints whose [`tls_probe`] finds a TLS
    /// error, bounded by [`Inner::diagnosis_deadline`]; empty when none does.
    async fn probe_all(&self, tls: &Tls) -> String {
        let deadline = self.diagnosis_deadline();
        let mut causes = Vec::new();
        for endpoint in &self.endpoints {
            if let Some((cause, hint)) = tls_probe(tls, endpoint, deadline).await {
                causes.push(format!("{endpoint}: {}", tls.failure(&cause, hint)));
            }
        }
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join("; "))
        }
    }

    /// Why nothing answered, when a plain TCP connect tells (e.g. "connection refused") or, for `https://`
    /// endpoints that accept TCP, a [`tls_probe`]: each endpoint is tried once, all together bounded by
    /// [`Inner::diagnosis_deadline`].
    async fn diagnose(&self) -> String {
        let deadline = self.diagnosis_deadline();
        let mut causes = Vec::new();
        for endpoint in &self.endpoints {
            let Ok(url) = url::Url::parse(endpoint) else {
                continue;
            };
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                continue;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((host, port)))
                .await
            {
                Ok(Ok(_)) => {
                    if let Some(tls) = &self.tls
                        && let Some((cause, hint)) = tls_probe(tls, endpoint, deadline).await
                    {
                        causes.push(format!("{endpoint}: {}", tls.failure(&cause, hint)));
                    }
                }
                Ok(Err(e)) => causes.push(format!("{endpoint}: {e}")),
                Err(_) => causes.push(format!("{endpoint}: TCP connect timed out")),
            }
        }
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join("; "))
        }
    }

    fn map_error(&self, what: &str, error: &etcd_client::Error) -> DiscoveryError {
        use etcd_client::Error as E;
        if let Some(tls) = &self.tls
            && let Some((cause, hint)) = tls_failure(error, tls)
        {
            return DiscoveryError::Unreachable {
                backend: BACKEND,
                target: self.target.clone(),
                reason: format!("{what}: {}", tls.failure(&cause, hint)),
            };
        }
        match error {
            E::GRpcStatus(status) => match i32::from(status.code()) {
                GRPC_PERMISSION_DENIED | GRPC_UNAUTHENTICATED => DiscoveryError::Forbidden {
                    backend: BACKEND,
                    reason: format!(
                        "etcd at {} refused {what}: {}; the etcd user needs readwrite permission on the \
                         key prefix {} (etcdctl role grant-permission --prefix=true <role> readwrite {})",
                        self.target,
                        status.message(),
                        self.prefix,
                        self.prefix
                    ),
                },
                GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED | GRPC_UNKNOWN | GRPC_CANCELLED => {
                    DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: format!("{what}: {}", describe(error)),
                    }
                }
                _ => DiscoveryError::BadAnswer {
                    backend: BACKEND,
                    reason: format!("{what} at {}: {}", self.target, describe(error)),
                },
            },
            E::TransportError(_) | E::IoError(_) | E::InvalidUri(_) | E::EndpointError(_) => {
                DiscoveryError::Unreachable {
                    backend: BACKEND,
                    target: self.target.clone(),
                    reason: format!("{what}: {}", describe(error)),
                }
            }
            _ => DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!("{what} at {}: {}", self.target, describe(error)),
            },
        }
    }

    /// Grants a lease and puts the key on it; records the lease. A lease whose put failed is revoked (best
    /// effort; it would expire anyway).
    async fn grant_and_put(&self, deadline: Instant) -> Result<i64, DiscoveryError> {
        let mut client = self.client(deadline).await?;
        let lease = self
            .call(
                "lease grant",
                deadline,
                client.lease_grant(self.lease_ttl_s, None),
            )
            .await?;
        if !lease.error().is_empty() {
            return Err(DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!("lease grant at {}: {}", self.target, lease.error()),
            });
        }
        let id = lease.id();
        let put = self
            .call(
                "put",
                deadline,
                client.put(
                    self.key.as_str(),
                    self.value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                ),
            )
            .await;
        if let Err(error) = put {
            let _ = self
                .call(
                    "lease revoke",
                    self.task_deadline(),
                    client.lease_revoke(id),
                )
                .await;
            return Err(error);
        }
        *self.lease.lock_clean() = Some(id);
        Ok(id)
    }

    fn renew_every(&self) -> Duration {
        // lease_ttl_s >= 1, so this is at least 333 ms.
        Duration::from_millis(u64::try_from(self.lease_ttl_s).unwrap_or(1) * 1000 / 3)
    }

    /// Renews `lease` every TTL/3; after a failure, grants a new lease and puts the key again every TTL/3
    /// until that succeeds, then renews the new lease. Runs until aborted.
    async fn keep_alive_loop(self: Arc<Inner>, mut lease: i64) {
        loop {
            let error = self.renew(lease).await;
            self.keep_alive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoints = %self.target,
                key = %self.key,
                lease = format_args!("{lease:x}"),
                %error,
                "etcd client error: lease keep-alive failed; granting a new lease and putting the key again"
            );
            loop {
                tokio::time::sleep(self.renew_every()).await;
                match self.grant_and_put(self.task_deadline()).await {
                    Ok(new) => {
                        lease = new;
                        self.lease_regrants.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            endpoints = %self.target,
                            key = %self.key,
                            lease = format_args!("{lease:x}"),
                            "registered with etcd again (new lease)"
                        );
                        break;
                    }
                    Err(error) => tracing::warn!(
                        endpoints = %self.target,
                        key = %self.key,
                        %error,
                        "failed to register with etcd; retrying"
                    ),
                }
            }
        }
    }

    /// Keeps `lease` alive until something fails; returns why.
    async fn renew(&self, lease: i64) -> DiscoveryError {
        let mut client = match self.client(self.task_deadline()).await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let (mut keeper, mut responses) = match self
            .call(
                "lease keep-alive",
                self.task_deadline(),
                client.lease_keep_alive(lease),
            )
            .await
        {
            Ok(pair) => pair,
            Err(error) => return error,
        };
        loop {
            tokio::time::sleep(self.renew_every()).await;
            let deadline = self.task_deadline();
            if let Err(error) = self
                .call("lease keep-alive", deadline, keeper.keep_alive())
                .await
            {
                return error;
            }
            match self
                .call("lease keep-alive", deadline, responses.message())
                .await
            {
                Ok(Some(answer)) if answer.ttl() > 0 => {}
                Ok(Some(_)) => {
                    return DiscoveryError::BadAnswer {
                        backend: BACKEND,
                        reason: format!(
                            "lease {lease:x} at {} expired or was revoked",
                            self.target
                        ),
                    };
                }
                Ok(None) => {
                    return DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: "lease keep-alive: the stream was closed".into(),
                    };
                }
                Err(error) => return error,
            }
        }
    }

    /// Watches the prefix from `revision` (0: from now), notifying `changed` on every event; reconnects after
    /// errors with backoff, resuming after the last revision seen. Runs until aborted.
    async fn watch_loop(self: Arc<Inner>, mut revision: i64) {
        let mut backoff = MIN_WATCH_BACKOFF;
        loop {
            let error = self.watch_once(&mut revision, &mut backoff).await;
            self.watch_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoints = %self.target,
                prefix = %self.prefix,
                %error,
                retry_in = ?backoff,
                "etcd client error: watch failed; reconnecting"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
        }
    }

    async fn watch_once(&self, revision: &mut i64, backoff: &mut Duration) -> DiscoveryError {
        let deadline = self.task_deadline();
        let mut client = match self.client(deadline).await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let mut options = WatchOptions::new().with_prefix();
        if *revision > 0 {
            options = options.with_start_revision(*revision);
        }
        let mut stream = match self
            .call(
                "watch",
                deadline,
                client.watch(self.prefix.as_str(), Some(options)),
            )
            .await
        {
            Ok(stream) => stream,
            Err(error) => return error,
        };
        loop {
            // No bound here: a watch waits for events; a dead connection is detected by the HTTP/2 pings.
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: "watch: the stream was closed".into(),
                    };
                }
                Err(error) => return self.map_error("watch", &error),
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    // Events were compacted away: start again from now, and run a round since we may have
                    // missed changes.
                    *revision = 0;
                    self.changed.notify_one();
                }
                return DiscoveryError::BadAnswer {
                    backend: BACKEND,
                    reason: format!(
                        "watch of {} at {} canceled: {} (compact revision {})",
                        self.prefix,
                        self.target,
                        message.cancel_reason(),
                        message.compact_revision()
                    ),
                };
            }
            if message.created() {
                *backoff = MIN_WATCH_BACKOFF;
            }
            let events = message.events();
            if events.is_empty() {
                continue;
            }
            for event in events {
                if let Some(kv) = event.kv() {
                    *revision = (*revision).max(kv.mod_revision() + 1);
                }
            }
            if let Some(header) = message.header() {
                *revision = (*revision).max(header.revision() + 1);
            }
            self.watch_events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            tracing::debug!(
                prefix = %self.prefix,
                events = events.len(),
                "etcd watch: registrations changed"
            );
            self.changed.notify_one();
        }
    }
}

/// The rustls error somewhere in `error`'s sources (tokio-rustls reports it inside an `io::Error`).
fn rustls_cause(error: &etcd_client::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    if let etcd_client::Error::GRpcStatus(status) = error {
        // The status is a field, not a source, of the etcd error.
        next = Some(status);
    }
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = current.source();
    }
    None
}

/// The TLS failure in `error`, if it is one: its cause and what to check (a `; ...` suffix, or empty).
fn tls_failure(error: &etcd_client::Error, tls: &Tls) -> Option<(String, &'static str)> {
    if let Some(cause) = rustls_cause(error) {
        return Some((cause.to_string(), rustls_hint(cause, tls)));
    }
    // An alert sent by etcd after the handshake (refusing the client certificate, in TLS 1.3) reaches the
    // client through HTTP/2, which keeps only the text of the rustls error: "received fatal alert: <Name>".
    let text = describe(error);
    if text.contains(HANDSHAKE_EOF) {
        return Some((CLOSED_IN_HANDSHAKE.into(), NOT_TLS_HINT));
    }
    if text.contains(NO_NATIVE_CERTS) {
        return Some((
            "the system trust store has no certificate".into(),
            "; install the system's CA certificates (Debian: ca-certificates) or set EtcdOptions::ca_file",
        ));
    }
    let start = text.find(ALERT_TEXT)?;
    let name: String = text[start + ALERT_TEXT.len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let hint = alert_hint(&name, tls);
    Some((format!("{ALERT_TEXT}{name}"), hint))
}

/// What to check after the TLS error `cause` (a `; ...` suffix, or empty).
fn rustls_hint(cause: &rustls::Error, tls: &Tls) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match cause {
        E::InvalidCertificate(C::UnknownIssuer) if !tls.custom_ca => {
            "; etcd's certificate is not issued by a CA of the system trust store: set \
                 EtcdOptions::ca_file to the CA that issued it"
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "; etcd's certificate is not issued by the CA(s) of EtcdOptions::ca_file"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "; etcd's certificate does not name the endpoint's host (DNS name or IP address SAN)"
        }
        E::AlertReceived(alert) => alert_hint(&format!("{alert:?}"), tls),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => NOT_TLS_HINT,
        _ => "",
    }
}

/// How rustls writes a TLS alert received from the peer.
const ALERT_TEXT: &str = "received fatal alert: ";
/// How the etcd client (tokio-rustls) says that the server closed the connection during the handshake.
const HANDSHAKE_EOF: &str = "tls handshake eof";
/// What we say then.
const CLOSED_IN_HANDSHAKE: &str = "the endpoint closed the connection during the handshake";
/// The hint for an endpoint that may not speak TLS.
const NOT_TLS_HINT: &str =
    "; does the endpoint speak TLS? (an etcd serving plain http needs an http:// endpoint)";
/// How the etcd client (tonic) says that the system trust store is empty.
const NO_NATIVE_CERTS: &str = "no native certs found";

/// What to check after etcd sent the TLS alert `name` (rustls' `AlertDescription` name).
fn alert_hint(name: &str, tls: &Tls) -> &'static str {
    match name {
        "CertificateRequired" | "BadCertificate" if !tls.client_cert => {
            "; etcd requires a client certificate (--client-cert-auth): set EtcdOptions::client_cert_file and \
             client_key_file"
        }
        "CertificateRequired"
        | "BadCertificate"
        | "UnknownCA"
        | "CertificateUnknown"
        | "UnsupportedCertificate"
        | "CertificateExpired"
        | "CertificateRevoked" => {
            "; etcd refused the client certificate: it must be issued by etcd's --trusted-ca-file CA, be \
             valid now and allow client authentication"
        }
        _ => "",
    }
}

/// An error with its sources, `a: b: c`.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{} ({})", status.message(), status.code().description());
            if let Some(source) = std::error::Error::source(status) {
                let chain = error_chain(source);
                if !text.contains(&chain) {
                    text.push_str(": ");
                    text.push_str(&chain);
                }
            }
            text
        }
        other => error_chain(other),
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
