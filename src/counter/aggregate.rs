//! Group sums for the large-cluster mode: what one cell counts for replicas it hears only through aggregates.
//!
//! The model (the argument in full is in `docs/replication.md`, "Two-level aggregation"). The replicas of a
//! cluster fall into groups by [`group_of`], a stable hash of the replica id; a *scheme* is one group count. A
//! publisher of group `g` sends, per key and epoch, the sum over the members of `g` of the values it holds for
//! them: its own and the per-origin values merged from its group peers. Each of those is a max-merged per-origin
//! value, at most that origin's true count, so an aggregate never exceeds the group's exact total. A receiver
//! keeps, per (scheme, group, epoch), the largest aggregate it has heard. A publisher of `g` also sends its group
//! peers a *rest* aggregate: what it counts for every replica outside `g` (the sum of its other-group terms, or
//! the largest rest it heard, whichever is larger), a lower bound of their exact total; a member keeps the
//! largest rest it has heard for its own group.
//!
//! Guarantees, for one key and epoch, where V is the exact sum of every remote origin's count (remote: every
//! replica but this one) and no reset happens:
//! - [`GroupSums::estimate`] ≤ V at all times. Per scheme, the estimate is `own + max(others, rest)`: `own` the
//!   per-origin values held for the own group's other members, `others` the sum over the other groups of
//!   `max(direct, aggregate)` (`direct` the per-origin values held for the group's origins), `rest` the largest
//!   rest aggregate of the own group. Each group term is at most that group's exact total and the groups of one
//!   scheme are disjoint, so `others` is at most the exact total outside the own group; `rest` is a max of such
//!   lower bounds; so the sum is at most V. The estimate of a scheme pushed out by a newer one is kept as a frozen
//!   lower bound (V only grows).
//! - It never falls while no floor is merged (a pushed-out scheme leaves its estimate behind), and never below
//!   the plain per-origin sum (every term is at least its `direct`), so turning aggregation
//!   on, or a group count change, never lowers a count.
//! - It equals V once, for some scheme, every remote member of this node's own group has delivered its values
//!   here and either every other group has sent one aggregate from a publisher that had seen all of its members'
//!   values, or one rest aggregate arrived from a publisher of the own group that had heard all that. Which
//!   publisher, how many of them, in which order and how often does not matter: the max of several aggregates of
//!   one group (or of several rests) never double counts, since they are alternatives, not addends.
//! - Group aggregates of this node's own group are not counted: its members' values arrive per origin, and the
//!   aggregate includes this node's own value, which the cell counts in its value words. Nor are rest aggregates
//!   of another group (they include this node's group).
//! - Memory is bounded: at most [`MAX_SCHEMES`] schemes per epoch, each with at most `groups` ≤ [`MAX_GROUPS`]
//!   terms and one rest.

use smallvec::SmallVec;

/// Most group counts one cell tracks per epoch; a newer one pushes out the oldest, whose estimate stays as a
/// lower bound.
pub const MAX_SCHEMES: usize = 2;

/// Largest group count a scheme may have (a cluster of 16 million replicas would use 4,096 groups).
pub const MAX_GROUPS: u32 = 4_096;

/// The group of `replica` among `groups` groups (0 when `groups` is 0 or 1): a stable hash, the same on every
/// node and in every process, so every node puts a replica in the same group without coordination.
pub fn group_of(replica: u64, groups: u32) -> u32 {
    if groups <= 1 {
        return 0;
    }
    // The splitmix64 finalizer: replica ids are random in production but small in tests; mixing spreads both.
    let mut z = replica.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // `z % groups < groups ≤ u32::MAX`: the cast never truncates.
    (z % u64::from(groups)) as u32
}

/// Names what an aggregate sums, in one scheme; on the wire, the `origin` of an `OriginKind::Aggregate` group.
///
/// Two kinds: a **group** aggregate ([`AggregateId::new`]) sums the members of one group, sent by one of them
/// (a publisher) to the publishers of the other groups; a **rest** aggregate ([`AggregateId::rest`]) sums every
/// replica *outside* one group, as a publisher of that group sees them (the max of its other-group terms), sent to
/// its own group peers. A member then hears all other groups as one entry per key instead of one per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateId {
    groups: u32,
    group: u32,
    rest: bool,
}

