//! The wrapper's custom broadcasts as received: graceful-leave notices and Lifeguard suspicion
//! confirmations.
//!
//! Guarantees: a leave notice is remembered (so the identity reads left, not down, once foca holds it
//! down); one that outran foca's own update makes this node declare that member down in foca at once,
//! without waiting for suspicion. A suspicion heard from another member is a confirmation for this node's
//! own timer (see `suspicion`). Notices about or from this node itself are ignored.

use super::Membership;
use super::codec::BroadcastItem;
use super::identity::MemberId;
use super::table::MemberState;
use foca::Member;

impl Membership {
    /// Applies the custom broadcasts heard for the first time: leave notices (remembered; returns the active
    /// members they concern, to be declared down in foca, and whether one concerned a member the map holds
    /// down, whose state then reads left) and suspicion confirmations.
    pub(super) fn apply_broadcasts(
        &mut self,
        broadcasts: Vec<BroadcastItem>,
        now_ms: u64,
    ) -> (Vec<MemberId>, bool) {
        let mut leaving = Vec::new();
        let mut left_while_down = false;
        for item in broadcasts {
            match item {
                BroadcastItem::Leave(id) => {
                    if id.addr == self.local.addr {
                        continue;
                    }
                    self.left_ids.entry(id.clone()).or_insert(now_ms);
                    if let Some(e) = self.members.get(&id.addr)
                        && e.id == id
                        && e.state != MemberState::Left
                    {
                        if e.state.is_active() {
                            leaving.push(id);
                        } else {
                            left_while_down = true;
                        }
                    }
                }
                BroadcastItem::Suspicion {
                    target,
                    incarnation,
                    from,
                } => {
                    if from.addr != self.local.addr {
                        self.suspicions.confirm(target, incarnation, from.addr);
                    }
                }
            }
        }
        (leaving, left_while_down)
    }

    /// Declares down in foca the members whose leave notice outran foca's own update.
    pub(super) fn declare_down(&mut self, leaving: Vec<MemberId>, now_ms: u64) {
        let updates = leaving.into_iter().map(Member::down);
        if self
            .with_swim(now_ms, |swim, rt| swim.apply_many(updates, true, rt))
            .is_err()
        {
            self.stats.internal_errors += 1;
        }
    }
}
