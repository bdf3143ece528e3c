//! Consul discovery (cargo feature `consul`): the node registers itself with the local Consul agent as a
//! service instance with a TCP check on its gossip port, finds the others through the health endpoint with
//! `?passing`, and deregisters on graceful leave.
//!
//! The HTTP API used (Consul's documented agent and health endpoints):
//! - `PUT /v1/agent/service/register` with `{"ID": node_id, "Name": service_name, "Address": gossip ip,
//!   "Port": gossip port, "Check": {"TCP": "ip:port", "Interval": "10s", "Timeout": "5s",
//!   "DeregisterCriticalServiceAfter": "1m"}}`
//!   (<https://developer.hashicorp.com/consul/api-docs/agent/service#register-service>);
//! - `GET /v1/health/service/{service_name}?passing`: each entry's `Service.Address` (or `Node.Address` when
//!   empty) and `Service.Port` (<https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service>);
//! - `PUT /v1/agent/service/deregister/{node_id}`
//!   (<https://developer.hashicorp.com/consul/api-docs/agent/service#deregister-service>).
//!
//! Guarantees:
//! - [`ConsulDiscovery::new`] contacts nothing; every request, connecting included, gives up at 4/5 of
//!   `discovery.dial_timeout` (so the discovery loop logs this backend's error, naming the agent, rather than
//!   its own bare timeout) and goes straight to the agent (no HTTP proxy from the environment).
//! - `consul_address` is `"host:port"`, `"host"` (port 8500) or an `http://` / `https://` URL.
//! - The ACL token is `discovery.consul_token`, else the `CONSUL_HTTP_TOKEN` environment variable, sent as
//!   `X-Consul-Token`; it never appears in errors or logs.
//! - A failure is a [`DiscoveryError`] naming the agent's URL: `Unreachable` (connection refused, no answer
//!   in time), `Forbidden` for 401/403 naming the ACL permission the token lacks (`service:write` to register
//!   or deregister, `service:read` + `node:read` to discover), `BadAnswer` for any other non-2xx (with status
//!   and body) or an unparsable body. A failed registration is also logged as "failed to register service
//!   with Consul", with the cause.
//! - Only instances Consul reports as passing are returned, so a node whose gossip port stopped answering
//!   the TCP check drops out of discovery; Consul removes it altogether after one minute critical.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use super::{BoxFuture, Discovery, DiscoveryError, LocalNode, error_chain};
use crate::config::DiscoveryConfig;

const BACKEND: &str = "consul";

/// The environment variable read for the ACL token when `discovery.consul_token` is not set.
pub const CONSUL_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";

/// The agent port used when `consul_address` names none.
pub const DEFAULT_CONSUL_PORT: u16 = 8500;

/// The TCP check's interval, timeout and critical-deregistration delay, as registered.
const CHECK_INTERVAL: &str = "10s";
const CHECK_TIMEOUT: &str = "5s";
const DEREGISTER_CRITICAL_AFTER: &str = "1m";

/// Longest response body quoted in an error.
const MAX_QUOTED_BODY: usize = 512;

/// The Consul discovery backend. See the module docs for what it guarantees.
pub struct ConsulDiscovery {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    service: String,
    node_id: String,
    gossip: SocketAddr,
}

impl std::fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("agent", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("service", &self.service)
            .field("node_id", &self.node_id)
            .field("gossip", &self.gossip)
            .finish_non_exhaustive()
    }
}

/// One entry of `GET /v1/health/service/{name}` (only the fields used).
#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: Option<HealthNode>,
    #[serde(rename = "Service")]
    service: HealthService,
}

#[derive(Debug, Deserialize)]
struct HealthNode {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
}