/// The bit of an id's low word that marks a rest aggregate (group numbers stay below [`MAX_GROUPS`]).
const REST_BIT: u32 = 1 << 31;

impl AggregateId {
    /// Group `group` of a scheme of `groups` groups; `None` unless `2 ≤ groups ≤ MAX_GROUPS` and
    /// `group < groups`.
    pub fn new(groups: u32, group: u32) -> Option<AggregateId> {
        ((2..=MAX_GROUPS).contains(&groups) && group < groups).then_some(AggregateId {
            groups,
            group,
            rest: false,
        })
    }

    /// Every replica outside group `group` of a scheme of `groups` groups (the same bounds as
    /// [`AggregateId::new`]).
    pub fn rest(groups: u32, group: u32) -> Option<AggregateId> {
        AggregateId::new(groups, group).map(AggregateId::rest_of_group)
    }

    /// The rest aggregate of this id's group: every replica outside it.
    pub fn rest_of_group(self) -> AggregateId {
        AggregateId { rest: true, ..self }
    }

    /// Whether this id names the replicas outside its group (a rest aggregate) rather than its group's members.
    pub fn is_rest(self) -> bool {
        self.rest
    }

    /// The scheme's group count.
    pub fn groups(self) -> u32 {
        self.groups
    }

    /// The group.
    pub fn group(self) -> u32 {
        self.group
    }

    /// The wire form: the group count in the high 32 bits, the group in the low 32, whose top bit marks a rest
    /// aggregate.
    pub fn to_wire(self) -> u64 {
        let low = if self.rest {
            self.group | REST_BIT
        } else {
            self.group
        };
        (u64::from(self.groups) << 32) | u64::from(low)
    }

    /// Reads the wire form; `None` for an id no valid scheme has (network input: never trusted).
    pub fn from_wire(id: u64) -> Option<AggregateId> {
        let groups = u32::try_from(id >> 32).ok()?;
        // The low 32 bits, by construction in range.
        let low = (id & u64::from(u32::MAX)) as u32;
        let group = AggregateId::new(groups, low & !REST_BIT)?;
        Some(if low & REST_BIT != 0 {
            group.rest_of_group()
        } else {
            group
        })
    }

    /// Whether `replica` is summed by this id: a member of the group, or for a rest aggregate a replica outside
    /// it.
    pub fn contains(self, replica: u64) -> bool {
        (group_of(replica, self.groups) == self.group) != self.rest
    }

    /// Whether `replica` belongs to this id's group (for either kind).
    pub fn in_group(self, replica: u64) -> bool {
        group_of(replica, self.groups) == self.group
    }
}

/// What merging one aggregate did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateOutcome {
    /// The aggregate was above the largest one held for its group: the estimate may have risen.
    Raised,
    /// Not above what is held: nothing changed (duplicates and stale aggregates land here).
    Unchanged,
    /// The aggregate names this node's own group, whose members' values arrive per origin: ignored.
    OwnGroup,
    /// A rest aggregate of another group than this node's: it includes this node's own group, so it is ignored.
    ForeignRest,
}

/// One group's term in a scheme.
#[derive(Clone, Copy, Debug, Default)]
struct Term {
    /// Σ of the per-origin contributions held here for the group's remote origins.
    direct: u128,
    /// The largest aggregate heard for the group.
    aggregate: u64,
}

impl Term {
    fn counted(self, own_group: bool) -> u128 {
        if own_group {
            self.direct
        } else {
            self.direct.max(u128::from(self.aggregate))
        }
    }
}

/// One scheme's terms.
#[derive(Debug)]
struct Scheme {
    groups: u32,
    /// This replica's group in the scheme.
    own_group: u32,
    /// Indexed by group; grown on demand up to `groups` entries (every group appears once its first origin
    /// does, so a dense vector is both smaller and faster than a map).
    terms: Vec<Term>,
    /// The own group's counted value (its `direct`), kept up to date on every change.
    own: u128,
    /// Σ of every other group's counted value, kept up to date on every change.
    others: u128,
    /// The largest rest aggregate heard for the own group (a lower bound of every other group's exact total
    /// together).
    rest: u64,
}

