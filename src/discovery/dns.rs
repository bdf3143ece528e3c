//! DNS discovery (`discovery.type: "dns"`, cargo feature `dns`): every round resolves each name of
//! `discovery.dns_names` and returns the gossip addresses it finds. Passive: it registers nothing, DNS records
//! are managed outside (a headless Kubernetes Service, Route 53, dnsmasq, Consul DNS...).
//!
//! Guarantees:
//! - A name not starting with `_` is looked up as A and AAAA; each address becomes `ip:bind_port`
//!   (`discovery.bind_port`, default 10101).
//! - A name starting with `_` (`_bifrost._udp.example.internal`) is looked up as SRV; each target becomes
//!   `ip:port` with the SRV port. The target's addresses come from the answer's additional section when the
//!   server put them there, otherwise the target is resolved (A and AAAA). Priority and weight are ignored
//!   (every target is a peer, not a choice between servers); a target of `.` ("service not available") and a
//!   port of 0 are skipped.
//! - The nameserver is `discovery.dns_nameserver` when set (only that server is asked, `/etc/hosts` is not
//!   read, names are used as written, without search domains), else the system resolver: the nameservers,
//!   search domains and `ndots` of `/etc/resolv.conf`, and `/etc/hosts`.
//! - Answers are fresh each round as far as DNS allows: a positive answer is reused only for its TTL, a
//!   negative answer (NXDOMAIN, no records) is never cached, so a name that gains records is seen next round.
//! - All lookups of a round run concurrently and share one deadline, 90% of `discovery.dial_timeout`, so a
//!   round that cannot finish reports which names and which nameserver failed before the discovery loop's
//!   own bound (`dial_timeout`) cuts it.
//! - Only what DNS says is returned. A name that does not exist or has no records contributes nothing; when
//!   every name is like that the round returns no address (logged once per round). A resolver failure (no
//!   answer, connection refused, SERVFAIL, REFUSED, a malformed answer) is an error naming the name, the
//!   record type and the nameserver: [`DiscoveryError::Unreachable`] (no usable answer from the nameserver) or
//!   [`DiscoveryError::BadAnswer`] (it answered with an error code or garbage). When some names resolved and
//!   others failed, the round returns what resolved and logs each failure ("dns lookup error").

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{BoxFuture, Discovery, DiscoveryError, LocalNode};
use crate::config::{DiscoveryConfig, PeerHost};

const BACKEND: &str = "dns";

/// The share of `dial_timeout` a round's lookups may use (the rest is margin for the discovery loop's bound).
const BUDGET_PERCENT: u32 = 90;

/// The DNS discovery method.
pub struct DnsDiscovery {
    resolver: TokioResolver,
    names: Arc<[DnsName]>,
    bind_port: u16,
    budget: Duration,
    /// The nameserver(s) asked, as written in errors and logs: `"127.0.0.1:5353"`, or
    /// `"10.96.0.10:53 (/etc/resolv.conf)"` for the system resolver.
    nameserver: Arc<str>,
    lookup_errors: Arc<AtomicU64>,
}