impl ConsulDiscovery {
    /// The backend for `config` (`consul_address`, `service_name`, `consul_token`, `dial_timeout`). Contacts
    /// nothing.
    pub async fn new(
        config: &DiscoveryConfig,
        local: &LocalNode,
    ) -> Result<ConsulDiscovery, DiscoveryError> {
        let token = config
            .consul_token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                std::env::var(CONSUL_TOKEN_ENV)
                    .ok()
                    .filter(|t| !t.is_empty())
            });
        ConsulDiscovery::with_token(config, local, token)
    }

    /// [`ConsulDiscovery::new`] with the ACL token given explicitly (`None`: no token, whatever the
    /// environment says). Contacts nothing.
    pub fn with_token(
        config: &DiscoveryConfig,
        local: &LocalNode,
        token: Option<String>,
    ) -> Result<ConsulDiscovery, DiscoveryError> {
        let Some(service) = config.service_name.clone().filter(|s| !s.is_empty()) else {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason: "cluster_config.discovery.service_name: required for consul".into(),
            });
        };
        let base = agent_url(&config.consul_address)?;
        if token
            .as_deref()
            .is_some_and(|t| reqwest::header::HeaderValue::from_str(t).is_err())
        {
            return Err(DiscoveryError::Setup {
                backend: BACKEND,
                reason:
                    "the Consul ACL token (discovery.consul_token or CONSUL_HTTP_TOKEN) contains \
                         characters not allowed in an HTTP header"
                        .into(),
            });
        }
        let dial_timeout = Duration::from_millis(config.dial_timeout.as_millis().max(1));
        // Give up at 4/5 of the loop's bound, so the loop logs this backend's error (naming the agent) rather
        // than its own bare timeout.
        let request_timeout = dial_timeout * 4 / 5;
        // reqwest is built with `rustls-no-provider`: make sure a process-wide provider exists (an error only
        // means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .timeout(request_timeout)
            .no_proxy()
            .build()
            .map_err(|e| DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(ConsulDiscovery {
            http,
            base,
            token,
            service,
            node_id: local.node_id.clone(),
            gossip: local.gossip_addr,
        })
    }

    /// The agent's base URL, e.g. `http://127.0.0.1:8500/`.
    pub fn agent_url(&self) -> &Url {
        &self.base
    }

    /// The registration body sent to `PUT /v1/agent/service/register`.
    pub fn registration(&self) -> serde_json::Value {
        let ip = self.gossip.ip().to_string();
        serde_json::json!({
            "ID": self.node_id,
            "Name": self.service,
            "Address": ip,
            "Port": self.gossip.port(),
            "Check": {
                "TCP": self.gossip.to_string(),
                "Interval": CHECK_INTERVAL,
                "Timeout": CHECK_TIMEOUT,
                "DeregisterCriticalServiceAfter": DEREGISTER_CRITICAL_AFTER,
            },
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request; returns the body of a 2xx answer, else the mapped error. `permission` names the
    /// ACL rule a 401/403 means is missing.
    async fn request(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        permission: &str,
    ) -> Result<bytes::Bytes, DiscoveryError> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let text = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if status.is_success() {
            return Ok(text);
        }
        let quoted = quote_body(&text);
        let where_ = format!("{method} {}", url.path());
        Err(match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => DiscoveryError::Forbidden {
                backend: BACKEND,
                reason: format!(
                    "the agent at {} answered {status} to {where_} ({quoted}): the ACL token must exist and \
                     grant {permission} (set discovery.consul_token or {CONSUL_TOKEN_ENV})",
                    self.base
                ),
            },
            _ => DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!(
                    "the agent at {} answered {status} to {where_}: {quoted}",
                    self.base
                ),
            },
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> DiscoveryError {
        let reason = if error.is_timeout() {
            format!(
                "no answer in time (discovery.dial_timeout): {}",
                error_chain(error)
            )
        } else {
            error_chain(error)
        };
        DiscoveryError::Unreachable {
            backend: BACKEND,
            target: self.base.to_string(),
            reason,
        }
    }

    async fn do_register(&self) -> Result<(), DiscoveryError> {
        let url = self.url(&["v1", "agent", "service", "register"]);
        let body = self.registration();
        let permission = format!("service:write on service {:?}", self.service);
        match self
            .request(Method::PUT, url, Some(&body), &permission)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    agent = %self.base,
                    service = %self.service,
                    id = %self.node_id,
                    address = %self.gossip,
                    "registered service with Consul (TCP check on the gossip port)"
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    agent = %self.base,
                    service = %self.service,
                    id = %self.node_id,
                    %error,
                    "failed to register service with Consul"
                );
                Err(error)
            }
        }
    }

    async fn do_discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let mut url = self.url(&["v1", "health", "service", &self.service]);
        // `?passing` (no value) is how Consul's documentation spells it.
        url.set_query(Some("passing"));
        let permission = format!(
            "service:read on service {:?} and node:read on its nodes",
            self.service
        );
        let body = self
            .request(Method::GET, url.clone(), None, &permission)
            .await?;
        let entries: Vec<HealthEntry> =
            serde_json::from_slice(&body).map_err(|e| DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!(
                    "GET {} at {}: not a list of health entries: {e}",
                    url.path(),
                    self.base
                ),
            })?;
        let mut found = Vec::with_capacity(entries.len());
        for entry in entries {
            let address = if entry.service.address.is_empty() {
                entry.node.map(|n| n.address).unwrap_or_default()
            } else {
                entry.service.address
            };
            let port = entry.service.port;
            if address.is_empty() || port == 0 {
                tracing::warn!(
                    agent = %self.base,
                    id = %entry.service.id,
                    %address,
                    port,
                    "consul: ignoring a service instance without address or port"
                );
                continue;
            }
            match address.parse::<IpAddr>() {
                Ok(ip) => found.push(SocketAddr::new(ip, port)),
                // Consul allows a host name as the address: resolve it like a static peer.
                Err(_) => match tokio::net::lookup_host((address.as_str(), port)).await {
                    Ok(addrs) => found.extend(addrs),
                    Err(e) => tracing::warn!(
                        agent = %self.base,
                        id = %entry.service.id,
                        %address,
                        error = %e,
                        "consul: cannot resolve a service instance's address; skipping it"
                    ),
                },
            }
        }
        Ok(found)
    }

    async fn do_deregister(&self) -> Result<(), DiscoveryError> {
        let url = self.url(&["v1", "agent", "service", "deregister", &self.node_id]);
        let permission = format!("service:write on service {:?}", self.service);
        self.request(Method::PUT, url, None, &permission).await?;
        tracing::info!(agent = %self.base, id = %self.node_id, "deregistered service from Consul");
        Ok(())
    }
}

