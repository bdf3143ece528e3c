//! `mdns`: advertise this node as an instance of `discovery.mdns_service` (Multicast DNS, RFC 6762/6763) and
//! browse for the other instances.
//!
//! Guarantees:
//! - [`MdnsDiscovery::new`] only checks the configuration; the mDNS daemon (UDP 5353) starts in
//!   [`Discovery::register`], which advertises the instance `<node id>.<mdns_service>.local.` with the gossip
//!   port, the gossip IP and the TXT properties `node_id` (and `service_name` when configured), then browses.
//! - When `allowed_address_space` is set, the daemon sends and listens only on the interface addresses inside
//!   it; with no such address, registration fails naming this host's interfaces (retried every round).
//! - A resolved instance contributes `address:port` for each of its addresses except the ones that cannot be
//!   a peer: loopback (127.x, ::1), unspecified, multicast, limited broadcast, IPv6 link-local (no scope in a
//!   gossip address), and the network or broadcast address of a subnet this host is on. Each skipped address
//!   is logged at debug as "skipping invalid host address". An instance of another `service_name` (TXT
//!   property) is ignored; this node's own instance is left out. A removed instance (goodbye or expiry)
//!   is forgotten.
//! - A new or changed instance wakes the discovery loop through [`Discovery::changed`]. The first round waits
//!   up to half of `discovery.dial_timeout` (at most 3 s) for the first answers.
//! - [`Discovery::deregister`] unregisters the instance (a goodbye packet, TTL 0) and shuts the daemon down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::filter::in_space;
use super::interfaces;
use super::{BoxFuture, Discovery, DiscoveryError, LocalNode};
use crate::config::DiscoveryConfig;
use crate::sync::LockClean;

const BACKEND: &str = "mdns";

/// The TXT property carrying the node id.
pub const TXT_NODE_ID: &str = "node_id";
/// The TXT property carrying `discovery.service_name` (only when configured).
pub const TXT_SERVICE_NAME: &str = "service_name";
/// Upper bound of the first round's wait for answers.
const FIRST_WAIT_MAX: Duration = Duration::from_secs(3);

/// `"_bifrost._tcp"`, `"_bifrost._tcp.local"` or `"_bifrost._tcp.local."` → `"_bifrost._tcp.local."`.
pub fn service_type(mdns_service: &str) -> String {
    let base = mdns_service
        .trim_end_matches('.')
        .trim_end_matches(".local")
        .trim_end_matches('.');
    format!("{base}.local.")
}

/// Why `ip` cannot be a peer's address, or `None` when it can. `local_nets` are the IPv4 subnets of this
/// host's interfaces: the network and broadcast addresses of those subnets are not hosts.
pub fn skip_reason(ip: IpAddr, local_nets: &[Ipv4Net]) -> Option<String> {
    if ip.is_loopback() {
        return Some("loopback address".into());
    }
    if ip.is_unspecified() {
        return Some("unspecified address".into());
    }
    if ip.is_multicast() {
        return Some("multicast address".into());
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_broadcast() {
                return Some("limited broadcast address".into());
            }
            for net in local_nets {
                // /31 and /32 have no network or broadcast address (RFC 3021).
                if net.prefix_len() >= 31 || !net.contains(&v4) {
                    continue;
                }
                if v4 == net.network() {
                    return Some(format!("network address of {net}"));
                }
                if v4 == net.broadcast() {
                    return Some(format!("broadcast address of {net}"));
                }
            }
            None
        }
        IpAddr::V6(v6) => {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return Some("IPv6 link-local address (no scope in a gossip address)".into());
            }
            if let Some(v4) = v6.to_ipv4_mapped() {
                return skip_reason(IpAddr::V4(v4), local_nets);
            }
            None
        }
    }
}

/// The usable `address:port` of an instance's addresses, logging each skipped one.
fn usable(
    fullname: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
    port: u16,
    local_nets: &[Ipv4Net],
) -> (Vec<SocketAddr>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for ip in addresses {
        match skip_reason(ip, local_nets) {
            Some(why) => {
                skipped += 1;
                tracing::debug!(method = BACKEND, instance = fullname, address = %ip, reason = %why, "skipping invalid host address {ip}: {why}");
            }
            None => out.push(SocketAddr::new(ip, port)),
        }
    }
    out.sort();
    out.dedup();
    (out, skipped)
}

#[derive(Debug, Default)]
struct Counters {
    instances_resolved: AtomicU64,
    instances_removed: AtomicU64,
    addresses_skipped: AtomicU64,
}

/// What the browser task and the rounds share.
#[derive(Debug)]
struct Shared {
    own_fullname: String,
    service_name: Option<String>,
    found: Mutex<HashMap<String, Vec<SocketAddr>>>,
    changed: Arc<Notify>,
    counters: Counters,
}

