//! Errors of the membership plane. Each variant says what the call did to the state.

use std::net::SocketAddr;

use super::event::MemberRef;
use super::options::OptionsError;
use super::table::MemberState;

/// Why a membership call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A payload larger than `max_packet_size`. Dropped unread; state unchanged.
    #[error(
        "membership payload from {from} is {len} bytes, over max_packet_size {max}: dropped, state unchanged"
    )]
    PacketTooLarge {
        /// Transport address it came from.
        from: SocketAddr,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A payload that does not decode, or breaks the protocol. Dropped; if the fault was in a custom broadcast
    /// at its tail, the member updates before it had already been applied (they were valid), nothing after.
    #[error("malformed membership payload from {from}: {reason}: dropped")]
    Malformed {
        /// Transport address it came from.
        from: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// A payload whose sender claims this node's own address (a misconfigured peer sharing our address, or
    /// a replay). Dropped; state unchanged.
    #[error(
        "membership payload from {from} claims this node's own address: dropped, state unchanged"
    )]
    FromOurselves {
        /// Transport address it came from.
        from: SocketAddr,
    },
    /// This node has left the cluster: the call was ignored, state unchanged.
    #[error("this node has left the cluster: call ignored, state unchanged")]
    Left,
    /// `join` was given this node's own address. Ignored; state unchanged.
    #[error("cannot join our own address {0}: ignored, state unchanged")]
    JoinSelf(SocketAddr),
    /// A data-plane report about a member this node does not know. Ignored; state unchanged.
    #[error("no known member with {0}: data-plane report ignored, state unchanged")]
    UnknownMember(MemberRef),
    /// A data-plane report about a member that is down or left. Ignored; state unchanged.
    #[error("member {member} is {state}: data-plane report ignored, state unchanged")]
    NotActive {
        /// The member, as named by the caller.
        member: MemberRef,
        /// Its state.
        state: MemberState,
    },
    /// A data-plane report about a refused duplicate (a second process with a member's node id). Ignored;
    /// state unchanged.
    #[error(
        "{0} is a refused duplicate of a member's node id: data-plane report ignored, state unchanged"
    )]
    RefusedDuplicate(MemberRef),
    /// Options break a documented constraint ([`OptionsError::field`] names the field). No `Membership`
    /// was built.
    #[error("invalid membership options: {0}")]
    InvalidOptions(OptionsError),
    /// The local identity is unusable (empty or over-long node id). No `Membership` was built.
    #[error("invalid local identity: {0}")]
    InvalidIdentity(String),
    /// foca reported an internal inconsistency (a bug in the wrapper or in foca). The SWIM state is kept as
    /// foca left it; foca resumes normal operation on the next timer.
    #[error("SWIM internal error: {0}")]
    Internal(String),
}
