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
//! | `bifrost_counter_refusals_total` | counter | of those acquires, the refused ones (over the limit) |
//! | `bifrost_membership_packets_{sent,received,rejected}_total` | counter | |
//! | `bifrost_discovery_runs_total`, `bifrost_discovery_errors_total`, `bifrost_discovery_registration_errors_total` | counter | `method` |
//! | `bifrost_discovery_found` | gauge | `method`: join targets of the last round |
//! | `bifrost_discovery_backend_events_total` | counter | `method`, `event` (e.g. `beacons_rejected`) |
//! | `bifrost_config_entries` | gauge | live cluster-wide config entries |
//! | `bifrost_http_connections_open` | gauge | HTTP connections served now |
//! | `bifrost_http_connections_{accepted,refused,idle_closed}_total`, `bifrost_http_tls_handshake_failures_total` | counter | refused: over `http.max_connections` |
//! | `bifrost_ratelimit_checks_total` | counter | `result` (allowed, over_limit): requests of `POST /v1/ratelimit/check`, one per request however many limits it checks (dry runs are not counted) |
//! | `bifrost_http_rejected_total` | counter | `status` (401, 403, 415), `reason` (missing_token, unknown_token, scope, not_loopback, origin, content_type) |
//! | `bifrost_config_bytes`, `bifrost_config_tombstones` | gauge | live config bytes (keys + values); tombstones held |
//! | `bifrost_config_refused_total` | counter | `reason` (full: no room, retried by anti-entropy; invalid; local_full: answered 507) |
//! | `bifrost_config_tombstones_{collected,evicted}_total` | counter | after their TTL; early, at `limits.config_max_tombstones` |
//! | `bifrost_config_repairs_total`, `bifrost_config_repairs_{resumed,deferred}_total` | counter | digests that differed; answers cut short by the pacing budget; answers delayed to the next pacing window |
//! | `bifrost_state_encode_errors_total`, `bifrost_state_decode_errors_total` | counter | shared-state frames not sent / dropped |
//! | `bifrost_state_refused_total` | counter | `reason` (foreign_record: a health record for another node; sender: unbound link or other sender) |
//! | `bifrost_state_records_truncated_total` | counter | own health records cut to fit one frame |
//! | `bifrost_membership_refused_duplicates` | gauge | live processes refused as duplicates of a member's node id |
//! | `bifrost_membership_local_refused` | gauge | 1 while this process is itself a refused duplicate |
//! | `bifrost_rls_requests_total` | counter | `code` (ok, over_limit, invalid, unauthenticated, permission_denied): `ShouldRateLimit` answers |
//! | `bifrost_rls_unknown_domain_total`, `bifrost_rls_policy_reloads_total{result}`, `bifrost_rls_rules` | counter, counter, gauge | limits-file loads: loaded, refused |
//! | `bifrost_rls_rule_{total_hits,over_limit,near_limit,shadow_mode}_total` | counter | `rule`: the rule's stat key (`domain.key_value.key`), at most 1,000 rules then `_other`; `_override` for Envoy's limit overrides |
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
    counter(
        &mut r,
        "bifrost_counter_refusals",
        "Hot-path acquires of this process that refused (over the limit); also counted in bifrost_counter_calls_total{op=\"acquire\"}",
        calls.refusals,
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
    counter_plane_bounds(&mut r, node, &status);
    shared_state_metrics(&mut r, &status.state);

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
    storage(&mut r, node);
    r
}