impl Shared {
    fn found(&self) -> MutexGuard<'_, HashMap<String, Vec<SocketAddr>>> {
        self.found.lock_clean()
    }

    fn current(&self) -> Vec<SocketAddr> {
        let found = self.found();
        let mut names: Vec<&String> = found.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            for addr in &found[name] {
                if !out.contains(addr) {
                    out.push(*addr);
                }
            }
        }
        out
    }

    fn removed(&self, fullname: &str) {
        if self.found().remove(fullname).is_some() {
            self.counters
                .instances_removed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method = BACKEND, instance = %fullname, "mdns instance removed");
        }
    }

    fn event(&self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let fullname = resolved.get_fullname().to_string();
                if fullname.eq_ignore_ascii_case(&self.own_fullname) {
                    return;
                }
                if let Some(ours) = &self.service_name
                    && let Some(theirs) = resolved.get_property_val_str(TXT_SERVICE_NAME)
                    && theirs != ours
                {
                    tracing::debug!(method = BACKEND, instance = %fullname, service = theirs, "mdns instance of another service_name ignored");
                    return;
                }
                let local_nets: Vec<Ipv4Net> = interfaces::ipv4_interfaces()
                    .map(|list| list.into_iter().map(|i| i.net).collect())
                    .unwrap_or_default();
                let (addrs, skipped) = usable(
                    &fullname,
                    resolved.get_addresses().iter().map(|a| a.to_ip_addr()),
                    resolved.get_port(),
                    &local_nets,
                );
                self.counters
                    .addresses_skipped
                    .fetch_add(skipped, Ordering::Relaxed);
                self.counters
                    .instances_resolved
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    method = BACKEND,
                    instance = %fullname,
                    node = resolved.get_property_val_str(TXT_NODE_ID).unwrap_or(""),
                    addresses = ?addrs,
                    "mdns instance resolved"
                );
                let changed = {
                    let mut found = self.found();
                    if addrs.is_empty() {
                        found.remove(&fullname).is_some()
                    } else {
                        found.insert(fullname, addrs.clone()).as_ref() != Some(&addrs)
                    }
                };
                if changed {
                    self.changed.notify_one();
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => self.removed(&fullname),
            _ => {}
        }
    }
}

/// The daemon and browser of a registered backend.
struct Running {
    daemon: ServiceDaemon,
    browser: JoinHandle<()>,
    started: Instant,
}

