//! The replicator's side of two-level aggregation (sans-IO): what a node publishes for its group and what it
//! relays to it, given the [`Topology`] the node runtime passes in.
//!
//! Guarantees:
//! - Without a grouped topology nothing here acts: the replicator runs the full mesh.
//! - A publisher publishes, at the next flush, the group total of every key whose own-group values changed
//!   (its own changes and values merged from group peers), and every anti-entropy interval the totals of every
//!   key its group holds (so a lost datagram or a new partner is repaired within one interval).
//! - A publisher that merges an aggregate from another group's publisher sends every group peer, at the next
//!   aggregate interval, the rest aggregate of that key (what it counts for every replica outside its group),
//!   whatever the merge did (a duplicate is harmless, and a group peer that missed one gets the next). Keys are
//!   coalesced: one entry per key and interval, however many groups changed.
//! - Both queues hold keys, at most one entry per `(key, window, epoch)`, and are drained by at most
//!   `max_cells_per_flush` entries per interval: what does not fit waits. The rest queue is also bounded by
//!   `max_cells_per_flush` keys: a key beyond it is dropped and counted (the other groups' publishers' periodic
//!   refresh brings it again).

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::ReplicaId;
use crate::counter::{AggregateId, CounterStore, Window};
use crate::wire::{Entry, WireWindow};

use super::topology::{Layout, Topology};

/// One `(key, window, epoch)` whose group total must be published.
type KeyEpoch = (Arc<str>, Window, u64);

/// A queue of `(key, window, epoch)`, each at most once, taken in key order (then window, then epoch: the order
/// of the tuples). A lookup or a repeated insert by `&str` allocates nothing; a new key is stored as an `Arc`.
#[derive(Debug, Default)]
struct DueKeys {
    /// Per key its windows and epochs, sorted.
    keys: BTreeMap<Arc<str>, SmallVec<[(Window, u64); 2]>>,
    /// Entries over all keys.
    len: usize,
}

impl DueKeys {
    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.len = 0;
    }

    fn contains(&self, key: &str, window: Window, epoch: u64) -> bool {
        self.keys
            .get(key)
            .is_some_and(|due| due.binary_search(&(window, epoch)).is_ok())
    }

    /// Queues `(key, window, epoch)` unless it is queued already.
    fn insert<K: AsRef<str> + Into<Arc<str>>>(&mut self, key: K, window: Window, epoch: u64) {
        let item = (window, epoch);
        if let Some(due) = self.keys.get_mut(key.as_ref()) {
            if let Err(at) = due.binary_search(&item) {
                due.insert(at, item);
                self.len += 1;
            }
            return;
        }
        self.keys.insert(key.into(), SmallVec::from_elem(item, 1));
        self.len += 1;
    }

    /// Takes the first entry in order.
    fn pop_first(&mut self) -> Option<KeyEpoch> {
        let mut first = self.keys.first_entry()?;
        let (window, epoch) = first.get_mut().remove(0);
        let key = if first.get().is_empty() {
            first.remove_entry().0
        } else {
            Arc::clone(first.key())
        };
        self.len -= 1;
        Some((key, window, epoch))
    }
}

/// What this node publishes and relays.
#[derive(Debug, Default)]
pub(crate) struct Aggregation {
    topology: Option<Topology>,
    /// Keys whose group total changed since the last publish (publishers only).
    publish: DueKeys,
    /// Keys whose rest aggregate is due for the group peers (publishers only).
    rest: DueKeys,
    /// A full rest queue was logged (once).
    rest_cap_logged: bool,
}

impl Aggregation {
    /// The topology in force (`None`: the full mesh, as before any was set).
    pub(crate) fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Whether the layout is grouped.
    pub(crate) fn grouped(&self) -> bool {
        self.topology
            .as_ref()
            .is_some_and(|t| matches!(t.layout(), Layout::Grouped { .. }))
    }