/// One configured name, parsed once.
#[derive(Debug, Clone)]
struct DnsName {
    /// As written in the config (for errors and logs).
    text: String,
    name: Name,
    /// Starts with `_`: an SRV lookup.
    srv: bool,
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("names", &self.names)
            .field("bind_port", &self.bind_port)
            .field("budget", &self.budget)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

impl DnsDiscovery {
    /// Builds the resolver from `config` (`dns_names`, `bind_port`, `dial_timeout`, `dns_nameserver`). Sends
    /// nothing; without `dns_nameserver` it reads `/etc/resolv.conf`, and fails with
    /// [`DiscoveryError::Setup`] when that file is missing or lists no nameserver.
    pub async fn new(config: &DiscoveryConfig, _local: &LocalNode) -> Result<Self, DiscoveryError> {
        let (resolver_config, options, nameserver) = match &config.dns_nameserver {
            Some(addr) => {
                let PeerHost::Ip(ip) = addr.host else {
                    return Err(setup(format!(
                        "cluster_config.discovery.dns_nameserver: expected an IP address, got the host name \"{addr}\""
                    )));
                };
                let server = SocketAddr::new(ip, addr.port_or(53));
                let (resolver_config, options) = explicit_config(server);
                (resolver_config, options, server.to_string())
            }
            None => {
                let (resolver_config, options) =
                    hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                        setup(format!(
                            "cannot use the system resolver (/etc/resolv.conf): {e}; fix the file or set \
                             cluster_config.discovery.dns_nameserver"
                        ))
                    })?;
                let nameserver = system_label(&resolver_config);
                (resolver_config, options, nameserver)
            }
        };
        Self::build(config, resolver_config, options, nameserver)
    }

    /// Like [`DnsDiscovery::new`] with the system resolver, but reading resolver settings from `resolv_conf`
    /// (the contents of a `resolv.conf` file) instead of `/etc/resolv.conf`. Sends nothing.
    pub fn with_resolv_conf(
        config: &DiscoveryConfig,
        resolv_conf: &str,
    ) -> Result<Self, DiscoveryError> {
        let (resolver_config, options) =
            hickory_resolver::system_conf::parse_resolv_conf(resolv_conf)
                .map_err(|e| setup(format!("invalid resolv.conf: {e}")))?;
        let nameserver = system_label(&resolver_config);
        Self::build(config, resolver_config, options, nameserver)
    }

    fn build(
        config: &DiscoveryConfig,
        resolver_config: ResolverConfig,
        mut options: ResolverOpts,
        nameserver: String,
    ) -> Result<Self, DiscoveryError> {
        if config.dns_names.is_empty() {
            return Err(setup(
                "cluster_config.discovery.dns_names: required (a non-empty array of DNS names)"
                    .into(),
            ));
        }
        let names = config
            .dns_names
            .iter()
            .map(|text| {
                let name = Name::from_str_relaxed(text).map_err(|e| {
                    setup(format!(
                        "cluster_config.discovery.dns_names: {text:?} is not a DNS name: {e}"
                    ))
                })?;
                Ok(DnsName {
                    text: text.clone(),
                    name,
                    srv: text.starts_with('_'),
                })
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        let dial_timeout = config.dial_timeout.as_std();
        let budget = (dial_timeout * BUDGET_PERCENT / 100).max(Duration::from_millis(1));
        // One query attempt may use the whole budget; the round's deadline bounds the total anyway.
        options.timeout = options.timeout.min(budget);
        // Never cache "no such name / no records": a name that gains records is seen next round. Positive
        // answers keep their own TTL.
        options.negative_min_ttl = None;
        options.negative_max_ttl = Some(Duration::ZERO);
        let resolver =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .map_err(|e| setup(format!("cannot build the resolver: {e}")))?;
        Ok(Self {
            resolver,
            names: names.into(),
            bind_port: config.bind_port,
            budget,
            nameserver: nameserver.into(),
            lookup_errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The nameserver(s) this backend asks, as its errors and logs name them.
    pub fn nameserver(&self) -> &str {
        &self.nameserver
    }

    /// How long one round's lookups may take: 90% of `discovery.dial_timeout` (at least 1 ms).
    pub fn round_budget(&self) -> Duration {
        self.budget
    }

    async fn round(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let ctx = Ctx {
            resolver: self.resolver.clone(),
            deadline: Instant::now() + self.budget,
            budget: self.budget,
        };
        let mut tasks = JoinSet::new();
        for (index, name) in self.names.iter().enumerate() {
            let ctx = ctx.clone();
            let name = name.clone();
            let bind_port = self.bind_port;
            tasks.spawn(async move {
                let result = if name.srv {
                    resolve_srv(&ctx, &name).await
                } else {
                    resolve_host(&ctx, &name.name, &name.text, bind_port).await
                };
                (index, result)
            });
        }
        let mut results: Vec<(usize, NameResult)> = Vec::with_capacity(self.names.len());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(e) => {
                    return Err(DiscoveryError::BadAnswer {
                        backend: BACKEND,
                        reason: format!("a lookup task failed: {e}"),
                    });
                }
            }
        }
        results.sort_by_key(|(index, _)| *index);

        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for (index, result) in results {
            let name = &self.names[index].text;
            if result.addrs.is_empty() && result.failures.is_empty() {
                tracing::debug!(name, nameserver = %self.nameserver, "dns name has no records");
            } else {
                tracing::debug!(name, nameserver = %self.nameserver, addrs = ?result.addrs, "dns name resolved");
            }
            for addr in result.addrs {
                if seen.insert(addr) {
                    found.push(addr);
                }
            }
            failures.extend(result.failures);
        }
        self.lookup_errors
            .fetch_add(failures.len() as u64, Ordering::Relaxed);

        if failures.is_empty() {
            if found.is_empty() {
                tracing::warn!(
                    names = ?self.names.iter().map(|n| n.text.as_str()).collect::<Vec<_>>(),
                    nameserver = %self.nameserver,
                    "dns: no records for any of discovery.dns_names"
                );
            }
            return Ok(found);
        }
        if !found.is_empty() {
            for failure in &failures {
                tracing::warn!(
                    name = %failure.name,
                    record_type = %failure.record_type,
                    nameserver = %self.nameserver,
                    error = %failure.detail,
                    "dns lookup error; using the names that resolved"
                );
            }
            return Ok(found);
        }
        Err(self.error(&failures))
    }

    /// The error for a round where nothing resolved and something failed.
    fn error(&self, failures: &[Failure]) -> DiscoveryError {
        let reasons = failures
            .iter()
            .map(Failure::describe)
            .collect::<Vec<_>>()
            .join("; ");
        if failures.iter().any(|f| f.kind == FailureKind::Unreachable) {
            DiscoveryError::Unreachable {
                backend: BACKEND,
                target: format!("nameserver {}", self.nameserver),
                reason: reasons,
            }
        } else {
            DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!("from nameserver {}: {reasons}", self.nameserver),
            }
        }
    }
}

impl Discovery for DnsDiscovery {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.round())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("lookup_errors", self.lookup_errors.load(Ordering::Relaxed))]
    }
}

