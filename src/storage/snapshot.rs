//! What a snapshot holds and how it goes back into a store.
//!
//! Guarantees:
//! - [`collect`] reads what replication reads ([`CounterStore::local_snapshot`], `remote_snapshot`,
//!   `floor_snapshot`): no lock or atomic of the hot path beyond what a state transfer takes.
//! - [`restore`] is a max-merge: every value goes in under its origin with the per-origin max, every floor with
//!   the floor max. The process's own values of the snapshot go in under the replica id that wrote them, which
//!   is never this process's (a fresh one per start), so loading a snapshot twice, loading a stale one, or
//!   loading one whose values peers also hold, never counts a value twice.
//! - Windows whose length is below `min_window_ms` are left out; months and years are always kept. In-flight
//!   (concurrency) counts are never kept: the processes that held them are gone after a restart.

use std::collections::BTreeMap;

use crate::counter::{CounterStore, DirtyEntry, FloorOutcome, MergeOutcome, Window, is_in_flight};
use crate::wire::{Entry, OriginGroup, OriginKind, WireWindow};

use super::format::{ArchivedSnapshotBody, SnapshotBody};

/// Whether values of `window` are worth a snapshot: its length is at least `min_window_ms` (months and years
/// always are).
pub fn persisted(window: Window, min_window_ms: u64) -> bool {
    window
        .nominal_len_ms()
        .is_none_or(|len| len >= min_window_ms)
}

/// The snapshot of `store` at `now_ms`, written by `node_id` whose store's replica id is `replica_id`.
pub fn collect(
    store: &CounterStore,
    node_id: &str,
    replica_id: u64,
    now_ms: u64,
    min_window_ms: u64,
) -> SnapshotBody {
    // In-flight slots are held by processes that a restart ends: never persisted.
    let keep = |e: &DirtyEntry| persisted(e.window, min_window_ms) && !is_in_flight(&e.key);
    let entry = |e: DirtyEntry| Entry {
        key: e.key.as_ref().to_owned(),
        window: WireWindow::from(e.window),
        epoch: e.epoch,
        value: e.value,
    };
    let mut groups = Vec::new();
    let own: Vec<Entry> = store
        .local_snapshot()
        .into_iter()
        .filter(keep)
        .map(entry)
        .collect();
    if !own.is_empty() {
        groups.push(OriginGroup {
            origin: replica_id,
            kind: OriginKind::Replica,
            entries: own,
        });
    }
    for (kind, values) in [
        (OriginKind::Replica, store.remote_snapshot()),
        (OriginKind::Floor, store.floor_snapshot()),
    ] {
        let mut by_origin: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        for (origin, e) in values.into_iter().filter(|(_, e)| keep(e)) {
            by_origin.entry(origin).or_default().push(entry(e));
        }
        groups.extend(by_origin.into_iter().map(|(origin, entries)| OriginGroup {
            origin,
            kind,
            entries,
        }));
    }
    SnapshotBody {
        node_id: node_id.to_owned(),
        replica_id,
        written_at_ms: now_ms,
        groups,
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Values that raised what the store held.
    pub values: u64,
    /// Values the store already held as high (or higher).
    pub unchanged: u64,
    /// Values of windows that are over (or, after a clock jump back, not started): dropped.
    pub expired: u64,
    /// Values refused by the store's bounds (`limits.max_remote_keys`, key length): dropped, logged by the store.
    pub refused: u64,
    /// Floors that rose.
    pub floors: u64,
    /// Distinct origins in the snapshot.
    pub origins: u64,
    /// Keys (key, window) in the snapshot's own group: what this node counted before it stopped.
    pub own_entries: u64,
    /// When the snapshot was written (Unix ms).
    pub written_at_ms: u64,
}

/// Max-merges `body` into `store` (values first, then floors, which never exceed the values they lower).
/// Groups of this store's own replica id (impossible unless ids collide) and aggregates are skipped.
pub fn restore(store: &CounterStore, body: &ArchivedSnapshotBody) -> RestoreReport {
    let own_id = store.options().replica_id;
    let mut report = RestoreReport {
        written_at_ms: body.written_at_ms.to_native(),
        ..RestoreReport::default()
    };
    let writer = body.replica_id.to_native();
    let mut origins = std::collections::BTreeSet::new();
    for pass in [OriginKind::Replica, OriginKind::Floor] {
        for group in body.groups.iter() {
            let origin = group.origin.to_native();
            let kind = match group.kind {
                crate::wire::ArchivedOriginKind::Replica => OriginKind::Replica,
                crate::wire::ArchivedOriginKind::Floor => OriginKind::Floor,
                crate::wire::ArchivedOriginKind::Aggregate
                | crate::wire::ArchivedOriginKind::AggregateFloor
                | crate::wire::ArchivedOriginKind::Reset => continue,
            };
            if kind != pass || origin == own_id {
                continue;
            }
            origins.insert(origin);
            for e in group.entries.iter() {
                // `decode` checked every window.
                let Ok(window) = e.window.window() else {
                    report.refused += 1;
                    continue;
                };
                let (key, epoch, value) =
                    (e.key.as_str(), e.epoch.to_native(), e.value.to_native());
                if kind == OriginKind::Floor {
                    if store.merge_floor(origin, key, window, epoch, value) == FloorOutcome::Raised
                    {
                        report.floors += 1;
                    }
                    continue;
                }
                if origin == writer {
                    report.own_entries += 1;
                }
                match store.merge_from_origin(origin, key, window, epoch, value) {
                    Ok(MergeOutcome::Raised) => report.values += 1,
                    Ok(MergeOutcome::Unchanged) => report.unchanged += 1,
                    Ok(MergeOutcome::Expired | MergeOutcome::Future) => report.expired += 1,
                    Ok(MergeOutcome::OriginLimit) | Err(_) => report.refused += 1,
                }
            }
        }
    }
    report.origins = origins.len() as u64;
    report
}
