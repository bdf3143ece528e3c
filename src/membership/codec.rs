//! The membership wire format (foca's [`foca::Codec`]) and the two custom broadcasts the wrapper adds
//! (graceful leave notices and Lifeguard suspicion confirmations).
//!
//! Every decode is bounds-checked and returns [`CodecError`] on junk: nothing here panics on input bytes.
//! The codec and the broadcast handler live inside foca, so what they observe (who sent what, which
//! broadcasts arrived) is written to a small [`Observed`] record shared with the wrapper, which drains it
//! after every call into foca.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::LockClean;

use bytes::{Buf, BufMut};
use foca::{BroadcastHandler, Codec, Header, Incarnation, Invalidates, Member, Message, State};

use super::identity::{MAX_NODE_ID_BYTES, MemberId};
use crate::ReplicaId;

/// First byte of every membership header; a different value is refused.
pub(crate) const WIRE_VERSION: u8 = 1;
/// First byte of a roster chunk (the wrapper's push-pull state sync), never a foca packet.
pub(crate) const ROSTER_MAGIC: u8 = 0xB5;

/// One packet of a roster exchange: part of the sender's full member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RosterChunk {
    pub(crate) sender: MemberId,
    /// The sender wants the receiver's roster in return (push-pull).
    pub(crate) reply: bool,
    pub(crate) members: Vec<Member<MemberId>>,
}

/// Splits `members` into roster chunks of at most `max` bytes each (at least one chunk, maybe empty).
pub(crate) fn encode_roster(
    sender: &MemberId,
    reply: bool,
    members: &[Member<MemberId>],
    max: usize,
) -> Vec<Vec<u8>> {
    let mut head = vec![ROSTER_MAGIC, u8::from(reply)];
    put_id(&mut head, sender);
    let mut chunks = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let flush = |body: &mut Vec<u8>, count: &mut u16, chunks: &mut Vec<Vec<u8>>| {
        let mut c = head.clone();
        c.extend_from_slice(&count.to_be_bytes());
        c.append(body);
        chunks.push(c);
        *count = 0;
    };
    for m in members {
        let mut one = Vec::with_capacity(64);
        put_member(&mut one, m);
        if count > 0 && (head.len() + 2 + body.len() + one.len() > max || count == u16::MAX) {
            flush(&mut body, &mut count, &mut chunks);
        }
        body.extend_from_slice(&one);
        count += 1;
    }
    if count > 0 || chunks.is_empty() {
        flush(&mut body, &mut count, &mut chunks);
    }
    chunks
}

/// Decodes one roster chunk; trailing bytes are an error.
pub(crate) fn decode_roster(bytes: &[u8]) -> Result<RosterChunk, CodecError> {
    let mut r = Reader::new(bytes);
    let magic = r.u8()?;
    if magic != ROSTER_MAGIC {
        return Err(CodecError::UnknownTag {
            what: "roster",
            tag: magic,
        });
    }
    let reply = match r.u8()? {
        0 => false,
        1 => true,
        tag => {
            return Err(CodecError::UnknownTag {
                what: "roster flag",
                tag,
            });
        }
    };
    let sender = r.id()?;
    let count = r.u16()?;
    let mut members = Vec::with_capacity(usize::from(count).min(bytes.len() / 32 + 1));
    for _ in 0..count {
        members.push(r.member()?);
    }
    if r.pos != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - r.pos));
    }
    Ok(RosterChunk {
        sender,
        reply,
        members,
    })
}

/// Why bytes could not be decoded (or an item not encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside an item.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// The header's version byte is not the one this node speaks (1).
    #[error("unknown membership wire version {0} (this node speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// An enum tag with no meaning.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which enum.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A member or sender with an empty node id.
    #[error("empty node id")]
    EmptyNodeId,
    /// A node id that is not UTF-8.
    #[error("node id is not UTF-8")]
    NodeIdNotUtf8,
    /// Bytes left over after a complete item.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Encoding: the item does not fit the space left in the packet (nothing was written).
    #[error("no room left in the packet")]
    BufferFull,
}