// --- storage (issue 16): counter snapshots, present only with `storage.path` ---
//
// | metric | type | labels |
// |---|---|---|
// | `bifrost_storage_snapshot_age_seconds` | gauge | since the snapshot on disk last matched the counters (-1 before the first write) |
// | `bifrost_storage_snapshot_bytes`, `bifrost_storage_snapshot_entries` | gauge | size and values of the last snapshot |
// | `bifrost_storage_snapshot_write_seconds` | gauge | duration of the last write (collect, encode, fsync, rename) |
// | `bifrost_storage_snapshot_writes_total`, `bifrost_storage_snapshot_write_errors_total` | counter | writes done; failed (the previous snapshot kept) |
fn storage(r: &mut Registry, node: &ClusterHandle) {
    let Some(status) = node.storage_status() else {
        return;
    };
    let now = node.clock().now_unix_ms().get();
    let age = if status.last_write_unix_ms == 0 {
        -1
    } else {
        clamp(now.saturating_sub(status.last_write_unix_ms) / 1_000)
    };
    gauge(
        r,
        "bifrost_storage_snapshot_age_seconds",
        "Seconds since the snapshot on disk last matched the counters (-1 before the first write)",
        age,
    );
    gauge(
        r,
        "bifrost_storage_snapshot_bytes",
        "Size of the last snapshot written, in bytes",
        clamp(status.last_bytes),
    );
    gauge(
        r,
        "bifrost_storage_snapshot_entries",
        "Values and floors in the last snapshot written",
        clamp(status.last_entries),
    );
    let write_seconds: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64> =
        prometheus_client::metrics::gauge::Gauge::default();
    write_seconds.set(status.last_write_micros as f64 / 1e6);
    r.register(
        "bifrost_storage_snapshot_write_seconds",
        "Duration of the last snapshot write (collect, encode, write, fsync, rename)",
        write_seconds,
    );
    counter(
        r,
        "bifrost_storage_snapshot_writes",
        "Snapshots written since start",
        status.writes,
    );
    counter(
        r,
        "bifrost_storage_snapshot_write_errors",
        "Snapshot writes that failed (the previous snapshot was kept)",
        status.write_errors,
    );
}

// ---- HTTP security (issue 14): the HTTP listener's own counters.

/// Registers the HTTP surface's counters (connections, rejected requests) in `r`.
pub fn register_http(r: &mut Registry, stats: &super::HttpStats) {
    use std::sync::atomic::Ordering;
    // Statistics: a slightly stale reading is fine.
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter_family(
        r,
        "bifrost_ratelimit_checks",
        "POST /v1/ratelimit/check decisions: allowed or over_limit",
        &[
            (
                label(&[("result", "allowed")]),
                load(&stats.ratelimit_allowed),
            ),
            (
                label(&[("result", "over_limit")]),
                load(&stats.ratelimit_over_limit),
            ),
        ],
    );
    gauge(
        r,
        "bifrost_http_connections_open",
        "HTTP connections served now",
        clamp(load(&stats.connections_open)),
    );
    for (name, help, v) in [
        (
            "bifrost_http_connections_accepted",
            "HTTP connections accepted and served",
            load(&stats.connections_accepted),
        ),
        (
            "bifrost_http_connections_refused",
            "HTTP connections refused because http.max_connections were open",
            load(&stats.connections_refused),
        ),
        (
            "bifrost_http_connections_idle_closed",
            "HTTP connections closed after http.idle_timeout without progress",
            load(&stats.connections_idle_closed),
        ),
        (
            "bifrost_http_tls_handshake_failures",
            "HTTP TLS handshakes that failed or timed out",
            load(&stats.tls_handshake_failures),
        ),
    ] {
        counter(r, name, help, v);
    }
    counter_family(
        r,
        "bifrost_http_rejected",
        "HTTP requests refused by the request gate, by status and reason",
        &[
            ("401", "missing_token", load(&stats.rejected_missing_token)),
            ("401", "unknown_token", load(&stats.rejected_unknown_token)),
            ("403", "scope", load(&stats.rejected_scope)),
            ("403", "not_loopback", load(&stats.rejected_not_loopback)),
            ("403", "origin", load(&stats.rejected_origin)),
            ("415", "content_type", load(&stats.rejected_content_type)),
        ]
        .map(|(status, reason, v)| (label(&[("status", status), ("reason", reason)]), v)),
    );
}

