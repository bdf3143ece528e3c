//! The Envoy rate-limit service: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` and
//! `grpc.health.v1.Health` on their own port (`cluster_config.grpc`), over tonic with the generated types of
//! `envoy-types`.
//!
//! # Guarantees
//!
//! - **Global limits.** Every decision goes through the node's counter store, the path of
//!   `POST /v1/ratelimit/check` (one handle per descriptor, `acquire`): hits counted on any node of the
//!   cluster count against one global limit, within the replication lag. An over-limit descriptor counts
//!   nothing (shadow mode included: its count shows what enforcement would have let through).
//! - **envoyproxy/ratelimit's answers.** Rules come from limits files in its descriptor format
//!   ([`crate::policy`]); an unknown domain or a descriptor without a rule is `OK`; `unlimited` is `OK` with
//!   `limit_remaining` 2^32-1; `replaces` drops the replaced rules; `shadow_mode` turns an over-limit status
//!   into `OK` (and counts it in `shadow_mode`); `quota_mode` descriptors make the answer `OVER_LIMIT` only when
//!   all of them are over. `hits_addend` of a descriptor overrides the request's; 0 means 1. A descriptor's
//!   `limit` override from Envoy is honoured (fixed window, its unit).
//! - **Bounded.** Descriptors per request (`grpc.max_descriptors`), entries per descriptor
//!   (`grpc.max_entries`) and `hits_addend` (`http.max_request_n`) are `INVALID_ARGUMENT` naming the field; a
//!   message over `grpc.max_message_bytes` is `OUT_OF_RANGE`; HTTP/2 streams per connection are capped
//!   (`grpc.max_concurrent_streams`); a full counter store is `RESOURCE_EXHAUSTED`. Nothing is counted for a
//!   refused request. Per-rule metric series are bounded by the rules of the policy.
//! - **Authenticated.** With HTTP tokens configured, `ShouldRateLimit` needs `authorization: Bearer <token>`
//!   metadata with a token of the `check` scope (`UNAUTHENTICATED` / `PERMISSION_DENIED` otherwise); without
//!   any token the listener must be on loopback (`run` refuses otherwise). The health service stays open, as
//!   the HTTP probes do.
//! - **Hot reload.** The limits file is polled every `grpc.reload_interval`; a changed file that loads is
//!   swapped in atomically (requests in flight finish on the old policy); a bad one is refused, every problem
//!   logged, and the old policy kept. Counts survive a reload (counter keys depend on the descriptor, not the
//!   rule's position).
//!
//! Fail-open or fail-closed when this service is down or answers an error is the client's choice: Envoy's
//! `failure_mode_deny` (default `false`: allow).

mod reload;
mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{GrpcConfig, HttpScope};
use crate::http::TokenSet;
use crate::node::ClusterHandle;
use crate::policy::Policy;

pub use reload::{LimitsSource, read_limits};

/// Counters of one rule (envoyproxy/ratelimit's per-rule stats).
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Hits (sum of `hits_addend`) of requests that matched the rule.
    pub total_hits: AtomicU64,
    /// Hits of refused decisions (shadow-mode ones included).
    pub over_limit: AtomicU64,
    /// Hits allowed past 80 % of the limit.
    pub near_limit: AtomicU64,
    /// Hits allowed.
    pub within_limit: AtomicU64,
    /// Hits over the limit that shadow mode answered OK.
    pub shadow_mode: AtomicU64,
}

/// A policy with one [`RuleStats`] per rule (shared with the previous policy for rules of the same stat key,
/// so counters survive reloads).
#[derive(Debug, Default)]
pub struct LoadedPolicy {
    /// The rules.
    pub policy: Policy,
    /// `stats[rule.id]`.
    pub stats: Vec<Arc<RuleStats>>,
}

impl LoadedPolicy {
    /// `policy` with stats, reusing those of `previous` by stat key.
    pub fn new(policy: Policy, previous: Option<&LoadedPolicy>) -> LoadedPolicy {
        let old: HashMap<&str, &Arc<RuleStats>> = previous
            .map(|p| {
                p.policy
                    .rules()
                    .iter()
                    .map(|r| (r.stat_key.as_str(), &p.stats[r.id]))
                    .collect()
            })
            .unwrap_or_default();
        let stats = policy
            .rules()
            .iter()
            .map(|r| {
                old.get(r.stat_key.as_str())
                    .map_or_else(Default::default, |s| Arc::clone(s))
            })
            .collect();
        LoadedPolicy { policy, stats }
    }
}