impl Scheme {
    /// Applies `change` to group `group`'s term, keeping the sums.
    fn update(&mut self, group: u32, change: impl FnOnce(&mut Term)) {
        let own = group == self.own_group;
        let index = group as usize;
        if index >= self.terms.len() {
            // `group < groups ≤ MAX_GROUPS`: bounded.
            self.terms.resize(index + 1, Term::default());
        }
        let term = &mut self.terms[index];
        let before = term.counted(own);
        change(term);
        let after = term.counted(own);
        let sum = if own { &mut self.own } else { &mut self.others };
        // `sum` includes `before`: no underflow.
        *sum = *sum - before + after;
    }

    /// What this scheme counts for the other groups: the larger of their terms' sum and the rest aggregate.
    fn outside(&self) -> u128 {
        self.others.max(u128::from(self.rest))
    }

    /// The remote count this scheme gives: the own group's other members plus everything outside it.
    fn estimate(&self) -> u128 {
        self.own + self.outside()
    }
}

/// The aggregates one cell holds for one epoch, and the estimate of the remote count they give.
#[derive(Debug, Default)]
pub(crate) struct GroupSums {
    /// Oldest first; at most [`MAX_SCHEMES`], held inline (one pointer fewer to follow per merge).
    schemes: SmallVec<[Scheme; MAX_SCHEMES]>,
    /// The largest estimate of a scheme that was pushed out (a lower bound of the remote count).
    retired: u128,
}

impl GroupSums {
    /// The remote count these sums give, given `plain`, the sum of every remote origin's contribution held here.
    pub(crate) fn estimate(&self, plain: u128) -> u128 {
        self.schemes
            .iter()
            .map(Scheme::estimate)
            .fold(plain.max(self.retired), u128::max)
    }

    /// What a publisher sends as the rest aggregate of its group under `groups` groups: the larger of its other
    /// groups' terms and the rest aggregates heard from its group peers (0 before any aggregate of the scheme).
    pub(crate) fn rest_total(&self, groups: u32) -> u128 {
        self.schemes
            .iter()
            .find(|s| s.groups == groups)
            .map_or(0, Scheme::outside)
    }

    /// Remote origin `origin`'s contribution changed from `before` to `after` (a merge raised it, a floor
    /// lowered it).
    pub(crate) fn origin_changed(&mut self, origin: u64, before: u64, after: u64) {
        for scheme in &mut self.schemes {
            let group = group_of(origin, scheme.groups);
            scheme.update(group, |term| {
                // `direct` includes `before` (it was added when it was merged): no underflow.
                term.direct = term.direct - u128::from(before) + u128::from(after);
            });
        }
    }

    /// Merges `value`, an aggregate of `id`, as seen by replica `own_replica` (this node). A scheme seen for the
    /// first time is built from `contributions`, every remote origin's contribution held here for the epoch
    /// (called only then); if that makes more than [`MAX_SCHEMES`], the oldest is pushed out and its estimate
    /// kept as a lower bound. A group aggregate of this node's own group, and a rest aggregate of any other
    /// group, are ignored (both would count this node's own group twice).
    pub(crate) fn merge<I>(
        &mut self,
        own_replica: u64,
        id: AggregateId,
        value: u64,
        contributions: impl FnOnce() -> I,
    ) -> AggregateOutcome
    where
        I: IntoIterator<Item = (u64, u64)>,
    {
        let own_group = id.in_group(own_replica);
        if id.is_rest() && !own_group {
            return AggregateOutcome::ForeignRest;
        }
        if !id.is_rest() && own_group {
            return AggregateOutcome::OwnGroup;
        }
        let index = match self.schemes.iter().position(|s| s.groups == id.groups) {
            Some(index) => index,
            None => {
                if value == 0 {
                    return AggregateOutcome::Unchanged;
                }
                if self.schemes.len() >= MAX_SCHEMES {
                    let oldest = self.schemes.remove(0);
                    self.retired = self.retired.max(oldest.estimate());
                }
                let mut scheme = Scheme {
                    groups: id.groups,
                    own_group: group_of(own_replica, id.groups),
                    terms: Vec::new(),
                    own: 0,
                    others: 0,
                    rest: 0,
                };
                for (origin, contribution) in contributions() {
                    let group = group_of(origin, id.groups);
                    scheme.update(group, |term| term.direct += u128::from(contribution));
                }
                self.schemes.push(scheme);
                self.schemes.len() - 1
            }
        };
        let scheme = &mut self.schemes[index];
        if id.is_rest() {
            if value <= scheme.rest {
                return AggregateOutcome::Unchanged;
            }
            scheme.rest = value;
            return AggregateOutcome::Raised;
        }
        if scheme
            .terms
            .get(id.group as usize)
            .is_some_and(|t| t.aggregate >= value)
            || value == 0
        {
            return AggregateOutcome::Unchanged;
        }
        scheme.update(id.group, |term| term.aggregate = value);
        AggregateOutcome::Raised
    }

