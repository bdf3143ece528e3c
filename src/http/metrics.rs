//! `GET /metrics`: Prometheus text exposition (OpenMetrics), rendered on each scrape from the node's snapshots,
//! so nothing on the hot path or in the planes pays for metrics.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `bifrost_members` | gauge | `state` (alive, suspect, down, left), `healthy` — this node included |
//! | `bifrost_cluster_healthy` | gauge | 1 when `cluster_health` is HEALTHY |
//! | `bifrost_replication_{batches,bytes}_{sent,received}_total` | counter | |
//! | `bifrost_replication_entries_{merged,unchanged,expired,refused}_total` | counter | |
//! | `bifrost_replication_decode_errors_total`, `..._anti_entropy_repairs_total`, `..._checks_{sent,answered,timed_out}_total` | counter | |
//! | `bifrost_peer_{batches,bytes}_{sent,received}_total`, `bifrost_peer_sequence_gaps_total` | counter | `peer` |
//! | `bifrost_peer_lag_ms`, `bifrost_peer_check_rtt_ms` | gauge | `peer` |
//! | `bifrost_counter_keys` | gauge | |
//! | `bifrost_counter_refused_keys_total`, `..._invalid_keys_total`, `..._stale_adds_total` | counter | |
//! | `bifrost_counter_calls_total` | counter | `op` (add, acquire): hot-path calls of this process |
//! | `bifrost_membership_packets_{sent,received,rejected}_total` | counter | |
//! | `bifrost_discovery_runs_total`, `bifrost_discovery_errors_total`, `bifrost_discovery_registration_errors_total` | counter | `method` |
//! | `bifrost_discovery_found` | gauge | `method`: join targets of the last round |
//! | `bifrost_discovery_backend_events_total` | counter | `method`, `event` (e.g. `beacons_rejected`) |
//! | `bifrost_config_entries` | gauge | live cluster-wide config entries |
//! | `bifrost_membership_refused_duplicates` | gauge | live processes refused as duplicates of a member's node id |
//! | `bifrost_membership_local_refused` | gauge | 1 while this process is itself a refused duplicate |
//! | `bifrost_transport_handshakes_refused_total` | counter | `direction` (incoming, outgoing), `reason` (no_certificate, unknown_ca, bad_signature, expired, bad_certificate, wrong_alpn, handshake, timeout, closed, other) |

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counter::call_counts;
use crate::membership::{ClusterHealth, LocalState, MemberState};
use crate::node::ClusterHandle;

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter_family(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let f: Family<Labels, Counter> = Family::default();
    for (labels, v) in values {
        f.get_or_create(labels).inc_by(*v);
    }
    registry.register(name, help, f);
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]) {
    let f: Family<Labels, Gauge> = Family::default();
    for (labels, v) in values {
        f.get_or_create(labels).set(*v);
    }
    registry.register(name, help, f);
}

