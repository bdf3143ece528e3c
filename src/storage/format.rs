//! The snapshot file format: a fixed header, then an rkyv archive of [`SnapshotBody`].
//!
//! ```text
//! offset  size  field
//!      0     8  magic "BFCSNAP\0"
//!      8     4  format version (little endian), FORMAT_VERSION
//!     12     4  reserved, 0
//!     16     8  body length in bytes (little endian)
//!     24    32  SHA-256 of the body
//!     56     …  body: the archived SnapshotBody (rkyv, unaligned, little endian)
//! ```
//!
//! Guarantees: [`decode`] never panics on any bytes; it accepts a file only when the magic, the version, the
//! length and the checksum all match and the archive validates (bytecheck) and every window decodes. A
//! truncated, extended or altered file is an error that says which of these failed.
//!
//! Versions: 2 (this build) carries each window's phase (anchored windows). 1 had windows of count, unit and
//! alignment only; [`upgrade`] turns a version-1 file into the version-2 file of the same values, checked as
//! strictly, so a data directory written before anchored windows still loads.

use ring::digest::{SHA256, digest};
use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

use super::error::SnapshotError;
use crate::wire::OriginGroup;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"BFCSNAP\0";
/// The format this build writes and reads ([`upgrade`] also reads version 1).
pub const FORMAT_VERSION: u32 = 2;
/// The format before anchored windows: windows without a phase.
pub const FORMAT_VERSION_1: u32 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 56;
/// Largest body this build reads (the archive's 32-bit offsets bound it at 4 GiB anyway).
pub const MAX_BODY_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What a snapshot holds: every value and floor of the windows worth keeping, grouped by origin.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SnapshotBody {
    /// The node that wrote it.
    pub node_id: String,
    /// The replica id of the process that wrote it: its own values are the group under this origin.
    pub replica_id: u64,
    /// When it was written (Unix ms).
    pub written_at_ms: u64,
    /// Values (`OriginKind::Replica`) and floors (`OriginKind::Floor`) by origin.
    pub groups: Vec<OriginGroup>,
}

/// The file's bytes for `body`; a body larger than [`MAX_BODY_BYTES`] is refused (no build could read it).
pub fn encode(body: &SnapshotBody) -> Result<Vec<u8>, SnapshotError> {
    let mut out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(body, blank_header(4096))
        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let len = (out.len() - HEADER_LEN) as u64;
    if len > MAX_BODY_BYTES {
        return Err(SnapshotError::TooLarge {
            len,
            max: MAX_BODY_BYTES,
        });
    }
    seal(&mut out);
    Ok(out)
}

/// A file of `body`'s bytes, as they are, under a header that matches them (length and checksum): what
/// [`decode`] makes of a body that passed the checksum. For tests and the fuzz target.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = blank_header(body.len());
    out.extend_from_slice(body);
    seal(&mut out);
    out
}

/// The header with its length and checksum still zero, in a buffer with room for `body_capacity` more bytes.
fn blank_header(body_capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_capacity);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[0; 8 + 32]);
    out
}

/// Fills in the length and checksum of the body that follows the blank header in `out`.
fn seal(out: &mut [u8]) {
    let body_len = (out.len() - HEADER_LEN) as u64;
    let sum = digest(&SHA256, &out[HEADER_LEN..]);
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    out[24..56].copy_from_slice(sum.as_ref());
}

/// The validated body of a snapshot file, borrowed from `bytes`. A version-1 file is refused as any other
/// version: pass it through [`upgrade`] first.
pub fn decode(bytes: &[u8]) -> Result<&ArchivedSnapshotBody, SnapshotError> {
    let body = checked_body(bytes, FORMAT_VERSION)?;
    let archived = rkyv::access::<ArchivedSnapshotBody, rancor::Error>(body)
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    for group in archived.groups.iter() {
        for entry in group.entries.iter() {
            entry.window.window().map_err(|e| {
                SnapshotError::Invalid(format!("key {:?}: {e}", entry.key.as_str()))
            })?;
        }
    }
    Ok(archived)
}

