//! Frames: an 8-byte header and exactly one rkyv archive.
//!
//! ```text
//! offset 0..2  magic  b"BF"
//! offset 2     major protocol version (6)
//! offset 3     message kind
//! offset 4..8  archive length, u32 little endian
//! offset 8..   the archive (rkyv 0.8, unaligned, little endian, 32-bit relative pointers)
//! ```
//!
//! Guarantees:
//! - [`decode`] checks the header, then validates the archive with bytecheck (`rkyv::access`), then the limits
//!   ([`MAX_ENTRIES_PER_FRAME`], [`MAX_KEY_BYTES`], …) and every window, before returning anything: a frame is
//!   accepted whole or refused whole. Unvalidated access never sees network bytes.
//! - The archive format is unaligned, so any received slice is read in place, whatever its alignment: no copy.
//! - An unknown major version is refused with [`WireError::UnsupportedVersion`]; minor versions are negotiated
//!   in [`Hello`].

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

use super::error::WireError;
use super::messages::{
    ArchivedConfigDigest, ArchivedConfigEntries, ArchivedDataPing, ArchivedDataPong,
    ArchivedDeltaBatch, ArchivedDigest, ArchivedHello, ArchivedMembershipPacket,
    ArchivedNodeHealth, ArchivedOriginGroup, ArchivedStateChunk, ArchivedStateRequest,
    ConfigDigest, ConfigEntries, DataPing, DataPong, DeltaBatch, Digest, Hello, MembershipPacket,
    NodeHealth, StateChunk, StateRequest,
};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"BF";
/// The major protocol version this build speaks. 3: digests cover an origin range and carry a floor digest;
/// groups may carry floors; config digests are bucketed and config entries chunked. 4: a state chunk carries
/// its index and the answer's chunk count instead of a last-chunk flag. 5: a window carries a phase and may be
/// anchored (alignment code 2); a node of protocol 4 would misread every entry, so it refuses the frames. 6: groups may
/// carry the floor sums of aggregates and reset commands (`OriginKind::AggregateFloor`, `OriginKind::Reset`),
/// and aggregates are value sums with floors not taken off; a node of protocol 5 would refuse those frames
/// whole, or count resets twice.
pub const PROTOCOL_MAJOR: u8 = 6;
/// The minor protocol version this build speaks (announced in [`Hello`]).
pub const PROTOCOL_MINOR: u16 = 0;
/// Header size in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest frame accepted (header included): 1 MiB. Datagrams are far smaller (the path MTU bounds them).
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Most entries one frame may carry (over all its groups).
pub const MAX_ENTRIES_PER_FRAME: usize = 16_384;
/// Longest key on the wire. The store's own `limits.max_key_length` is usually lower.
pub const MAX_KEY_BYTES: usize = 4_096;
/// Most origins one digest or state request may name.
pub const MAX_ORIGINS_PER_FRAME: usize = 65_536;
/// Largest config value on the wire (the map's own `max_value_bytes` is usually lower).
pub const MAX_CONFIG_VALUE_BYTES: usize = 256 * 1024;
/// Longest node id (and gossip address) in a [`Hello`].
pub const MAX_NODE_ID_BYTES: usize = 256;
/// Buckets of keys a [`ConfigDigest`] may carry (its bucket indexes are below this).
pub const MAX_CONFIG_DIGEST_BUCKETS: usize = 1_024;

/// Message kinds (the header's fourth byte). 16..=31 are reserved for the membership plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`Hello`].
    Hello = 1,
    /// [`DeltaBatch`].
    DeltaBatch = 2,
    /// [`Digest`].
    Digest = 3,
    /// [`StateRequest`].
    StateRequest = 4,
    /// [`StateChunk`].
    StateChunk = 5,
    /// [`DataPing`] (protocol 2).
    DataPing = 6,
    /// [`DataPong`] (protocol 2).
    DataPong = 7,
    /// [`ConfigEntries`] (protocol 2, shared state).
    ConfigEntries = 8,
    /// [`ConfigDigest`] (protocol 2, shared state).
    ConfigDigest = 9,
    /// [`NodeHealth`] (protocol 2, shared state).
    NodeHealth = 10,
    /// [`MembershipPacket`] (the first of the kinds reserved for the membership plane, 16..=31).
    Membership = 16,
}

