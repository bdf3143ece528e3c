//! `udp` discovery across Linux network namespaces: `bifrost-cluster run` children, one per namespace, on one
//! bridge, find each other only through broadcast beacons (no `peers`), form a HEALTHY cluster and count
//! exactly; a node on the segment outside `allowed_address_space` is never admitted; beacons built by an
//! independent encoder (Python, from the format in `src/discovery/udp.rs`) show that forged, stale, replayed,
//! foreign and outside beacons are refused and counted while a valid one is recorded and answered with an
//! answer that authenticates.
//!
//! Needs root (network namespaces): prints SKIPPED otherwise, or fails when `REQUIRE_NETNS=1`. Every packet
//! stays on the test's own bridge; every wait is a bounded poll.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::netns::{self, Lab, NsNode, listed, wait_until};

const SECRET: &str = "9yNq1iRaCnD1NKotm1HOMxVRZZ/vW+4doDOatwSzJNg=";
const SPACE: &str = "10.77.0.0/24";
const UDP_PORT: u16 = 9999;
const HTTP_PORT: u16 = 8080;
const LOG: &str = "info,bifrost_cluster::discovery=debug";

fn config(name: &str) -> Value {
    json!({
        "enabled": true,
        "node_id": name,
        "gossip": { "port": 10101, "config": { "timeout_seconds": 2, "success_threshold": 3, "failure_threshold": 3 } },
        "http": { "listen": format!("127.0.0.1:{HTTP_PORT}") },
        "discovery": {
            "enabled": true, "type": "udp", "service_name": "bifrost-cluster",
            "udp_broadcast_port": UDP_PORT, "allowed_address_space": [SPACE],
            "dial_timeout": "2s", "interval": "1s"
        },
        "security": { "cluster_secret": SECRET }
    })
}

fn start(lab: &Lab, host: usize, dir: &Path, name: &str) -> NsNode {
    NsNode::start(lab, host, dir, name, HTTP_PORT, &config(name), LOG)
}

/// An independent beacon encoder/decoder. argv[1]: JSON `{secret, bind, steps: [...]}`; each step sends one
/// datagram `{to, key: "right"|"wrong", service, node, gossip, age_ms, flip, replay, wait_answer_s}` and
/// prints one JSON line: the answer received (decoded, with `authentic`), or null.
const BEACONS_PY: &str = r#"
import sys, os, time, json, hmac, hashlib, socket, struct
cfg = json.loads(sys.argv[1])
def derive(secret):
    prk = hmac.new(b"bifrost-cluster/udp-discovery/v1", secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, b"bifrost-cluster/udp-discovery/hmac-sha256-key" + b"\x01", hashlib.sha256).digest()
right, wrong = derive(cfg["secret"]), derive("a-different-cluster-secret-0123456789")
def encode(k, kind, service, node, gossip, ts_ms):
    ip, port = gossip.rsplit(":", 1)
    body = b"BFCD" + bytes([1, kind]) + struct.pack(">Q", ts_ms) + os.urandom(16)
    body += bytes([4]) + socket.inet_aton(ip) + struct.pack(">H", int(port))
    body += bytes([len(service)]) + service.encode() + bytes([len(node)]) + node.encode()
    return body + hmac.new(k, body, hashlib.sha256).digest()
def decode(k, data):
    body, tag = data[:-32], data[-32:]
    out = {"authentic": hmac.compare_digest(hmac.new(k, body, hashlib.sha256).digest(), tag),
           "magic": body[:4].decode("latin-1"), "version": body[4], "kind": body[5],
           "timestamp_ms": struct.unpack(">Q", body[6:14])[0]}
    at = 30
    assert body[at] == 4; at += 1
    ip = socket.inet_ntoa(body[at:at + 4]); at += 4
    port = struct.unpack(">H", body[at:at + 2])[0]; at += 2
    n = body[at]; out["service"] = body[at + 1:at + 1 + n].decode(); at += 1 + n
    n = body[at]; out["node_id"] = body[at + 1:at + 1 + n].decode(); at += 1 + n
    out["gossip"] = "%s:%d" % (ip, port); out["trailing"] = len(body) - at
    return out
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((cfg["bind"], 0))
last = None
for step in cfg["steps"]:
    if step.get("replay"):
        data = last
    else:
        k = right if step.get("key", "right") == "right" else wrong
        data = encode(k, 1, step.get("service", "bifrost-cluster"), step["node"], step["gossip"],
                      int(time.time() * 1000) - step.get("age_ms", 0))
        if step.get("flip"):
            data = bytearray(data); data[len(data) - 40] ^= 0x01; data = bytes(data)
    last = data
    s.sendto(data, (step["to"], int(cfg["port"])))
    answer = None
    wait = step.get("wait_answer_s", 0)
    if wait:
        s.settimeout(wait)
        try:
            reply, src = s.recvfrom(2048)
            answer = decode(right, reply); answer["from"] = "%s:%d" % src
        except socket.timeout:
            pass
    print(json.dumps(answer), flush=True)
    time.sleep(0.2)