/// `bytes` as a file of this build's version: a version-1 file becomes the version-2 file of the same values
/// (after the same checks as [`decode`]: magic, length, checksum, archive, windows); any other file is
/// returned as it is, for [`decode`] to accept or refuse.
pub fn upgrade(bytes: Vec<u8>) -> Result<Vec<u8>, SnapshotError> {
    let is_v1 = bytes.len() >= HEADER_LEN
        && bytes[..8] == MAGIC
        && u32::from_le_bytes(read_array(&bytes[8..12])) == FORMAT_VERSION_1;
    if !is_v1 {
        return Ok(bytes);
    }
    let body = checked_body(&bytes, FORMAT_VERSION_1)?;
    let archived = rkyv::access::<v1::ArchivedSnapshotBody, rancor::Error>(body)
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    encode(&v1::upgrade(archived)?)
}

/// The body of a file of `version` once its header, length and checksum are checked.
fn checked_body(bytes: &[u8], version: u32) -> Result<&[u8], SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            len: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let found = u32::from_le_bytes(read_array(&bytes[8..12]));
    if found != version {
        return Err(SnapshotError::Version {
            found,
            supported: FORMAT_VERSION,
        });
    }
    let body_len = u64::from_le_bytes(read_array(&bytes[16..24]));
    if body_len > MAX_BODY_BYTES {
        return Err(SnapshotError::TooLarge {
            len: body_len,
            max: MAX_BODY_BYTES,
        });
    }
    let expected = HEADER_LEN as u64 + body_len;
    let len = bytes.len() as u64;
    if len < expected {
        return Err(SnapshotError::Truncated { len, expected });
    }
    if len > expected {
        return Err(SnapshotError::TrailingBytes { len, expected });
    }
    let body = &bytes[HEADER_LEN..];
    if digest(&SHA256, body).as_ref() != &bytes[24..56] {
        return Err(SnapshotError::Checksum);
    }
    Ok(body)
}

/// The version-1 body: the same as version 2 but for windows without a phase.
mod v1 {
    use rkyv::{Archive, Deserialize, Serialize};

    use super::super::error::SnapshotError;
    use crate::wire::{ArchivedOriginKind, Entry, OriginGroup, OriginKind, WireWindow};

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct SnapshotBody {
        pub node_id: String,
        pub replica_id: u64,
        pub written_at_ms: u64,
        pub groups: Vec<Group>,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct Group {
        pub origin: u64,
        pub kind: OriginKind,
        pub entries: Vec<V1Entry>,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct V1Entry {
        pub key: String,
        pub window: V1Window,
        pub epoch: u64,
        pub value: u64,
    }

    #[derive(Archive, Serialize, Deserialize)]
    pub(super) struct V1Window {
        pub count: u32,
        pub unit: u8,
        pub alignment: u8,
    }

    /// The version-2 body of the same values; a window that does not decode refuses the file.
    pub(super) fn upgrade(
        body: &ArchivedSnapshotBody,
    ) -> Result<super::SnapshotBody, SnapshotError> {
        let mut groups = Vec::with_capacity(body.groups.len());
        for group in body.groups.iter() {
            let kind = match group.kind {
                ArchivedOriginKind::Replica => OriginKind::Replica,
                ArchivedOriginKind::Aggregate => OriginKind::Aggregate,
                ArchivedOriginKind::Floor => OriginKind::Floor,
                ArchivedOriginKind::AggregateFloor => OriginKind::AggregateFloor,
                ArchivedOriginKind::Reset => OriginKind::Reset,
            };
            let mut entries = Vec::with_capacity(group.entries.len());
            for e in group.entries.iter() {
                let window = WireWindow {
                    count: e.window.count.to_native(),
                    unit: e.window.unit,
                    alignment: e.window.alignment,
                    phase_ms: 0,
                };
                window.window().map_err(|err| {
                    SnapshotError::Invalid(format!("key {:?}: {err}", e.key.as_str()))
                })?;
                entries.push(Entry {
                    key: e.key.as_str().to_owned(),
                    window,
                    epoch: e.epoch.to_native(),
                    value: e.value.to_native(),
                });
            }
            groups.push(OriginGroup {
                origin: group.origin.to_native(),
                kind,
                entries,
            });
        }
        Ok(super::SnapshotBody {
            node_id: body.node_id.as_str().to_owned(),
            replica_id: body.replica_id.to_native(),
            written_at_ms: body.written_at_ms.to_native(),
            groups,
        })
    }

    /// A version-1 file of `body` (tests: what an earlier build wrote).
    #[cfg(test)]
    pub(super) fn encode(body: &SnapshotBody) -> Vec<u8> {
        let mut out = super::blank_header(4096);
        out[8..12].copy_from_slice(&super::FORMAT_VERSION_1.to_le_bytes());
        let mut out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(body, out)
            .expect("a test body encodes");
        super::seal(&mut out);
        out
    }
}

/// The `N` bytes of `slice` (its length is `N` at every call site).
fn read_array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Entry, OriginKind, WireWindow};