/// `consul_address` → the agent's base URL: `"host:port"`, `"host"` (port 8500) or an `http(s)://` URL.
fn agent_url(address: &str) -> Result<Url, DiscoveryError> {
    let bad = |why: String| DiscoveryError::Setup {
        backend: BACKEND,
        reason: format!("cluster_config.discovery.consul_address {address:?}: {why}"),
    };
    let address = address.trim();
    if address.is_empty() {
        return Err(bad("empty".into()));
    }
    let lower = address.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let url = Url::parse(address).map_err(|e| bad(format!("not a URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host".into()));
        }
        return Ok(url);
    }
    if address.contains("://") {
        return Err(bad("only http:// and https:// URLs are supported".into()));
    }
    // A bare IPv6 address ("::1") has no port; "[::1]" and "[::1]:8500" are bracketed.
    let host_port = if let Ok(ip) = address.parse::<std::net::Ipv6Addr>() {
        format!("[{ip}]:{DEFAULT_CONSUL_PORT}")
    } else if address.parse::<SocketAddr>().is_ok() {
        address.to_owned()
    } else if address.starts_with('[') && address.ends_with(']') {
        format!("{address}:{DEFAULT_CONSUL_PORT}")
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("port {port:?} is not 1..=65535")))?;
                format!("{host}:{port}")
            }
            None => format!("{address}:{DEFAULT_CONSUL_PORT}"),
        }
    };
    let url = Url::parse(&format!("http://{host_port}/"))
        .map_err(|e| bad(format!("not host:port: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(url)
}

fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".into();
    }
    let mut end = text.len().min(MAX_QUOTED_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{:?}…", &text[..end])
    } else {
        format!("{text:?}")
    }
}