/// The service's counters (in `/metrics`).
#[derive(Debug, Default)]
pub struct RlsStats {
    /// `ShouldRateLimit` calls that passed the bounds.
    pub requests: AtomicU64,
    /// Answered OK.
    pub ok: AtomicU64,
    /// Answered OVER_LIMIT.
    pub over_limit: AtomicU64,
    /// Of the OK answers: the domain was unknown.
    pub unknown_domain: AtomicU64,
    /// Refused with a status (bounds, bad fields, full store).
    pub invalid: AtomicU64,
    /// Refused by authentication.
    pub unauthenticated: AtomicU64,
    /// Refused by authorization (a token without the `check` scope).
    pub permission_denied: AtomicU64,
    /// Limits files loaded (the first load included).
    pub reloads: AtomicU64,
    /// Limits files refused.
    pub reload_errors: AtomicU64,
    /// Descriptors with Envoy's `limit` override.
    pub overrides: RuleStats,
}

/// The policy and statistics a running server shares with `/metrics`.
#[derive(Debug, Clone)]
pub struct RlsHandle {
    /// The current policy.
    pub policy: Arc<ArcSwap<LoadedPolicy>>,
    /// The counters.
    pub stats: Arc<RlsStats>,
}

/// Everything the gRPC server needs, resolved from `cluster_config.grpc` and the HTTP tokens.
#[derive(Clone)]
pub struct GrpcOptions {
    /// The config section.
    pub config: GrpcConfig,
    /// The tokens (`http.auth.tokens`, `BIFROST_HTTP_TOKENS`); those with the `check` scope may call.
    pub tokens: TokenSet,
    /// `http.max_request_n`: the largest `hits_addend`.
    pub max_hits: u64,
    /// TLS (cert chain PEM, key PEM), read and checked.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for GrpcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcOptions")
            .field("config", &self.config)
            .field("tokens", &self.tokens)
            .field("max_hits", &self.max_hits)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the gRPC server did not start. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// A run requirement (non-loopback without tokens).
    #[error("{0}")]
    Requirement(crate::config::FieldError),
    /// A TLS file is missing or bad.
    #[error("{field}: {}: {reason}", path.display())]
    Tls {
        /// The config field.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The limits file could not be read or does not load.
    #[error("cluster_config.grpc.limits_file: {0}")]
    Limits(String),
    /// The listener could not bind.
    #[error("cluster_config.grpc.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
}

impl GrpcOptions {
    /// Resolves `grpc` with the HTTP listener's tokens and request ceiling; reads and checks the TLS files.
    pub fn from_config(
        config: &GrpcConfig,
        tokens: TokenSet,
        max_hits: u64,
    ) -> Result<GrpcOptions, GrpcError> {
        if let Some(requirement) = config.auth_requirement(!tokens.is_empty()) {
            return Err(GrpcError::Requirement(requirement));
        }
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                const CERT: &str = "cluster_config.grpc.tls.cert_file";
                const KEY: &str = "cluster_config.grpc.tls.key_file";
                let from_pem = |e: crate::tls::pem::PemError| GrpcError::Tls {
                    field: e.field,
                    path: e.path.clone(),
                    reason: e.problem.to_string(),
                };
                crate::tls::pem::load_certificates(CERT, &tls.cert_file).map_err(from_pem)?;
                crate::tls::pem::load_private_key(KEY, &tls.key_file).map_err(from_pem)?;
                let read = |field: &'static str, path: &PathBuf| {
                    std::fs::read(path).map_err(|e| GrpcError::Tls {
                        field,
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                };
                Some((read(CERT, &tls.cert_file)?, read(KEY, &tls.key_file)?))
            }
        };
        Ok(GrpcOptions {
            config: config.clone(),
            tokens,
            max_hits,
            tls,
        })
    }
}