/// What the codec and the broadcast handler saw during one call into foca.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// This node's address (to spot updates about ourselves).
    pub(crate) local_addr: Option<SocketAddr>,
    /// Headers decoded from received packets.
    pub(crate) received: Vec<ReceivedHeader>,
    /// Probes sent: (target, probe number).
    pub(crate) pings_sent: Vec<(MemberId, u8)>,
    /// Member updates decoded (any member): identity, incarnation, state, in arrival order.
    pub(crate) members_decoded: Vec<(MemberId, Incarnation, State)>,
    /// Highest incarnation at which an update called us suspect (only at or above our current one).
    pub(crate) self_suspected: Option<Incarnation>,
    /// Our own incarnation, as last written in a header we sent.
    pub(crate) local_incarnation: Incarnation,
    /// Custom broadcasts received from others for the first time.
    pub(crate) broadcasts: Vec<BroadcastItem>,
    /// Custom broadcasts already seen, with the virtual time they were first seen (pruned by the wrapper).
    pub(crate) seen: BTreeMap<BroadcastItem, u64>,
    /// The time of the current call, set by the wrapper before it calls foca.
    pub(crate) now_ms: u64,
}

/// One received header, reduced to what the wrapper needs.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedHeader {
    pub(crate) src: MemberId,
    pub(crate) src_incarnation: Incarnation,
    pub(crate) kind: ReceivedKind,
}

/// The message kinds the wrapper reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceivedKind {
    /// A direct probe answer.
    Ack(u8),
    /// An indirect probe answer about `origin` (the probed member).
    ForwardedAck(SocketAddr, u8),
    /// Anything else.
    Other,
}

/// The state shared by the codec, the broadcast handler and the wrapper.
pub(crate) type Shared = Arc<Mutex<Observed>>;

/// Locks the shared record (poison policy of `crate::sync`: the data is plain counters and lists, whole after
/// every update).
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Observed> {
    shared.lock_clean()
}

/// A custom broadcast of the membership plane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BroadcastItem {
    /// This identity left the cluster on purpose: mark it left, not down.
    Leave(MemberId),
    /// `from` failed to probe `target` at `incarnation` and suspects it (a Lifeguard confirmation).
    Suspicion {
        target: MemberId,
        incarnation: Incarnation,
        from: MemberId,
    },
}

impl BroadcastItem {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        match self {
            BroadcastItem::Leave(id) => {
                out.push(1);
                put_id(&mut out, id);
            }
            BroadcastItem::Suspicion {
                target,
                incarnation,
                from,
            } => {
                out.push(2);
                put_id(&mut out, target);
                out.extend_from_slice(&incarnation.to_be_bytes());
                put_id(&mut out, from);
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<BroadcastItem, CodecError> {
        let mut r = Reader::new(bytes);
        let item = match r.u8()? {
            1 => BroadcastItem::Leave(r.id()?),
            2 => BroadcastItem::Suspicion {
                target: r.id()?,
                incarnation: r.u16()?,
                from: r.id()?,
            },
            tag => {
                return Err(CodecError::UnknownTag {
                    what: "broadcast",
                    tag,
                });
            }
        };
        Ok(item)
    }
}

impl Invalidates for BroadcastItem {
    /// The same item, or a suspicion from the same member about the same target at a newer incarnation.
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                BroadcastItem::Suspicion {
                    target: t1,
                    incarnation: i1,
                    from: f1,
                },
                BroadcastItem::Suspicion {
                    target: t2,
                    incarnation: i2,
                    from: f2,
                },
            ) => t1 == t2 && f1 == f2 && i1 >= i2,
            _ => self == other,
        }
    }
}

/// foca's broadcast handler: keeps an item circulating only the first time it is seen, and hands new items
/// to the wrapper.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) shared: Shared,
}

impl BroadcastHandler<MemberId> for Handler {
    type Key = BroadcastItem;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&MemberId>,
    ) -> Result<Option<BroadcastItem>, CodecError> {
        let item = BroadcastItem::decode(data)?;
        let mut obs = lock(&self.shared);
        if obs.seen.contains_key(&item) {
            return Ok(None);
        }
        let now = obs.now_ms;
        obs.seen.insert(item.clone(), now);
        if sender.is_some() {
            obs.broadcasts.push(item.clone());
        }
        Ok(Some(item))
    }
}

/// foca's codec: a compact, versioned binary format.
#[derive(Debug)]
pub(crate) struct WireCodec {
    pub(crate) shared: Shared,
}

