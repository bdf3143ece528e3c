//! Rules of the HTTP surface's authentication (issue 14) that involve more than one field or a value from the
//! environment: the token list of `BIFROST_HTTP_TOKENS`, and what `run` requires of `http.listen` when no
//! token is configured.
//!
//! Pure functions: the caller reads the environment and passes the value in. No error message ever contains
//! a token.

use super::error::FieldError;
use super::load::HTTP_TOKENS_ENV;
use super::parse::ROOT;
use super::schema::{HttpConfig, HttpScope, HttpToken, HttpTokenConfig, HttpTokenSource, NodeId};

impl HttpConfig {
    /// What `run` needs before it serves HTTP, or `None` when it can start. `env_tokens` says whether
    /// `BIFROST_HTTP_TOKENS` yields at least one token.
    ///
    /// Without any token, `listen` must be a loopback address (then every route is served, to local clients
    /// only), unless `allow_unauthenticated_reads` accepts a non-loopback address (reads for anyone, writes for
    /// loopback clients only).
    pub fn auth_requirement(&self, env_tokens: bool) -> Option<FieldError> {
        if self.has_config_tokens()
            || env_tokens
            || self.listen.ip().is_loopback()
            || self.allow_unauthenticated_reads
        {
            return None;
        }
        Some(FieldError::new(
            format!("{ROOT}.http.listen"),
            format!(
                "{} is not a loopback address and no HTTP token is configured: anyone reaching the port could write counters and config; run will refuse to start. Add tokens (http.auth.tokens or {HTTP_TOKENS_ENV}; make one with `openssl rand -base64 32`), listen on 127.0.0.1, or set http.allow_unauthenticated_reads: true (reads open to all, writes only from loopback)",
                self.listen
            ),
        ))
    }
}

/// Parses the value of `BIFROST_HTTP_TOKENS`: entries separated by whitespace, each `name:scopes:token` with
/// `scopes` a comma-separated list of `read`, `check`, `admin` (e.g. `gateway:check,read:<token>`). The token
/// is everything after the second `:`. An empty value yields no token. Errors name the variable and the entry
/// by position, never the token.
pub fn parse_env_tokens(text: &str) -> Result<Vec<HttpTokenConfig>, FieldError> {
    let mut out: Vec<HttpTokenConfig> = Vec::new();
    for (i, entry) in text.split_whitespace().enumerate() {
        let fail = |rule: String| FieldError::new(format!("{HTTP_TOKENS_ENV}[{i}]"), rule);
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(scopes), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail(
                "expected name:scopes:token, e.g. gateway:check,read:<token>".to_owned(),
            ));
        };
        NodeId::new(name).map_err(|rule| fail(format!("token name: {rule}")))?;
        if out.iter().any(|t| t.name == name) {
            return Err(fail(format!("duplicate token name {name:?}")));
        }
        let mut list = Vec::new();
        for scope in scopes.split(',') {
            let s = HttpScope::from_name(scope).ok_or_else(|| {
                fail(format!(
                    "unknown scope {scope:?}: expected read, check or admin"
                ))
            })?;
            list.push(s);
        }
        list.sort_unstable();
        list.dedup();
        let token = HttpToken::new(token).map_err(fail)?;
        out.push(HttpTokenConfig {
            name: name.to_owned(),
            source: HttpTokenSource::Inline(token),
            scopes: list,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef+/=";

    #[test]
    fn env_tokens_parse_and_never_echo_the_token() {
        let text = format!("gateway:check,read:{TOKEN}\n ops:admin:{TOKEN}x:y");
        let tokens = parse_env_tokens(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].scopes, [HttpScope::Read, HttpScope::Check]);
        assert_eq!(
            tokens[1].source,
            HttpTokenSource::Inline(
                HttpToken::new(&format!("{TOKEN}x:y")).unwrap_or_else(|e| panic!("{e}"))
            )
        );
        assert!(parse_env_tokens("").unwrap_or_default().is_empty());
        for bad in [
            "gateway:read".to_owned(),
            "gateway:write:0123456789abcdef0123456789abcdef".to_owned(),
            "gateway:read:short-secret-token".to_owned(),
            format!("a:read:{TOKEN} a:read:{TOKEN}"),
            format!("bad name:read:{TOKEN}"),
        ] {
            match parse_env_tokens(&bad) {
                Ok(t) => panic!("{bad:?} accepted: {t:?}"),
                Err(e) => {
                    assert!(e.path.starts_with(HTTP_TOKENS_ENV), "{e}");
                    assert!(!e.to_string().contains("short-secret"), "{e}");
                    assert!(!e.to_string().contains(TOKEN), "{e}");
                }
            }
        }
    }

    #[test]
    fn no_token_needs_loopback_or_the_explicit_flag() {
        let mut http = HttpConfig::default();
        let refused = http.auth_requirement(false);
        assert_eq!(
            refused.map(|e| e.path).as_deref(),
            Some("cluster_config.http.listen")
        );
        assert!(http.auth_requirement(true).is_none(), "env tokens");
        http.allow_unauthenticated_reads = true;
        assert!(http.auth_requirement(false).is_none());
        http.allow_unauthenticated_reads = false;
        http.listen = "127.0.0.1:8080"
            .parse()
            .unwrap_or(HttpConfig::DEFAULT_LISTEN);
        assert!(http.auth_requirement(false).is_none());
        http.listen = "[::1]:8080".parse().unwrap_or(HttpConfig::DEFAULT_LISTEN);
        assert!(http.auth_requirement(false).is_none());
    }
}
