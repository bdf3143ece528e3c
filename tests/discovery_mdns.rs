//! `mdns` discovery across Linux network namespaces: `bifrost-cluster run` children, one per namespace, on one
//! bridge, find each other only through Multicast DNS (no `peers`), form a HEALTHY cluster and count exactly;
//! an independent client (Python zeroconf) sees their `_bifrost._tcp.local.` instances; a node outside
//! `allowed_address_space` does not advertise and is never admitted; an instance advertised from outside the
//! space is refused by the address-space filter, and invalid host addresses (network, broadcast, loopback) are
//! skipped; a node that leaves withdraws its instance.
//!
//! Needs root (network namespaces) and Debian's `python3-zeroconf` (`/usr/bin/python3`): prints SKIPPED
//! without root, or fails when `REQUIRE_NETNS=1`. Every packet stays on the test's own bridge; every wait is a
//! bounded poll.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::netns::{self, Lab, NsNode, listed, wait_until};

const SECRET: &str = "mZjVSicobzKaYLFzjQJkvCms6diMnBuQjGstRXv4xqJs=";
const SPACE: &str = "10.77.0.0/24";
const HTTP_PORT: u16 = 8080;
const SERVICE: &str = "_bifrost._tcp.local.";
const LOG: &str = "info,bifrost_cluster::discovery=debug";

fn config(name: &str) -> Value {
    json!({
        "enabled": true,
        "node_id": name,
        "gossip": { "port": 10101, "config": { "timeout_seconds": 2, "success_threshold": 3, "failure_threshold": 3 } },
        "http": { "listen": format!("127.0.0.1:{HTTP_PORT}") },
        "discovery": {
            "enabled": true, "type": "mdns", "service_name": "bifrost", "mdns_service": "_bifrost._tcp",
            "allowed_address_space": [SPACE], "dial_timeout": "2s", "interval": "1s"
        },
        "security": { "cluster_secret": SECRET }
    })
}

fn start(lab: &Lab, host: usize, dir: &Path, name: &str) -> NsNode {
    NsNode::start(lab, host, dir, name, HTTP_PORT, &config(name), LOG)
}

/// Browses `_bifrost._tcp.local.` for argv[1] seconds, then resolves every instance seen and prints them as
/// one JSON array.
const BROWSE_PY: &str = r#"
import sys, time, json
from zeroconf import Zeroconf, ServiceBrowser, ServiceStateChange, IPVersion
ty = "_bifrost._tcp.local."
zc = Zeroconf(ip_version=IPVersion.V4Only)
names = set()
def on_change(zeroconf, service_type, name, state_change):
    if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
        names.add(name)
browser = ServiceBrowser(zc, ty, handlers=[on_change])
time.sleep(float(sys.argv[1]))
out = []
for name in sorted(names):
    info = zc.get_service_info(ty, name, timeout=3000)
    if info is None:
        out.append({"name": name, "resolved": False})
        continue
    props = {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()}
    out.append({"name": name, "resolved": True, "addresses": sorted(info.parsed_addresses()),
                "port": info.port, "properties": props})
browser.cancel()
zc.close()
print(json.dumps(out))
"#;

/// Advertises instance argv[1] of `_bifrost._tcp.local.` with the comma-separated IPv4 addresses argv[2] on
/// port 10101 for argv[3] seconds.
const ADVERTISE_PY: &str = r#"
import sys, time, socket
from zeroconf import Zeroconf, ServiceInfo, IPVersion
name, addrs, secs = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
ty = "_bifrost._tcp.local."
zc = Zeroconf(ip_version=IPVersion.V4Only)
info = ServiceInfo(ty, name + "." + ty, addresses=[socket.inet_aton(a) for a in addrs], port=10101,
                   properties={"node_id": name, "service_name": "bifrost"}, server=name + ".local.")
zc.register_service(info)
time.sleep(secs)
zc.unregister_service(info)
zc.close()
"#;

fn healthy_cluster_of(lab: &Lab, node: &NsNode, n: u64) -> bool {
    node.status(lab).is_some_and(|s| {
        s["members"] == n && s["healthy_members"] == n && s["cluster_health"] == "HEALTHY"
    })
}

