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
//!
//! With resets (`docs/replication.md`, "Resets in a grouped layout"): values are never netted before they are
//! summed. Each aggregate id also has a *floor sum* ([`SumOf::Floors`]), the sum of the per-origin floors its
//! sender holds for the same replicas, max-merged like the value sum. Every term counts its value sum net of
//! the larger of its floor sums (per-origin floors held here, floor sum heard), never below 0; the rest counts
//! net of the larger of the other groups' floors and the rest floor; each scheme's estimate is lowered by the
//! floors the best-informed scheme knows beyond it. Then, where F is the sum of the floors held here per origin:
//! - the estimate is at most V − F (each floor sum is a sum of floors at most the final ones, as each value sum
//!   is a sum of values at most the final ones), with no other guarantee while floors arrive: a floor may lower
//!   the count, and a retired scheme's estimate is dropped at the first floor;
//! - it equals V net of every final floor after the same quiescence, the floor sums included.

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

/// What merging one aggregate (or one aggregate's floor) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateOutcome {
    /// The aggregate (or floor) was above the largest one held for its id: the estimate may have changed.
    Raised,
    /// Not above what is held: nothing changed (duplicates and stale aggregates land here).
    Unchanged,
    /// The aggregate names this node's own group, whose members' values arrive per origin: ignored.
    OwnGroup,
    /// A rest aggregate of another group than this node's: it includes this node's own group, so it is ignored.
    ForeignRest,
}

/// What an aggregate entry carries: the sum of its replicas' values, or the sum of their floors (resets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumOf {
    /// A sum of values, floors not taken off (it only grows within an epoch).
    Values,
    /// A sum of floors (it only grows too): receivers take it off the value sum.
    Floors,
}

/// What this node holds of one remote origin, for [`GroupSums::origin_changed`]: its value and its floor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// The largest value merged for the origin.
    pub(crate) value: u64,
    /// Its floor (≤ `value`).
    pub(crate) floor: u64,
}

/// One group's term in a scheme.
#[derive(Clone, Copy, Debug, Default)]
struct Term {
    /// Σ of the values held here for the group's remote origins (floors not taken off).
    direct: u128,
    /// Σ of the floors held here for those origins (each at most its value, so at most `direct`).
    direct_floor: u128,
    /// The largest aggregate heard for the group (a sum of values, floors not taken off).
    aggregate: u64,
    /// The largest floor sum heard for the group (a lower bound of its members' floors together).
    floor: u64,
}

impl Term {
    /// The larger of the value sums.
    fn raw(self, own_group: bool) -> u128 {
        if own_group {
            self.direct
        } else {
            self.direct.max(u128::from(self.aggregate))
        }
    }

    /// The larger of the floor sums.
    fn floor(self, own_group: bool) -> u128 {
        if own_group {
            self.direct_floor
        } else {
            self.direct_floor.max(u128::from(self.floor))
        }
    }

    /// What the group counts: its value sum net of its floor sum, never below 0. The own group counts its
    /// per-origin values net of their floors (`direct_floor ≤ direct`).
    fn counted(self, own_group: bool) -> u128 {
        self.raw(own_group).saturating_sub(self.floor(own_group))
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
    /// Σ of every other group's counted value, kept up to date on every change (the own group is one term,
    /// read as it is: [`Scheme::own_term`]).
    others: u128,
    /// Σ of every other group's value sum ([`Term::raw`]), for the rest this node publishes.
    others_raw: u128,
    /// Σ of every other group's floor sum ([`Term::floor`]).
    others_floor: u128,
    /// The largest rest aggregate heard for the own group (a lower bound of every other group's exact value
    /// sum together).
    rest: u64,
    /// The largest rest floor heard for the own group (a lower bound of every other group's floors together).
    rest_floor: u64,
}

impl Scheme {
    fn new(groups: u32, own_replica: u64) -> Scheme {
        Scheme {
            groups,
            own_group: group_of(own_replica, groups),
            terms: Vec::new(),
            others: 0,
            others_raw: 0,
            others_floor: 0,
            rest: 0,
            rest_floor: 0,
        }
    }

