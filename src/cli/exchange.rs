//! `bifrost-cluster export` and `import`: a data directory's counters as JSON lines (see
//! [`bifrost_cluster::storage::exchange`] for the line format).
//!
//! # Guarantees
//!
//! - `export` reads the snapshot without taking the directory's lock, so it works while the node runs (the node
//!   replaces the file atomically: an export is one whole snapshot). An `--output` file is written to a
//!   temporary name and renamed, so a failed export never leaves half a backup under the final name.
//! - `import` validates every line before it touches the directory, takes the directory's lock (so it refuses
//!   while a node uses it, naming the directory), max-merges into the snapshot and replaces it atomically. A bad
//!   line, an unreadable snapshot or a failed write leaves the directory as it was.
//! - Every error names the file (and line) at fault.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};

use bifrost_cluster::counter::Window;
use bifrost_cluster::storage::exchange::{self, ExportReport, ImportError, MergeReport};
use bifrost_cluster::storage::format::{self, SnapshotBody};
use bifrost_cluster::storage::{
    DataDir, ReadOutcome, SNAPSHOT_FILE, StorageError, read_snapshot_file,
};

/// Why an export or an import failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The data directory has no snapshot.
    #[error(
        "{0}: no snapshot (the node has not written one yet, or storage.path / BIFROST_DATA_DIR points elsewhere)"
    )]
    NoSnapshot(PathBuf),
    /// The import's data directory does not exist and `--create` was not given.
    #[error(
        "{0}: no such data directory (check storage.path / BIFROST_DATA_DIR; pass --create to seed a new node's)"
    )]
    NoDataDir(PathBuf),
    /// The snapshot could not be read or decoded.
    #[error("{path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory is in use by a running node.
    #[error(
        "{path} is in use by a running node (its lock file {lock} is held): stop the node first, import writes \
         the snapshot it loads at start"
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The directory could not be used.
    #[error(transparent)]
    Storage(StorageError),
    /// The input has a bad line or could not be read.
    #[error("{input}: {source}")]
    Input {
        /// The input file (`-` for stdin).
        input: String,
        /// What is wrong.
        source: ImportError,
    },
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Output {
        /// The output (`-` for stdout).
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Reads and decodes `path` into an owned body; `None` when the file does not exist.
fn read_body(path: &Path) -> Result<Option<SnapshotBody>, ExchangeError> {
    let bad = |reason: String| ExchangeError::Snapshot {
        path: path.to_owned(),
        reason,
    };
    let bytes = match read_snapshot_file(path).map_err(ExchangeError::Storage)? {
        ReadOutcome::Missing => return Ok(None),
        ReadOutcome::TooLarge { len } => {
            return Err(bad(format!(
                "{len} bytes, larger than any snapshot this build writes"
            )));
        }
        ReadOutcome::Found(bytes) => format::upgrade(bytes).map_err(|e| bad(e.to_string()))?,
    };
    let archived = format::decode(&bytes).map_err(|e| bad(e.to_string()))?;
    rkyv::deserialize::<SnapshotBody, rkyv::rancor::Error>(archived)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Writes the snapshot of `data_dir` as JSON lines to `output` (stdout when `None` or `-`).
pub fn export(data_dir: &Path, output: Option<&Path>) -> Result<ExportReport, ExchangeError> {
    let path = data_dir.join(SNAPSHOT_FILE);
    let bad = |reason: String| ExchangeError::Snapshot {
        path: path.clone(),
        reason,
    };
    let bytes = match read_snapshot_file(&path).map_err(ExchangeError::Storage)? {
        ReadOutcome::Missing => return Err(ExchangeError::NoSnapshot(data_dir.to_owned())),
        ReadOutcome::TooLarge { len } => {
            return Err(bad(format!(
                "{len} bytes, larger than any snapshot this build writes"
            )));
        }
        ReadOutcome::Found(bytes) => format::upgrade(bytes).map_err(|e| bad(e.to_string()))?,
    };
    let body = format::decode(&bytes).map_err(|e| bad(e.to_string()))?;
    match output.filter(|p| *p != Path::new("-")) {
        None => {
            let out_error = |source| ExchangeError::Output {
                path: "-".to_owned(),
                source,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let report = exchange::export(body, &mut out).map_err(out_error)?;
            out.flush().map_err(out_error)?;
            Ok(report)
        }
        Some(target) => {
            let out_error = |source| ExchangeError::Output {
                path: target.display().to_string(),
                source,
            };
            let mut tmp_name = target.as_os_str().to_owned();
            tmp_name.push(".tmp");
            let tmp = PathBuf::from(tmp_name);
            let written = (|| {
                let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                let report = exchange::export(body, &mut out)?;
                out.into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?
                    .sync_all()?;
                std::fs::rename(&tmp, target)?;
                Ok(report)
            })();
            if written.is_err() {
                // Best effort: the temporary file is the only thing a failed export leaves behind.
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(out_error)
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Values read.
    pub lines: u64,
    /// What the merge did.
    pub merge: MergeReport,
    /// Values whose window is over (or not started) now: kept in the file, dropped when the node loads it.
    pub outside_live_windows: u64,
    /// The origin lines without `origin` went under.
    pub origin: u64,
}

/// Max-merges the JSON lines of `input` (stdin when `None` or `-`) into `data_dir`'s snapshot. A missing
/// `data_dir` is refused unless `create` (a typo must not report success into a directory no node reads).
pub fn import(
    data_dir: &Path,
    create: bool,
    input: Option<&Path>,
    source: &str,
    max_key_length: usize,
    now_ms: u64,
) -> Result<ImportSummary, ExchangeError> {
    let origin = exchange::import_origin(source);
    let input = input.filter(|p| *p != Path::new("-"));
    let name = input.map_or_else(|| "-".to_owned(), |p| p.display().to_string());
    let input_error = |source: ImportError| ExchangeError::Input {
        input: name.clone(),
        source,
    };
    let reader: Box<dyn BufRead> = match input {
        None => Box::new(BufReader::new(std::io::stdin().lock())),
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path).map_err(|e| input_error(e.into()))?,
        )),
    };
    let values = exchange::parse(reader, origin, now_ms, max_key_length).map_err(input_error)?;
    if !create && !data_dir.exists() {
        return Err(ExchangeError::NoDataDir(data_dir.to_owned()));
    }
    let dir = DataDir::open(data_dir).map_err(|e| match e {
        StorageError::Locked { path, lock } => ExchangeError::InUse { path, lock },
        other => ExchangeError::Storage(other),
    })?;
    let existing = read_body(&dir.snapshot_path())?;
    let lines = values.len() as u64;
    let outside_live_windows = values
        .iter()
        .filter(|v| {
            v.entry.window.window().map_or(true, |w: Window| {
                w.start_ms(v.entry.epoch) > now_ms || w.end_ms(v.entry.epoch) <= now_ms
            })
        })
        .count() as u64;
    let (mut body, merge) = exchange::merge(existing, values);
    if body.node_id.is_empty() {
        body.node_id = format!("import:{source}");
        body.written_at_ms = now_ms;
    }
    let bytes = format::encode(&body).map_err(|e| ExchangeError::Storage(e.into()))?;
    dir.write(&bytes).map_err(ExchangeError::Storage)?;
    Ok(ImportSummary {
        lines,
        merge,
        outside_live_windows,
        origin,
    })
}
