//! Every mapping from the validated [`ClusterConfig`] to the options of the planes, in one place, and the
//! builder of a node's [`NodeMachine`] from them. The running node and the whole-node simulator build their
//! machines here, so the simulator runs the configuration a node would run.

use std::net::SocketAddr;
use std::sync::Arc;

use super::join::JoinSchedule;
use super::machine::startup::{MAX_STARTUP_ADMISSION_MS, StartupAdmission};
use super::machine::{MachineParts, NodeMachine, ProcessProbe};
use crate::ReplicaId;
use crate::config::{ClusterConfig, LimitsConfig};
use crate::counter::{CoarseClock, CounterStore, StoreOptions};
use crate::membership::{LocalIdentity, Membership, MembershipError, MembershipOptions};
use crate::replication::{Replicator, ReplicatorOptions, TopologyOptions};
use crate::state::{ConfigMapOptions, StateOptions, StateReplicator, TrafficRecorder};

/// The counter store's options for this node. The store names this replica's own origin by the number inside
/// `replica_id` (the counter plane keys origins by `u64`: aggregate ids are origins too).
pub(crate) fn store_options(
    config: &ClusterConfig,
    replica_id: ReplicaId,
    hash_seed: u64,
    clock: Arc<CoarseClock>,
) -> StoreOptions {
    let l = &config.limits;
    StoreOptions {
        max_keys: l.max_keys,
        max_remote_keys: l.remote_keys(),
        max_origins_per_key: l.max_origins_per_key,
        max_key_length: l.max_key_length,
        replica_id: replica_id.get(),
        hash_seed,
        clock,
        predict_remote: config.replication.predict_remote,
        ..StoreOptions::default()
    }
}

/// The counter replicator's options (`replication`, the data-plane check timeout of `gossip.config`, and the
/// relay cap of `limits`).
pub(crate) fn replicator_options(config: &ClusterConfig) -> ReplicatorOptions {
    ReplicatorOptions {
        flush_interval_ms: config.replication.flush_interval.as_millis(),
        anti_entropy_interval_ms: config.replication.anti_entropy_interval.as_millis(),
        max_batch_bytes: config.replication.max_batch_bytes,
        check_timeout_ms: u64::from(config.gossip.config.timeout_seconds) * 1000,
        max_relayed_origins_per_peer: config.limits.max_relayed_origins_per_peer,
        ..ReplicatorOptions::default()
    }
}

/// The layout options of `replication` (full mesh below `full_mesh_below`, groups above).
pub(crate) fn topology_options(config: &ClusterConfig) -> TopologyOptions {
    TopologyOptions {
        full_mesh_below: config.replication.full_mesh_below,
        publishers_per_group: config.replication.publishers_per_group,
    }
}

/// The shared-state plane's options (the config map's bounds of `limits`).
pub(crate) fn state_options(limits: &LimitsConfig) -> StateOptions {
    let defaults = StateOptions::default();
    StateOptions {
        config: ConfigMapOptions {
            max_entries: limits.config_max_entries,
            max_bytes: limits.config_max_bytes,
            max_tombstones: limits.config_max_tombstones,
            ..defaults.config.clone()
        },
        ..defaults
    }
}

/// The membership plane's options: `gossip.config`'s mapping unless an override is given.
pub(crate) fn membership_options(
    config: &ClusterConfig,
    overridden: Option<&MembershipOptions>,
) -> MembershipOptions {
    overridden
        .cloned()
        .unwrap_or_else(|| MembershipOptions::from(&config.gossip.config))
}

/// The start-up join schedule: peers are expected when the config names some or enables discovery; the
/// failure is reported after `discovery.dial_timeout`.
pub(crate) fn join_schedule(config: &ClusterConfig, now_ms: u64) -> JoinSchedule {
    JoinSchedule::new(
        !config.peers.is_empty() || config.discovery.enabled,
        config.discovery.dial_timeout.as_millis(),
        now_ms,
    )
}

/// Random seeds a machine needs (each plane its own).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineSeeds {
    pub(crate) replicator: u64,
    pub(crate) membership: u64,
    pub(crate) state: u64,
}

/// Who the node is.
#[derive(Debug, Clone)]
pub(crate) struct MachineIdentity {
    pub(crate) node_id: String,
    pub(crate) replica_id: ReplicaId,
    pub(crate) advertised: SocketAddr,
}

/// What a machine is besides its config: who it is, its membership options and its seeds.
#[derive(Debug, Clone)]
pub(crate) struct MachineSetup {
    pub(crate) identity: MachineIdentity,
    pub(crate) membership: MembershipOptions,
    pub(crate) seeds: MachineSeeds,
}

/// Builds a node's machine over `store` from `config`.
pub(crate) fn build_machine(
    config: &ClusterConfig,
    setup: MachineSetup,
    store: &CounterStore,
    traffic: TrafficRecorder,
    probe: Box<dyn ProcessProbe>,
    now_ms: u64,
) -> Result<NodeMachine, MembershipError> {
    let MachineSetup {
        identity,
        membership,
        seeds,
    } = setup;
    let replicator = Replicator::new(
        store.clone(),
        identity.replica_id,
        replicator_options(config),
        seeds.replicator,
        now_ms,
    );
    let membership = Membership::new(
        LocalIdentity::new(&identity.node_id, identity.replica_id, identity.advertised),
        membership,
        seeds.membership,
        now_ms,
    )?;
    let state = StateReplicator::new(
        &identity.node_id,
        identity.replica_id,
        state_options(&config.limits),
        seeds.state,
        now_ms,
    );
    Ok(NodeMachine::new(
        MachineParts {
            replicator,
            state,
            membership,
            join: join_schedule(config, now_ms),
            traffic,
            probe,
            topology: topology_options(config),
            startup: StartupAdmission::new(
                store.clone(),
                config.peers.len(),
                !config.peers.is_empty() || config.discovery.enabled,
                config.replication.full_mesh_below / 2,
                MAX_STARTUP_ADMISSION_MS,
                now_ms,
            ),
        },
        now_ms,
    ))
}