    /// The own group's term (its other members' per-origin values and floors).
    fn own_term(&self) -> Term {
        self.terms
            .get(self.own_group as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Applies `change` to group `group`'s term, keeping the sums.
    fn update(&mut self, group: u32, change: impl FnOnce(&mut Term)) {
        let own = group == self.own_group;
        let index = group as usize;
        if index >= self.terms.len() {
            // `group < groups ≤ MAX_GROUPS`: bounded.
            self.terms.resize(index + 1, Term::default());
        }
        let term = &mut self.terms[index];
        let before = *term;
        change(term);
        let after = *term;
        // Each sum includes the `before` of every other group's term: no underflow.
        if !own {
            self.others = self.others - before.counted(false) + after.counted(false);
            self.others_raw = self.others_raw - before.raw(false) + after.raw(false);
            self.others_floor = self.others_floor - before.floor(false) + after.floor(false);
        }
    }

    /// The floor of everything outside the own group: the larger of the other groups' floors together and
    /// the rest floor.
    fn outside_floor(&self) -> u128 {
        self.others_floor.max(u128::from(self.rest_floor))
    }

    /// What this scheme counts for the other groups: the larger of their terms' sum and the rest aggregate,
    /// each net of the floor known for everything outside the own group. The terms' sum already has the
    /// groups' own floors taken off; a rest floor above their sum takes off the difference too.
    fn outside(&self) -> u128 {
        let excess = u128::from(self.rest_floor).saturating_sub(self.others_floor);
        let by_terms = self.others.saturating_sub(excess);
        let by_rest = u128::from(self.rest).saturating_sub(self.outside_floor());
        by_terms.max(by_rest)
    }

    /// The remote count this scheme gives: the own group's other members plus everything outside it.
    fn estimate(&self) -> u128 {
        self.own_term().counted(true) + self.outside()
    }

    /// How much of the remote count this scheme knows to be floored: its estimate is at most the exact remote
    /// value sum minus this.
    fn floor_known(&self) -> u128 {
        self.own_term().floor(true) + self.outside_floor()
    }
}

/// The aggregates one cell holds for one epoch, and the estimate of the remote count they give.
#[derive(Debug, Default)]
pub(crate) struct GroupSums {
    /// Oldest first; at most [`MAX_SCHEMES`], held inline (one pointer fewer to follow per merge).
    schemes: SmallVec<[Scheme; MAX_SCHEMES]>,
    /// The largest estimate of a scheme that was pushed out (a lower bound of the remote count), until the
    /// next floor: a floor makes it stale, and it is dropped.
    retired: u128,
}

impl GroupSums {
    /// The remote count these sums give, given `plain`, the sum of every remote origin's contribution held here
    /// (used only before the first scheme: every scheme counts each origin at least at its contribution, so it
    /// is never below `plain` unless a floor heard through aggregates takes more off).
    ///
    /// Each scheme's estimate is at most the exact value sum minus the floors it knows; floor sums name one
    /// scheme's groups, so another scheme may not know them (it heard the values, not yet the floors, or its
    /// publishers are gone). Each estimate is therefore lowered by what the best-informed scheme knows beyond
    /// it, which keeps every candidate at most the exact value sum minus the largest floor known, and the
    /// largest candidate is taken. Without floors nothing is lowered.
    pub(crate) fn estimate(&self, plain: u128) -> u128 {
        let known = self.floor_known();
        self.schemes
            .iter()
            .map(|s| s.estimate().saturating_sub(known - s.floor_known()))
            .max()
            .unwrap_or(plain)
            .max(self.retired)
    }

    /// The most floors any scheme knows of.
    fn floor_known(&self) -> u128 {
        self.schemes
            .iter()
            .map(Scheme::floor_known)
            .max()
            .unwrap_or(0)
    }

    /// What a publisher sends as the rest aggregate of its group under `groups` groups, `(values, floors)`: the
    /// larger of its other groups' value sums and the rest aggregate heard from its group peers, and the same
    /// for the floors (`(0, 0)` before any aggregate of the scheme).
    pub(crate) fn rest_total(&self, groups: u32) -> (u128, u128) {
        self.schemes
            .iter()
            .find(|s| s.groups == groups)
            .map_or((0, 0), |s| {
                (s.others_raw.max(u128::from(s.rest)), s.outside_floor())
            })
    }

    /// Remote origin `origin`'s value or floor changed from `before` to `after` (a merge raised its value, a
    /// floor was raised).
    pub(crate) fn origin_changed(&mut self, origin: u64, before: Held, after: Held) {
        if after.floor != before.floor {
            self.retired = 0;
        }
        for scheme in &mut self.schemes {
            let group = group_of(origin, scheme.groups);
            scheme.update(group, |term| {
                // Both sums include `before` (added when it was merged): no underflow.
                term.direct = term.direct - u128::from(before.value) + u128::from(after.value);
                term.direct_floor =
                    term.direct_floor - u128::from(before.floor) + u128::from(after.floor);
            });
        }
    }

    /// Merges `value`, an aggregate of `id` (a value sum or a floor sum, as `heard` says), as seen by replica
    /// `own_replica` (this node). A scheme seen for the first time is built from `held`, every remote origin's
    /// value and floor held here for the epoch (called only then); if that makes more than [`MAX_SCHEMES`], the
    /// oldest is pushed out and its estimate kept as a lower bound. A group aggregate of this node's own group,
    /// and a rest aggregate of any other group, are ignored (both would count this node's own group twice).
    pub(crate) fn merge<I>(
        &mut self,
        own_replica: u64,
        id: AggregateId,
        heard: SumOf,
        value: u64,
        held: impl FnOnce() -> I,
    ) -> AggregateOutcome
    where
        I: IntoIterator<Item = (u64, Held)>,
    {
        let own_group = id.in_group(own_replica);
        if id.is_rest() && !own_group {
            return AggregateOutcome::ForeignRest;
        }
        if !id.is_rest() && own_group {
            return AggregateOutcome::OwnGroup;
        }
        if value == 0 {
            return AggregateOutcome::Unchanged;
        }
        let index = match self.schemes.iter().position(|s| s.groups == id.groups) {
            Some(index) => index,
            None => {
                if self.schemes.len() >= MAX_SCHEMES {
                    // Kept lowered as in `estimate`: by what the other schemes know of floors beyond it.
                    let known = self.floor_known();
                    let oldest = self.schemes.remove(0);
                    let lowered = oldest
                        .estimate()
                        .saturating_sub(known - oldest.floor_known());
                    self.retired = self.retired.max(lowered);
                }
                let mut scheme = Scheme::new(id.groups, own_replica);
                for (origin, held) in held() {
                    let group = group_of(origin, id.groups);
                    scheme.update(group, |term| {
                        term.direct += u128::from(held.value);
                        term.direct_floor += u128::from(held.floor);
                    });
                }
                self.schemes.push(scheme);
                self.schemes.len() - 1
            }
        };
        let scheme = &mut self.schemes[index];
        if id.is_rest() {
            let slot = match heard {
                SumOf::Values => &mut scheme.rest,
                SumOf::Floors => &mut scheme.rest_floor,
            };
            if value <= *slot {
                return AggregateOutcome::Unchanged;
            }
            *slot = value;
        } else {
            let held = scheme
                .terms
                .get(id.group as usize)
                .map_or(0, |t| match heard {
                    SumOf::Values => t.aggregate,
                    SumOf::Floors => t.floor,
                });
            if value <= held {
                return AggregateOutcome::Unchanged;
            }
            scheme.update(id.group, |term| match heard {
                SumOf::Values => term.aggregate = value,
                SumOf::Floors => term.floor = value,
            });
        }
        if heard == SumOf::Floors {
            self.retired = 0;
        }
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

    fn held(value: u64) -> Held {
        Held { value, floor: 0 }
    }

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
            sums.merge(me, foreign, SumOf::Values, 50, Vec::new),
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
            sums.merge(me, rest, SumOf::Values, 30, || {
                vec![(peer, held(5)), (outsider, held(10))]
            }),
            AggregateOutcome::Raised
        );
        assert_eq!(
            sums.estimate(15),
            35,
            "own group 5 + max(others 10, rest 30)"
        );
        assert_eq!(sums.rest_total(groups), (30, 0));
        let outsiders = AggregateId::new(groups, group_of(outsider, groups)).expect("valid");
        assert_eq!(
            sums.merge(me, outsiders, SumOf::Values, 40, Vec::new),
            AggregateOutcome::Raised
        );
        assert_eq!(
            sums.estimate(15),
            45,
            "the other groups' terms now above the rest"
        );
        assert_eq!(sums.rest_total(groups), (40, 0));
        assert_eq!(
            sums.merge(me, rest, SumOf::Values, 29, Vec::new),
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
            sums.merge(me, own, SumOf::Values, 50, Vec::new),
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
            sums.merge(me, id, SumOf::Values, 3, || vec![(other, held(10))]),
            AggregateOutcome::Raised
        );
        assert_eq!(sums.estimate(10), 10, "max(direct 10, aggregate 3)");
        sums.origin_changed(other, held(10), held(12));
        assert_eq!(sums.estimate(12), 12);
        assert_eq!(
            sums.merge(me, id, SumOf::Values, 20, Vec::new),
            AggregateOutcome::Raised
        );
        assert_eq!(sums.estimate(12), 20);
        assert_eq!(
            sums.merge(me, id, SumOf::Values, 19, Vec::new),
            AggregateOutcome::Unchanged
        );
        assert_eq!(sums.aggregate(id), 20);
    }

    /// One simulated cluster for one key and epoch: replicas with counts and floors, publishers that see part of
    /// their group, and one receiver that hears per-origin values from its group and aggregates from the
    /// others, in any order, through scheme changes and resets.
    ///
    /// Resets follow the replication design: a reset reaches every replica at some moment, and each one then
    /// floors every origin it holds at the value it holds (itself at its count); an origin's floor is the
    /// largest of those (`floors`, max-merged everywhere). The receiver learns floors per origin for its own
    /// group's members, and as floor sums in the aggregates.
    #[derive(Debug, Clone)]
    enum Step {
        /// Replica `r` counts `n` more.
        Count(usize, u64),
        /// The receiver hears replica `r`'s current value (only its own group's members send per origin; others
        /// arrive as relays of state chunks, also allowed).
        Direct(usize),
        /// The receiver hears replica `r`'s current floor.
        DirectFloor(usize),
        /// Replica `r` hears a reset: it floors itself at its count (the receiver: every value it holds).
        Reset(usize),
        /// A member `p` of some group publishes, having seen a subset (bit mask) of its group's members'
        /// current values and floors, under scheme index `s`; the receiver hears the value sum, the floor sum,
        /// or both.
        Publish {
            publisher: usize,
            seen: u64,
            scheme: usize,
            parts: Parts,
        },
        /// A member `p` of some group sends the rest aggregate of its group, having seen a subset (bit mask) of
        /// the current values and floors outside it, under scheme index `s`; the receiver hears it (and must
        /// ignore it unless `p` is in its own group).
        Rest {
            publisher: usize,
            seen: u64,
            scheme: usize,
            parts: Parts,
        },
        /// A stale copy of an earlier aggregate arrives again (reordering, duplication).
        Replay(usize),
    }

    /// Which parts of a publication arrive (both travel in one frame, but a frame may hold only one).
    #[derive(Debug, Clone, Copy)]
    enum Parts {
        Values,
        Floors,
        Both,
    }

    const REPLICAS: usize = 24;
    const SCHEMES: [u32; 3] = [4, 8, 2];

    fn parts() -> impl Strategy<Value = Parts> {
        prop_oneof![Just(Parts::Values), Just(Parts::Floors), Just(Parts::Both)]
    }

    fn step(resets: bool) -> impl Strategy<Value = Step> {
        let reset_weight = u32::from(resets);
        prop_oneof![
            4 => (0..REPLICAS, 1..50u64).prop_map(|(r, n)| Step::Count(r, n)),
            4 => (0..REPLICAS).prop_map(Step::Direct),
            reset_weight => (0..REPLICAS).prop_map(Step::DirectFloor),
            reset_weight => (0..REPLICAS).prop_map(Step::Reset),
            4 => (0..REPLICAS, any::<u64>(), 0..SCHEMES.len(), parts()).prop_map(
                |(publisher, seen, scheme, parts)| Step::Publish {
                    publisher,
                    seen,
                    scheme,
                    parts,
                }
            ),
            4 => (0..REPLICAS, any::<u64>(), 0..SCHEMES.len(), parts()).prop_map(
                |(publisher, seen, scheme, parts)| Step::Rest {
                    publisher,
                    seen,
                    scheme,
                    parts,
                }
            ),
            2 => (0..64usize).prop_map(Step::Replay),
        ]
    }

    struct World {
        me: usize,
        counts: Vec<u64>,
        /// Every origin's floor as the whole cluster will know it (the max of every replica's view at its
        /// reset).
        floors: Vec<u64>,
        /// What the receiver holds per origin.
        held: BTreeMap<u64, Held>,
        sums: GroupSums,
        sent: Vec<(AggregateId, SumOf, u64)>,
    }

    impl World {
        fn new(me: usize) -> World {
            World {
                me,
                counts: vec![0; REPLICAS],
                floors: vec![0; REPLICAS],
                held: BTreeMap::new(),
                sums: GroupSums::default(),
                sent: Vec::new(),
            }
        }

        fn replica(r: usize) -> u64 {
            1_000 + r as u64
        }

        fn remote(&self) -> impl Iterator<Item = usize> + '_ {
            (0..REPLICAS).filter(|&r| r != self.me)
        }

        /// The exact remote count once every floor is known.
        fn exact_remote(&self) -> u128 {
            self.remote()
                .map(|r| u128::from(self.counts[r] - self.floors[r]))
                .sum()
        }

        /// The exact remote count net of only the floors the receiver holds per origin: what it may count at
        /// most now.
        fn exact_net_of_held_floors(&self) -> u128 {
            self.remote()
                .map(|r| {
                    let floor = self.held.get(&World::replica(r)).map_or(0, |h| h.floor);
                    u128::from(self.counts[r] - floor)
                })
                .sum()
        }

        fn plain(&self) -> u128 {
            self.held
                .values()
                .map(|h| u128::from(h.value - h.floor))
                .sum()
        }

        fn set_held(&mut self, origin: u64, after: Held) {
            let before = self.held.get(&origin).copied().unwrap_or_default();
            if after != before {
                self.held.insert(origin, after);
                self.sums.origin_changed(origin, before, after);
            }
        }

        fn direct(&mut self, r: usize) {
            if r == self.me {
                return;
            }
            let origin = World::replica(r);
            let before = self.held.get(&origin).copied().unwrap_or_default();
            if self.counts[r] > before.value {
                self.set_held(
                    origin,
                    Held {
                        value: self.counts[r],
                        ..before
                    },
                );
            }
        }

        /// The receiver hears `r`'s floor: kept up to the value it holds (as the cell does).
        fn direct_floor(&mut self, r: usize) {
            if r == self.me {
                return;
            }
            let origin = World::replica(r);
            let before = self.held.get(&origin).copied().unwrap_or_default();
            let floor = self.floors[r].min(before.value);
            if floor > before.floor {
                self.set_held(origin, Held { floor, ..before });
            }
        }

        fn reset(&mut self, r: usize) {
            if r != self.me {
                self.floors[r] = self.floors[r].max(self.counts[r]);
                return;
            }
            let held: Vec<(u64, Held)> = self.held.iter().map(|(&o, &h)| (o, h)).collect();
            for (origin, h) in held {
                let index = (origin - 1_000) as usize;
                self.floors[index] = self.floors[index].max(h.value);
                self.set_held(
                    origin,
                    Held {
                        value: h.value,
                        floor: h.value,
                    },
                );
            }
        }

        fn deliver(&mut self, id: AggregateId, heard: SumOf, value: u64) {
            let held: Vec<(u64, Held)> = self.held.iter().map(|(&o, &h)| (o, h)).collect();
            self.sums
                .merge(World::replica(self.me), id, heard, value, || held);
        }

        fn send(&mut self, id: AggregateId, sums: (u64, u64), parts: Parts) {
            let (values, floors) = sums;
            for (heard, value, wanted) in [
                (SumOf::Values, values, !matches!(parts, Parts::Floors)),
                (SumOf::Floors, floors, !matches!(parts, Parts::Values)),
            ] {
                if wanted {
                    self.sent.push((id, heard, value));
                    self.deliver(id, heard, value);
                }
            }
        }

        /// Σ counts and Σ floors over the replicas `which` selects.
        fn sums_over(&self, which: impl Fn(usize) -> bool) -> (u64, u64) {
            (0..REPLICAS)
                .filter(|&r| which(r))
                .fold((0, 0), |(v, f), r| (v + self.counts[r], f + self.floors[r]))
        }

        /// Publisher `p` under `groups` groups sums what it has seen of its group (always its own value).
        fn publish(&mut self, p: usize, seen: u64, groups: u32, parts: Parts) {
            let group = group_of(World::replica(p), groups);
            let id = AggregateId::new(groups, group).expect("valid scheme");
            let sums = self.sums_over(|r| {
                group_of(World::replica(r), groups) == group && (r == p || seen & (1 << r) != 0)
            });
            self.send(id, sums, parts);
        }

        /// Publisher `p` under `groups` groups sums what it has seen outside its group.
        fn rest(&mut self, p: usize, seen: u64, groups: u32, parts: Parts) {
            let group = group_of(World::replica(p), groups);
            let id = AggregateId::rest(groups, group).expect("valid scheme");
            let sums = self.sums_over(|r| {
                group_of(World::replica(r), groups) != group && seen & (1 << r) != 0
            });
            self.send(id, sums, parts);
        }

        fn estimate(&self) -> u128 {
            self.sums.estimate(self.plain())
        }
    }

