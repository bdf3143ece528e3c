//! DNS discovery against a real DNS server on a loopback port (`support::dns_server`): A, AAAA, SRV with and
//! without glue, records added at runtime, names that do not exist, failing and silent nameservers, and three
//! real nodes forming a cluster from SRV records alone. The backend is always pointed at the test server
//! (`dns_nameserver`): no other DNS traffic. Every wait is a bounded poll.
#![cfg(feature = "dns")]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bifrost_cluster::config::{ConfigDuration, DiscoveryConfig, PeerAddr, load_from_str};
use bifrost_cluster::discovery::dns::DnsDiscovery;
use bifrost_cluster::discovery::{Discovery, DiscoveryError, LocalNode};
use bifrost_cluster::membership::{LocalState, MemberState};
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};
use bifrost_cluster::transport::TransportOptions;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

mod support;
use support::dns_server::{Behaviour, DnsServer, Logged, NEGATIVE_TTL, Transport};
use support::{free_port, increment_everywhere_and_converge, wait_for};

const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

fn local() -> LocalNode {
    LocalNode {
        node_id: "tester".into(),
        gossip_addr: "127.0.0.1:1".parse().expect("addr"),
        gossip_port: 1,
        secret: None,
    }
}

fn config(names: &[&str], nameserver: SocketAddr, bind_port: u16) -> DiscoveryConfig {
    DiscoveryConfig {
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        dns_nameserver: Some(PeerAddr::parse(&nameserver.to_string()).expect("nameserver")),
        bind_port,
        dial_timeout: ConfigDuration::from_millis(DIAL_TIMEOUT.as_millis() as u64),
        ..DiscoveryConfig::default()
    }
}

async fn backend(names: &[&str], server: SocketAddr, bind_port: u16) -> DnsDiscovery {
    DnsDiscovery::new(&config(names, server, bind_port), &local())
        .await
        .expect("backend builds")
}

/// One round as the discovery loop runs it: bounded by `dial_timeout`. A round the bound had to cut fails
/// the test (the backend must report its own error first).
async fn round(d: &DnsDiscovery) -> Result<Vec<SocketAddr>, DiscoveryError> {
    tokio::time::timeout(DIAL_TIMEOUT, d.discover())
        .await
        .expect("the round finishes within dial_timeout")
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().expect("addr")).collect()
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

fn asked(server: &DnsServer, name: &str, record_type: RecordType) -> usize {
    server
        .queries()
        .iter()
        .filter(|q| q.name == name && q.record_type == record_type)
        .count()
}

#[tokio::test]
async fn a_records_become_ip_and_bind_port() {
    let server = DnsServer::start().await;
    server.add_a("nodes.cluster.test", Ipv4Addr::new(127, 0, 0, 2), 0);
    server.add_a("nodes.cluster.test", Ipv4Addr::new(127, 0, 0, 3), 0);
    server.add_a("other.cluster.test", Ipv4Addr::new(127, 0, 0, 9), 0);
    let d = backend(&["nodes.cluster.test"], server.addr(), 7000).await;
    assert_eq!(
        sorted(round(&d).await.expect("resolved")),
        addrs(&["127.0.0.2:7000", "127.0.0.3:7000"])
    );
    // Both address families were asked, of the test server only.
    assert_eq!(asked(&server, "nodes.cluster.test", RecordType::A), 1);
    assert_eq!(asked(&server, "nodes.cluster.test", RecordType::AAAA), 1);
    assert_eq!(server.queries().len(), 2, "{:?}", server.queries());

    // The default bind_port is 10101.
    let d = DnsDiscovery::new(
        &DiscoveryConfig {
            bind_port: DiscoveryConfig::default().bind_port,
            ..config(&["other.cluster.test"], server.addr(), 1)
        },
        &local(),
    )
    .await
    .expect("backend");
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.9:10101"])
    );
}

#[tokio::test]
async fn aaaa_records_are_found_alongside_or_without_a_records() {
    let server = DnsServer::start().await;
    server.add_a("dual.cluster.test", Ipv4Addr::LOCALHOST, 0);
    server.add_aaaa("dual.cluster.test", Ipv6Addr::LOCALHOST, 0);
    server.add_aaaa("v6.cluster.test", Ipv6Addr::LOCALHOST, 0);
    server.add_aaaa("v6.cluster.test", "fd00::7".parse().expect("ipv6"), 0);
    let d = backend(&["dual.cluster.test"], server.addr(), 10101).await;
    assert_eq!(
        sorted(round(&d).await.expect("resolved")),
        addrs(&["127.0.0.1:10101", "[::1]:10101"])
    );
    let d = backend(&["v6.cluster.test"], server.addr(), 10101).await;
    assert_eq!(
        sorted(round(&d).await.expect("resolved")),
        addrs(&["[::1]:10101", "[fd00::7]:10101"])
    );
}