    /// The largest aggregate held for `id` (0 when none).
    #[cfg(test)]
    pub(crate) fn aggregate(&self, id: AggregateId) -> u64 {
        let scheme = self.schemes.iter().find(|s| s.groups == id.groups);
        if id.is_rest() {
            return scheme.map_or(0, |s| s.rest);
        }
        scheme
            .and_then(|s| s.terms.get(id.group as usize))
            .map_or(0, |t| t.aggregate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_round_trip_and_refuse_what_no_scheme_has() {
        let id = AggregateId::new(32, 7).expect("valid");
        assert_eq!(AggregateId::from_wire(id.to_wire()), Some(id));
        assert_eq!(AggregateId::new(1, 0), None);
        assert_eq!(AggregateId::new(32, 32), None);
        assert_eq!(AggregateId::new(MAX_GROUPS + 1, 0), None);
        assert_eq!(AggregateId::from_wire(u64::MAX), None);
        assert_eq!(AggregateId::from_wire(7), None, "a group count of 0");
        let rest = AggregateId::rest(32, 7).expect("valid");
        assert!(rest.is_rest() && !id.is_rest());
        assert_ne!(rest.to_wire(), id.to_wire());
        assert_eq!(AggregateId::from_wire(rest.to_wire()), Some(rest));
        assert_eq!(AggregateId::rest(32, 32), None);
        let member = (0..).find(|&r| group_of(r, 32) == 7).expect("a member");
        assert!(id.contains(member) && !rest.contains(member) && rest.in_group(member));
    }

    #[test]
    fn a_rest_counts_for_every_other_group_and_only_in_its_own_group() {
        let me = 1;
        let groups = 4;
        let own = group_of(me, groups);
        let mut sums = GroupSums::default();
        let foreign = AggregateId::rest(groups, (own + 1) % groups).expect("valid");
        assert_eq!(
            sums.merge(me, foreign, 50, Vec::new),
            AggregateOutcome::ForeignRest
        );
        assert_eq!(sums.estimate(0), 0);
        let rest = AggregateId::rest(groups, own).expect("valid");
        let peer = (2..)
            .find(|&r| group_of(r, groups) == own)
            .expect("a group peer");
        let outsider = (2..)
            .find(|&r| group_of(r, groups) != own)
            .expect("an outsider");
        assert_eq!(
            sums.merge(me, rest, 30, || vec![(peer, 5), (outsider, 10)]),
            AggregateOutcome::Raised
        );
        assert_eq!(
            sums.estimate(15),
            35,
            "own group 5 + max(others 10, rest 30)"
        );
        assert_eq!(sums.rest_total(groups), 30);
        let outsiders = AggregateId::new(groups, group_of(outsider, groups)).expect("valid");
        assert_eq!(
            sums.merge(me, outsiders, 40, Vec::new),
            AggregateOutcome::Raised
        );
        assert_eq!(
            sums.estimate(15),
            45,
            "the other groups' terms now above the rest"
        );
        assert_eq!(sums.rest_total(groups), 40);
        assert_eq!(
            sums.merge(me, rest, 29, Vec::new),
            AggregateOutcome::Unchanged
        );
    }

    #[test]
    fn groups_are_stable_and_spread() {
        let mut sizes = [0usize; 8];
        for replica in 0..8_000u64 {
            let g = group_of(replica, 8);
            assert_eq!(g, group_of(replica, 8));
            sizes[g as usize] += 1;
        }
        for size in sizes {
            assert!((800..1_200).contains(&size), "uneven groups: {sizes:?}");
        }
    }

    #[test]
    fn own_group_aggregates_are_not_counted() {
        let mut sums = GroupSums::default();
        let me = 1;
        let own = AggregateId::new(4, group_of(me, 4)).expect("valid");
        assert_eq!(
            sums.merge(me, own, 50, Vec::new),
            AggregateOutcome::OwnGroup
        );
        assert_eq!(sums.estimate(0), 0);
    }

    #[test]
    fn an_aggregate_below_the_direct_values_changes_nothing() {
        let me = 1;
        let other = (2..)
            .find(|&r| group_of(r, 4) != group_of(me, 4))
            .expect("some replica");
        let id = AggregateId::new(4, group_of(other, 4)).expect("valid");
        let mut sums = GroupSums::default();
        assert_eq!(
            sums.merge(me, id, 3, || vec![(other, 10)]),
            AggregateOutcome::Raised
        );
        assert_eq!(sums.estimate(10), 10, "max(direct 10, aggregate 3)");
        sums.origin_changed(other, 10, 12);
        assert_eq!(sums.estimate(12), 12);
        assert_eq!(sums.merge(me, id, 20, Vec::new), AggregateOutcome::Raised);
        assert_eq!(sums.estimate(12), 20);
        assert_eq!(
            sums.merge(me, id, 19, Vec::new),
            AggregateOutcome::Unchanged
        );
        assert_eq!(sums.aggregate(id), 20);
    }

    /// One simulated cluster for one key and epoch: replicas with counts, publishers that see part of their
    /// group, and one receiver that hears per-origin values from its group and aggregates from the others, in
    /// any order, through scheme changes.
    #[derive(Debug, Clone)]
    enum Step {
        /// Replica `r` counts `n` more.
        Count(usize, u64),
        /// The receiver hears replica `r`'s current value (only its own group's members send per origin; others
        /// arrive as relays of state chunks, also allowed).
        Direct(usize),
        /// A member `p` of some group publishes, having seen a subset (bit mask) of its group's members'
        /// current values, under scheme index `s`; the receiver hears it.
        Publish {
            publisher: usize,
            seen: u64,
            scheme: usize,
        },
        /// A member `p` of some group sends the rest aggregate of its group, having seen a subset (bit mask) of
        /// the current values outside it, under scheme index `s`; the receiver hears it (and must ignore it
        /// unless `p` is in its own group).
        Rest {
            publisher: usize,
            seen: u64,
            scheme: usize,
        },
        /// A stale copy of an earlier aggregate arrives again (reordering, duplication).
        Replay(usize),
    }

    const REPLICAS: usize = 24;
    const SCHEMES: [u32; 3] = [4, 8, 2];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..REPLICAS, 1..50u64).prop_map(|(r, n)| Step::Count(r, n)),
            (0..REPLICAS).prop_map(Step::Direct),
            (0..REPLICAS, any::<u64>(), 0..SCHEMES.len()).prop_map(|(publisher, seen, scheme)| {
                Step::Publish {
                    publisher,
                    seen,
                    scheme,
                }
            }),
            (0..REPLICAS, any::<u64>(), 0..SCHEMES.len()).prop_map(|(publisher, seen, scheme)| {
                Step::Rest {
                    publisher,
                    seen,
                    scheme,
                }
            }),
            (0..64usize).prop_map(Step::Replay),
        ]
    }

    struct World {
        me: usize,
        counts: Vec<u64>,
        /// What the receiver holds per origin (its plain per-origin table).
        held: BTreeMap<u64, u64>,
        sums: GroupSums,
        sent: Vec<(AggregateId, u64)>,
    }

    impl World {
        fn new(me: usize) -> World {
            World {
                me,
                counts: vec![0; REPLICAS],
                held: BTreeMap::new(),
                sums: GroupSums::default(),
                sent: Vec::new(),
            }
        }

        fn replica(r: usize) -> u64 {
            1_000 + r as u64
        }

        fn exact_remote(&self) -> u128 {
            (0..REPLICAS)
                .filter(|&r| r != self.me)
                .map(|r| u128::from(self.counts[r]))
                .sum()
        }

        fn plain(&self) -> u128 {
            self.held.values().map(|&v| u128::from(v)).sum()
        }

        fn direct(&mut self, r: usize) {
            if r == self.me {
                return;
            }
            let origin = World::replica(r);
            let before = self.held.get(&origin).copied().unwrap_or(0);
            let value = self.counts[r];
            if value > before {
                self.held.insert(origin, value);
                self.sums.origin_changed(origin, before, value);
            }
        }

        fn deliver(&mut self, id: AggregateId, value: u64) {
            let held: Vec<(u64, u64)> = self.held.iter().map(|(&o, &v)| (o, v)).collect();
            self.sums.merge(World::replica(self.me), id, value, || held);
        }

        /// Publisher `p` under `groups` groups sums what it has seen of its group (always its own value).
        fn publish(&mut self, p: usize, seen: u64, groups: u32) {
            let group = group_of(World::replica(p), groups);
            let id = AggregateId::new(groups, group).expect("valid scheme");
            let value: u64 = (0..REPLICAS)
                .filter(|&r| group_of(World::replica(r), groups) == group)
                .filter(|&r| r == p || seen & (1 << r) != 0)
                .map(|r| self.counts[r])
                .sum();
            self.sent.push((id, value));
            self.deliver(id, value);
        }

        /// Publisher `p` under `groups` groups sums what it has seen outside its group.
        fn rest(&mut self, p: usize, seen: u64, groups: u32) {
            let group = group_of(World::replica(p), groups);
            let id = AggregateId::rest(groups, group).expect("valid scheme");
            let value: u64 = (0..REPLICAS)
                .filter(|&r| group_of(World::replica(r), groups) != group)
                .filter(|&r| seen & (1 << r) != 0)
                .map(|r| self.counts[r])
                .sum();
            self.sent.push((id, value));
            self.deliver(id, value);
        }

        fn estimate(&self) -> u128 {
            self.sums.estimate(self.plain())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never above the exact remote count, never below the plain per-origin sum, never falling (no resets
        /// here), whatever the publishers saw (group aggregates and rest aggregates of any group mixed),
        /// whichever died (never published again), in any order and through scheme changes; and exact once the
        /// own group's values and either one complete aggregate of every other group of the current scheme or one
        /// complete rest aggregate of the own group arrived.
        #[test]
        fn the_estimate_is_a_lower_bound_and_exact_after_quiescence(
            me in 0..REPLICAS,
            steps in proptest::collection::vec(step(), 0..200),
            last_scheme in 0..SCHEMES.len(),
            by_rest: bool,
        ) {
            let mut world = World::new(me);
            let mut previous = 0;
            for step in steps {
                match step {
                    Step::Count(r, n) => world.counts[r] += n,
                    Step::Direct(r) => world.direct(r),
                    Step::Publish { publisher, seen, scheme } => {
                        world.publish(publisher, seen, SCHEMES[scheme]);
                    }
                    Step::Rest { publisher, seen, scheme } => {
                        world.rest(publisher, seen, SCHEMES[scheme]);
                    }
                    Step::Replay(i) => {
                        if let Some(&(id, value)) = world.sent.get(i) {
                            world.deliver(id, value);
                        }
                    }
                }
                let estimate = world.estimate();
                prop_assert!(estimate <= world.exact_remote(), "{estimate} above {}", world.exact_remote());
                prop_assert!(estimate >= world.plain());
                prop_assert!(estimate >= previous, "the count fell from {previous} to {estimate}");
                previous = estimate;
            }
            // Quiescence under the last scheme: the own group's members deliver; one member of every other
            // group publishes having seen everything of its group.
            let groups = SCHEMES[last_scheme];
            let own = group_of(World::replica(me), groups);
            for r in 0..REPLICAS {
                if group_of(World::replica(r), groups) == own {
                    world.direct(r);
                }
            }
            if by_rest {
                // One member of the own group (this node itself when it is alone in it) sends a complete rest.
                let member = (0..REPLICAS)
                    .find(|&r| group_of(World::replica(r), groups) == own)
                    .expect("the receiver is in its group");
                world.rest(member, u64::MAX, groups);
            } else {
                let mut published = std::collections::BTreeSet::new();
                for r in 0..REPLICAS {
                    let group = group_of(World::replica(r), groups);
                    if group != own && published.insert(group) {
                        world.publish(r, u64::MAX, groups);
                    }
                }
            }
            prop_assert_eq!(world.estimate(), world.exact_remote());
        }
    }
}