    fn run(
        me: usize,
        steps: Vec<Step>,
        last_scheme: usize,
        by_rest: bool,
        resets: bool,
    ) -> Result<(), TestCaseError> {
        let mut world = World::new(me);
        let mut previous = 0;
        for step in steps {
            match step {
                Step::Count(r, n) => world.counts[r] += n,
                Step::Direct(r) => world.direct(r),
                Step::DirectFloor(r) => world.direct_floor(r),
                Step::Reset(r) => world.reset(r),
                Step::Publish {
                    publisher,
                    seen,
                    scheme,
                    parts,
                } => world.publish(publisher, seen, SCHEMES[scheme], parts),
                Step::Rest {
                    publisher,
                    seen,
                    scheme,
                    parts,
                } => world.rest(publisher, seen, SCHEMES[scheme], parts),
                Step::Replay(i) => {
                    if let Some(&(id, heard, value)) = world.sent.get(i) {
                        world.deliver(id, heard, value);
                    }
                }
            }
            let estimate = world.estimate();
            let bound = world.exact_net_of_held_floors();
            prop_assert!(estimate <= bound, "{estimate} above {bound}");
            if !resets {
                prop_assert!(estimate >= world.plain());
                prop_assert!(
                    estimate >= previous,
                    "the count fell from {previous} to {estimate}"
                );
            }
            previous = estimate;
        }
        // Quiescence under the last scheme: the own group's members deliver their values and floors; one
        // member of every other group publishes having seen everything of its group (or one member of the own
        // group sends a complete rest).
        let groups = SCHEMES[last_scheme];
        let own = group_of(World::replica(me), groups);
        for r in 0..REPLICAS {
            if group_of(World::replica(r), groups) == own {
                world.direct(r);
                world.direct_floor(r);
            }
        }
        if by_rest {
            // One member of the own group (this node itself when it is alone in it) sends a complete rest.
            let member = (0..REPLICAS)
                .find(|&r| group_of(World::replica(r), groups) == own)
                .expect("the receiver is in its group");
            world.rest(member, u64::MAX, groups, Parts::Both);
        } else {
            let mut published = std::collections::BTreeSet::new();
            for r in 0..REPLICAS {
                let group = group_of(World::replica(r), groups);
                if group != own && published.insert(group) {
                    world.publish(r, u64::MAX, groups, Parts::Both);
                }
            }
        }
        prop_assert_eq!(world.estimate(), world.exact_remote());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Without resets: never above the exact remote count, never below the plain per-origin sum, never
        /// falling, whatever the publishers saw (group aggregates and rest aggregates of any group mixed),
        /// whichever died (never published again), in any order and through scheme changes; and exact once
        /// the own group's values and either one complete aggregate of every other group of the current scheme
        /// or one complete rest aggregate of the own group arrived.
        #[test]
        fn the_estimate_is_a_lower_bound_and_exact_after_quiescence(
            me in 0..REPLICAS,
            steps in proptest::collection::vec(step(false), 0..200),
            last_scheme in 0..SCHEMES.len(),
            by_rest: bool,
        ) {
            run(me, steps, last_scheme, by_rest, false)?;
        }

        /// With resets anywhere, any number of them, heard by the replicas in any order: never above the exact
        /// count net of the floors the receiver holds per origin (floor sums heard in aggregates only take
        /// more off, never less), whether a value sum arrives before or after its floor sum, from old schemes
        /// or new; and exact, net of every floor, after the same quiescence.
        #[test]
        fn floors_heard_in_aggregates_take_resets_to_every_group(
            me in 0..REPLICAS,
            steps in proptest::collection::vec(step(true), 0..200),
            last_scheme in 0..SCHEMES.len(),
            by_rest: bool,
        ) {
            run(me, steps, last_scheme, by_rest, true)?;
        }
    }
}