    fn body() -> SnapshotBody {
        let window = WireWindow::from(crate::counter::Window::parse("1d").expect("window"));
        SnapshotBody {
            node_id: "n1".into(),
            replica_id: 7,
            written_at_ms: 1_000,
            groups: vec![OriginGroup {
                origin: 7,
                kind: OriginKind::Replica,
                entries: vec![Entry {
                    key: "budget/team-a".into(),
                    window,
                    epoch: 20_000,
                    value: 42,
                }],
            }],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&body()).expect("encode");
        let archived = decode(&bytes).expect("decode");
        let back: SnapshotBody =
            rkyv::deserialize::<SnapshotBody, rancor::Error>(archived).expect("deserialize");
        assert_eq!(back, body());
    }

    #[test]
    fn framing_a_body_gives_the_file_encode_writes() {
        let bytes = encode(&body()).expect("encode");
        assert_eq!(frame(&bytes[HEADER_LEN..]), bytes);
        assert!(matches!(
            decode(&frame(b"not an archive")),
            Err(SnapshotError::Invalid(_))
        ));
    }

    #[test]
    fn every_damage_is_named() {
        let bytes = encode(&body()).expect("encode");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&bytes[..10]),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotError::TrailingBytes { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(decode(&flipped), Err(SnapshotError::Checksum)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(decode(&magic), Err(SnapshotError::NotASnapshot)));
        let mut version = bytes;
        version[8] = 9;
        assert!(matches!(
            decode(&version),
            Err(SnapshotError::Version { found: 9, .. })
        ));
    }

    #[test]
    fn a_version_1_file_is_upgraded_to_the_same_values() {
        let old = v1::SnapshotBody {
            node_id: "n1".into(),
            replica_id: 7,
            written_at_ms: 1_000,
            groups: vec![v1::Group {
                origin: 7,
                kind: OriginKind::Replica,
                entries: vec![v1::V1Entry {
                    key: "budget/team-a".into(),
                    window: v1::V1Window {
                        count: 1,
                        unit: 3,
                        alignment: 1,
                    },
                    epoch: 20_000,
                    value: 42,
                }],
            }],
        };
        let bytes = v1::encode(&old);
        assert!(
            matches!(
                decode(&bytes),
                Err(SnapshotError::Version {
                    found: 1,
                    supported: 2
                })
            ),
            "decode alone refuses a version-1 file"
        );
        let upgraded = upgrade(bytes.clone()).expect("upgrade");
        let archived = decode(&upgraded).expect("decode");
        let back: SnapshotBody =
            rkyv::deserialize::<SnapshotBody, rancor::Error>(archived).expect("deserialize");
        assert_eq!(back, body());
        // A current file passes through untouched; a damaged version-1 file is refused by name.
        let current = encode(&body()).expect("encode");
        assert_eq!(upgrade(current.clone()).expect("as is"), current);
        let mut flipped = bytes;
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(upgrade(flipped), Err(SnapshotError::Checksum)));
    }

    #[test]
    fn an_anchored_window_round_trips() {
        let mut body = body();
        body.groups[0].entries[0].window = WireWindow::from(
            crate::counter::Window::parse("30d@2026-12-01T10:00:00Z").expect("window"),
        );
        let bytes = encode(&body).expect("encode");
        let back: SnapshotBody =
            rkyv::deserialize::<SnapshotBody, rancor::Error>(decode(&bytes).expect("decode"))
                .expect("deserialize");
        assert_eq!(back, body);
        // A phase that is not canonical is refused.
        body.groups[0].entries[0].window.phase_ms = 30 * 86_400_000;
        let bytes = encode(&body).expect("encode");
        assert!(matches!(decode(&bytes), Err(SnapshotError::Invalid(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = 0x1234_5678_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (rng >> 33) as u8
                })
                .collect();
            let _ = decode(&bytes);
            let _ = upgrade(bytes);
        }
    }
}
