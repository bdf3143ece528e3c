//! The storage plane: counter snapshots in a local data directory, so that long windows (days, months, years)
//! survive a restart of every node at once.
//!
//! Guarantees:
//! - A snapshot holds every value and floor this node has for windows at least `storage.min_window` long (its
//!   own values under the replica id of the process that counted them, the others under their origins). It is
//!   written atomically ([`DataDir::write`]) every `storage.interval` when something changed, and at shutdown
//!   after the final flush.
//! - Loading ([`Snapshotter::load`]) is a max-merge into the store before the node serves or replicates: a
//!   stale, repeated or duplicated snapshot never counts anything twice, and a node that restarts while its
//!   peers run ends with the larger of what it saved and what they hold.
//! - A snapshot that cannot be read is moved aside with the reason, and the node starts from its peers; a
//!   failed write keeps the previous snapshot and is reported, never panics.
//! - The hot path pays nothing: the writer reads the store the way a state transfer does.
//!
//! After `kill -9` a node loses at most the increments of its last `storage.interval` that no peer received.

mod data_dir;
mod error;
pub mod exchange;
pub mod format;
pub mod snapshot;

use std::hash::BuildHasher as _;
use std::path::Path;

pub use data_dir::{DataDir, LOCK_FILE, ReadOutcome, SNAPSHOT_FILE, read_snapshot_file};
pub use error::{SnapshotError, StorageError};
pub use snapshot::RestoreReport;

use crate::counter::CounterStore;
use format::SnapshotBody;

/// What [`Snapshotter::load`] found.
#[derive(Debug)]
pub enum LoadOutcome {
    /// No snapshot: a first start.
    Missing,
    /// The snapshot was merged into the store.
    Restored(RestoreReport),
    /// The snapshot could not be read; it was moved to `moved_to` and nothing was loaded.
    MovedAside {
        /// Why it could not be read.
        reason: String,
        /// Where it is now.
        moved_to: std::path::PathBuf,
    },
}

/// What one [`Snapshotter::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written: `bytes` in the file, `entries` values and floors.
    Written {
        /// File size.
        bytes: u64,
        /// Values and floors in it.
        entries: u64,
    },
    /// Nothing changed since the last write: the file was left as it is.
    Unchanged,
}

/// Writes and loads one node's snapshots.
#[derive(Debug)]
pub struct Snapshotter {
    dir: DataDir,
    store: CounterStore,
    node_id: String,
    min_window_ms: u64,
    /// Fingerprint of the values of the last write (`None` before the first).
    last: Option<(u64, u64)>,
}

impl Snapshotter {
    /// Opens (and locks) `path` for `store`, whose own values belong to this process's replica id.
    pub fn open(
        path: &Path,
        store: CounterStore,
        node_id: &str,
        min_window_ms: u64,
    ) -> Result<Snapshotter, StorageError> {
        Ok(Snapshotter {
            dir: DataDir::open(path)?,
            store,
            node_id: node_id.to_owned(),
            min_window_ms,
            last: None,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Merges the directory's snapshot into the store (see the module docs). An unreadable snapshot is moved
    /// aside (`now_ms` names it); an error is returned only when the file could not be read or moved at all.
    pub fn load(&mut self, now_ms: u64) -> Result<LoadOutcome, StorageError> {
        let bytes = match self.dir.read()? {
            ReadOutcome::Missing => return Ok(LoadOutcome::Missing),
            ReadOutcome::TooLarge { len } => {
                let moved_to = self.dir.move_aside(now_ms)?;
                return Ok(LoadOutcome::MovedAside {
                    reason: format!(
                        "{len} bytes, larger than any snapshot this build writes ({} bytes)",
                        format::HEADER_LEN as u64 + format::MAX_BODY_BYTES
                    ),
                    moved_to,
                });
            }
            ReadOutcome::Found(bytes) => bytes,
        };
        // A version-1 file (written before anchored windows) loads through its upgrade.
        match format::upgrade(bytes).and_then(|bytes| {
            format::decode(&bytes).map(|body| snapshot::restore(&self.store, body))
        }) {
            Ok(report) => Ok(LoadOutcome::Restored(report)),
            Err(e) => {
                let moved_to = self.dir.move_aside(now_ms)?;
                Ok(LoadOutcome::MovedAside {
                    reason: e.to_string(),
                    moved_to,
                })
            }
        }
    }

    /// Writes a snapshot of the store at `now_ms` unless nothing changed since the last write (`force`
    /// writes anyway: the final snapshot at shutdown).
    pub fn write(&mut self, now_ms: u64, force: bool) -> Result<WriteOutcome, StorageError> {
        let replica_id = self.store.options().replica_id;
        let body = snapshot::collect(
            &self.store,
            &self.node_id,
            replica_id,
            now_ms,
            self.min_window_ms,
        );
        let fingerprint = fingerprint(&body);
        if !force && self.last == Some(fingerprint) {
            return Ok(WriteOutcome::Unchanged);
        }
        let bytes = format::encode(&body)?;
        self.dir.write(&bytes)?;
        self.last = Some(fingerprint);
        Ok(WriteOutcome::Written {
            bytes: bytes.len() as u64,
            entries: fingerprint.0,
        })
    }
}

/// `(entries, order-independent hash)` of a body's values and floors: equal for equal contents.
fn fingerprint(body: &SnapshotBody) -> (u64, u64) {
    let hasher = foldhash::fast::FixedState::with_seed(0x736e_6170);
    let mut count = 0u64;
    let mut hash = 0u64;
    for group in &body.groups {
        for e in &group.entries {
            count += 1;
            hash ^= hasher.hash_one((
                group.origin,
                group.kind as u8,
                e.key.as_str(),
                e.window,
                e.epoch,
                e.value,
            ));
        }
    }
    (count, hash)
}
