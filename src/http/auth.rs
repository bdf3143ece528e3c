//! Bearer-token authentication of the HTTP surface: the token set (from the config, the environment and
//! files), and the constant-time lookup of a presented token.
//!
//! Guarantees:
//! - A token is kept only as its SHA-256 digest; a presented token is hashed and compared with **every**
//!   configured digest in constant time (`subtle`), so neither the answer nor its timing depends on how much of
//!   a token matched, or on which entry matched.
//! - No token ever reaches a log line, an error message, `Debug` output or a serialized config: errors name the
//!   config field, the environment variable or the file, never the value.
//! - Tokens shorter than [`HttpToken::MIN_BYTES`] are refused wherever they come from.

use std::path::PathBuf;

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq as _;

use crate::config::{HttpConfig, HttpScope, HttpToken, HttpTokenConfig, HttpTokenSource};

/// Why the token set could not be built. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// `BIFROST_HTTP_TOKENS` or a token field breaks a rule (the message names the field, never the token).
    #[error("{0}")]
    Field(crate::config::FieldError),
    /// A `token_env` variable is unset or empty.
    #[error("{field}: environment variable {var} is not set (or empty)")]
    EnvMissing {
        /// The config field.
        field: String,
        /// The variable.
        var: String,
    },
    /// A `token_file` could not be read.
    #[error("{field}: cannot read {}: {source}", path.display())]
    File {
        /// The config field.
        field: String,
        /// The file.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// One configured token: its name, its digest and its scopes.
#[derive(Clone)]
struct Entry {
    name: String,
    digest: [u8; 32],
    scopes: Vec<HttpScope>,
}

/// The tokens a node accepts. Empty means "no token configured" (then the loopback rule applies).
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.name, &e.scopes)))
            .finish()
    }
}

/// A token that matched: its name and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<HttpScope>,
}

fn sha256(token: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token).as_ref());
    out
}

impl TokenSet {
    /// Builds the set from `http.auth.tokens` and the value of `BIFROST_HTTP_TOKENS` (`env_tokens`; the caller
    /// reads the environment), reading each `token_env` variable with `env` and each `token_file` from disk.
    pub fn load(
        http: &HttpConfig,
        env_tokens: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<TokenSet, AuthSetupError> {
        let mut set = TokenSet::default();
        for (i, token) in http.auth.tokens.iter().enumerate() {
            let field = format!("cluster_config.http.auth.tokens[{i}]");
            let value = match &token.source {
                HttpTokenSource::Inline(t) => t.clone(),
                HttpTokenSource::Env(var) => {
                    let field = format!("{field}.token_env");
                    let text = env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                        AuthSetupError::EnvMissing {
                            field: field.clone(),
                            var: var.clone(),
                        }
                    })?;
                    HttpToken::new(text.trim()).map_err(|rule| {
                        AuthSetupError::Field(crate::config::FieldError::new(
                            field,
                            format!("the value of {var}: {rule}"),
                        ))
                    })?
                }
                HttpTokenSource::File(path) => {
                    let field = format!("{field}.token_file");
                    let text =
                        std::fs::read_to_string(path).map_err(|source| AuthSetupError::File {
                            field: field.clone(),
                            path: path.clone(),
                            source,
                        })?;
                    HttpToken::new(text.trim()).map_err(|rule| {
                        AuthSetupError::Field(crate::config::FieldError::new(
                            field,
                            format!("the content of {}: {rule}", path.display()),
                        ))
                    })?
                }
            };
            set.push(token, &value);
        }
        if let Some(text) = env_tokens {
            for token in crate::config::parse_env_tokens(text).map_err(AuthSetupError::Field)? {
                if set.entries.iter().any(|e| e.name == token.name) {
                    return Err(AuthSetupError::Field(crate::config::FieldError::new(
                        crate::config::HTTP_TOKENS_ENV,
                        format!(
                            "token name {:?} is also in http.auth.tokens: names must be unique",
                            token.name
                        ),
                    )));
                }
                if let HttpTokenSource::Inline(value) = &token.source {
                    set.push(&token, value);
                }
            }
        }
        Ok(set)
    }

    fn push(&mut self, token: &HttpTokenConfig, value: &HttpToken) {
        self.entries.push(Entry {
            name: token.name.clone(),
            digest: sha256(value.expose_secret().as_bytes()),
            scopes: token.scopes.clone(),
        });
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry whose token is `presented`, if any. Compares against every entry in constant time.
    pub fn find(&self, presented: &[u8]) -> Option<Principal> {
        let probe = sha256(presented);
        let mut found: Option<usize> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            // Every entry is compared; names are unique and digests of distinct tokens differ, so at most one
            // matches.
            let hit: bool = entry.digest.ct_eq(&probe).into();
            if hit {
                found = Some(i);
            }
        }
        found.map(|i| Principal {
            name: self.entries[i].name.clone(),
            scopes: self.entries[i].scopes.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from_str;

    const A: &str = "token-a-0123456789abcdef0123456789abcdef";
    const B: &str = "token-b-0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_from_config_env_and_file() {
        let dir = std::env::temp_dir().join(format!("bifrost-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("token");
        std::fs::write(&file, format!("{B}\n")).unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            r#"{{"cluster_config": {{"http": {{"auth": {{"tokens": [
                {{"name": "inline", "token": "{A}", "scopes": ["read"]}},
                {{"name": "file", "token_file": "{}", "scopes": ["check", "read"]}},
                {{"name": "env", "token_env": "MY_TOKEN", "scopes": ["admin"]}}]}}}}}}}}"#,
            file.display()
        );
        let config = load_from_str(&text)
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let env_value = format!("{A}-env");
        let set = TokenSet::load(&config.http, Some(&format!("extra:read:{A}-extra")), |v| {
            (v == "MY_TOKEN").then(|| env_value.clone())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.len(), 4);
        assert_eq!(
            set.find(A.as_bytes()).map(|p| p.name).as_deref(),
            Some("inline")
        );
        assert_eq!(
            set.find(B.as_bytes()).map(|p| p.name).as_deref(),
            Some("file")
        );
        assert_eq!(
            set.find(env_value.as_bytes()).map(|p| p.scopes),
            Some(vec![HttpScope::Admin])
        );
        assert_eq!(
            set.find(format!("{A}-extra").as_bytes())
                .map(|p| p.name)
                .as_deref(),
            Some("extra")
        );
        assert!(
            set.find(b"token-a-0123456789abcdef0123456789abcdeX")
                .is_none()
        );
        assert!(set.find(b"").is_none());
        assert!(!format!("{set:?}").contains("token-a"));

        // A missing variable and a short file are refused naming the field, not the value.
        let missing = TokenSet::load(&config.http, None, |_| None);
        assert!(matches!(missing, Err(AuthSetupError::EnvMissing { .. })));
        std::fs::write(&file, "short-token\n").unwrap_or_else(|e| panic!("{e}"));
        match TokenSet::load(&config.http, None, |_| Some(env_value.clone())) {
            Err(e @ AuthSetupError::Field(_)) => {
                let text = e.to_string();
                assert!(text.contains("tokens[1].token_file"), "{text}");
                assert!(!text.contains("short-token"), "{text}");
            }
            other => panic!("expected a field error, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
