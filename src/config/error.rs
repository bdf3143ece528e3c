//! Error and warning types of the config loader.
//!
//! Every problem found in a config names the JSON path of the field it is about (for example
//! `cluster_config.gossip.port`) and the rule that was broken, so a user can fix the file without reading code.

use std::fmt;
use std::path::PathBuf;

/// One broken rule, at one JSON path.
///
/// Displayed as `"{path}: {rule}"`, for example
/// `cluster_config.gossip.port: expected an integer 1..=65535, got "abc"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `cluster_config.discovery.allowed_address_space[1]`.
    pub path: String,
    /// The rule that was broken, in words, e.g. `invalid CIDR "10.0.0/8"`.
    pub rule: String,
}

impl FieldError {
    /// Builds an error for `path` breaking `rule`.
    pub fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

/// Something in a config that is accepted but worth telling the user about. Never stops a load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConfigWarning {
    /// A field this version does not know, inside `cluster_config`. It is ignored: the reference adds fields over
    /// time, and a config written for a newer reference must still load.
    UnknownField {
        /// JSON path of the unknown field, e.g. `cluster_config.discovery.color`.
        path: String,
    },
    /// A known field whose value has no effect in this config (e.g. `security.insecure_dev` while a trust source
    /// is configured).
    Ineffective {
        /// JSON path of the field.
        path: String,
        /// Why the value has no effect.
        reason: String,
    },
    /// A setting that is accepted but leaves the cluster open (e.g. `security.insecure_dev` with no trust
    /// source). `check-config` prints it; `run` logs it at WARN.
    Insecure {
        /// JSON path of the field.
        path: String,
        /// What is exposed, and the fix.
        reason: String,
    },
}

impl ConfigWarning {
    /// JSON path the warning is about.
    pub fn path(&self) -> &str {
        match self {
            ConfigWarning::UnknownField { path }
            | ConfigWarning::Ineffective { path, .. }
            | ConfigWarning::Insecure { path, .. } => path,
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::UnknownField { path } => {
                write!(f, "{path}: unknown field, ignored")
            }
            ConfigWarning::Ineffective { path, reason }
            | ConfigWarning::Insecure { path, reason } => write!(f, "{path}: {reason}"),
        }
    }
}

/// Why a config could not be loaded. Loading has no side effect, so every variant leaves nothing behind.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config path was given: neither on the command line nor in `BIFROST_CONFIG`.
    #[error("no config file given: pass FILE or set BIFROST_CONFIG")]
    NoConfigPath,
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read config file: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid JSON.
    #[error("{}:{line}:{column}: invalid JSON: {message}", path.display())]
    Json {
        /// The file (or `<string>` for text passed in memory).
        path: PathBuf,
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column of the syntax error (0 when the error is at the very start of a line, e.g. empty input).
        column: usize,
        /// What the JSON parser expected.
        message: String,
    },
    /// The JSON document has no top-level `cluster_config` object member.
    #[error("{}: no top-level \"cluster_config\" member: expected a JSON object like {{\"cluster_config\": {{...}}}}", path.display())]
    MissingClusterConfig {
        /// The file (or `<string>` for text passed in memory).
        path: PathBuf,
    },
    /// `cluster_config` is present but breaks one or more rules; every broken rule is listed, not only the first.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every individual problem as `path: rule` lines: one per [`FieldError`] for [`ConfigError::Invalid`],
    /// otherwise the single message.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

struct DisplayLines<'a>(&'a [FieldError]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a duration string was refused (see [`super::ConfigDuration::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration: expected e.g. \"500ms\", \"10s\", \"1m\" or \"1h\"")]
    Empty,
    /// A number has no unit after it.
    #[error("missing unit after {number}: use ms, s, m or h (e.g. \"{number}s\")")]
    MissingUnit {
        /// The number that lacks a unit.
        number: String,
    },
    /// The unit is not one of ms, s, m, h.
    #[error("unknown unit \"{unit}\": use ms, s, m or h")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// A fractional number such as `1.5s`.
    #[error(
        "fractional values are not supported: write a whole number of a smaller unit (e.g. \"1500ms\")"
    )]
    Fraction,
    /// Anything else that is not `<digits><unit>` (signs, spaces, letters first, ...).
    #[error("expected <whole number><unit>, e.g. \"500ms\", \"10s\", \"1m\", \"1h\" or \"1m30s\"")]
    Malformed,
    /// Units in a compound duration must go from largest to smallest, each at most once (`1h30m`, not `30m1h`).
    #[error("units must appear from largest to smallest, each once (e.g. \"1h30m\")")]
    UnitOrder,
    /// The value does not fit in 64-bit milliseconds.
    #[error("too large")]
    Overflow,
}