/// mDNS discovery (see the module docs).
pub struct MdnsDiscovery {
    service_type: String,
    node_id: String,
    gossip_addr: SocketAddr,
    allowed: Vec<IpNet>,
    first_wait: Duration,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
    last_error: Mutex<Option<DiscoveryError>>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("service_type", &self.service_type)
            .field("instance", &self.shared.own_fullname)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

fn setup(reason: String) -> DiscoveryError {
    DiscoveryError::Setup {
        backend: BACKEND,
        reason,
    }
}

impl MdnsDiscovery {
    /// Checks the configuration; starts nothing (see [`Discovery::register`]).
    pub async fn new(config: &DiscoveryConfig, local: &LocalNode) -> Result<Self, DiscoveryError> {
        let service_type = service_type(&config.mdns_service);
        // Build the instance once now, so a bad name fails the start instead of every registration.
        let probe = ServiceInfo::new(
            &service_type,
            &local.node_id,
            &host_name(&local.node_id),
            (),
            local.gossip_addr.port(),
            None,
        )
        .map_err(|e| {
            setup(format!(
                "cluster_config.discovery.mdns_service {:?} with node id {:?} is not a valid mDNS instance: {e}",
                config.mdns_service, local.node_id
            ))
        })?;
        let dial_timeout = Duration::from_millis(config.dial_timeout.as_millis().max(1));
        Ok(MdnsDiscovery {
            shared: Arc::new(Shared {
                own_fullname: probe.get_fullname().to_string(),
                service_name: config.service_name.clone(),
                found: Mutex::new(HashMap::new()),
                changed: Arc::new(Notify::new()),
                counters: Counters::default(),
            }),
            service_type,
            node_id: local.node_id.clone(),
            gossip_addr: local.gossip_addr,
            allowed: config.allowed_address_space.clone(),
            first_wait: (dial_timeout / 2).min(FIRST_WAIT_MAX),
            running: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock_clean()
    }

    /// The interface addresses the daemon may use: those inside `allowed_address_space`, or `None` (every
    /// interface) when no space is configured.
    fn interface_addresses(&self) -> Result<Option<Vec<IpAddr>>, DiscoveryError> {
        if self.allowed.is_empty() {
            return Ok(None);
        }
        let all = if_addrs::get_if_addrs()
            .map_err(|e| setup(format!("cannot list this host's interfaces: {e}")))?;
        let inside: Vec<IpAddr> = all
            .iter()
            .map(|i| i.ip())
            .filter(|ip| in_space(*ip, &self.allowed))
            .collect();
        if inside.is_empty() {
            let listed: Vec<String> = all
                .iter()
                .map(|i| format!("{} {}", i.name, i.ip()))
                .collect();
            return Err(setup(format!(
                "cluster_config.discovery.allowed_address_space ({}) contains no address of this host's interfaces ({}): this node cannot advertise to any allowed peer",
                interfaces::describe_space(&self.allowed),
                if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.join(", ")
                }
            )));
        }
        Ok(Some(inside))
    }

    fn start(&self) -> Result<(), DiscoveryError> {
        if self.running().is_some() {
            return Ok(());
        }
        let restricted = self.interface_addresses()?;
        let advertised: Vec<IpAddr> = if self.gossip_addr.ip().is_unspecified() {
            restricted.clone().unwrap_or_default()
        } else {
            vec![self.gossip_addr.ip()]
        };
        if !self.gossip_addr.ip().is_unspecified()
            && let Some(why) = skip_reason(self.gossip_addr.ip(), &[])
        {
            tracing::warn!(
                method = BACKEND,
                address = %self.gossip_addr.ip(),
                "mdns: the advertised gossip address is a {why}, which peers skip (set gossip.advertise_address or bind a routable IP)"
            );
        }
        let mut properties = vec![(TXT_NODE_ID, self.node_id.as_str())];
        if let Some(name) = &self.shared.service_name {
            properties.push((TXT_SERVICE_NAME, name.as_str()));
        }
        let info = ServiceInfo::new(
            &self.service_type,
            &self.node_id,
            &host_name(&self.node_id),
            &advertised[..],
            self.gossip_addr.port(),
            &properties[..],
        )
        .map_err(|e| {
            setup(format!(
                "cannot build the mDNS instance {}: {e}",
                self.shared.own_fullname
            ))
        })?;
        let daemon = ServiceDaemon::new()
            .map_err(|e| setup(format!("cannot start the mDNS daemon (UDP port 5353): {e}")))?;
        let configured = (|| {
            if let Some(addrs) = &restricted {
                daemon.disable_interface(IfKind::All)?;
                daemon.enable_interface(
                    addrs.iter().map(|ip| IfKind::Addr(*ip)).collect::<Vec<_>>(),
                )?;
            }
            daemon.register(info)?;
            daemon.browse(&self.service_type)
        })();
        let events = match configured {
            Ok(events) => events,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(setup(format!(
                    "failed to register service {} with mDNS: {e}",
                    self.shared.own_fullname
                )));
            }
        };
        let shared = Arc::clone(&self.shared);
        let browser = tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                shared.event(event);
            }
        });
        tracing::info!(
            method = BACKEND,
            instance = %self.shared.own_fullname,
            addresses = ?advertised,
            port = self.gossip_addr.port(),
            interfaces = %restricted.as_ref().map_or_else(|| "all".to_owned(), |a| format!("{a:?}")),
            "mdns discovery: advertising and browsing {}", self.service_type
        );
        *self.running() = Some(Running {
            daemon,
            browser,
            started: Instant::now(),
        });
        Ok(())
    }

    async fn round(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let started = self.running().as_ref().map(|r| r.started);
        let Some(started) = started else {
            let last = self.last_error.lock_clean().clone();
            return Err(setup(match last {
                Some(e) => format!("not advertising nor browsing: {e}"),
                None => "not advertising nor browsing (not registered yet)".into(),
            }));
        };
        // The first answers take a moment (probing, then the responses to our query): wait for them, bounded.
        let deadline = started + self.first_wait;
        while self.shared.found().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(self.shared.current())
    }

    async fn stop(&self) {
        let running = self.running().take();
        let Some(running) = running else {
            return;
        };
        // Within the node's 2 s deregistration bound: browsing stops first, the goodbye gets 1 s, the daemon's
        // shutdown 500 ms.
        running.browser.abort();
        match running.daemon.unregister(&self.shared.own_fullname) {
            Ok(status) => {
                match tokio::time::timeout(Duration::from_secs(1), status.recv_async()).await {
                    Ok(Ok(mdns_sd::UnregisterStatus::OK)) => {
                        tracing::debug!(method = BACKEND, instance = %self.shared.own_fullname, "mdns instance unregistered (goodbye sent)")
                    }
                    Ok(other) => {
                        tracing::warn!(method = BACKEND, instance = %self.shared.own_fullname, status = ?other, "mdns: unregistration did not complete")
                    }
                    Err(_) => {
                        tracing::warn!(method = BACKEND, instance = %self.shared.own_fullname, "mdns: no unregistration status within 1 s")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(method = BACKEND, %error, "mdns: cannot unregister the instance")
            }
        }
        if let Ok(status) = running.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_millis(500), status.recv_async()).await;
        }
        self.shared.found().clear();
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        if let Some(running) = self.running().take() {
            // Without a graceful deregister: stop the daemon thread (no goodbye is awaited).
            let _ = running.daemon.shutdown();
            running.browser.abort();
        }
    }
}

