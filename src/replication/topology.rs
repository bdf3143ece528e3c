//! Who a node links to and what it sends whom (sans-IO, pure): the plain full mesh in small clusters, two-level
//! aggregation in large ones (issue 13; the argument is in `docs/replication.md`, "Two-level aggregation").
//!
//! Built from the set of replicas this node knows as members (itself included) and the layout it used before;
//! every node that knows the same members builds the same topology, whatever the order it learnt them in.
//!
//! Guarantees:
//! - Below `full_mesh_below` members the layout is [`Layout::FullMesh`]: every member is a delta peer (today's
//!   behaviour, unchanged). The switch back from grouped happens only below three quarters of the threshold, so
//!   a membership that wavers around it does not flap.
//! - Grouped: `groups` is a power of two near √N (the members in each group about √N too), chosen with
//!   hysteresis (a previous count is kept while N stays within `[0.4·g², 2.5·g²)`), so it changes rarely, and a
//!   change is safe at any time because aggregates of different group counts are never added together (see
//!   `counter::aggregate`).
//! - Each group has `publishers_per_group` publishers (fewer when the group is smaller), chosen by rendezvous
//!   hashing, so a member's departure moves only the roles it held. The publishers of all groups are each
//!   other's partners: each sends its group's aggregate to every publisher of every other group, so every
//!   publisher hears every group, and sends its own group peers one rest aggregate per key (everything outside
//!   the group): a member hears all other groups as one entry per key and publisher, whatever N.
//! - [`Topology::links`] is everything a node must be linked with: its group peers, plus, for a publisher, its
//!   partners. For N members that is about √N for most nodes and about (1 + k)·√N for the `k` publishers of
//!   each group, not N − 1.
//! - Building costs O(N log N) and happens only when membership changes.
//!
//! Members are named by [`ReplicaId`]; groups are computed on the number inside ([`ReplicaId::get`]), the same
//! number the counter plane's aggregate ids are judged against ([`AggregateId::in_group`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::ReplicaId;
use crate::counter::{AggregateId, MAX_GROUPS, group_of};

/// Options of the topology (`replication.topology` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyOptions {
    /// Members (this node included) from which aggregation starts; below it the full mesh stays. Default
    /// [`TopologyOptions::DEFAULT_FULL_MESH_BELOW`]; `usize::MAX` keeps the full mesh at any size. At least 4.
    pub full_mesh_below: usize,
    /// Members of each group that publish its aggregate. Default 2 (one may die without a pause); 1..=8.
    pub publishers_per_group: usize,
}

impl TopologyOptions {
    /// Default `full_mesh_below`: under 16 members a full mesh costs at most 15 links per node.
    pub const DEFAULT_FULL_MESH_BELOW: usize = 16;
    /// Default `publishers_per_group`.
    pub const DEFAULT_PUBLISHERS_PER_GROUP: usize = 2;
    /// Largest `publishers_per_group`.
    pub const MAX_PUBLISHERS_PER_GROUP: usize = 8;

    fn normalized(self) -> TopologyOptions {
        TopologyOptions {
            full_mesh_below: self.full_mesh_below.max(4),
            publishers_per_group: self
                .publishers_per_group
                .clamp(1, Self::MAX_PUBLISHERS_PER_GROUP),
        }
    }
}

impl Default for TopologyOptions {
    fn default() -> TopologyOptions {
        TopologyOptions {
            full_mesh_below: Self::DEFAULT_FULL_MESH_BELOW,
            publishers_per_group: Self::DEFAULT_PUBLISHERS_PER_GROUP,
        }
    }
}

/// How the cluster is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every member is linked to every other and sends its values to all.
    FullMesh,
    /// Members fall into `groups` groups ([`group_of`]): values per origin inside a group, aggregates across.
    Grouped {
        /// The group count, a power of two in `2..=MAX_GROUPS`.
        groups: u32,
    },
}

impl Layout {
    /// The layout for `members` members, given the one used before (hysteresis, see the module docs).
    pub fn choose(members: usize, previous: Option<Layout>, options: TopologyOptions) -> Layout {
        let options = options.normalized();
        let threshold = options.full_mesh_below;
        let grouped_before = matches!(previous, Some(Layout::Grouped { .. }));
        let leave_below = threshold - threshold / 4;
        if members < threshold && !(grouped_before && members >= leave_below) {
            return Layout::FullMesh;
        }
        if let Some(Layout::Grouped { groups }) = previous {
            let g2 = f64::from(groups) * f64::from(groups);
            let n = members as f64;
            if n >= 0.4 * g2 && n < 2.5 * g2 {
                return Layout::Grouped { groups };
            }
        }
        // The power of two nearest √N: 2^round(log2 √N) = 2^round(log2(N) / 2).
        let exponent = ((members.max(4) as f64).log2() / 2.0).round() as u32;
        let groups = 1u32
            .checked_shl(exponent)
            .unwrap_or(MAX_GROUPS)
            .clamp(2, MAX_GROUPS);
        Layout::Grouped { groups }
    }
}