impl Kind {
    fn from_byte(b: u8) -> Result<Kind, WireError> {
        Ok(match b {
            1 => Kind::Hello,
            2 => Kind::DeltaBatch,
            3 => Kind::Digest,
            4 => Kind::StateRequest,
            5 => Kind::StateChunk,
            6 => Kind::DataPing,
            7 => Kind::DataPong,
            8 => Kind::ConfigEntries,
            9 => Kind::ConfigDigest,
            10 => Kind::NodeHealth,
            16 => Kind::Membership,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

impl Kind {
    /// The plane that owns frames of this kind: a node routes a frame by its header alone, and a new kind is
    /// routed as soon as it names its plane here.
    pub const fn plane(self) -> Plane {
        match self {
            Kind::Hello => Plane::Link,
            Kind::DeltaBatch
            | Kind::Digest
            | Kind::StateRequest
            | Kind::StateChunk
            | Kind::DataPing
            | Kind::DataPong => Plane::Counters,
            Kind::ConfigEntries | Kind::ConfigDigest | Kind::NodeHealth => Plane::State,
            Kind::Membership => Plane::Membership,
        }
    }

    /// Data-plane checks: the only counter-plane frames a node still reads from a refused duplicate (they
    /// feed the membership plane's health of that process).
    pub const fn is_data_plane_check(self) -> bool {
        matches!(self, Kind::DataPing | Kind::DataPong)
    }
}

/// The planes frames belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// The link's own hello exchange (before any plane sees the link).
    Link,
    /// Counters: deltas, digests, state transfers, data-plane checks (`crate::replication`).
    Counters,
    /// Shared state: config entries and node health records (`crate::state`).
    State,
    /// SWIM membership packets (`crate::membership`).
    Membership,
}

/// A message type that travels in a frame.
pub trait Message:
    for<'a> rkyv::Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Error>>
{
    /// Its kind byte.
    const KIND: Kind;
}

impl Message for Hello {
    const KIND: Kind = Kind::Hello;
}
impl Message for DeltaBatch {
    const KIND: Kind = Kind::DeltaBatch;
}
impl Message for Digest {
    const KIND: Kind = Kind::Digest;
}
impl Message for StateRequest {
    const KIND: Kind = Kind::StateRequest;
}
impl Message for StateChunk {
    const KIND: Kind = Kind::StateChunk;
}
impl Message for DataPing {
    const KIND: Kind = Kind::DataPing;
}
impl Message for DataPong {
    const KIND: Kind = Kind::DataPong;
}
impl Message for ConfigEntries {
    const KIND: Kind = Kind::ConfigEntries;
}
impl Message for ConfigDigest {
    const KIND: Kind = Kind::ConfigDigest;
}
impl Message for NodeHealth {
    const KIND: Kind = Kind::NodeHealth;
}
impl Message for MembershipPacket {
    const KIND: Kind = Kind::Membership;
}

/// Encodes `message` as a frame: the archive is written in place after the header, no copy.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, WireError> {
    encode_into(message, Vec::with_capacity(256))
}

/// Encodes `message` as a frame into `buffer` (cleared first), reusing its allocation.
pub fn encode_into<M: Message>(message: &M, mut buffer: Vec<u8>) -> Result<Vec<u8>, WireError> {
    buffer.clear();
    buffer.extend_from_slice(&MAGIC);
    buffer.push(PROTOCOL_MAJOR);
    buffer.push(M::KIND as u8);
    buffer.extend_from_slice(&[0; 4]);
    let mut frame = rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, buffer)
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let archive_len = frame.len() - HEADER_LEN;
    if frame.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    // Fits in u32: bounded by MAX_FRAME_BYTES just above.
    frame[4..8].copy_from_slice(&(archive_len as u32).to_le_bytes());
    Ok(frame)
}

/// A validated frame, borrowing the received bytes.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A [`Hello`].
    Hello(&'a ArchivedHello),
    /// A [`DeltaBatch`].
    DeltaBatch(&'a ArchivedDeltaBatch),
    /// A [`Digest`].
    Digest(&'a ArchivedDigest),
    /// A [`StateRequest`].
    StateRequest(&'a ArchivedStateRequest),
    /// A [`StateChunk`].
    StateChunk(&'a ArchivedStateChunk),
    /// A [`DataPing`].
    DataPing(&'a ArchivedDataPing),
    /// A [`DataPong`].
    DataPong(&'a ArchivedDataPong),
    /// A [`ConfigEntries`].
    ConfigEntries(&'a ArchivedConfigEntries),
    /// A [`ConfigDigest`].
    ConfigDigest(&'a ArchivedConfigDigest),
    /// A [`NodeHealth`].
    NodeHealth(&'a ArchivedNodeHealth),
    /// A [`MembershipPacket`].
    Membership(&'a ArchivedMembershipPacket),
}

/// Checks the header of `bytes` and returns the kind and the archive slice.
pub fn split_header(bytes: &[u8]) -> Result<(Kind, &[u8]), WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::TooShort {
            len: bytes.len(),
            header: HEADER_LEN,
        });
    }
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    if bytes[0..2] != MAGIC {
        return Err(WireError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != PROTOCOL_MAJOR {
        return Err(WireError::UnsupportedVersion {
            major: bytes[2],
            supported: PROTOCOL_MAJOR,
        });
    }
    let kind = Kind::from_byte(bytes[3])?;
    let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let archive = &bytes[HEADER_LEN..];
    if declared != archive.len() {
        return Err(WireError::LengthMismatch {
            declared,
            actual: archive.len(),
        });
    }
    Ok((kind, archive))
}

fn access<T>(archive: &[u8]) -> Result<&T, WireError>
where
    T: rkyv::Portable
        + for<'a> bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(archive).map_err(|e| WireError::Invalid(e.to_string()))
}

fn check_groups(groups: &[ArchivedOriginGroup]) -> Result<(), WireError> {
    let count: usize = groups.iter().map(|g| g.entries.len()).sum();
    if count > MAX_ENTRIES_PER_FRAME {
        return Err(WireError::TooManyEntries {
            count,
            max: MAX_ENTRIES_PER_FRAME,
        });
    }
    for entry in groups.iter().flat_map(|g| g.entries.iter()) {
        if entry.key.len() > MAX_KEY_BYTES {
            return Err(WireError::KeyTooLong {
                len: entry.key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        entry
            .window
            .window()
            .map_err(|e| WireError::BadWindow(e.to_string()))?;
    }
    Ok(())
}

fn check_len(len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::KeyTooLong { len, max });
    }
    Ok(())
}

fn check_origins(count: usize) -> Result<(), WireError> {
    if count > MAX_ORIGINS_PER_FRAME {
        return Err(WireError::TooManyEntries {
            count,
            max: MAX_ORIGINS_PER_FRAME,
        });
    }
    Ok(())
}

/// Decodes and validates a frame (see the module guarantees). Allocation-free.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, WireError> {
    let (kind, archive) = split_header(bytes)?;
    Ok(match kind {
        Kind::Hello => {
            let hello = access::<ArchivedHello>(archive)?;
            for text in [&hello.node_id, &hello.gossip_addr] {
                if text.len() > MAX_NODE_ID_BYTES {
                    return Err(WireError::KeyTooLong {
                        len: text.len(),
                        max: MAX_NODE_ID_BYTES,
                    });
                }
            }
            Frame::Hello(hello)
        }
        Kind::DeltaBatch => {
            let batch = access::<ArchivedDeltaBatch>(archive)?;
            check_groups(&batch.groups)?;
            Frame::DeltaBatch(batch)
        }
        Kind::Digest => {
            let digest = access::<ArchivedDigest>(archive)?;
            check_origins(digest.origins.len())?;
            Frame::Digest(digest)
        }
        Kind::StateRequest => {
            let request = access::<ArchivedStateRequest>(archive)?;
            check_origins(request.origins.len())?;
            Frame::StateRequest(request)
        }
        Kind::StateChunk => {
            let chunk = access::<ArchivedStateChunk>(archive)?;
            let (index, total) = (chunk.index.to_native(), chunk.total.to_native());
            if index >= total {
                return Err(WireError::Invalid(format!(
                    "state chunk {index} of an answer of {total} chunks"
                )));
            }
            check_groups(&chunk.groups)?;
            Frame::StateChunk(chunk)
        }
        Kind::DataPing => Frame::DataPing(access::<ArchivedDataPing>(archive)?),
        Kind::DataPong => Frame::DataPong(access::<ArchivedDataPong>(archive)?),
        Kind::ConfigEntries => {
            let entries = access::<ArchivedConfigEntries>(archive)?;
            if entries.entries.len() > MAX_ENTRIES_PER_FRAME {
                return Err(WireError::TooManyEntries {
                    count: entries.entries.len(),
                    max: MAX_ENTRIES_PER_FRAME,
                });
            }
            for e in entries.entries.iter() {
                check_len(e.key.len(), MAX_KEY_BYTES)?;
                check_len(e.node.len(), MAX_NODE_ID_BYTES)?;
                if let Some(v) = e.value.as_ref() {
                    check_len(v.len(), MAX_CONFIG_VALUE_BYTES)?;
                }
            }
            Frame::ConfigEntries(entries)
        }
        Kind::ConfigDigest => {
            let digest = access::<ArchivedConfigDigest>(archive)?;
            if digest.buckets.len() > MAX_CONFIG_DIGEST_BUCKETS {
                return Err(WireError::TooManyEntries {
                    count: digest.buckets.len(),
                    max: MAX_CONFIG_DIGEST_BUCKETS,
                });
            }
            if let Some(b) = digest
                .buckets
                .iter()
                .find(|b| usize::from(b.index.to_native()) >= MAX_CONFIG_DIGEST_BUCKETS)
            {
                return Err(WireError::Invalid(format!(
                    "config digest bucket {} (at most {})",
                    b.index.to_native(),
                    MAX_CONFIG_DIGEST_BUCKETS - 1
                )));
            }
            Frame::ConfigDigest(digest)
        }
        Kind::NodeHealth => {
            let health = access::<ArchivedNodeHealth>(archive)?;
            check_len(health.node_id.len(), MAX_NODE_ID_BYTES)?;
            check_origins(health.links.len())?;
            for l in health.links.iter() {
                check_len(l.node_id.len(), MAX_NODE_ID_BYTES)?;
            }
            Frame::NodeHealth(health)
        }
        Kind::Membership => Frame::Membership(access::<ArchivedMembershipPacket>(archive)?),
    })
}