impl Codec<MemberId> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        let mut out = Vec::with_capacity(128);
        out.push(WIRE_VERSION);
        put_id(&mut out, &header.src);
        out.extend_from_slice(&header.src_incarnation.to_be_bytes());
        put_id(&mut out, &header.dst);
        match &header.message {
            Message::Ping(n) => out.extend_from_slice(&[0, *n]),
            Message::Ack(n) => out.extend_from_slice(&[1, *n]),
            Message::PingReq {
                target,
                probe_number,
            } => {
                out.push(2);
                put_id(&mut out, target);
                out.push(*probe_number);
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                out.push(3);
                put_id(&mut out, origin);
                out.push(*probe_number);
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                out.push(4);
                put_id(&mut out, target);
                out.push(*probe_number);
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                out.push(5);
                put_id(&mut out, origin);
                out.push(*probe_number);
            }
            Message::Announce => out.push(6),
            Message::Feed => out.push(7),
            Message::Gossip => out.push(8),
            Message::Broadcast => out.push(9),
            Message::TurnUndead => out.push(10),
        }
        if buf.remaining_mut() < out.len() {
            return Err(CodecError::BufferFull);
        }
        buf.put_slice(&out);
        let mut obs = lock(&self.shared);
        if Some(header.src.addr) == obs.local_addr {
            obs.local_incarnation = header.src_incarnation;
        }
        if let Message::Ping(n) = header.message {
            obs.pings_sent.push((header.dst.clone(), n));
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        let (header, used) = {
            let mut r = Reader::new(buf.chunk());
            let version = r.u8()?;
            if version != WIRE_VERSION {
                return Err(CodecError::UnknownVersion(version));
            }
            let src = r.id()?;
            let src_incarnation = r.u16()?;
            let dst = r.id_allow_placeholder()?;
            let message = match r.u8()? {
                0 => Message::Ping(r.u8()?),
                1 => Message::Ack(r.u8()?),
                2 => Message::PingReq {
                    target: r.id()?,
                    probe_number: r.u8()?,
                },
                3 => Message::IndirectPing {
                    origin: r.id()?,
                    probe_number: r.u8()?,
                },
                4 => Message::IndirectAck {
                    target: r.id()?,
                    probe_number: r.u8()?,
                },
                5 => Message::ForwardedAck {
                    origin: r.id()?,
                    probe_number: r.u8()?,
                },
                6 => Message::Announce,
                7 => Message::Feed,
                8 => Message::Gossip,
                9 => Message::Broadcast,
                10 => Message::TurnUndead,
                tag => {
                    return Err(CodecError::UnknownTag {
                        what: "message",
                        tag,
                    });
                }
            };
            (
                Header {
                    src,
                    src_incarnation,
                    dst,
                    message,
                },
                r.pos,
            )
        };
        buf.advance(used);
        let mut header = header;
        // A join request names its target by the address the joiner dialed, which may not be the address this
        // node advertises (a static peer listed as 127.0.0.1 while the node advertises its LAN address, or a
        // port mapping). It reached this node over an authenticated link, so it is for this node: foca takes an
        // announce only when its destination's address is its own, so the placeholder gets ours. Without this
        // both nodes stayed linked but never let each other in.
        if header.message == Message::Announce
            && header.dst.node_id().is_empty()
            && let Some(local) = lock(&self.shared).local_addr
            && header.dst.addr() != local
        {
            header.dst = MemberId::placeholder(local);
        }
        let kind = match &header.message {
            Message::Ack(n) => ReceivedKind::Ack(*n),
            Message::ForwardedAck {
                origin,
                probe_number,
            } => ReceivedKind::ForwardedAck(origin.addr, *probe_number),
            _ => ReceivedKind::Other,
        };
        lock(&self.shared).received.push(ReceivedHeader {
            src: header.src.clone(),
            src_incarnation: header.src_incarnation,
            kind,
        });
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        let mut out = Vec::with_capacity(64);
        put_member(&mut out, member);
        if buf.remaining_mut() < out.len() {
            return Err(CodecError::BufferFull);
        }
        buf.put_slice(&out);
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        let (member, used) = {
            let mut r = Reader::new(buf.chunk());
            (r.member()?, r.pos)
        };
        buf.advance(used);
        let mut obs = lock(&self.shared);
        obs.members_decoded
            .push((member.id().clone(), member.incarnation(), member.state()));
        // A suspicion about us at our current incarnation (foca refutes it right after by bumping it; stale
        // copies still circulating carry a lower incarnation and are not counted again).
        if member.state() == State::Suspect
            && Some(member.id().addr) == obs.local_addr
            && member.incarnation() >= obs.local_incarnation
        {
            obs.self_suspected = obs.self_suspected.max(Some(member.incarnation()));
        }
        Ok(member)
    }
}

fn put_member(out: &mut Vec<u8>, member: &Member<MemberId>) {
    put_id(out, member.id());
    out.extend_from_slice(&member.incarnation().to_be_bytes());
    out.push(match member.state() {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    });
}