fn setup(reason: String) -> DiscoveryError {
    DiscoveryError::Setup {
        backend: BACKEND,
        reason,
    }
}

/// A resolver that asks only `server` (UDP, TCP when an answer is truncated), with no search domains and no
/// `/etc/hosts`.
fn explicit_config(server: SocketAddr) -> (ResolverConfig, ResolverOpts) {
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    // hickory 0.26: the port is per connection (UDP and TCP), 53 by default.
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Never;
    (
        ResolverConfig::from_name_servers(vec![name_server]),
        options,
    )
}

/// `"10.0.0.2:53, 10.0.0.3:53 (/etc/resolv.conf)"`.
fn system_label(config: &ResolverConfig) -> String {
    let mut servers: Vec<String> = Vec::new();
    for server in config.name_servers() {
        for connection in &server.connections {
            let text = SocketAddr::new(server.ip, connection.port).to_string();
            if !servers.contains(&text) {
                servers.push(text);
            }
        }
    }
    format!("{} (/etc/resolv.conf)", servers.join(", "))
}

/// What one round needs in each lookup task.
#[derive(Clone)]
struct Ctx {
    resolver: TokioResolver,
    deadline: Instant,
    budget: Duration,
}

/// What resolving one configured name gave.
#[derive(Debug, Default)]
struct NameResult {
    addrs: Vec<SocketAddr>,
    failures: Vec<Failure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// No usable answer reached us (timeout, connection refused, no connection).
    Unreachable,
    /// The nameserver answered with an error code (SERVFAIL, REFUSED...) or something undecodable.
    BadAnswer,
}

/// One failed query.
#[derive(Debug, Clone)]
struct Failure {
    name: String,
    record_type: RecordType,
    kind: FailureKind,
    detail: String,
}

impl Failure {
    fn describe(&self) -> String {
        format!(
            "dns lookup error for {:?} ({}): {}",
            self.name, self.record_type, self.detail
        )
    }
}

