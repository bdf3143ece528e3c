//! Typed decode errors. Every variant means the frame was dropped whole: nothing in it was merged.

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a frame header.
    #[error("frame of {len} bytes is shorter than the {header}-byte header")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Header size.
        header: usize,
    },
    /// The frame does not start with the magic bytes: not ours.
    #[error("bad magic {found:02x?}: not a bifrost-cluster frame")]
    BadMagic {
        /// The first two bytes.
        found: [u8; 2],
    },
    /// A major protocol version this build does not speak.
    #[error("unsupported protocol major version {major} (this node speaks {supported})")]
    UnsupportedVersion {
        /// The frame's major version.
        major: u8,
        /// Ours.
        supported: u8,
    },
    /// A message kind this build does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The header's length does not match the bytes that follow.
    #[error("declared length {declared} but {actual} bytes follow the header")]
    LengthMismatch {
        /// Length in the header.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// Larger than the frame size limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Frame size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The archive failed validation (bytecheck): corrupt, truncated or hostile bytes.
    #[error("invalid archive: {0}")]
    Invalid(String),
    /// More entries than a frame may carry.
    #[error("{count} entries exceed the limit of {max} per frame")]
    TooManyEntries {
        /// Entries in the frame.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A key longer than the wire limit.
    #[error("key of {len} bytes exceeds the wire limit of {max}")]
    KeyTooLong {
        /// Key length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An entry names an invalid window.
    #[error("invalid window in entry: {0}")]
    BadWindow(String),
    /// Encoding failed (only on values that break the limits above).
    #[error("cannot encode: {0}")]
    Encode(String),
}