fn put_id(out: &mut Vec<u8>, id: &MemberId) {
    let name = id.node_id.as_bytes();
    // Identities are validated at construction (Membership::new) and on decode, so the length fits a byte;
    // a longer name is cut at the byte limit rather than corrupting the framing.
    let len = name.len().min(MAX_NODE_ID_BYTES);
    out.push(len as u8);
    out.extend_from_slice(&name[..len]);
    out.extend_from_slice(&id.replica_id.get().to_be_bytes());
    out.extend_from_slice(&id.started_ms.to_be_bytes());
    out.extend_from_slice(&id.renewal.to_be_bytes());
    put_addr(out, id.addr);
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.flowinfo().to_be_bytes());
            out.extend_from_slice(&a.scope_id().to_be_bytes());
        }
    }
}

/// A bounds-checked cursor over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        match rest.get(..n) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(CodecError::Truncated {
                needed: n - rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn addr(&mut self) -> Result<SocketAddr, CodecError> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = self.u16()?;
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let flowinfo = self.u32()?;
                let scope = self.u32()?;
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
            }
            tag => Err(CodecError::UnknownTag {
                what: "address",
                tag,
            }),
        }
    }

    fn id_allow_placeholder(&mut self) -> Result<MemberId, CodecError> {
        let len = usize::from(self.u8()?);
        let name = std::str::from_utf8(self.take(len)?).map_err(|_| CodecError::NodeIdNotUtf8)?;
        let replica_id = ReplicaId::new(self.u64()?);
        let started_ms = self.u64()?;
        let renewal = self.u32()?;
        let addr = self.addr()?;
        Ok(MemberId::new(name, replica_id, started_ms, renewal, addr))
    }

    fn member(&mut self) -> Result<Member<MemberId>, CodecError> {
        let id = self.id()?;
        let incarnation = self.u16()?;
        let state = match self.u8()? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            tag => return Err(CodecError::UnknownTag { what: "state", tag }),
        };
        Ok(Member::new(id, incarnation, state))
    }

    fn id(&mut self) -> Result<MemberId, CodecError> {
        let id = self.id_allow_placeholder()?;
        if id.node_id.is_empty() {
            return Err(CodecError::EmptyNodeId);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str, port: u16) -> MemberId {
        MemberId::new(
            n,
            ReplicaId::new(42),
            1_700_000_000_000,
            1,
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    fn codec() -> WireCodec {
        WireCodec {
            shared: Shared::default(),
        }
    }

    #[test]
    fn header_and_member_round_trip() {
        let mut c = codec();
        let v6: SocketAddr = "[fe80::1%3]:10101".parse().expect("literal address");
        let header = Header {
            src: id("a", 1),
            src_incarnation: 9,
            dst: MemberId::new("b", ReplicaId::new(1), 2, 0, v6),
            message: Message::PingReq {
                target: id("c", 3),
                probe_number: 200,
            },
        };
        let mut buf = Vec::new();
        c.encode_header(&header, &mut buf).expect("room");
        let member = Member::new(id("d", 4), 3, State::Suspect);
        c.encode_member(&member, &mut buf).expect("room");
        let mut slice = &buf[..];
        assert_eq!(c.decode_header(&mut slice).expect("valid"), header);
        assert_eq!(c.decode_member(&mut slice).expect("valid"), member);
        assert!(slice.is_empty());
    }

    #[test]
    fn a_join_request_to_another_of_our_addresses_is_for_us() {
        let mut c = codec();
        let ours = SocketAddr::from(([10, 79, 0, 1], 20_001));
        lock(&c.shared).local_addr = Some(ours);
        let dialed = SocketAddr::from(([127, 0, 0, 1], 20_001));
        let announce = Header {
            src: id("a", 1),
            src_incarnation: 0,
            dst: MemberId::placeholder(dialed),
            message: Message::<MemberId>::Announce,
        };
        let mut buf = Vec::new();
        c.encode_header(&announce, &mut buf).expect("room");
        let decoded = c.decode_header(&buf[..]).expect("valid");
        assert_eq!(decoded.dst, MemberId::placeholder(ours));
        // Anything else keeps its destination (foca drops what is not for this identity).
        let ping = Header {
            message: Message::<MemberId>::Ping(1),
            ..announce
        };
        let mut buf = Vec::new();
        c.encode_header(&ping, &mut buf).expect("room");
        assert_eq!(
            c.decode_header(&buf[..]).expect("valid").dst,
            MemberId::placeholder(dialed)
        );
    }

    #[test]
    fn placeholder_is_only_a_destination() {
        let mut c = codec();
        let header = Header {
            src: MemberId::placeholder(SocketAddr::from(([127, 0, 0, 1], 1))),
            src_incarnation: 0,
            dst: id("b", 2),
            message: Message::<MemberId>::Announce,
        };
        let mut buf = Vec::new();
        c.encode_header(&header, &mut buf).expect("room");
        assert_eq!(
            c.decode_header(&buf[..]).expect_err("empty sender"),
            CodecError::EmptyNodeId
        );
    }

    #[test]
    fn every_truncation_and_junk_is_an_error_not_a_panic() {
        let mut c = codec();
        let header = Header {
            src: id("a", 1),
            src_incarnation: 1,
            dst: id("b", 2),
            message: Message::ForwardedAck {
                origin: id("c", 3),
                probe_number: 1,
            },
        };
        let mut buf = Vec::new();
        c.encode_header(&header, &mut buf).expect("room");
        for cut in 0..buf.len() {
            assert!(c.decode_header(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // Flip every byte to every value at a few positions: decode must return, whatever it returns.
        for pos in [0, 1, 2, 10, buf.len() - 1] {
            for v in 0..=255u8 {
                let mut junk = buf.clone();
                junk[pos] = v;
                let _ = c.decode_header(&junk[..]);
                let _ = c.decode_member(&junk[..]);
                let _ = BroadcastItem::decode(&junk);
            }
        }
        assert_eq!(
            c.decode_header(&[2u8][..]).expect_err("version"),
            CodecError::UnknownVersion(2)
        );
    }

    #[test]
    fn encode_refuses_without_writing_when_full() {
        let mut c = codec();
        let member = Member::new(id("d", 4), 3, State::Alive);
        let mut storage = [0u8; 8];
        let mut window = &mut storage[..];
        assert_eq!(
            c.encode_member(&member, &mut window),
            Err(CodecError::BufferFull)
        );
        assert_eq!(storage, [0u8; 8]);
    }

    #[test]
    fn broadcast_items_round_trip_and_newer_suspicion_invalidates() {
        let leave = BroadcastItem::Leave(id("a", 1));
        assert_eq!(BroadcastItem::decode(&leave.encode()), Ok(leave.clone()));
        let s1 = BroadcastItem::Suspicion {
            target: id("a", 1),
            incarnation: 1,
            from: id("b", 2),
        };
        let s2 = BroadcastItem::Suspicion {
            target: id("a", 1),
            incarnation: 2,
            from: id("b", 2),
        };
        assert_eq!(BroadcastItem::decode(&s2.encode()), Ok(s2.clone()));
        assert!(s2.invalidates(&s1));
        assert!(!s1.invalidates(&s2));
        assert!(!leave.invalidates(&s1));
    }

    #[test]
    fn roster_chunks_fit_and_round_trip() {
        let members: Vec<Member<MemberId>> = (0..100)
            .map(|i| Member::new(id(&format!("node-{i}"), i), i, State::Alive))
            .collect();
        let sender = id("s", 9);
        let chunks = encode_roster(&sender, true, &members, 1_100);
        assert!(chunks.len() > 1);
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() <= 1_100);
            let chunk = decode_roster(c).expect("valid");
            assert_eq!(chunk.sender, sender);
            assert!(chunk.reply);
            back.extend(chunk.members);
        }
        assert_eq!(back, members);
        let empty = encode_roster(&sender, false, &[], 1_100);
        assert_eq!(empty.len(), 1);
        assert!(decode_roster(&empty[0]).expect("valid").members.is_empty());
        for cut in 0..chunks[0].len() {
            assert!(decode_roster(&chunks[0][..cut]).is_err());
        }
        let mut trailing = chunks[0].clone();
        trailing.push(0);
        assert_eq!(decode_roster(&trailing), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn handler_keeps_an_item_circulating_once() {
        let shared = Shared::default();
        let mut h = Handler {
            shared: Arc::clone(&shared),
        };
        let item = BroadcastItem::Leave(id("a", 1)).encode();
        let from = id("b", 2);
        assert!(h.receive_item(&item, Some(&from)).expect("valid").is_some());
        assert!(h.receive_item(&item, Some(&from)).expect("valid").is_none());
        assert_eq!(lock(&shared).broadcasts.len(), 1);
        assert!(h.receive_item(&[9, 9], Some(&from)).is_err());
    }
}
