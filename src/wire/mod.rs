//! Wire (sans-IO): frames of one rkyv archive each, and their validated decode.
//!
//! Guarantees:
//! - The format is fixed: rkyv 0.8 with `unaligned`, `little_endian` and `pointer_width_32`, so a received slice
//!   is read in place (no copy), whatever its alignment, on any platform.
//! - [`decode`] validates before it returns anything: header, bytecheck, size and count limits, windows. A frame
//!   is merged whole or dropped whole; network bytes never reach unchecked access.
//! - Messages carry absolute per-origin values, so loss, duplication and reordering are harmless.

mod batch;
mod error;
mod frame;
mod messages;

pub use batch::{BatchPacker, FRAME_OVERHEAD, entry_size};
pub use error::WireError;
pub use frame::{
    Frame, HEADER_LEN, Kind, MAGIC, MAX_CONFIG_DIGEST_BUCKETS, MAX_CONFIG_VALUE_BYTES,
    MAX_ENTRIES_PER_FRAME, MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_NODE_ID_BYTES,
    MAX_ORIGINS_PER_FRAME, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR, Plane, decode, encode,
    encode_into, split_header,
};
pub use messages::{
    ArchivedConfigBucketDigest, ArchivedConfigDigest, ArchivedConfigEntries, ArchivedDataPing,
    ArchivedDataPong, ArchivedDeltaBatch, ArchivedDigest, ArchivedEntry, ArchivedHello,
    ArchivedMembershipPacket, ArchivedNodeHealth, ArchivedOriginDigest, ArchivedOriginGroup,
    ArchivedOriginKind, ArchivedStateChunk, ArchivedStateRequest, ArchivedWireConfigEntry,
    ArchivedWireLinkHealth, ArchivedWireWindow, ConfigBucketDigest, ConfigDigest, ConfigEntries,
    DataPing, DataPong, DeltaBatch, Digest, Entry, Hello, MembershipPacket, NodeHealth,
    OriginDigest, OriginGroup, OriginKind, StateChunk, StateRequest, WireConfigEntry,
    WireLinkHealth, WireWindow, WireWindowError, capabilities,
};