/// The `check`-scope gate in front of `ShouldRateLimit`.
#[derive(Clone)]
struct Auth {
    tokens: Arc<TokenSet>,
    stats: Arc<RlsStats>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if self.tokens.is_empty() {
            // No token: the listener is on loopback (checked at start).
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .and_then(|v| {
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
            });
        let Some(token) = presented else {
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed); // Relaxed: statistics.
            return Err(tonic::Status::unauthenticated(
                "missing bearer token (metadata authorization: Bearer <token>)",
            ));
        };
        match self.tokens.find(token) {
            None => {
                self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed); // Relaxed: statistics.
                Err(tonic::Status::unauthenticated("unknown bearer token"))
            }
            Some(p) if !p.scopes.contains(&HttpScope::Check) => {
                self.stats.permission_denied.fetch_add(1, Ordering::Relaxed); // Relaxed: statistics.
                Err(tonic::Status::permission_denied(format!(
                    "token {:?} lacks the check scope",
                    p.name
                )))
            }
            Some(_) => Ok(request),
        }
    }
}

/// A running gRPC server. Call [`GrpcServer::shutdown`] to stop it.
#[derive(Debug)]
pub struct GrpcServer {
    local_addr: SocketAddr,
    handle: RlsHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    reload: JoinHandle<()>,
}

impl GrpcServer {
    /// Loads the limits file (refusing to start when it does not load), binds `grpc.listen` and serves on the
    /// current tokio runtime; a task polls the limits file for changes.
    pub async fn start(node: ClusterHandle, options: GrpcOptions) -> Result<GrpcServer, GrpcError> {
        let config = options.config.clone();
        let stats = Arc::new(RlsStats::default());
        let mut source = config.limits_file.clone().map(LimitsSource::new);
        let initial = match &mut source {
            None => LoadedPolicy::default(),
            Some(source) => {
                let (files, _) = read_limits(source.path()).map_err(GrpcError::Limits)?;
                source.loaded(files.clone());
                let policy = Policy::load(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
                    .map_err(|e| GrpcError::Limits(e.to_string()))?;
                stats.reloads.fetch_add(1, Ordering::Relaxed); // Relaxed: statistics.
                LoadedPolicy::new(policy, None)
            }
        };
        let rules = initial.policy.rules().len();
        let domains = initial.policy.domains().len();
        let policy = Arc::new(ArcSwap::from_pointee(initial));
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GrpcError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| GrpcError::Bind { addr, source })?;
        let rls = service::Rls {
            node,
            policy: Arc::clone(&policy),
            stats: Arc::clone(&stats),
            bounds: service::Bounds {
                max_descriptors: config.max_descriptors,
                max_entries: config.max_entries,
                max_hits: options.max_hits,
            },
            response_headers: config.response_headers,
        };
        let auth = Auth {
            tokens: Arc::new(options.tokens.clone()),
            stats: Arc::clone(&stats),
        };
        let rls =
            RateLimitServiceServer::new(rls).max_decoding_message_size(config.max_message_bytes);
        let rls = tonic::service::interceptor::InterceptedService::new(rls, auth);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<RateLimitServiceServer<service::Rls>>()
            .await;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some((cert, key)) = &options.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| GrpcError::Tls {
                    field: "cluster_config.grpc.tls.cert_file",
                    path: config
                        .tls
                        .as_ref()
                        .map(|t| t.cert_file.clone())
                        .unwrap_or_default(),
                    reason: e.to_string(),
                })?;
        }
        let (stop, mut stopped) = watch::channel(false);
        let mut stopped_reload = stop.subscribe();
        let router = builder.add_service(health_service).add_service(rls);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
        let reload = {
            let policy = Arc::clone(&policy);
            let stats = Arc::clone(&stats);
            let interval = config.reload_interval.as_std();
            tokio::spawn(async move {
                let Some(mut source) = source else { return };
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stopped_reload.wait_for(|s| *s) => return,
                    }
                    reload::poll(&mut source, &policy, &stats);
                }
            })
        };
        let scheme = if options.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        };
        if options.tokens.is_empty() {
            tracing::info!(address = %local_addr, scheme, domains, rules, "Envoy rate-limit service (gRPC) listening on loopback without tokens");
        } else {
            tracing::info!(address = %local_addr, scheme, domains, rules, "Envoy rate-limit service (gRPC) listening; ShouldRateLimit needs a bearer token with the check scope");
        }
        Ok(GrpcServer {
            local_addr,
            handle: RlsHandle { policy, stats },
            stop,
            task,
            reload,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The policy and counters (for `/metrics`).
    pub fn handle(&self) -> RlsHandle {
        self.handle.clone()
    }

    /// Stops accepting, waits (at most 1 s) for calls in flight.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.reload.abort();
    }
}

