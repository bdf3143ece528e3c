//! Loading a config from text or a file, and finding which file to load.
//!
//! Reading the file is the only I/O here; the environment is read by the caller and passed in, so every
//! function stays a pure function of its arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{ConfigError, ConfigWarning};
use super::parse::{ROOT, parse_cluster_config};
use super::schema::ClusterConfig;
use super::validate::validate_parsed;

/// Environment variable naming the config file when none is given on the command line.
pub const CONFIG_ENV: &str = "BIFROST_CONFIG";

/// Environment variable that may hold the cluster secret instead of `security.cluster_secret`.
pub const CLUSTER_SECRET_ENV: &str = "BIFROST_CLUSTER_SECRET";

/// Environment variable with bearer tokens for the HTTP API, on top of `http.auth.tokens`: entries separated
/// by whitespace, each `name:scope,scope:token` (e.g. `gateway:check,read:<token>`).
pub const HTTP_TOKENS_ENV: &str = "BIFROST_HTTP_TOKENS";

/// What the text passed to [`load_from_str`] is called in errors.
const STRING_ORIGIN: &str = "<string>";

/// A config that passed every rule, with the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The typed config, defaults filled in.
    pub config: ClusterConfig,
    /// Unknown fields and values without effect, in the order found. Never fatal.
    pub warnings: Vec<ConfigWarning>,
}

/// Loads a config from JSON text: a document whose top-level `cluster_config` member is the config. Other
/// top-level members (a whole gateway config's `config_store`, ...) are ignored without warning.
///
/// Errors: [`ConfigError::Json`] for invalid JSON, [`ConfigError::MissingClusterConfig`] without a
/// `cluster_config` member, [`ConfigError::Invalid`] with every broken rule otherwise. Errors name the input
/// `<string>`; use [`load_from_path`] for a file.
pub fn load_from_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    load_document(text, Path::new(STRING_ORIGIN))
}

/// Reads and loads the config file at `path`; as [`load_from_str`], plus [`ConfigError::Io`] when the file
/// cannot be read. Every error names `path`.
pub fn load_from_path(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    load_document(&text, path)
}

/// Loads a config from an already parsed JSON document (the whole document, with its `cluster_config`
/// member). `origin` names the document in [`ConfigError::MissingClusterConfig`].
pub fn load_from_value(document: &Value, origin: &Path) -> Result<LoadedConfig, ConfigError> {
    let Some(value) = document.as_object().and_then(|root| root.get(ROOT)) else {
        return Err(ConfigError::MissingClusterConfig {
            path: origin.to_owned(),
        });
    };
    let mut parsed = parse_cluster_config(value);
    let (errors, warnings) = validate_parsed(&parsed.config, &parsed.refused);
    parsed.errors.extend(errors);
    parsed.warnings.extend(warnings);
    if parsed.errors.is_empty() {
        Ok(LoadedConfig {
            config: parsed.config,
            warnings: parsed.warnings,
        })
    } else {
        Err(ConfigError::Invalid(parsed.errors))
    }
}

fn load_document(text: &str, origin: &Path) -> Result<LoadedConfig, ConfigError> {
    let document: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
        path: origin.to_owned(),
        line: e.line(),
        column: e.column(),
        message: json_message(&e),
    })?;
    load_from_value(&document, origin)
}

/// serde_json's message without its trailing " at line L column C" (the error carries those separately).
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
}

/// The config file to load: the command-line path if given, else the value of `BIFROST_CONFIG` (the caller
/// passes `std::env::var_os(CONFIG_ENV)`). An empty value counts as not given. Does not touch the file.
pub fn resolve_config_path(
    cli: Option<PathBuf>,
    env_value: Option<OsString>,
) -> Result<PathBuf, ConfigError> {
    cli.filter(|p| !p.as_os_str().is_empty())
        .or_else(|| env_value.filter(|v| !v.is_empty()).map(PathBuf::from))
        .ok_or(ConfigError::NoConfigPath)
}

/// The effective config as pretty-printed JSON text, `{"cluster_config": {...}}`, fields in schema order (see
/// [`effective_document`]). This is what `check-config` prints.
///
/// Errors only if serialization itself fails, which these types do not do (every key is a string).
pub fn effective_json(config: &ClusterConfig) -> Result<String, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Document<'a> {
        cluster_config: &'a ClusterConfig,
    }
    serde_json::to_string_pretty(&Document {
        cluster_config: config,
    })
}

/// The effective config as a JSON document `{"cluster_config": {...}}`: every default filled in, optional fields
/// without a value as `null`, the secret as `"<redacted>"`. [`load_from_value`] accepts it again and yields an
/// equal config (unless it held a secret: `"<redacted>"` is too short to load).
///
/// Errors only if serialization itself fails, which these types do not do (every key is a string).
pub fn effective_document(config: &ClusterConfig) -> Result<Value, serde_json::Error> {
    let mut root = serde_json::Map::new();
    root.insert(ROOT.to_owned(), serde_json::to_value(config)?);
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_carry_line_and_column() {
        match load_from_str("{\n  \"cluster_config\": {,}\n}") {
            Err(ConfigError::Json {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!((line, column), (2, 22));
                assert!(!message.contains("at line"), "{message}");
            }
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn predict_remote_is_off_by_default_and_parsed() {
        let off = load_from_str(r#"{ "cluster_config": {} }"#).expect("loads");
        assert!(!off.config.replication.predict_remote);
        let on =
            load_from_str(r#"{ "cluster_config": { "replication": { "predict_remote": true } } }"#)
                .expect("loads");
        assert!(on.config.replication.predict_remote);
        assert!(on.warnings.is_empty(), "{:?}", on.warnings);
        assert!(
            load_from_str(r#"{ "cluster_config": { "replication": { "predict_remote": 1 } } }"#)
                .is_err()
        );
    }
}
