//! Reading the limits file (or directory) and swapping a changed policy in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;

use super::{LoadedPolicy, RlsStats};
use crate::policy::Policy;

/// Largest total size of the limits files, in bytes.
pub const MAX_LIMITS_BYTES: u64 = 4 * 1024 * 1024;
/// Most files read from a limits directory.
pub const MAX_LIMITS_FILES: usize = 1_000;

/// `(file name, text)` of each limits file.
pub type LimitsFiles = Vec<(String, String)>;

/// The limits file or directory, with the text last seen.
#[derive(Debug)]
pub struct LimitsSource {
    path: PathBuf,
    last: Option<LimitsFiles>,
    /// The last refusal, logged once until the files change again.
    last_error: Option<String>,
}

impl LimitsSource {
    /// A source not read yet.
    pub fn new(path: PathBuf) -> LimitsSource {
        LimitsSource {
            path,
            last: None,
            last_error: None,
        }
    }

    /// Records `files` as loaded (the start-up load), so the first poll does not load them again.
    pub fn loaded(&mut self, files: LimitsFiles) {
        self.last = Some(files);
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads `path`: a file, or every `*.yaml`/`*.yml` file of a directory (names starting with `.` skipped, as
/// the `..data` entries of a Kubernetes ConfigMap mount), sorted by name. The second value is the total size.
pub fn read_limits(path: &Path) -> Result<(LimitsFiles, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut paths = Vec::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                continue;
            }
            paths.push(entry.path());
            if paths.len() > MAX_LIMITS_FILES {
                return Err(format!(
                    "{}: more than {MAX_LIMITS_FILES} limits files",
                    path.display()
                ));
            }
        }
        paths.sort();
    } else {
        paths.push(path.to_owned());
    }
    let mut total = 0u64;
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let size = std::fs::metadata(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
        total = total.saturating_add(size);
        if total > MAX_LIMITS_BYTES {
            return Err(format!(
                "{}: the limits files exceed {MAX_LIMITS_BYTES} bytes",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        files.push((p.display().to_string(), text));
    }
    Ok((files, total))
}

/// One poll: reads the files; when their text changed, loads them and swaps the policy in, or logs every
/// problem and keeps the old policy.
pub(crate) fn poll(
    source: &mut LimitsSource,
    policy: &Arc<ArcSwap<LoadedPolicy>>,
    stats: &RlsStats,
) {
    let files = match read_limits(&source.path) {
        Ok((files, _)) => files,
        Err(e) => {
            if source.last_error.as_deref() != Some(e.as_str()) {
                tracing::error!(error = %e, "limits file unreadable: keeping the current policy");
                // Relaxed: statistics.
                stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                source.last_error = Some(e);
            }
            return;
        }
    };
    if source.last.as_ref() == Some(&files) {
        return;
    }
    match Policy::load(files.iter().map(|(n, t)| (n.as_str(), t.as_str()))) {
        Ok(loaded) => {
            let rules = loaded.rules().len();
            let domains = loaded.domains().len();
            let current = policy.load();
            policy.store(Arc::new(LoadedPolicy::new(loaded, Some(&current))));
            // Relaxed: statistics.
            stats.reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %source.path.display(), domains, rules, "limits file reloaded");
            source.last_error = None;
        }
        Err(e) => {
            // Relaxed: statistics.
            stats.reload_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                path = %source.path.display(),
                problems = e.problems.len(),
                "limits file refused, keeping the current policy"
            );
            for problem in &e.problems {
                tracing::error!("limits file: {problem}");
            }
            source.last_error = Some(e.to_string());
        }
    }
    source.last = Some(files);
}
