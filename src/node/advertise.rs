//! The gossip address this node advertises: its membership identity and the address in its `Hello`, where
//! every other node reaches it.
//!
//! Guarantees: the choice is deterministic for a given configuration and set of interfaces, never a wildcard
//! (`0.0.0.0`, `::`) and always carries the bound port unless the configuration names another; the reason for
//! the choice is returned so the node can log it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::{PeerAddr, PeerHost};

/// The chosen address and why it was chosen (for the start-up log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) addr: SocketAddr,
    pub(crate) source: &'static str,
}

/// Chooses the advertised address: `gossip.advertise_address` when set, else the bind IP when it is specific,
/// else the best interface address (see [`best_interface_ip`]), else `127.0.0.1`.
pub(crate) fn choose(configured: Option<&PeerAddr>, bound: SocketAddr) -> Advertised {
    if let Some(PeerAddr {
        host: PeerHost::Ip(ip),
        port,
    }) = configured
    {
        return Advertised {
            addr: SocketAddr::new(*ip, port.unwrap_or(bound.port())),
            source: "gossip.advertise_address",
        };
    }
    if !bound.ip().is_unspecified() {
        return Advertised {
            addr: bound,
            source: "the bind address",
        };
    }
    let interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| {
            list.into_iter()
                .filter(|i| {
                    !matches!(
                        i.oper_status,
                        if_addrs::IfOperStatus::Down
                            | if_addrs::IfOperStatus::NotPresent
                            | if_addrs::IfOperStatus::LowerLayerDown
                    )
                })
                .map(|i| i.ip())
                .collect()
        })
        .unwrap_or_default();
    match best_interface_ip(&interfaces) {
        Some((ip, source)) => Advertised {
            addr: SocketAddr::new(ip, bound.port()),
            source,
        },
        None => Advertised {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port()),
            source: "no non-loopback interface address (loopback only)",
        },
    }
}

/// The first private IPv4 address (RFC 1918 or 100.64.0.0/10, memberlist's rule), else the first other
/// non-loopback, non-link-local IPv4 address, else the first such IPv6 address.
pub(crate) fn best_interface_ip(addresses: &[IpAddr]) -> Option<(IpAddr, &'static str)> {
    let usable = |ip: &&IpAddr| !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip);
    let private = |ip: &&IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64),
        IpAddr::V6(_) => false,
    };
    if let Some(ip) = addresses.iter().filter(usable).find(private) {
        return Some((*ip, "the first private IPv4 interface address"));
    }
    if let Some(ip) = addresses.iter().filter(usable).find(|ip| ip.is_ipv4()) {
        return Some((*ip, "the first non-loopback IPv4 interface address"));
    }
    addresses
        .iter()
        .find(usable)
        .map(|ip| (*ip, "the first non-loopback IPv6 interface address"))
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn configured_address_wins_and_takes_the_bound_port_when_it_has_none() {
        let bound: SocketAddr = "0.0.0.0:10101".parse().expect("addr");
        let with_port = PeerAddr::parse("192.0.2.7:10102").expect("addr");
        assert_eq!(
            choose(Some(&with_port), bound).addr,
            "192.0.2.7:10102".parse::<SocketAddr>().expect("addr")
        );
        let without = PeerAddr::parse("192.0.2.7").expect("addr");
        assert_eq!(
            choose(Some(&without), bound).addr,
            "192.0.2.7:10101".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn a_specific_bind_ip_is_advertised_as_is() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(choose(None, bound).addr, bound);
    }

    #[test]
    fn the_wildcard_is_never_advertised() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().expect("addr");
        let chosen = choose(None, bound).addr;
        assert!(!chosen.ip().is_unspecified(), "{chosen}");
        assert_eq!(chosen.port(), 4000);
    }

    #[test]
    fn private_ipv4_first_then_other_ipv4_then_ipv6() {
        let list = [
            ip("127.0.0.1"),
            ip("fe80::1"),
            ip("203.0.113.9"),
            ip("10.1.2.3"),
        ];
        assert_eq!(best_interface_ip(&list).map(|x| x.0), Some(ip("10.1.2.3")));
        let list = [ip("127.0.0.1"), ip("2001:db8::5"), ip("203.0.113.9")];
        assert_eq!(
            best_interface_ip(&list).map(|x| x.0),
            Some(ip("203.0.113.9"))
        );
        let list = [ip("127.0.0.1"), ip("fe80::1"), ip("2001:db8::5")];
        assert_eq!(
            best_interface_ip(&list).map(|x| x.0),
            Some(ip("2001:db8::5"))
        );
        let list = [ip("100.100.1.1"), ip("203.0.113.9")];
        assert_eq!(
            best_interface_ip(&list).map(|x| x.0),
            Some(ip("100.100.1.1"))
        );
        assert_eq!(
            best_interface_ip(&[ip("127.0.0.1"), ip("169.254.1.1")]),
            None
        );
    }
}