#[test]
fn three_nodes_find_each_other_over_mdns_count_exactly_and_nothing_outside_the_space_is_admitted() {
    if !netns::available("three_nodes_find_each_other_over_mdns") {
        return;
    }
    // Hosts 0..3: the cluster; 3: outside the space on the same segment; 4: an observer inside the space.
    let lab = Lab::new(&[
        "10.77.0.1/24",
        "10.77.0.2/24",
        "10.77.0.3/24",
        "10.78.0.4/24",
        "10.77.0.50/24",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes: Vec<NsNode> = names
        .iter()
        .enumerate()
        .map(|(i, name)| start(&lab, i, dir.path(), name))
        .collect();
    let mut rogue = start(&lab, 3, dir.path(), "rogue");

    let formed = wait_until(
        Duration::from_secs(40),
        "3 members, 3 healthy, HEALTHY on node-a, node-b and node-c",
        || nodes.iter().all(|n| healthy_cluster_of(&lab, n, 3)),
    );
    eprintln!("mdns: cluster of 3 formed and HEALTHY {formed:?} after the start");

    // Each node advertises its namespace's address (not 127.0.0.1), and lists the others at theirs.
    for (i, node) in nodes.iter().enumerate() {
        let status = node.status(&lab).expect("status");
        assert_eq!(
            status["local"]["address"],
            format!("{}:10101", lab.hosts[i].ip),
            "{status}"
        );
        for (j, other) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            let entry = status["member_details"]
                .as_array()
                .and_then(|l| l.iter().find(|m| m["node_id"] == *other))
                .unwrap_or_else(|| panic!("{} does not list {other}: {status}", node.name));
            assert_eq!(
                entry["address"],
                format!("{}:10101", lab.hosts[j].ip),
                "{status}"
            );
        }
        let log = node.log_text();
        assert!(
            log.contains("mdns discovery: advertising and browsing _bifrost._tcp.local."),
            "{log}"
        );
        assert!(log.contains("discovered"), "{log}");
    }

    // Counting on every node; every node agrees on the exact total.
    let mut epoch = 0;
    for (i, node) in nodes.iter().enumerate() {
        epoch = node.add(&lab, "budget/team-mdns", 7 * (i as u64 + 1));
    }
    wait_until(Duration::from_secs(15), "every node to hold 42", || {
        nodes
            .iter()
            .all(|n| n.global(&lab, "budget/team-mdns", epoch) == Some(42))
    });

    // The node outside the space does not advertise, and says why.
    wait_until(
        Duration::from_secs(10),
        "the rogue's refusal in its log",
        || {
            rogue
                .log_text()
                .contains("contains no address of this host's interfaces")
        },
    );
    assert!(
        rogue.running(),
        "the rogue runs on (registration is retried every round)"
    );
    let rogue_log = rogue.log_text();
    assert!(
        rogue_log.contains("10.77.0.0/24") && rogue_log.contains("10.78.0.4"),
        "{rogue_log}"
    );

    // An independent mDNS client inside the space sees the three instances, with their TXT node ids.
    let (ok, out, err) = lab.python(4, BROWSE_PY, &["4"], Duration::from_secs(40));
    assert!(ok, "zeroconf browser failed: {out}\n{err}");
    let seen: Vec<Value> = serde_json::from_str(out.trim()).expect("browser json");
    eprintln!("zeroconf saw: {seen:?}");
    for (i, name) in names.iter().enumerate() {
        let instance = seen
            .iter()
            .find(|s| s["name"] == format!("{name}.{SERVICE}"))
            .unwrap_or_else(|| panic!("zeroconf did not see {name}: {seen:?}"));
        assert_eq!(instance["resolved"], true, "{instance}");
        assert_eq!(instance["port"], 10101, "{instance}");
        assert_eq!(
            instance["addresses"],
            json!([lab.hosts[i].ip.to_string()]),
            "{instance}"
        );
        assert_eq!(instance["properties"]["node_id"], *name, "{instance}");
        assert_eq!(
            instance["properties"]["service_name"], "bifrost",
            "{instance}"
        );
    }
    assert!(
        !seen
            .iter()
            .any(|s| s["name"].as_str().is_some_and(|n| n.starts_with("rogue"))),
        "the rogue does not advertise: {seen:?}"
    );

    // Instances advertised by others: one from outside the space, one with only invalid host addresses.
    let _outside = lab.spawn_python(3, ADVERTISE_PY, &["py-rogue", "10.78.0.4", "15"]);
    let _invalid = lab.spawn_python(
        4,
        ADVERTISE_PY,
        &["py-odd", "10.77.0.0,10.77.0.255,127.0.0.1", "15"],
    );
    wait_until(
        Duration::from_secs(15),
        "the three to refuse py-rogue (outside the space) and skip py-odd's addresses",
        || {
            nodes[..3].iter().all(|n| {
                let log = n.log_text();
                log.contains("not in allowed address space: ignoring 10.78.0.4:10101")
                    && [
                        "skipping invalid host address 10.77.0.0: network address of 10.77.0.0/24",
                        "skipping invalid host address 10.77.0.255: broadcast address of 10.77.0.0/24",
                        "skipping invalid host address 127.0.0.1: loopback address",
                    ]
                    .iter()
                    .all(|line| log.contains(line))
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for node in &nodes {
        let status = node.status(&lab).expect("status");
        let others = listed(&status);
        assert!(
            !others
                .iter()
                .any(|n| n.starts_with("rogue") || n.starts_with("py-")),
            "{status}"
        );
        assert_eq!(status["members"], 3, "{status}");
        let log = node.log_text();
        assert!(
            !log.lines().any(|l| l.contains("discovered")
                && (l.contains("10.78.0.4")
                    || l.contains("10.77.0.255")
                    || l.contains("127.0.0.1"))),
            "{}: {log}",
            node.name
        );
    }
    let status = rogue.status(&lab).expect("rogue status");
    assert_eq!(status["members"], 1, "{status}");

    // A node that leaves withdraws its instance: the others see it removed.
    assert!(
        nodes[2].terminate(Duration::from_secs(20)),
        "node-c exits on SIGTERM"
    );
    assert!(
        nodes[2]
            .log_text()
            .contains("mdns instance unregistered (goodbye sent)"),
        "{}",
        nodes[2].log_text()
    );
    wait_until(
        Duration::from_secs(10),
        "node-a and node-b to see node-c's instance removed",
        || {
            nodes[..2].iter().all(|n| {
                n.log_text().lines().any(|l| {
                    l.contains("mdns instance removed") && l.contains("node-c._bifrost._tcp.local.")
                })
            })
        },
    );
}