/// A rendezvous score: the member with the highest score for a seed wins, and removing another member never
/// changes the winner.
fn score(seed: u64, member: ReplicaId) -> u64 {
    let member = member.get();
    let mut z = seed ^ member.rotate_left(17) ^ 0xD6E8_FEB8_6659_FD93;
    z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z ^ (z >> 32)
}

/// The seed that ranks the members of `group` for the publisher role.
fn publisher_seed(id: AggregateId) -> u64 {
    id.to_wire().wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What one node does in a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    me: ReplicaId,
    layout: Layout,
    /// Whom this node's own per-origin values go to (and relayed aggregates): its group peers, or every other
    /// member in the full mesh.
    delta_peers: BTreeSet<ReplicaId>,
    /// Grouped: this node's group.
    own_group: Option<AggregateId>,
    /// Grouped: the publishers of every group.
    publishers: BTreeMap<u32, Vec<ReplicaId>>,
    /// Grouped and publishing: the publishers of every other group (they send this node their groups'
    /// aggregates and get its own).
    partners: BTreeSet<ReplicaId>,
}

impl Topology {
    /// The topology of `me` among `members` (`me` counts as a member whether listed or not), given the layout
    /// used before.
    pub fn new(
        me: ReplicaId,
        members: impl IntoIterator<Item = ReplicaId>,
        previous: Option<Layout>,
        options: TopologyOptions,
    ) -> Topology {
        let options = options.normalized();
        let mut all: BTreeSet<ReplicaId> = members.into_iter().collect();
        all.insert(me);
        let layout = Layout::choose(all.len(), previous, options);
        let groups = match layout {
            Layout::FullMesh => {
                let delta_peers = all.into_iter().filter(|&m| m != me).collect();
                return Topology {
                    me,
                    layout,
                    delta_peers,
                    own_group: None,
                    publishers: BTreeMap::new(),
                    partners: BTreeSet::new(),
                };
            }
            Layout::Grouped { groups } => groups,
        };
        let mut by_group: BTreeMap<u32, Vec<ReplicaId>> = BTreeMap::new();
        for &member in &all {
            by_group
                .entry(group_of(member.get(), groups))
                .or_default()
                .push(member);
        }
        let id_of = |group: u32| AggregateId::new(groups, group);
        let publishers: BTreeMap<u32, Vec<ReplicaId>> = by_group
            .iter()
            .filter_map(|(&group, members)| {
                let seed = publisher_seed(id_of(group)?);
                let mut ranked = members.clone();
                ranked.sort_by_key(|&m| std::cmp::Reverse((score(seed, m), m)));
                ranked.truncate(options.publishers_per_group);
                Some((group, ranked))
            })
            .collect();
        let own = group_of(me.get(), groups);
        // Every publisher of every other group: each must hear every group for the rest it sends its own group
        // to be complete (a single partner per group would leave each publisher a part of the groups, and a
        // member keeps the larger rest, not a combination of them).
        let publishes = publishers.get(&own).is_some_and(|p| p.contains(&me));
        let partners = if publishes {
            publishers
                .iter()
                .filter(|&(&g, _)| g != own)
                .flat_map(|(_, ps)| ps.iter().copied())
                .collect()
        } else {
            BTreeSet::new()
        };
        let delta_peers = by_group
            .get(&own)
            .map(|ms| ms.iter().copied().filter(|&m| m != me).collect())
            .unwrap_or_default();
        Topology {
            me,
            layout,
            delta_peers,
            own_group: id_of(own),
            publishers,
            partners,
        }
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// This node's replica id.
    pub fn me(&self) -> ReplicaId {
        self.me
    }

    /// Whom this node's own values (and the aggregates it relays) go to.
    pub fn delta_peers(&self) -> &BTreeSet<ReplicaId> {
        &self.delta_peers
    }

    /// This node's group, when grouped.
    pub fn own_group(&self) -> Option<AggregateId> {
        self.own_group
    }

    /// Whether this node publishes its group's aggregate.
    pub fn is_publisher(&self) -> bool {
        !self.partners.is_empty()
    }

    /// The publishers of `group` (empty in the full mesh).
    pub fn publishers(&self, group: u32) -> &[ReplicaId] {
        self.publishers.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Where this node's aggregates go, and whose it hears: the publishers of every other group (empty unless it
    /// publishes).
    pub fn partners(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.partners.iter().copied()
    }

    /// Every member this node must be linked with.
    pub fn links(&self) -> BTreeSet<ReplicaId> {
        let mut links = self.delta_peers.clone();
        links.extend(self.partners());
        links
    }

    /// Whether this node must be linked with `replica` ([`Topology::links`] without building the set). In the
    /// full mesh every member is.
    pub fn needs_link(&self, replica: ReplicaId) -> bool {
        self.layout == Layout::FullMesh
            || self.delta_peers.contains(&replica)
            || self.partners.contains(&replica)
    }

    /// Whether an aggregate of `id` from the link of replica `sender` is accepted. A group aggregate: from a
    /// member of the group it sums (a publisher speaks only for its own group), never of this node's own group
    /// (its values arrive per origin). A rest aggregate: of this node's own group, from another member of it
    /// (a publisher speaks for the rest of the cluster to its own group only). Membership is judged under the
    /// id's group count, so aggregates sent just before a change of the count are still taken.
    pub fn accepts_aggregate(&self, sender: ReplicaId, id: AggregateId) -> bool {
        let (me, from) = (self.me.get(), sender.get());
        if id.is_rest() {
            sender != self.me && id.in_group(me) && id.in_group(from)
        } else {
            !id.in_group(me) && id.in_group(from)
        }
    }

    /// Whether this node sends its group peers rest aggregates: it publishes (it hears every other group from
    /// their publishers) and has group peers.
    pub fn sends_rests(&self) -> bool {
        self.is_publisher() && !self.delta_peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster(n: u64) -> Vec<ReplicaId> {
        (0..n).map(|i| ReplicaId::new(0x1000 + i * 7_919)).collect()
    }

    fn all(members: &[ReplicaId]) -> Vec<Topology> {
        members
            .iter()
            .map(|&me| {
                Topology::new(
                    me,
                    members.iter().copied(),
                    None,
                    TopologyOptions::default(),
                )
            })
            .collect()
    }

    #[test]
    fn small_clusters_stay_a_full_mesh() {
        let members = cluster(15);
        for t in all(&members) {
            assert_eq!(t.layout(), Layout::FullMesh);
            assert_eq!(t.delta_peers().len(), 14);
            assert_eq!(t.links().len(), 14);
            assert!(!t.is_publisher());
        }
    }

    #[test]
    fn the_group_count_follows_the_square_root_with_hysteresis() {
        let o = TopologyOptions::default();
        assert_eq!(Layout::choose(15, None, o), Layout::FullMesh);
        assert_eq!(Layout::choose(16, None, o), Layout::Grouped { groups: 4 });
        assert_eq!(Layout::choose(100, None, o), Layout::Grouped { groups: 8 });
        assert_eq!(
            Layout::choose(1_000, None, o),
            Layout::Grouped { groups: 32 }
        );
        let grouped = Some(Layout::Grouped { groups: 4 });
        assert_eq!(
            Layout::choose(13, grouped, o),
            Layout::Grouped { groups: 4 }
        );
        assert_eq!(Layout::choose(11, grouped, o), Layout::FullMesh);
        assert_eq!(
            Layout::choose(39, grouped, o),
            Layout::Grouped { groups: 4 }
        );
        assert_eq!(
            Layout::choose(40, grouped, o),
            Layout::Grouped { groups: 8 }
        );
        let never = TopologyOptions {
            full_mesh_below: usize::MAX,
            ..o
        };
        assert_eq!(Layout::choose(100_000, None, never), Layout::FullMesh);
    }

    #[test]
    fn roles_fit_together_across_the_cluster() {
        for n in [16u64, 100, 300, 1_000] {
            let members = cluster(n);
            let topologies = all(&members);
            let Layout::Grouped { groups } = topologies[0].layout() else {
                panic!("{n} members: grouped");
            };
            let by_id: BTreeMap<ReplicaId, &Topology> =
                topologies.iter().map(|t| (t.me(), t)).collect();
            let mut links = 0usize;
            for t in &topologies {
                assert_eq!(
                    t.layout(),
                    topologies[0].layout(),
                    "one layout for one membership"
                );
                let own = t.own_group().expect("grouped").group();
                // Group peers are exactly the members of the same group.
                for &m in &members {
                    let same = group_of(m.get(), groups) == own && m != t.me();
                    assert_eq!(t.delta_peers().contains(&m), same);
                }
                // A publisher's partners are the publishers of the other groups, and it is theirs.
                for p in t.partners() {
                    assert!(by_id[&p].partners().any(|q| q == t.me()));
                    assert!(!t.delta_peers().contains(&p));
                    assert!(by_id[&p].is_publisher());
                }
                let needed = t.links();
                for &m in &members {
                    // Links are symmetric (both ends dial and keep them), and `needs_link` is `links`.
                    assert_eq!(t.needs_link(m), needed.contains(&m));
                    if m != t.me() {
                        assert_eq!(by_id[&m].needs_link(t.me()), needed.contains(&m));
                    }
                }
                links += needed.len();
            }
            // Every group publishes and reaches every other group.
            let occupied: BTreeSet<u32> =
                members.iter().map(|&m| group_of(m.get(), groups)).collect();
            for &g in &occupied {
                let publishers = topologies[0].publishers(g);
                assert!(!publishers.is_empty());
                let others: usize = occupied
                    .iter()
                    .filter(|&&h| h != g)
                    .map(|&h| topologies[0].publishers(h).len())
                    .sum();
                for &p in publishers {
                    assert_eq!(by_id[&p].partners().count(), others);
                }
            }
            let mean = links as f64 / n as f64;
            let root = (n as f64).sqrt();
            assert!(
                mean <= 2.0 * root + 4.0,
                "{n} members: {mean:.1} links per node, above 2·√N + 4"
            );
        }
    }

    #[test]
    fn aggregates_are_accepted_from_their_group_or_a_group_peer_only() {
        let members = cluster(100);
        let t = Topology::new(
            members[0],
            members.iter().copied(),
            None,
            TopologyOptions::default(),
        );
        let Layout::Grouped { groups } = t.layout() else {
            panic!("grouped");
        };
        let own = t.own_group().expect("grouped");
        let mate = *t.delta_peers().iter().next().expect("a group peer");
        let stranger = *members
            .iter()
            .find(|&&m| group_of(m.get(), groups) != own.group())
            .expect("another group");
        let strangers_group =
            AggregateId::new(groups, group_of(stranger.get(), groups)).expect("valid");
        let third = (0..groups)
            .find(|&g| g != own.group() && g != strangers_group.group())
            .and_then(|g| AggregateId::new(groups, g))
            .expect("a third group");
        assert!(
            t.accepts_aggregate(stranger, strangers_group),
            "a publisher of its own group"
        );
        assert!(
            !t.accepts_aggregate(stranger, third),
            "a stranger speaking for another group"
        );
        assert!(
            !t.accepts_aggregate(mate, third),
            "a group peer speaking for another group"
        );
        assert!(
            !t.accepts_aggregate(mate, own),
            "our own group comes per origin"
        );
        let own_rest = own.rest_of_group();
        assert!(t.accepts_aggregate(mate, own_rest), "a group peer's rest");
        assert!(
            !t.accepts_aggregate(stranger, own_rest),
            "only the group speaks for the rest to it"
        );
        assert!(
            !t.accepts_aggregate(stranger, strangers_group.rest_of_group()),
            "another group's rest counts this node's group"
        );
        assert!(!t.accepts_aggregate(t.me(), own_rest), "not from itself");
    }

    proptest! {
        /// The topology depends on the set of members only, not on the order they are listed in; one member
        /// leaving moves the publisher role of its own group only.
        #[test]
        fn order_does_not_matter_and_departures_move_little(
            n in 16usize..200,
            seed in any::<u64>(),
            leave in any::<prop::sample::Index>(),
        ) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let members: Vec<ReplicaId> = (0..n).map(|_| ReplicaId::new(rng.next_u64())).collect();
            let mut shuffled = members.clone();
            shuffled.reverse();
            let me = members[0];
            let o = TopologyOptions::default();
            let a = Topology::new(me, members.iter().copied(), None, o);
            let b = Topology::new(me, shuffled, None, o);
            prop_assert_eq!(&a, &b);
            let gone = members[1 + leave.index(n - 1)];
            let after = Topology::new(me, members.iter().copied().filter(|&m| m != gone), Some(a.layout()), o);
            if after.layout() == a.layout() {
                let Layout::Grouped { groups } = a.layout() else { return Ok(()); };
                for g in 0..groups {
                    if g != group_of(gone.get(), groups) {
                        prop_assert_eq!(a.publishers(g), after.publishers(g));
                    }
                }
            }
        }
    }
}