/// Sorts a resolver error: `Ok(())` when DNS says the name has no such records (NXDOMAIN, or NOERROR with an
/// empty answer), otherwise the failure.
fn classify(
    error: NetError,
    name: &str,
    record_type: RecordType,
    budget: Duration,
) -> Result<(), Failure> {
    let failure = |kind, detail: String| Failure {
        name: name.to_owned(),
        record_type,
        kind,
        detail,
    };
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        })) => Ok(()),
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))
        | NetError::Dns(DnsError::ResponseCode(response_code)) => Err(failure(
            FailureKind::BadAnswer,
            format!(
                "the nameserver answered {response_code} ({})",
                u16::from(response_code)
            ),
        )),
        NetError::Timeout => Err(failure(
            FailureKind::Unreachable,
            format!("no answer within {budget:?} (90% of discovery.dial_timeout)"),
        )),
        NetError::Proto(e) => Err(failure(
            FailureKind::BadAnswer,
            format!("malformed answer: {e}"),
        )),
        other => Err(failure(FailureKind::Unreachable, other.to_string())),
    }
}

/// One query, bounded by the round's deadline. `Ok(None)`: DNS says there are no such records.
async fn query(
    ctx: &Ctx,
    name: &Name,
    text: &str,
    record_type: RecordType,
) -> Result<Option<Lookup>, Failure> {
    let result =
        tokio::time::timeout_at(ctx.deadline, ctx.resolver.lookup(name.clone(), record_type))
            .await
            .unwrap_or(Err(NetError::Timeout));
    match result {
        Ok(lookup) => Ok(Some(lookup)),
        Err(error) => classify(error, text, record_type, ctx.budget).map(|()| None),
    }
}

/// A and AAAA of `name`, concurrently; each address with `port`.
async fn resolve_host(ctx: &Ctx, name: &Name, text: &str, port: u16) -> NameResult {
    let (v4, v6) = tokio::join!(
        query(ctx, name, text, RecordType::A),
        query(ctx, name, text, RecordType::AAAA)
    );
    let mut out = NameResult::default();
    for result in [v4, v6] {
        match result {
            Ok(Some(lookup)) => out.addrs.extend(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| ip_of(&r.data))
                    .map(|ip| SocketAddr::new(ip, port)),
            ),
            Ok(None) => {}
            Err(failure) => out.failures.push(failure),
        }
    }
    out
}