/// The mDNS host name of a node: `<node id>.local.`.
fn host_name(node_id: &str) -> String {
    format!("{node_id}.local.")
}

impl Discovery for MdnsDiscovery {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.round())
    }

    fn register(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let result = self.start();
            *self.last_error.lock_clean() = result.clone().err();
            result
        })
    }

    fn deregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            self.stop().await;
            Ok(())
        })
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.shared.changed))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.shared.counters;
        vec![
            (
                "instances_resolved",
                c.instances_resolved.load(Ordering::Relaxed),
            ),
            (
                "instances_removed",
                c.instances_removed.load(Ordering::Relaxed),
            ),
            (
                "addresses_skipped",
                c.addresses_skipped.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn service_types_get_the_local_domain_once() {
        for given in [
            "_bifrost._tcp",
            "_bifrost._tcp.local",
            "_bifrost._tcp.local.",
        ] {
            assert_eq!(service_type(given), "_bifrost._tcp.local.", "{given}");
        }
        assert_eq!(service_type("_myapp._udp"), "_myapp._udp.local.");
    }

    #[test]
    fn loopback_network_broadcast_and_unusable_addresses_are_skipped() {
        let local = nets(&["10.77.0.0/24", "172.16.0.0/16", "192.168.9.4/31"]);
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "limited broadcast"),
            ("224.0.0.251", "multicast"),
            ("10.77.0.0", "network address of 10.77.0.0/24"),
            ("10.77.0.255", "broadcast address of 10.77.0.0/24"),
            ("172.16.255.255", "broadcast address of 172.16.0.0/16"),
            ("::ffff:10.77.0.255", "broadcast address"),
            ("fe80::1", "link-local"),
        ] {
            let reason = skip_reason(ip(addr), &local);
            assert!(
                reason.as_deref().is_some_and(|r| r.contains(why)),
                "{addr}: {reason:?}"
            );
        }
        for addr in [
            "10.77.0.1",
            "10.77.0.254",
            // In a /16, .0 and .255 of an inner /24 are ordinary hosts.
            "172.16.1.0",
            "172.16.1.255",
            // /31: both addresses are hosts.
            "192.168.9.4",
            "192.168.9.5",
            // Not on a local subnet: no way to tell, kept (the address-space filter still applies).
            "10.78.0.2",
            "fd00::5",
        ] {
            assert_eq!(skip_reason(ip(addr), &local), None, "{addr}");
        }
    }

    #[test]
    fn usable_keeps_the_port_and_drops_what_is_skipped() {
        let local = nets(&["10.77.0.0/24"]);
        let (addrs, skipped) = usable(
            "node-b._bifrost._tcp.local.",
            [
                ip("10.77.0.255"),
                ip("127.0.0.1"),
                ip("10.77.0.2"),
                ip("10.77.0.0"),
                ip("10.77.0.2"),
            ],
            10101,
            &local,
        );
        assert_eq!(
            addrs,
            vec!["10.77.0.2:10101".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(skipped, 3);
    }

    fn config() -> DiscoveryConfig {
        DiscoveryConfig::default()
    }

    fn local(node: &str) -> LocalNode {
        LocalNode {
            node_id: node.into(),
            gossip_addr: "10.77.0.1:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: None,
        }
    }

    #[tokio::test]
    async fn new_starts_nothing_and_a_round_before_registration_says_so() {
        let d = MdnsDiscovery::new(&config(), &local("node-a"))
            .await
            .expect("valid");
        assert_eq!(d.shared.own_fullname, "node-a._bifrost._tcp.local.");
        assert!(d.running().is_none());
        assert!(matches!(
            d.discover().await,
            Err(DiscoveryError::Setup { .. })
        ));
    }

    #[tokio::test]
    async fn registration_refuses_when_no_interface_is_in_the_space() {
        let mut c = config();
        // TEST-NET-3 is never assigned to a test host.
        c.allowed_address_space = vec!["203.0.113.0/24".parse().expect("net")];
        let d = MdnsDiscovery::new(&c, &local("node-a"))
            .await
            .expect("valid");
        match d.register().await {
            Err(DiscoveryError::Setup { backend, reason }) => {
                assert_eq!(backend, "mdns");
                assert!(
                    reason.contains("allowed_address_space (203.0.113.0/24)"),
                    "{reason}"
                );
            }
            other => panic!("expected a setup error, got {other:?}"),
        }
        assert!(d.running().is_none(), "no daemon was started");
    }
}