#[tokio::test]
async fn srv_records_give_each_target_with_its_port() {
    let server = DnsServer::start().await;
    let srv = "_bifrost._udp.cluster.test";
    server.add_srv(srv, "a.cluster.test", 7001, 0);
    server.add_srv(srv, "b.cluster.test", 7002, 0);
    server.add_srv(srv, "c.cluster.test", 7003, 0);
    server.add_a("a.cluster.test", Ipv4Addr::new(127, 0, 0, 11), 0);
    server.add_a("b.cluster.test", Ipv4Addr::new(127, 0, 0, 12), 0);
    server.add_aaaa("c.cluster.test", Ipv6Addr::LOCALHOST, 0);
    // bind_port must not matter for SRV.
    let d = backend(&[srv], server.addr(), 9).await;
    let expected = addrs(&["127.0.0.11:7001", "127.0.0.12:7002", "[::1]:7003"]);

    // With the targets' addresses in the additional section: one SRV query, nothing else.
    assert_eq!(sorted(round(&d).await.expect("resolved")), expected);
    assert_eq!(
        server.queries(),
        vec![Logged {
            name: srv.into(),
            record_type: RecordType::SRV,
            transport: Transport::Udp
        }]
    );

    // Without them: each target is resolved (A and AAAA).
    server.set_glue(false);
    server.clear_queries();
    assert_eq!(sorted(round(&d).await.expect("resolved")), expected);
    for target in ["a.cluster.test", "b.cluster.test", "c.cluster.test"] {
        assert_eq!(asked(&server, target, RecordType::A), 1, "{target}");
        assert_eq!(asked(&server, target, RecordType::AAAA), 1, "{target}");
    }
}

#[tokio::test]
async fn records_added_at_runtime_are_seen_on_the_next_round() {
    let server = DnsServer::start().await;
    let d = backend(
        &["late.cluster.test", "_bifrost._udp.late.test"],
        server.addr(),
        10101,
    )
    .await;
    // Neither name exists yet: NXDOMAIN with an SOA allowing an hour of negative caching.
    assert_eq!(
        round(&d).await.expect("no records is not an error"),
        Vec::<SocketAddr>::new()
    );
    const { assert!(NEGATIVE_TTL >= 3_600) };

    server.add_a("late.cluster.test", Ipv4Addr::new(127, 0, 0, 5), 0);
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.5:10101"])
    );

    server.add_a("late.cluster.test", Ipv4Addr::new(127, 0, 0, 6), 0);
    server.add_srv("_bifrost._udp.late.test", "n1.late.test", 7001, 0);
    server.add_a("n1.late.test", Ipv4Addr::new(127, 0, 0, 21), 0);
    assert_eq!(
        sorted(round(&d).await.expect("resolved")),
        sorted(addrs(&[
            "127.0.0.5:10101",
            "127.0.0.6:10101",
            "127.0.0.21:7001"
        ]))
    );

    // A node leaving DNS is gone next round too.
    server.remove("late.cluster.test");
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.21:7001"])
    );
}

#[tokio::test]
async fn a_positive_answer_is_reused_for_its_ttl_only() {
    let server = DnsServer::start().await;
    server.add_a("cached.cluster.test", Ipv4Addr::new(127, 0, 0, 2), 3_600);
    server.add_a("fresh.cluster.test", Ipv4Addr::new(127, 0, 0, 3), 0);
    let d = backend(
        &["cached.cluster.test", "fresh.cluster.test"],
        server.addr(),
        10101,
    )
    .await;
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.2:10101", "127.0.0.3:10101"])
    );
    server.add_a("cached.cluster.test", Ipv4Addr::new(127, 0, 0, 4), 3_600);
    server.add_a("fresh.cluster.test", Ipv4Addr::new(127, 0, 0, 5), 0);
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.2:10101", "127.0.0.3:10101", "127.0.0.5:10101"]),
        "the one-hour answer is still valid, the zero-TTL one is asked again"
    );
    assert_eq!(asked(&server, "cached.cluster.test", RecordType::A), 1);
    assert_eq!(asked(&server, "fresh.cluster.test", RecordType::A), 2);
}