impl Discovery for ConsulDiscovery {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_in_every_documented_form() {
        let cases = [
            ("localhost:8500", "http://localhost:8500/"),
            (
                "consul.service.consul:8500",
                "http://consul.service.consul:8500/",
            ),
            ("10.0.0.5", "http://10.0.0.5:8500/"),
            ("consul.local", "http://consul.local:8500/"),
            ("127.0.0.1:9000", "http://127.0.0.1:9000/"),
            ("[fd00::1]:8501", "http://[fd00::1]:8501/"),
            ("[fd00::1]", "http://[fd00::1]:8500/"),
            ("fd00::1", "http://[fd00::1]:8500/"),
            ("http://10.0.0.5:8500", "http://10.0.0.5:8500/"),
            (
                "https://consul.example:8501/",
                "https://consul.example:8501/",
            ),
            ("HTTPS://consul.example", "https://consul.example/"),
        ];
        for (input, want) in cases {
            assert_eq!(
                agent_url(input).map(|u| u.to_string()),
                Ok(want.to_string()),
                "{input}"
            );
        }
        for bad in ["", "ftp://x", "host:0", "host:99999", "host:abc", "http://"] {
            let e = agent_url(bad).expect_err(bad);
            assert!(e.to_string().contains("consul_address"), "{bad}: {e}");
        }
    }

    fn local() -> LocalNode {
        LocalNode {
            node_id: "node-a".into(),
            gossip_addr: "10.1.2.3:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: None,
        }
    }

    fn config() -> DiscoveryConfig {
        DiscoveryConfig {
            enabled: true,
            service_name: Some("bifrost".into()),
            consul_address: "127.0.0.1:8500".into(),
            ..DiscoveryConfig::default()
        }
    }

    #[test]
    fn the_registration_carries_the_tcp_check_on_the_gossip_address() {
        let d = ConsulDiscovery::with_token(&config(), &local(), None).expect("built");
        assert_eq!(
            d.registration(),
            serde_json::json!({
                "ID": "node-a", "Name": "bifrost", "Address": "10.1.2.3", "Port": 10101,
                "Check": { "TCP": "10.1.2.3:10101", "Interval": "10s", "Timeout": "5s",
                           "DeregisterCriticalServiceAfter": "1m" }
            })
        );
        assert_eq!(
            d.url(&["v1", "agent", "service", "deregister", "node-a"])
                .as_str(),
            "http://127.0.0.1:8500/v1/agent/service/deregister/node-a"
        );
    }

    #[test]
    fn the_token_is_never_printed() {
        let d = ConsulDiscovery::with_token(&config(), &local(), Some("s3cr3t-token".into()))
            .expect("built");
        assert!(!format!("{d:?}").contains("s3cr3t"));
        let e = ConsulDiscovery::with_token(&config(), &local(), Some("bad\ntoken".into()))
            .expect_err("header-unsafe token");
        assert!(!e.to_string().contains("bad\ntoken"), "{e}");
    }

    #[test]
    fn long_bodies_are_cut_when_quoted() {
        let long = "é".repeat(1000);
        let quoted = quote_body(long.as_bytes());
        assert!(quoted.len() < 600 && quoted.ends_with('…'), "{quoted}");
        assert_eq!(quote_body(b"  "), "empty body");
        assert_eq!(quote_body(b"Permission denied"), "\"Permission denied\"");
    }
}
