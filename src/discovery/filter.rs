//! Which discovered addresses become join targets.
//!
//! Guarantees (pure functions, no I/O): an address outside a non-empty `allowed_address_space` is rejected and
//! reported, so the caller can log "not in allowed address space" with it; this node's own addresses are
//! dropped silently; unspecified addresses (`0.0.0.0`, `::`) and port 0 are never targets; the output keeps
//! the input's order without duplicates.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The outcome of [`filter`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Addresses to join, in input order, without duplicates.
    pub accepted: Vec<SocketAddr>,
    /// Addresses outside `allowed_address_space`.
    pub outside: Vec<SocketAddr>,
}

/// Splits `candidates` into join targets and addresses outside `allowed` (an empty `allowed` admits every
/// address); drops `own` addresses and unusable ones.
pub fn filter(candidates: &[SocketAddr], allowed: &[IpNet], own: &[SocketAddr]) -> Filtered {
    let mut out = Filtered::default();
    for &addr in candidates {
        if own.contains(&addr) || addr.ip().is_unspecified() || addr.port() == 0 {
            continue;
        }
        if !in_space(addr.ip(), allowed) {
            if !out.outside.contains(&addr) {
                out.outside.push(addr);
            }
            continue;
        }
        if !out.accepted.contains(&addr) {
            out.accepted.push(addr);
        }
    }
    out
}

/// Whether `ip` falls in one of `allowed` (always true when `allowed` is empty). IPv4-mapped IPv6 addresses
/// are compared as IPv4.
pub fn in_space(ip: IpAddr, allowed: &[IpNet]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn no_space_admits_everything_but_our_own_and_unusable_addresses() {
        let out = filter(
            &[
                a("10.0.0.2:10101"),
                a("10.0.0.1:10101"),
                a("0.0.0.0:10101"),
                a("10.0.0.3:0"),
                a("10.0.0.2:10101"),
            ],
            &[],
            &[a("10.0.0.1:10101")],
        );
        assert_eq!(out.accepted, vec![a("10.0.0.2:10101")]);
        assert!(out.outside.is_empty());
    }

    #[test]
    fn addresses_outside_the_space_are_reported() {
        let out = filter(
            &[
                a("192.168.1.7:10101"),
                a("10.9.9.9:10101"),
                a("[fd00::5]:10101"),
                a("[::ffff:10.1.1.1]:10101"),
            ],
            &nets(&["10.0.0.0/8", "172.16.0.0/12"]),
            &[],
        );
        assert_eq!(
            out.accepted,
            vec![a("10.9.9.9:10101"), a("[::ffff:10.1.1.1]:10101")]
        );
        assert_eq!(
            out.outside,
            vec![a("192.168.1.7:10101"), a("[fd00::5]:10101")]
        );
    }

    #[test]
    fn ipv6_spaces_work() {
        assert!(in_space(
            "fd00::5".parse().expect("ip"),
            &nets(&["fd00::/8"])
        ));
        assert!(!in_space(
            "fe80::5".parse().expect("ip"),
            &nets(&["fd00::/8"])
        ));
    }
}