#[tokio::test]
async fn a_name_that_does_not_exist_contributes_nothing_and_is_not_an_error() {
    let server = DnsServer::start().await;
    server.add_a("real.cluster.test", Ipv4Addr::new(127, 0, 0, 8), 0);
    // A name that exists with other records only: NOERROR without an answer, the same as NXDOMAIN here.
    server.add_srv("srvonly.cluster.test", "real.cluster.test", 1, 0);
    let d = backend(
        &[
            "missing.cluster.test",
            "_bifrost._udp.missing.test",
            "srvonly.cluster.test",
        ],
        server.addr(),
        10101,
    )
    .await;
    assert_eq!(
        round(&d).await.expect("no records"),
        Vec::<SocketAddr>::new()
    );
    assert_eq!(d.counters(), vec![("lookup_errors", 0)]);

    let d = backend(
        &["missing.cluster.test", "real.cluster.test"],
        server.addr(),
        10101,
    )
    .await;
    assert_eq!(
        round(&d).await.expect("resolved"),
        addrs(&["127.0.0.8:10101"])
    );
}

#[tokio::test]
async fn an_error_code_from_the_nameserver_is_a_bad_answer_naming_name_and_nameserver() {
    let server = DnsServer::start().await;
    server.add_a("broken.cluster.test", Ipv4Addr::new(127, 0, 0, 2), 0);
    let d = backend(&["broken.cluster.test"], server.addr(), 10101).await;
    for (code, text) in [
        (ResponseCode::ServFail, "Server Failure"),
        (ResponseCode::Refused, "Query Refused"),
    ] {
        server.set_behaviour("broken.cluster.test", Behaviour::Fail(code));
        let error = round(&d)
            .await
            .expect_err("an error code is not 'no records'");
        assert!(
            matches!(error, DiscoveryError::BadAnswer { backend: "dns", .. }),
            "{error:?}"
        );
        let text_of = error.to_string();
        for needle in [
            "\"broken.cluster.test\"",
            text,
            &server.addr().to_string(),
            "dns lookup error",
        ] {
            assert!(
                text_of.contains(needle),
                "{needle:?} missing from {text_of}"
            );
        }
    }

    // Partial failure: what resolved is returned, the failing name is counted (and logged).
    server.add_a("good.cluster.test", Ipv4Addr::new(127, 0, 0, 3), 0);
    let d = backend(
        &["broken.cluster.test", "good.cluster.test"],
        server.addr(),
        10101,
    )
    .await;
    assert_eq!(
        round(&d).await.expect("partial success"),
        addrs(&["127.0.0.3:10101"])
    );
    assert_eq!(d.counters(), vec![("lookup_errors", 2)], "its A and AAAA");
    server.set_behaviour("broken.cluster.test", Behaviour::Answer);
    assert_eq!(
        round(&d).await.expect("recovered"),
        addrs(&["127.0.0.2:10101", "127.0.0.3:10101"])
    );
}

#[tokio::test]
async fn a_nameserver_that_does_not_answer_is_unreachable_within_dial_timeout() {
    // Nothing listens on this port.
    let nobody: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let d = backend(&["a.cluster.test", "_b._udp.cluster.test"], nobody, 10101).await;
    let started = Instant::now();
    let error = round(&d).await.expect_err("nothing answers");
    let took = started.elapsed();
    eprintln!("nothing listening: {error} after {took:?}");
    assert!(
        matches!(&error, DiscoveryError::Unreachable { backend: "dns", target, .. }
            if target.contains(&nobody.to_string())),
        "{error:?}"
    );
    for needle in ["\"a.cluster.test\"", "\"_b._udp.cluster.test\"", "(SRV)"] {
        assert!(error.to_string().contains(needle), "{needle}: {error}");
    }

    // A server that receives the queries and never answers.
    let server = DnsServer::start().await;
    server.add_a("a.cluster.test", Ipv4Addr::LOCALHOST, 0);
    server.set_behaviour_all(Some(Behaviour::Silent));
    let d = backend(&["a.cluster.test"], server.addr(), 10101).await;
    let started = Instant::now();
    let error = round(&d).await.expect_err("silence");
    let took = started.elapsed();
    eprintln!("silent server: {error} after {took:?}");
    assert!(
        matches!(&error, DiscoveryError::Unreachable { backend: "dns", target, .. }
            if target.contains(&server.addr().to_string())),
        "{error:?}"
    );
    assert!(error.to_string().contains("no answer within"), "{error}");
    assert!(
        took >= d.round_budget(),
        "it waited for the answer: {took:?}"
    );
    assert!(asked(&server, "a.cluster.test", RecordType::A) >= 1);

    // Once the server answers again, so does discovery.
    server.set_behaviour_all(None);
    assert_eq!(
        round(&d).await.expect("answers again"),
        addrs(&["127.0.0.1:10101"])
    );
}