    /// A new topology. Returns true when this node starts publishing (or publishes for another group), so the
    /// caller queues a full refresh.
    pub(crate) fn set_topology(&mut self, topology: Topology) -> bool {
        let was = self
            .topology
            .as_ref()
            .filter(|t| t.is_publisher())
            .and_then(Topology::own_group);
        let now = Some(&topology)
            .filter(|t| t.is_publisher())
            .and_then(|t| t.own_group());
        if now.is_none() {
            self.publish.clear();
        }
        if !topology.sends_rests() {
            self.rest.clear();
        }
        self.topology = Some(topology);
        now.is_some() && now != was
    }

    /// Whether replica `replica` gets this node's own values: a group peer, or anyone in the full mesh. The
    /// replicator names peers by the number inside their [`ReplicaId`] (its origin); this is where it converts.
    pub(crate) fn gets_deltas(&self, replica: u64) -> bool {
        match &self.topology {
            Some(t) if matches!(t.layout(), Layout::Grouped { .. }) => {
                t.delta_peers().contains(&ReplicaId::new(replica))
            }
            _ => true,
        }
    }

    /// Whether replica `replica` is one of this node's partners (it gets the published aggregates).
    pub(crate) fn is_partner(&self, replica: u64) -> bool {
        self.topology
            .as_ref()
            .is_some_and(|t| t.partners().any(|p| p.get() == replica))
    }

    /// This node's group, when it publishes it.
    pub(crate) fn publishing(&self) -> Option<AggregateId> {
        self.topology
            .as_ref()
            .filter(|t| t.is_publisher())
            .and_then(Topology::own_group)
    }

    /// A value of `origin` for `(key, window, epoch)` changed here (its own, or merged from `origin`'s link):
    /// when `origin` is in this node's group and this node publishes, its group total is due. The key becomes
    /// an `Arc` only when it is not queued yet (a store key is passed as its `Arc`, a wire key as `&str`).
    pub(crate) fn value_changed<K: AsRef<str> + Into<Arc<str>>>(
        &mut self,
        origin: u64,
        key: K,
        window: Window,
        epoch: u64,
    ) {
        if let Some(group) = self.publishing()
            && group.contains(origin)
        {
            self.publish.insert(key, window, epoch);
        }
    }

    /// Queues every key of the own group's values (the periodic refresh): `keys` is what the store holds for
    /// the group's origins.
    pub(crate) fn refresh(&mut self, keys: impl IntoIterator<Item = KeyEpoch>) {
        if self.publishing().is_some() {
            for (key, window, epoch) in keys {
                self.publish.insert(key, window, epoch);
            }
        }
    }

    /// Whether an aggregate of `id` from replica `sender` is accepted (see [`Topology::accepts_aggregate`]);
    /// none are without a grouped topology.
    pub(crate) fn accepts(&self, sender: u64, id: AggregateId) -> bool {
        self.grouped()
            && self
                .topology
                .as_ref()
                .is_some_and(|t| t.accepts_aggregate(ReplicaId::new(sender), id))
    }

    /// An accepted aggregate `id` of `(key, window, epoch)` was merged: a group aggregate makes the key's rest
    /// due for the group peers when this node sends rests. Returns false when the rest queue is full (`cap`
    /// keys) and the key was dropped.
    pub(crate) fn arrived(
        &mut self,
        id: AggregateId,
        key: &str,
        window: Window,
        epoch: u64,
        cap: usize,
    ) -> bool {
        if id.is_rest() || !self.topology.as_ref().is_some_and(Topology::sends_rests) {
            return true;
        }
        if self.rest.contains(key, window, epoch) {
            return true;
        }
        if self.rest.len() >= cap {
            if !self.rest_cap_logged {
                self.rest_cap_logged = true;
                tracing::warn!(
                    cap,
                    "aggregate rest queue full (replication.max_cells_per_flush keys): further keys are dropped \
                     until the next interval; the other groups' refresh brings them again (logged once; counted \
                     in aggregates_dropped)"
                );
            }
            return false;
        }
        self.rest.insert(key, window, epoch);
        true
    }

