//! The data directory: one lock file, one snapshot file, written atomically.
//!
//! Guarantees:
//! - One process per directory: [`DataDir::open`] takes an exclusive lock on `LOCK` (held until the
//!   [`DataDir`] is dropped, released by the OS if the process dies) and refuses a directory another process
//!   holds.
//! - A write never leaves a half-written snapshot under the snapshot's name: it writes `counters.snapshot.tmp`,
//!   fsyncs it, renames it over `counters.snapshot` and fsyncs the directory. A crash at any point leaves either
//!   the previous snapshot or the new one.
//! - A snapshot that cannot be read (damaged, truncated, another format) is renamed
//!   `counters.snapshot.corrupt-<unix ms>`, never overwritten or deleted, and the caller is told why.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::error::StorageError;
use super::format::{HEADER_LEN, MAX_BODY_BYTES};

/// Name of the snapshot file in the data directory.
pub const SNAPSHOT_FILE: &str = "counters.snapshot";
/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the exclusive lock while the directory is in use.
    _lock: File,
}

/// What [`DataDir::read`] found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// No snapshot yet (a first start).
    Missing,
    /// The snapshot's bytes (not yet validated).
    Found(Vec<u8>),
    /// The file is larger than any snapshot this build writes.
    TooLarge {
        /// Its length.
        len: u64,
    },
}

impl DataDir {
    /// Creates the directory if needed (mode 0700) and locks it.
    pub fn open(path: &Path) -> Result<DataDir, StorageError> {
        let dir_error = |source| StorageError::Directory {
            path: path.to_owned(),
            source,
        };
        if !path.exists() {
            fs::create_dir_all(path).map_err(dir_error)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
            }
        }
        if !path.is_dir() {
            return Err(dir_error(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StorageError::Io {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    path: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(StorageError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot file's path.
    pub fn snapshot_path(&self) -> PathBuf {
        self.path.join(SNAPSHOT_FILE)
    }

    /// Reads the snapshot file, refusing (without reading it) one larger than the largest snapshot.
    pub fn read(&self) -> Result<ReadOutcome, StorageError> {
        read_snapshot_file(&self.snapshot_path())
    }

    /// Replaces the snapshot with `bytes` atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn write(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = self.path.join(format!("{SNAPSHOT_FILE}.tmp"));
        let io = |path: &Path, source| StorageError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io(&tmp, e))?;
        file.sync_all().map_err(|e| io(&tmp, e))?;
        drop(file);
        let target = self.snapshot_path();
        fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io(&self.path, e))?;
        Ok(())
    }

    /// Renames the snapshot to `counters.snapshot.corrupt-<now_ms>` (a unique name); returns the new path.
    pub fn move_aside(&self, now_ms: u64) -> Result<PathBuf, StorageError> {
        let from = self.snapshot_path();
        let mut to = self.path.join(format!("{SNAPSHOT_FILE}.corrupt-{now_ms}"));
        let mut n = 1;
        while to.exists() {
            to = self
                .path
                .join(format!("{SNAPSHOT_FILE}.corrupt-{now_ms}-{n}"));
            n += 1;
        }
        fs::rename(&from, &to).map_err(|source| StorageError::Io {
            path: from.clone(),
            source,
        })?;
        Ok(to)
    }
}

/// Reads a snapshot file without locking its directory (the node replaces the file atomically, so a reader
/// sees a whole old or a whole new snapshot), refusing (without reading it) one larger than the largest
/// snapshot. What `export` reads while the node runs.
pub fn read_snapshot_file(path: &Path) -> Result<ReadOutcome, StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadOutcome::Missing),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len > HEADER_LEN as u64 + MAX_BODY_BYTES {
        return Ok(ReadOutcome::TooLarge { len });
    }
    // `len` ≤ 2 GiB + 56 here: it fits in usize on the 64-bit targets this crate supports.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(ReadOutcome::Found(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_is_refused_and_writes_are_atomic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("data");
        let dir = DataDir::open(&path).expect("open");
        assert!(matches!(
            DataDir::open(&path),
            Err(StorageError::Locked { .. })
        ));
        assert!(matches!(dir.read(), Ok(ReadOutcome::Missing)));
        dir.write(b"one").expect("write");
        dir.write(b"two").expect("write");
        assert!(matches!(dir.read(), Ok(ReadOutcome::Found(b)) if b == b"two"));
        assert!(!path.join(format!("{SNAPSHOT_FILE}.tmp")).exists());
        let aside = dir.move_aside(5).expect("move aside");
        assert!(aside.ends_with(format!("{SNAPSHOT_FILE}.corrupt-5")));
        assert!(matches!(dir.read(), Ok(ReadOutcome::Missing)));
        dir.write(b"three").expect("write");
        let again = dir.move_aside(5).expect("move aside");
        assert!(again.ends_with(format!("{SNAPSHOT_FILE}.corrupt-5-1")));
        drop(dir);
        DataDir::open(&path).expect("the lock is released with the DataDir");
    }
}