"#;

fn beacons(lab: &Lab, host: usize, bind: &str, steps: Value) -> Vec<Value> {
    let cfg = json!({ "secret": SECRET, "bind": bind, "port": UDP_PORT, "steps": steps });
    let (ok, out, err) = lab.python(
        host,
        BEACONS_PY,
        &[&cfg.to_string()],
        Duration::from_secs(30),
    );
    assert!(ok, "beacon script failed: {out}\n{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn healthy_cluster_of(lab: &Lab, node: &NsNode, n: u64) -> bool {
    node.status(lab).is_some_and(|s| {
        s["members"] == n && s["healthy_members"] == n && s["cluster_health"] == "HEALTHY"
    })
}

#[test]
fn three_nodes_find_each_other_by_beacons_count_exactly_and_a_node_outside_the_space_is_not_admitted()
 {
    if !netns::available("three_nodes_find_each_other_by_beacons") {
        return;
    }
    let lab = Lab::new(&[
        "10.77.0.1/24",
        "10.77.0.2/24",
        "10.77.0.3/24",
        "10.78.0.4/24",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["node-a", "node-b", "node-c"];
    let nodes: Vec<NsNode> = names
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
    eprintln!("udp: cluster of 3 formed and HEALTHY {formed:?} after the start");

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
            log.contains("udp discovery: listening for beacons"),
            "{log}"
        );
        assert!(log.contains("discovered"), "{log}");
    }

    // Counting on every node; every node agrees on the exact total.
    let mut epoch = 0;
    for (i, node) in nodes.iter().enumerate() {
        epoch = node.add(&lab, "budget/team-udp", 5 * (i as u64 + 1));
    }
    wait_until(Duration::from_secs(15), "every node to hold 30", || {
        nodes
            .iter()
            .all(|n| n.global(&lab, "budget/team-udp", epoch) == Some(30))
    });

    // The node outside the space refuses to beacon, and says why.
    wait_until(
        Duration::from_secs(10),
        "the rogue's refusal in its log",
        || {
            rogue
                .log_text()
                .contains("contains no address of this host's broadcast-capable interfaces")
        },
    );
    assert!(
        rogue.running(),
        "the rogue runs on (discovery is retried every round)"
    );
    let rogue_log = rogue.log_text();
    assert!(
        rogue_log.contains("discovery failed")
            && rogue_log.contains("10.77.0.0/24")
            && rogue_log.contains("10.78.0.4/24"),
        "{rogue_log}"
    );

    // A beacon from the outside address, even authenticated with the right secret (sent to the limited
    // broadcast address, which reaches every host on the segment), is refused by all three.
    let answers = beacons(
        &lab,
        3,
        "10.78.0.4",
        json!([{ "to": "255.255.255.255", "node": "rogue", "gossip": "10.78.0.4:10101", "wait_answer_s": 2 }]),
    );
    assert_eq!(
        answers,
        vec![Value::Null],
        "nobody answers a beacon from outside the space"
    );
    wait_until(
        Duration::from_secs(10),
        "the three to log the outside beacon",
        || {
            nodes.iter().all(|n| {
                n.log_text()
                    .contains("not in allowed address space: ignoring udp beacon from 10.78.0.4")
            })
        },
    );
    for node in &nodes {
        let log = node.log_text();
        assert!(
            log.contains("beacons_outside_space=1"),
            "{}: {log}",
            node.name
        );
    }

    // Observed a while longer: the three never list the rogue, never try its address; it joins nobody.
    std::thread::sleep(Duration::from_secs(3));
    for node in &nodes {
        let status = node.status(&lab).expect("status");
        assert!(!listed(&status).contains(&"rogue".to_string()), "{status}");
        assert_eq!(status["members"], 3, "{status}");
        let log = node.log_text();
        assert!(
            !log.lines()
                .any(|l| l.contains("discovered") && l.contains("10.78.0.4")),
            "{}: {log}",
            node.name
        );
    }
    let status = rogue.status(&lab).expect("rogue status");
    assert_eq!(status["members"], 1, "{status}");
}

#[test]
fn forged_stale_replayed_and_foreign_beacons_are_refused_and_a_valid_one_is_answered() {
    if !netns::available("forged_stale_replayed_and_foreign_beacons") {
        return;
    }
    let lab = Lab::new(&["10.77.0.1/24", "10.77.0.2/24"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(&lab, 0, dir.path(), "node-a");
    wait_until(
        Duration::from_secs(20),
        "node-a listening for beacons",
        || {
            node.log_text()
                .contains("udp discovery: listening for beacons")
        },
    );

    // From 10.77.0.2 (inside the space), to node-a's address and to the subnet's broadcast address.
    let out = beacons(
        &lab,
        1,
        "10.77.0.2",
        json!([
            { "to": "10.77.0.1", "key": "wrong", "node": "forged", "gossip": "10.77.0.99:10101", "wait_answer_s": 1 },
            { "to": "10.77.0.1", "flip": true, "node": "flipped", "gossip": "10.77.0.98:10101", "wait_answer_s": 1 },
            { "to": "10.77.0.255", "age_ms": 300000, "node": "stale", "gossip": "10.77.0.97:10101", "wait_answer_s": 1 },
            { "to": "10.77.0.255", "service": "other-cluster", "node": "foreign", "gossip": "10.77.0.96:10101", "wait_answer_s": 1 },
            { "to": "10.77.0.255", "node": "py-peer", "gossip": "10.77.0.2:10101", "wait_answer_s": 5 },
            { "to": "10.77.0.1", "replay": true, "node": "py-peer", "gossip": "10.77.0.2:10101", "wait_answer_s": 2 }
        ]),
    );
    assert_eq!(out.len(), 6, "{out:?}");
    assert_eq!(
        &out[..4],
        &[Value::Null, Value::Null, Value::Null, Value::Null],
        "refused beacons are not answered: {out:?}"
    );
    let answer = &out[4];
    assert_eq!(
        answer["authentic"], true,
        "the answer authenticates with the cluster key: {answer}"
    );
    assert_eq!(answer["magic"], "BFCD", "{answer}");
    assert_eq!(answer["version"], 1, "{answer}");
    assert_eq!(answer["kind"], 2, "an answer, not a beacon: {answer}");
    assert_eq!(answer["node_id"], "node-a", "{answer}");
    assert_eq!(answer["service"], "bifrost-cluster", "{answer}");
    assert_eq!(answer["gossip"], "10.77.0.1:10101", "{answer}");
    assert_eq!(answer["from"], format!("10.77.0.1:{UDP_PORT}"), "{answer}");
    assert_eq!(answer["trailing"], 0, "{answer}");
    assert_eq!(
        out[5],
        Value::Null,
        "a replayed beacon is not answered: {out:?}"
    );

    wait_until(
        Duration::from_secs(10),
        "node-a to discover the valid sender",
        || node.log_text().contains("10.77.0.2:10101"),
    );
    let log = node.log_text();
    // Wrong key and flipped bit: refused as unauthenticated (one line per source and reason per minute, the
    // counter shows both); stale: refused with its own line, the counter at 3; foreign: ignored at debug.
    assert!(
        log.contains("udp beacon rejected from 10.77.0.2") && log.contains("authentication failed"),
        "{log}"
    );
    assert!(log.contains("stale beacon"), "{log}");
    assert!(
        log.contains("beacons_rejected=3"),
        "wrong key + flipped bit + stale: {log}"
    );
    assert!(
        log.contains("udp beacon of another service ignored"),
        "{log}"
    );
    assert!(log.contains("replayed udp beacon ignored"), "{log}");
    for refused in ["10.77.0.99", "10.77.0.98", "10.77.0.97", "10.77.0.96"] {
        assert!(!log.contains(refused), "{refused} was recorded: {log}");
    }
    assert!(log.contains("discovered 1 nodes"), "{log}");
}
