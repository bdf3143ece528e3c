//! `/health`, `/ready` and `/cluster/status`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::membership::{LocalState, MemberInfo};
use crate::node::ClusterHandle;

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(crate) async fn ready(
    State(node): State<ClusterHandle>,
) -> (StatusCode, Json<serde_json::Value>) {
    if node.is_ready() {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "joining" })),
        )
    }
}

/// The body of `GET /cluster/status`.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterStatus {
    /// This node's id (the reference's field).
    local_node: String,
    /// Members this node knows that have not left, itself included (the reference's field).
    members: usize,
    /// Of those, members alive (or suspect) and healthy, itself included (the reference's field).
    healthy_members: usize,
    /// `HEALTHY` or `NOT HEALTHY` (the reference's field; rule in `docs/membership.md`).
    cluster_health: String,
    /// Whether `/ready` answers 200.
    ready: bool,
    /// The healthy member with the lowest node id (work only one node should do).
    leader: Option<String>,
    /// This node in detail.
    local: LocalStatus,
    /// Every other known member in detail, left ones included until forgotten.
    member_details: Vec<MemberStatus>,
    /// Counter snapshots (`null` without `storage.path`).
    storage: Option<crate::node::StorageStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct LocalStatus {
    node_id: String,
    replica_id: String,
    address: Option<String>,
    state: String,
    local_health: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct MemberStatus {
    node_id: String,
    replica_id: String,
    address: String,
    state: &'static str,
    healthy: bool,
    health_reason: String,
    incarnation: u16,
    last_seen_ms: Option<u64>,
    rtt_ms: Option<u64>,
}

impl From<&MemberInfo> for MemberStatus {
    fn from(m: &MemberInfo) -> Self {
        MemberStatus {
            node_id: m.node_id().to_string(),
            replica_id: m.replica_id().to_string(),
            address: m.addr().to_string(),
            state: m.state.as_str(),
            healthy: m.healthy,
            health_reason: m.health_reason.to_string(),
            incarnation: m.incarnation,
            last_seen_ms: m.last_seen_ms,
            rtt_ms: m.rtt_ms,
        }
    }
}

pub(crate) async fn cluster_status(State(node): State<ClusterHandle>) -> Json<ClusterStatus> {
    let ready = node.is_ready();
    let status = match node.members() {
        Some(table) => ClusterStatus {
            local_node: node.node_id().to_string(),
            members: table.member_count(),
            healthy_members: table.healthy_count(),
            cluster_health: table.cluster_health.to_string(),
            ready,
            leader: node.leader(),
            local: LocalStatus {
                node_id: node.node_id().to_string(),
                replica_id: node.replica_id().to_string(),
                address: node.advertised_addr().map(|a| a.to_string()),
                state: table.local.state.to_string(),
                local_health: table.local.local_health,
            },
            member_details: table.members.iter().map(MemberStatus::from).collect(),
            storage: node.storage_status(),
        },
        // Cluster mode off: a healthy cluster of one.
        None => ClusterStatus {
            local_node: node.node_id().to_string(),
            members: 1,
            healthy_members: 1,
            cluster_health: node.cluster_health().to_string(),
            ready,
            leader: node.leader(),
            local: LocalStatus {
                node_id: node.node_id().to_string(),
                replica_id: node.replica_id().to_string(),
                address: None,
                state: LocalState::Alone.to_string(),
                local_health: 0,
            },
            member_details: Vec::new(),
            storage: node.storage_status(),
        },
    };
    Json(status)
}