    /// Up to `max` group totals due for publishing, as wire entries of this node's group (empty unless it
    /// publishes).
    pub(crate) fn take_publish(&mut self, store: &CounterStore, max: usize) -> Option<Due> {
        let group = self.publishing()?;
        drain_due(&mut self.publish, max, group, |key, window, epoch| {
            store.group_total(group, key, window, epoch)
        })
    }

    /// Up to `max` rest aggregates due, as wire entries of this node's group's rest (empty unless it sends
    /// rests).
    pub(crate) fn take_rests(&mut self, store: &CounterStore, max: usize) -> Option<Due> {
        let rest = self
            .topology
            .as_ref()
            .filter(|t| t.sends_rests())
            .and_then(Topology::own_group)?
            .rest_of_group();
        drain_due(&mut self.rest, max, rest, |key, window, epoch| {
            store.rest_total(rest, key, window, epoch)
        })
    }
}

/// Aggregates due for sending: one aggregate id's value sums and, for the keys that have any, floor sums.
#[derive(Debug)]
pub(crate) struct Due {
    /// The aggregate id on the wire.
    pub(crate) id: u64,
    /// Value sums (`OriginKind::Aggregate`).
    pub(crate) values: Vec<Entry>,
    /// Floor sums (`OriginKind::AggregateFloor`): only keys reset in the epoch have one.
    pub(crate) floors: Vec<Entry>,
}

/// Takes up to `max` keys off `due` (in key order) and makes each wire entries of aggregate `id` with the
/// `(values, floors)` `sums_of` gives it now, skipping zeros; `None` when nothing is left to send.
fn drain_due(
    due: &mut DueKeys,
    max: usize,
    id: AggregateId,
    sums_of: impl Fn(&str, Window, u64) -> (u64, u64),
) -> Option<Due> {
    let mut values = Vec::new();
    let mut floors = Vec::new();
    while values.len() < max {
        let Some((key, window, epoch)) = due.pop_first() else {
            break;
        };
        let (value, floor) = sums_of(&key, window, epoch);
        let entry = |value| Entry {
            key: key.to_string(),
            window: WireWindow::from(window),
            epoch,
            value,
        };
        if floor > 0 {
            floors.push(entry(floor));
        }
        if value > 0 {
            values.push(entry(value));
        }
    }
    (!values.is_empty()).then(|| Due {
        id: id.to_wire(),
        values,
        floors,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// `DueKeys` holds and yields exactly what a `BTreeSet` of the tuples would, in the same order.
        #[test]
        fn due_keys_behave_as_an_ordered_set(
            ops in prop::collection::vec((0u8..3, 0u8..6, 0usize..2, 0u64..4), 0..200),
        ) {
            let windows = [Window::parse("1s").expect("window"), Window::parse("1h").expect("window")];
            let mut due = DueKeys::default();
            let mut model: BTreeSet<KeyEpoch> = BTreeSet::new();
            for (op, key, window, epoch) in ops {
                let key = format!("k{key}");
                let window = windows[window];
                match op {
                    0 | 1 => {
                        due.insert(key.as_str(), window, epoch);
                        model.insert((Arc::from(key.as_str()), window, epoch));
                    }
                    _ => prop_assert_eq!(due.pop_first(), model.pop_first()),
                }
                prop_assert_eq!(due.len(), model.len());
                prop_assert_eq!(
                    due.contains(&key, window, epoch),
                    model.contains(&(Arc::from(key.as_str()), window, epoch))
                );
            }
            while let Some(next) = model.pop_first() {
                prop_assert_eq!(due.pop_first(), Some(next));
            }
            prop_assert_eq!(due.pop_first(), None);
        }
    }
}
