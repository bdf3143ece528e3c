//! Errors of the storage plane. Each says what happened to the node's state: none of them loses a value
//! already counted in memory; a snapshot that cannot be read is moved aside, never overwritten unread.

use std::path::PathBuf;

/// Why a snapshot could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than its header says. Nothing was loaded from it.
    #[error("truncated: {len} bytes, the header announces {expected}")]
    Truncated {
        /// Bytes present.
        len: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// Longer than its header says. Nothing was loaded from it.
    #[error("{len} bytes where the header announces {expected}")]
    TrailingBytes {
        /// Bytes present.
        len: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The magic bytes are not a snapshot's.
    #[error("not a bifrost-cluster snapshot (wrong magic bytes)")]
    NotASnapshot,
    /// Written by a build with another format.
    #[error("format version {found}; this build reads version {supported}")]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The body announces more than this build reads.
    #[error("body of {len} bytes is larger than the {max} bytes this build reads")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body's SHA-256 does not match the header: the file was damaged.
    #[error("checksum mismatch (the file is damaged)")]
    Checksum,
    /// The body passed the checksum but is not a valid archive (a bug or a foreign writer).
    #[error("invalid body: {0}")]
    Invalid(String),
    /// The body could not be serialized (nothing was written).
    #[error("could not encode the snapshot: {0}")]
    Encode(String),
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The directory could not be created or opened.
    #[error("storage.path {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the directory's lock: two nodes must never share one directory.
    #[error(
        "storage.path {path} is in use by another process (its lock file {lock} is held): give each node its own \
         directory"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Reading, writing or renaming a file failed; the previous snapshot is untouched.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The snapshot could not be encoded; the previous one is untouched.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}
