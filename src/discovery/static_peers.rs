//! Static `peers`: each `"host:port"` or `"host"` (then `gossip.port`), host names resolved on every round, so
//! a name that does not resolve yet (a container not started, a headless Service without endpoints) is
//! picked up later instead of failing the start.

use std::net::SocketAddr;

use super::{BoxFuture, Discovery, DiscoveryError};
use crate::config::{PeerAddr, PeerHost};

/// The static peer list of the config.
#[derive(Debug, Clone)]
pub struct StaticPeers {
    peers: Vec<PeerAddr>,
    default_port: u16,
}

impl StaticPeers {
    /// Peers from `cluster_config.peers`; a peer without a port gets `default_port` (`gossip.port`).
    pub fn new(peers: Vec<PeerAddr>, default_port: u16) -> StaticPeers {
        StaticPeers {
            peers,
            default_port,
        }
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let mut out = Vec::new();
        let mut failed = None;
        for peer in &self.peers {
            let port = peer.port_or(self.default_port);
            match &peer.host {
                PeerHost::Ip(ip) => out.push(SocketAddr::new(*ip, port)),
                PeerHost::Name(name) => {
                    match tokio::net::lookup_host((name.as_str(), port)).await {
                        Ok(found) => out.extend(found),
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "discovery failed: cannot resolve a static peer; retrying");
                            failed = Some(DiscoveryError::Unreachable {
                                backend: "static",
                                target: peer.to_string(),
                                reason: format!("cannot resolve: {e}"),
                            });
                        }
                    }
                }
            }
        }
        match failed {
            Some(error) if out.is_empty() => Err(error),
            _ => Ok(out),
        }
    }
}

impl Discovery for StaticPeers {
    fn name(&self) -> &'static str {
        "static"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.resolve())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(list: &[&str]) -> Vec<PeerAddr> {
        list.iter()
            .map(|p| PeerAddr::parse(p).expect("peer"))
            .collect()
    }

    #[tokio::test]
    async fn literal_addresses_get_the_gossip_port_when_they_have_none() {
        let s = StaticPeers::new(peers(&["10.0.0.2", "10.0.0.3:7000", "[fd00::1]:9"]), 10101);
        assert_eq!(
            s.discover().await.expect("resolved"),
            vec![
                "10.0.0.2:10101".parse::<SocketAddr>().expect("addr"),
                "10.0.0.3:7000".parse().expect("addr"),
                "[fd00::1]:9".parse().expect("addr"),
            ]
        );
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        // Only `localhost` (from /etc/hosts): a test never sends a query to a real resolver.
        let s = StaticPeers::new(peers(&["localhost:4000", "10.0.0.9"]), 10101);
        let found = s.discover().await.expect("localhost resolves");
        assert!(found.len() >= 2, "{found:?}");
        assert!(
            found[..found.len() - 1]
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4000)
        );
    }
}
