//! This host's IPv4 interface addresses, as the interface-based methods (`udp`, `mdns`) need them: where to
//! broadcast, which interfaces fall inside `allowed_address_space`, and which subnet an address belongs to.
//!
//! Guarantees: interfaces that are down (or whose link is down) are left out; every entry carries its subnet
//! (address and prefix), so a caller can tell the network and broadcast addresses of a subnet from a host on
//! it; the functions deciding on addresses are pure and tested without touching the host.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use super::filter::in_space;

/// One IPv4 address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Interface {
    /// The interface name (`eth0`).
    pub name: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// The subnet the address is on (`10.1.2.3/24` → `10.1.2.0/24`).
    pub net: Ipv4Net,
    /// The subnet's broadcast address, when the interface has one (not on loopback or point-to-point links).
    pub broadcast: Option<Ipv4Addr>,
    /// Whether this is a loopback address.
    pub loopback: bool,
}

/// This host's IPv4 interface addresses that are not down, in the operating system's order.
pub fn ipv4_interfaces() -> std::io::Result<Vec<V4Interface>> {
    let list = if_addrs::get_if_addrs()?;
    Ok(list
        .into_iter()
        .filter(|i| {
            !matches!(
                i.oper_status,
                if_addrs::IfOperStatus::Down
                    | if_addrs::IfOperStatus::NotPresent
                    | if_addrs::IfOperStatus::LowerLayerDown
            )
        })
        .filter_map(|i| match &i.addr {
            if_addrs::IfAddr::V4(v4) => {
                let net = Ipv4Net::new(v4.ip, v4.prefixlen).ok()?.trunc();
                let loopback = v4.ip.is_loopback();
                Some(V4Interface {
                    loopback,
                    name: i.name.clone(),
                    ip: v4.ip,
                    net,
                    broadcast: broadcast_of(v4.broadcast, net, loopback || i.is_p2p()),
                })
            }
            if_addrs::IfAddr::V6(_) => None,
        })
        .collect())
}

/// The broadcast address of an interface: the one it reports, else (an address added without `brd`, which
/// the kernel still accepts broadcasts for) the last address of its subnet; none on loopback and
/// point-to-point links and on /31 and /32 subnets.
fn broadcast_of(reported: Option<Ipv4Addr>, net: Ipv4Net, no_broadcast: bool) -> Option<Ipv4Addr> {
    if no_broadcast {
        return None;
    }
    match reported {
        Some(b) if !b.is_unspecified() => Some(b),
        _ if net.prefix_len() <= 30 => Some(net.broadcast()),
        _ => None,
    }
}

/// The interfaces whose address lies in `allowed` (every interface when `allowed` is empty).
pub fn inside(interfaces: &[V4Interface], allowed: &[IpNet]) -> Vec<V4Interface> {
    interfaces
        .iter()
        .filter(|i| in_space(IpAddr::V4(i.ip), allowed))
        .cloned()
        .collect()
}

/// `"eth0 10.1.2.3/24, lo 127.0.0.1/8"`: the interfaces for an error message.
pub fn describe(interfaces: &[V4Interface]) -> String {
    if interfaces.is_empty() {
        return "none".to_owned();
    }
    interfaces
        .iter()
        .map(|i| format!("{} {}/{}", i.name, i.ip, i.net.prefix_len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"10.0.0.0/8, 192.168.1.0/24"`: a config's address space for a message.
pub fn describe_space(allowed: &[IpNet]) -> String {
    allowed
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, cidr: &str, brd: Option<&str>) -> V4Interface {
        let with_host: Ipv4Net = cidr.parse().expect("cidr");
        V4Interface {
            name: name.to_owned(),
            ip: with_host.addr(),
            net: with_host.trunc(),
            broadcast: brd.map(|b| b.parse().expect("ip")),
            loopback: with_host.addr().is_loopback(),
        }
    }

    #[test]
    fn only_interfaces_in_the_space_are_kept() {
        let list = [
            iface("lo", "127.0.0.1/8", None),
            iface("eth0", "10.77.0.1/24", Some("10.77.0.255")),
            iface("eth1", "192.168.5.9/24", Some("192.168.5.255")),
        ];
        let space: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let kept = inside(&list, &space);
        assert_eq!(kept, vec![list[1].clone()]);
        assert_eq!(inside(&list, &[]).len(), 3);
        assert_eq!(
            describe(&kept),
            "eth0 10.77.0.1/24",
            "the message names the interface and its subnet"
        );
        assert_eq!(describe(&[]), "none");
    }

    #[test]
    fn broadcast_is_the_reported_one_or_the_subnets_last_address() {
        let net: Ipv4Net = "10.77.0.0/24".parse().expect("net");
        let b = |t: &str| Some(t.parse::<Ipv4Addr>().expect("ip"));
        assert_eq!(broadcast_of(b("10.77.0.255"), net, false), b("10.77.0.255"));
        assert_eq!(broadcast_of(None, net, false), b("10.77.0.255"));
        assert_eq!(broadcast_of(b("0.0.0.0"), net, false), b("10.77.0.255"));
        assert_eq!(broadcast_of(b("10.77.0.255"), net, true), None);
        let tiny: Ipv4Net = "10.77.0.4/31".parse().expect("net");
        assert_eq!(broadcast_of(None, tiny, false), None);
    }

    #[test]
    fn host_interfaces_are_inside_their_own_subnets() {
        // Reads this host's interfaces (no traffic): every entry is consistent.
        let list = ipv4_interfaces().expect("interfaces");
        for i in &list {
            assert!(i.net.contains(&i.ip), "{i:?}");
            assert_eq!(i.net, i.net.trunc(), "{i:?}");
        }
    }
}