fn ip_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// SRV of `name`, then each target's addresses (additional section, else A and AAAA lookups).
async fn resolve_srv(ctx: &Ctx, name: &DnsName) -> NameResult {
    let lookup = match query(ctx, &name.name, &name.text, RecordType::SRV).await {
        Ok(Some(lookup)) => lookup,
        Ok(None) => return NameResult::default(),
        Err(failure) => {
            return NameResult {
                addrs: Vec::new(),
                failures: vec![failure],
            };
        }
    };
    let mut out = NameResult::default();
    let mut to_resolve: Vec<(Name, u16)> = Vec::new();
    for record in lookup.answers() {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        if srv.target.is_root() {
            tracing::debug!(name = %name.text, "dns: SRV target \".\" (service not available) skipped");
            continue;
        }
        if srv.port == 0 {
            tracing::warn!(name = %name.text, target = %srv.target, "dns: SRV record with port 0 skipped");
            continue;
        }
        let glue: Vec<IpAddr> = lookup
            .additionals()
            .iter()
            .filter(|r| r.name == srv.target)
            .filter_map(|r| ip_of(&r.data))
            .collect();
        if glue.is_empty() {
            if !to_resolve
                .iter()
                .any(|(t, p)| *t == srv.target && *p == srv.port)
            {
                to_resolve.push((srv.target.clone(), srv.port));
            }
        } else {
            out.addrs
                .extend(glue.into_iter().map(|ip| SocketAddr::new(ip, srv.port)));
        }
    }
    let mut tasks = JoinSet::new();
    for (index, (target, port)) in to_resolve.into_iter().enumerate() {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let text = target.to_string();
            let result = resolve_host(&ctx, &target, &text, port).await;
            if result.addrs.is_empty() && result.failures.is_empty() {
                tracing::warn!(target = %text, "dns: SRV target has no A or AAAA records");
            }
            (index, result)
        });
    }
    let mut resolved = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => resolved.push(result),
            Err(e) => out.failures.push(Failure {
                name: name.text.clone(),
                record_type: RecordType::SRV,
                kind: FailureKind::BadAnswer,
                detail: format!("resolving a target failed: {e}"),
            }),
        }
    }
    resolved.sort_by_key(|(index, _)| *index);
    for (_, result) in resolved {
        out.addrs.extend(result.addrs);
        out.failures.extend(result.failures);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDuration, PeerAddr};

    fn local() -> LocalNode {
        LocalNode {
            node_id: "n".into(),
            gossip_addr: "127.0.0.1:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: None,
        }
    }

    fn config(names: &[&str], nameserver: Option<&str>) -> DiscoveryConfig {
        DiscoveryConfig {
            dns_names: names.iter().map(|n| n.to_string()).collect(),
            dns_nameserver: nameserver.map(|n| PeerAddr::parse(n).expect("nameserver")),
            dial_timeout: ConfigDuration::from_millis(2_000),
            ..DiscoveryConfig::default()
        }
    }

    #[tokio::test]
    async fn an_explicit_nameserver_gets_port_53_unless_written() {
        let d = DnsDiscovery::new(&config(&["a.test"], Some("192.0.2.1")), &local())
            .await
            .expect("built");
        assert_eq!(d.nameserver(), "192.0.2.1:53");
        let d = DnsDiscovery::new(&config(&["a.test"], Some("[2001:db8::1]:5353")), &local())
            .await
            .expect("built");
        assert_eq!(d.nameserver(), "[2001:db8::1]:5353");
        assert_eq!(d.round_budget(), Duration::from_millis(1_800));
    }

    #[tokio::test]
    async fn names_are_required_and_must_be_dns_names() {
        let error = DnsDiscovery::new(&config(&[], Some("192.0.2.1")), &local())
            .await
            .expect_err("no names");
        assert!(error.to_string().contains("dns_names"), "{error}");
        let error = DnsDiscovery::new(&config(&["a..b"], Some("192.0.2.1")), &local())
            .await
            .expect_err("bad name");
        assert!(error.to_string().contains("\"a..b\""), "{error}");
    }

    #[tokio::test]
    async fn the_system_resolver_is_named_by_its_resolv_conf_nameservers() {
        let d = DnsDiscovery::with_resolv_conf(
            &config(&["bifrost"], None),
            "search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::53\noptions ndots:5\n",
        )
        .expect("built");
        assert_eq!(
            d.nameserver(),
            "10.96.0.10:53, [fd00::53]:53 (/etc/resolv.conf)"
        );
        let error = DnsDiscovery::with_resolv_conf(&config(&["bifrost"], None), "search x\n")
            .expect_err("no nameserver");
        assert!(error.to_string().contains("no nameservers"), "{error}");
    }

    #[test]
    fn no_records_is_not_a_failure_but_servfail_refused_and_timeouts_are() {
        let budget = Duration::from_millis(900);
        let query = || {
            Box::new(hickory_resolver::proto::op::Query::query(
                Name::from_ascii("a.test.").expect("name"),
                RecordType::A,
            ))
        };
        for code in [ResponseCode::NXDomain, ResponseCode::NoError] {
            let error = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(query(), code)));
            assert!(classify(error, "a.test", RecordType::A, budget).is_ok());
        }
        for code in [ResponseCode::ServFail, ResponseCode::Refused] {
            let failure = classify(
                NetError::Dns(DnsError::ResponseCode(code)),
                "a.test",
                RecordType::A,
                budget,
            )
            .expect_err("a failure");
            assert_eq!(failure.kind, FailureKind::BadAnswer);
            assert!(failure.describe().contains(code.to_str()), "{failure:?}");
        }
        let failure =
            classify(NetError::Timeout, "a.test", RecordType::AAAA, budget).expect_err("timeout");
        assert_eq!(failure.kind, FailureKind::Unreachable);
        assert_eq!(
            failure.describe(),
            "dns lookup error for \"a.test\" (AAAA): no answer within 900ms (90% of discovery.dial_timeout)"
        );
    }
}