// --- counter plane: key budgets, origin binding, chunked anti-entropy, resets (issue 14) ---
//
// | metric | type | labels |
// |---|---|---|
// | `bifrost_counter_remote_keys` | gauge | cells only merges created (the `limits.max_remote_keys` budget) |
// | `bifrost_counter_key_budget` | gauge | `kind`: `local` (`limits.max_keys`), `remote` (`limits.max_remote_keys`) |
// | `bifrost_counter_origin_budget` | gauge | `limits.max_origins_per_key` |
// | `bifrost_counter_refused_keys_by_kind_total` | counter | `kind`: `local` (`max_keys`), `remote` (`max_remote_keys`) |
// | `bifrost_counter_refused_origins_total` | counter | relayed origins refused at `limits.max_origins_per_key` |
// | `bifrost_counter_resets_total`, `bifrost_counter_floors_raised_total` | counter | resets run here; floors that lowered a count |
// | `bifrost_replication_encode_errors_total` | counter | frames that could not be encoded |
// | `bifrost_replication_forged_entries_total`, `..._forged_frames_total` | counter | values for another origin than the sender's |
// | `bifrost_replication_relays_skipped_total`, `..._relayed_refused_total`, `..._unbound_entries_total` | counter | |
// | `bifrost_replication_floors_{merged,unchanged,dropped,sent}_total`, `..._digest_passes_total` | counter | |
// | `bifrost_replication_resets_{sent,heard,heard_late,repeated,refused,dropped}_total` | counter | reset commands (grouped layouts) |
// | `bifrost_peer_forged_entries_total`, `bifrost_peer_relayed_refused_total` | counter | `peer` |
fn counter_plane_bounds(r: &mut Registry, node: &ClusterHandle, status: &crate::node::NodeStatus) {
    let store = node.store().stats();
    let options = node.store().options();
    gauge_family(
        r,
        "bifrost_counter_key_budget",
        "Configured key budgets: local (limits.max_keys), remote (limits.max_remote_keys)",
        &[
            (label(&[("kind", "local")]), clamp(options.max_keys as u64)),
            (
                label(&[("kind", "remote")]),
                clamp(options.max_remote_keys as u64),
            ),
        ],
    );
    gauge(
        r,
        "bifrost_counter_origin_budget",
        "Configured relayed origins per key and epoch (limits.max_origins_per_key)",
        clamp(options.max_origins_per_key as u64),
    );
    gauge(
        r,
        "bifrost_counter_remote_keys",
        "Counter cells created by merges of other nodes' values (limits.max_remote_keys budget)",
        clamp(store.remote_keys as u64),
    );
    counter_family(
        r,
        "bifrost_counter_refused_keys_by_kind",
        "New keys refused at their budget: local (limits.max_keys) or remote (limits.max_remote_keys)",
        &[
            (label(&[("kind", "local")]), store.refused_local_keys),
            (label(&[("kind", "remote")]), store.refused_remote_keys),
        ],
    );
    counter(
        r,
        "bifrost_counter_refused_origins",
        "Relayed origins refused at limits.max_origins_per_key",
        store.refused_origins,
    );
    counter(
        r,
        "bifrost_counter_resets",
        "Counter resets run on this node",
        store.resets,
    );
    counter(
        r,
        "bifrost_counter_pending_floors_dropped",
        "Reset floors dropped from the replication queue at its cap (anti-entropy still carries them)",
        store.pending_floors_dropped,
    );
    counter(
        r,
        "bifrost_counter_floors_raised",
        "Floors (resets) that lowered an origin's counted value here",
        store.floors_raised,
    );
    let s = &status.replication;
    for (name, help, value) in [
        (
            "bifrost_replication_encode_errors",
            "Frames that could not be encoded (their values travel with a later round)",
            s.encode_errors,
        ),
        (
            "bifrost_replication_forged_entries",
            "Values refused: sent for an origin other than the sending peer's replica id",
            s.forged_entries,
        ),
        (
            "bifrost_replication_forged_frames",
            "Frames refused whole: their sender is not the replica id of their link",
            s.forged_frames,
        ),
        (
            "bifrost_replication_relays_skipped",
            "Relayed values of a linked origin, never merged from a third party (the origin is asked instead)",
            s.relays_skipped,
        ),
        (
            "bifrost_replication_relayed_refused",
            "Relayed values refused at limits.max_relayed_origins_per_peer",
            s.relayed_refused,
        ),
        (
            "bifrost_replication_unbound_entries",
            "Values from a link with no bound replica id, refused",
            s.unbound_entries,
        ),
        (
            "bifrost_replication_floors_merged",
            "Floors received that lowered a count",
            s.floors_merged,
        ),
        (
            "bifrost_replication_floors_unchanged",
            "Floors received that changed nothing",
            s.floors_unchanged,
        ),
        (
            "bifrost_replication_floors_dropped",
            "Floors received for values not held here (offered again by anti-entropy)",
            s.floors_dropped,
        ),
        (
            "bifrost_replication_floors_sent",
            "Floors sent (per peer)",
            s.floors_sent,
        ),
        (
            "bifrost_replication_resets_sent",
            "Reset commands sent in a grouped layout, issued here or passed on (per peer)",
            s.resets_sent,
        ),
        (
            "bifrost_replication_resets_heard",
            "Reset commands heard for the first time: applied here and passed on",
            s.resets_heard,
        ),
        (
            "bifrost_replication_resets_heard_late",
            "Reset commands heard more than a second after they were issued: applied to the own value only",
            s.resets_heard_late,
        ),
        (
            "bifrost_replication_resets_repeated",
            "Copies of reset commands already heard, and stale ones: dropped",
            s.resets_repeated,
        ),
        (
            "bifrost_replication_resets_refused",
            "Reset commands refused: id more than an hour ahead of this node's clock",
            s.resets_refused,
        ),
        (
            "bifrost_replication_resets_dropped",
            "Reset commands issued without a peer, dropped beyond the 4,096 kept",
            s.resets_dropped,
        ),
        (
            "bifrost_replication_digest_passes",
            "Anti-entropy passes over every origin held (a pass spans several digests past max_digest_origins)",
            s.digest_passes,
        ),
    ] {
        counter(r, name, help, value);
    }
    let peer_counter = |f: &dyn Fn(&crate::replication::PeerStats) -> u64| -> Vec<(Labels, u64)> {
        status
            .peers
            .iter()
            .map(|p| (label(&[("peer", &p.node_id)]), f(&p.stats)))
            .collect()
    };
    counter_family(
        r,
        "bifrost_peer_forged_entries",
        "Values the peer sent for an origin other than its own replica id (refused)",
        &peer_counter(&|s| s.forged_entries),
    );
    counter_family(
        r,
        "bifrost_peer_relayed_refused",
        "Relayed values of the peer refused at limits.max_relayed_origins_per_peer",
        &peer_counter(&|s| s.relayed_refused),
    );
}