/// Label pairs, values escaped as the text format requires (`\\`, `\"`, `\n`): prometheus-client writes
/// them as given, and a peer's node id reaches a label.
fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut escaped = String::with_capacity(v.len());
            for c in v.chars() {
                match c {
                    '\\' => escaped.push_str("\\\\"),
                    '"' => escaped.push_str("\\\""),
                    '\n' => escaped.push_str("\\n"),
                    c => escaped.push(c),
                }
            }
            (k.to_string(), escaped)
        })
        .collect()
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The registry of one scrape.
pub fn registry(node: &ClusterHandle) -> Registry {
    let mut r = Registry::default();
    let status = node.status();

    // Members by state and health, this node included.
    let mut members: Vec<(Labels, i64)> = Vec::new();
    let mut add = |state: &str, healthy: bool| {
        let labels = label(&[
            ("state", state),
            ("healthy", if healthy { "true" } else { "false" }),
        ]);
        match members.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, n)) => *n += 1,
            None => members.push((labels, 1)),
        }
    };
    match node.members() {
        Some(table) => {
            if matches!(table.local.state, LocalState::Joined | LocalState::Alone) {
                add("alive", true);
            }
            for m in &table.members {
                let state = match m.state {
                    MemberState::Alive => "alive",
                    MemberState::Suspect => "suspect",
                    MemberState::Down => "down",
                    MemberState::Left => "left",
                };
                add(state, m.healthy);
            }
        }
        None => add("alive", true),
    }
    gauge_family(
        &mut r,
        "bifrost_members",
        "Members by SWIM state and health, this node included",
        &members,
    );
    gauge(
        &mut r,
        "bifrost_cluster_healthy",
        "1 when cluster health is HEALTHY",
        i64::from(node.cluster_health() == ClusterHealth::Healthy),
    );

    let s = &status.replication;
    for (name, help, v) in [
        (
            "bifrost_replication_batches_sent",
            "Delta batches packed",
            s.batches_sent,
        ),
        (
            "bifrost_replication_batches_received",
            "Delta batches received",
            s.batches_received,
        ),
        (
            "bifrost_replication_bytes_sent",
            "Replication bytes queued for sending",
            s.bytes_sent,
        ),
        (
            "bifrost_replication_bytes_received",
            "Replication bytes received",
            s.bytes_received,
        ),
        (
            "bifrost_replication_entries_merged",
            "Remote values that raised what this node held",
            s.entries_merged,
        ),
        (
            "bifrost_replication_entries_unchanged",
            "Remote values already held",
            s.entries_unchanged,
        ),
        (
            "bifrost_replication_entries_expired",
            "Remote values for windows already over",
            s.entries_expired,
        ),
        (
            "bifrost_replication_entries_refused",
            "Remote values refused by the store",
            s.entries_refused,
        ),
        (
            "bifrost_replication_decode_errors",
            "Frames dropped because they failed to decode",
            s.decode_errors,
        ),
        (
            "bifrost_replication_anti_entropy_repairs",
            "Digests that found a difference",
            s.anti_entropy_repairs,
        ),
        (
            "bifrost_replication_checks_sent",
            "Data-plane checks sent",
            s.checks_sent,
        ),
        (
            "bifrost_replication_checks_answered",
            "Data-plane checks answered",
            s.checks_answered,
        ),
        (
            "bifrost_replication_checks_timed_out",
            "Data-plane checks unanswered within the timeout",
            s.checks_timed_out,
        ),
    ] {
        counter(&mut r, name, help, v);
    }

    let peer_counter = |f: &dyn Fn(&crate::replication::PeerStats) -> u64| -> Vec<(Labels, u64)> {
        status
            .peers
            .iter()
            .map(|p| (label(&[("peer", &p.node_id)]), f(&p.stats)))
            .collect()
    };
    counter_family(
        &mut r,
        "bifrost_peer_batches_sent",
        "Delta batches sent to the peer",
        &peer_counter(&|s| s.batches_sent),
    );
    counter_family(
        &mut r,
        "bifrost_peer_batches_received",
        "Delta batches received from the peer",
        &peer_counter(&|s| s.batches_received),
    );
    counter_family(
        &mut r,
        "bifrost_peer_bytes_sent",
        "Bytes sent to the peer",
        &peer_counter(&|s| s.bytes_sent),
    );
    counter_family(
        &mut r,
        "bifrost_peer_bytes_received",
        "Bytes received from the peer",
        &peer_counter(&|s| s.bytes_received),
    );
    counter_family(
        &mut r,
        "bifrost_peer_sequence_gaps",
        "Delta batches of the peer that never arrived",
        &peer_counter(&|s| s.sequence_gaps),
    );
    let peer_gauge = |f: &dyn Fn(&crate::replication::PeerStats) -> u64| -> Vec<(Labels, i64)> {
        status
            .peers
            .iter()
            .map(|p| (label(&[("peer", &p.node_id)]), clamp(f(&p.stats))))
            .collect()
    };
    gauge_family(
        &mut r,
        "bifrost_peer_lag_ms",
        "Replication lag of the peer's last batch (clock skew included)",
        &peer_gauge(&|s| s.lag_ms),
    );
    gauge_family(
        &mut r,
        "bifrost_peer_check_rtt_ms",
        "Round trip of the last answered data-plane check",
        &peer_gauge(&|s| s.check_rtt_ms),
    );

    let store = node.store().stats();
    gauge(
        &mut r,
        "bifrost_counter_keys",
        "Counter cells held",
        clamp(store.keys as u64),
    );
    counter(
        &mut r,
        "bifrost_counter_refused_keys",
        "New keys refused at limits.max_keys",
        store.refused_keys,
    );
    counter(
        &mut r,
        "bifrost_counter_invalid_keys",
        "Keys refused as empty or too long",
        store.invalid_keys,
    );
    counter(
        &mut r,
        "bifrost_counter_stale_adds",
        "Adds refused because their window had left the ring",
        store.stale_adds,
    );
    let calls = call_counts();
    counter_family(
        &mut r,
        "bifrost_counter_calls",
        "Hot-path calls of this process",
        &[
            (label(&[("op", "add")]), calls.adds),
            (label(&[("op", "acquire")]), calls.acquires),
        ],
    );

    let m = &status.membership;
    counter(
        &mut r,
        "bifrost_membership_packets_sent",
        "Membership packets sent",
        m.packets_sent,
    );
    counter(
        &mut r,
        "bifrost_membership_packets_received",
        "Membership packets received",
        m.packets_received,
    );
    counter(
        &mut r,
        "bifrost_membership_packets_rejected",
        "Membership packets refused",
        m.packets_rejected,
    );

    let discovery = node.discovery_stats();
    let by_method = |f: &dyn Fn(&crate::node::DiscoveryMethodStats) -> u64| -> Vec<(Labels, u64)> {
        discovery
            .iter()
            .map(|d| (label(&[("method", d.method)]), f(d)))
            .collect()
    };
    counter_family(
        &mut r,
        "bifrost_discovery_runs",
        "Discovery rounds run",
        &by_method(&|d| d.runs),
    );
    counter_family(
        &mut r,
        "bifrost_discovery_errors",
        "Discovery rounds that failed",
        &by_method(&|d| d.errors),
    );
    counter_family(
        &mut r,
        "bifrost_discovery_registration_errors",
        "Registrations that failed",
        &by_method(&|d| d.registration_errors),
    );
    gauge_family(
        &mut r,
        "bifrost_discovery_found",
        "Join targets the last successful round found",
        &discovery
            .iter()
            .map(|d| (label(&[("method", d.method)]), clamp(d.last_found as u64)))
            .collect::<Vec<_>>(),
    );
    counter_family(
        &mut r,
        "bifrost_discovery_backend_events",
        "Method-specific counters",
        &discovery
            .iter()
            .flat_map(|d| {
                d.backend
                    .iter()
                    .map(|(event, v)| (label(&[("method", d.method), ("event", event)]), *v))
            })
            .collect::<Vec<_>>(),
    );
    gauge(
        &mut r,
        "bifrost_config_entries",
        "Live cluster-wide config entries",
        clamp(node.config_entries().len() as u64),
    );

    // ---- Identity: duplicate node ids (issue 14, docs/membership.md "Duplicate node ids") ----
    if let Some(table) = node.members() {
        gauge(
            &mut r,
            "bifrost_membership_refused_duplicates",
            "Live processes refused as duplicates of a member's node id",
            clamp(table.refused.len() as u64),
        );
        gauge(
            &mut r,
            "bifrost_membership_local_refused",
            "1 while this process is a refused duplicate: a live member holds its node id",
            i64::from(table.local.refused_by.is_some()),
        );
    }
    // ---- end of identity block ----

    // ---- Transport: refused handshakes (issue 14, docs/transport.md "Refused handshakes") ----
    if node.members().is_some() {
        let refused = node.transport_refusals();
        let mut values: Vec<(Labels, u64)> = Vec::new();
        for direction in crate::transport::Direction::ALL {
            for reason in crate::transport::RefusalReason::ALL {
                let n = refused
                    .iter()
                    .find(|(d, r, _)| *d == direction && *r == reason)
                    .map_or(0, |(_, _, n)| *n);
                values.push((
                    label(&[
                        ("direction", direction.as_str()),
                        ("reason", reason.as_str()),
                    ]),
                    n,
                ));
            }
        }
        counter_family(
            &mut r,
            "bifrost_transport_handshakes_refused",
            "TLS/QUIC handshakes refused or failed, by direction and reason",
            &values,
        );
    }
    // ---- end of transport block ----
    r
}

pub(crate) async fn metrics(State(node): State<ClusterHandle>) -> impl IntoResponse {
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut body, &registry(&node));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