#[tokio::test]
async fn the_test_server_answers_over_tcp_too() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = DnsServer::start().await;
    server.add_a("tcp.cluster.test", Ipv4Addr::new(127, 0, 0, 4), 0);
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("tcp.cluster.test.").expect("name"),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("encode");
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    stream
        .write_u16(u16::try_from(bytes.len()).expect("len"))
        .await
        .expect("write");
    stream.write_all(&bytes).await.expect("write");
    let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .expect("answer in time")
        .expect("read");
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.expect("read");
    let answer = Message::from_vec(&buf).expect("decode");
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert_eq!(answer.answers.len(), 1);
    assert!(matches!(answer.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 0, 0, 4)));
    assert_eq!(server.queries()[0].transport, Transport::Tcp);
}

// ---- end to end: three nodes find each other through SRV records ----

const SECRET: &str = "ZjVSicobzKaYLFzjQJkvCms6diMnBuQjGstRXv4xqJs=";
const SRV_NAME: &str = "_bifrost._udp.cluster.test";

fn node_config(
    node: &str,
    port: u16,
    nameserver: SocketAddr,
) -> bifrost_cluster::config::ClusterConfig {
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}",
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "replication": {{ "anti_entropy_interval": "1s" }},
            "http": {{ "listen": "127.0.0.1:0" }},
            "discovery": {{
                "enabled": true, "type": "dns", "dns_names": ["{SRV_NAME}"],
                "dns_nameserver": "{nameserver}", "interval": "1s", "dial_timeout": "2s"
            }}
        }} }}"#
    );
    load_from_str(&text).expect("valid test config").config
}

fn alive_members(node: &ClusterHandle) -> usize {
    let Some(table) = node.members() else {
        return 0;
    };
    if table.local.state != LocalState::Joined {
        return 0;
    }
    1 + table
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_from_srv_records_and_converge_exactly() {
    let server = DnsServer::start().await;
    let ports = [free_port(), free_port(), free_port()];
    for (i, port) in ports.iter().enumerate() {
        let target = format!("node-{i}.cluster.test");
        server.add_srv(SRV_NAME, &target, *port, 0);
        server.add_a(&target, Ipv4Addr::LOCALHOST, 0);
    }
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        // No static peers: the SRV records are the only way to find the others.
        let node = Cluster::start_with(
            node_config(&format!("node-{i}"), *port, server.addr()),
            NodeOptions {
                bind_ip: Ipv4Addr::LOCALHOST.into(),
                env_secret: None,
                transport: TransportOptions::default(),
                membership: None,
                discovery_overrides: Default::default(),
            },
        )
        .await
        .expect("node starts");
        nodes.push(node);
    }
    let took = wait_for(
        Duration::from_secs(30),
        "every member table to show 3 alive",
        || nodes.iter().all(|n| alive_members(n) == 3),
    )
    .await;
    eprintln!("3 alive everywhere after {took:?}");
    for node in &nodes {
        let table = node.members().expect("cluster mode");
        let mut ids: Vec<&str> = table.members.iter().map(|m| m.node_id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2, "{table:?}");
    }
    assert!(asked(&server, SRV_NAME, RecordType::SRV) >= 3);
    assert!(
        server
            .queries()
            .iter()
            .all(|q| q.name == SRV_NAME && q.record_type == RecordType::SRV),
        "targets came from the additional section: {:?}",
        server.queries()
    );

    wait_for(Duration::from_secs(15), "a link to each peer", || {
        nodes.iter().all(|n| n.peers().len() == 2)
    })
    .await;
    let (_, took) = increment_everywhere_and_converge(
        &nodes,
        &["vk/dns-a", "budget/dns-b"],
        5_000,
        Duration::from_secs(15),
    )
    .await;
    eprintln!("exact totals everywhere {took:?} after the last increment");
    for node in &nodes {
        node.shutdown().await;
    }
}