/// The shared-state plane: config map bounds, repairs, frames refused or not encodable.
fn shared_state_metrics(r: &mut Registry, s: &crate::state::StateStats) {
    gauge(
        r,
        "bifrost_config_bytes",
        "Bytes of live config keys and values (bounded by limits.config_max_bytes)",
        clamp(s.usage.live_bytes as u64),
    );
    gauge(
        r,
        "bifrost_config_tombstones",
        "Config tombstones held (bounded by limits.config_max_tombstones)",
        clamp(s.usage.tombstones as u64),
    );
    counter_family(
        r,
        "bifrost_config_refused",
        "Config entries not stored: replicated ones for want of room (full, offered again by anti-entropy) or for good (invalid), local puts answered 507 (local_full)",
        &[
            (label(&[("reason", "full")]), s.map.refused_full),
            (label(&[("reason", "invalid")]), s.map.refused_invalid),
            (label(&[("reason", "local_full")]), s.local_refused_full),
        ],
    );
    for (name, help, value) in [
        (
            "bifrost_config_tombstones_collected",
            "Config tombstones collected after their TTL",
            s.map.tombstones_collected,
        ),
        (
            "bifrost_config_tombstones_evicted",
            "Config tombstones collected early because limits.config_max_tombstones was reached",
            s.map.tombstones_evicted,
        ),
        (
            "bifrost_config_repairs",
            "Config digests that differed and were repaired",
            s.config_repairs,
        ),
        (
            "bifrost_config_repairs_resumed",
            "Config repairs cut short by the pacing budget, continued in later windows",
            s.repairs_resumed,
        ),
        (
            "bifrost_config_repairs_deferred",
            "Config digests answered late because the peer's pacing window was spent",
            s.repairs_deferred,
        ),
        (
            "bifrost_state_encode_errors",
            "Shared-state frames, entries or records that could not be encoded within the frame limit (not sent)",
            s.encode_errors,
        ),
        (
            "bifrost_state_decode_errors",
            "Shared-state frames dropped because they failed to decode",
            s.decode_errors,
        ),
        (
            "bifrost_state_records_truncated",
            "Own health records whose link list was cut to fit one frame",
            s.records_truncated,
        ),
    ] {
        counter(r, name, help, value);
    }
    counter_family(
        r,
        "bifrost_state_refused",
        "Shared-state input refused: health records for another node than their link (foreign_record), frames from an unbound link or naming another sender (sender)",
        &[
            (label(&[("reason", "foreign_record")]), s.records_refused),
            (label(&[("reason", "sender")]), s.frames_refused),
        ],
    );
}

pub(crate) async fn metrics(
    State(node): State<ClusterHandle>,
    State(http): State<std::sync::Arc<super::HttpStats>>,
) -> impl IntoResponse {
    let mut body = String::new();
    let mut r = registry(&node);
    register_http(&mut r, &http);
    if let Some(rls) = http.rls.get() {
        crate::grpc::register_metrics(&mut r, rls);
    }
    // Writing into a String cannot fail.
    let _ = encode(&mut body, &r);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