/// The most rules whose counters `/metrics` lists (the first ones in file order); the rest are summed in
/// `rule="_other"`.
pub const MAX_METRIC_RULES: usize = 1_000;

/// Registers the service's metrics in `r` (see the table in [`crate::http::metrics`]).
pub fn register_metrics(r: &mut prometheus_client::registry::Registry, handle: &RlsHandle) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(String, String)>;
    // Relaxed: statistics, a slightly stale reading is fine.
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let s = &handle.stats;
    let answers: Family<Labels, Counter> = Family::default();
    for (code, v) in [
        ("ok", load(&s.ok)),
        ("over_limit", load(&s.over_limit)),
        ("invalid", load(&s.invalid)),
        ("unauthenticated", load(&s.unauthenticated)),
        ("permission_denied", load(&s.permission_denied)),
    ] {
        answers
            .get_or_create(&vec![("code".to_owned(), code.to_owned())])
            .inc_by(v);
    }
    r.register(
        "bifrost_rls_requests",
        "ShouldRateLimit answers by code: ok, over_limit, invalid (refused by a bound or a bad field), unauthenticated, permission_denied",
        answers,
    );
    let unknown: Counter = Counter::default();
    unknown.inc_by(load(&s.unknown_domain));
    r.register(
        "bifrost_rls_unknown_domain",
        "ShouldRateLimit requests for a domain the limits files do not define (answered OK)",
        unknown,
    );
    let reloads: Family<Labels, Counter> = Family::default();
    for (result, v) in [
        ("loaded", load(&s.reloads)),
        ("refused", load(&s.reload_errors)),
    ] {
        reloads
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc_by(v);
    }
    r.register(
        "bifrost_rls_policy_reloads",
        "Limits file loads: loaded (swapped in) or refused (old policy kept)",
        reloads,
    );
    let loaded = handle.policy.load();
    let rules: Gauge = Gauge::default();
    rules.set(i64::try_from(loaded.policy.rules().len()).unwrap_or(i64::MAX));
    r.register(
        "bifrost_rls_rules",
        "Rules of the current limits policy",
        rules,
    );
    type Field = fn(&RuleStats) -> &AtomicU64;
    let families: [(&str, &str, Field); 4] = [
        (
            "bifrost_rls_rule_total_hits",
            "Hits (hits_addend) matched by the rule",
            |s| &s.total_hits,
        ),
        (
            "bifrost_rls_rule_over_limit",
            "Hits refused by the rule (shadow mode included)",
            |s| &s.over_limit,
        ),
        (
            "bifrost_rls_rule_near_limit",
            "Hits allowed past 80% of the rule's limit",
            |s| &s.near_limit,
        ),
        (
            "bifrost_rls_rule_shadow_mode",
            "Hits over the rule's limit answered OK by shadow mode",
            |s| &s.shadow_mode,
        ),
    ];
    for (name, help, field) in families {
        let f: Family<Labels, Counter> = Family::default();
        let mut other = 0u64;
        for rule in loaded.policy.rules() {
            let v = load(field(&loaded.stats[rule.id]));
            if rule.id < MAX_METRIC_RULES {
                f.get_or_create(&vec![("rule".to_owned(), escape(&rule.stat_key))])
                    .inc_by(v);
            } else {
                other = other.saturating_add(v);
            }
        }
        if loaded.policy.rules().len() > MAX_METRIC_RULES {
            f.get_or_create(&vec![("rule".to_owned(), "_other".to_owned())])
                .inc_by(other);
        }
        f.get_or_create(&vec![("rule".to_owned(), "_override".to_owned())])
            .inc_by(load(field(&s.overrides)));
        r.register(name, help, f);
    }
}

/// A label value escaped as the text format requires.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
