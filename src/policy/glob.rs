//! Wildcard values: `*` matches any run of characters (also none), anywhere and any number of times
//! (`foo*`, `/api/*/action`, `*`), as envoyproxy/ratelimit matches them. No other character is special.

/// A value with at least one `*`, split at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    parts: Vec<String>,
}

impl Pattern {
    /// The pattern of `value`, or `None` when it has no `*` (an exact value).
    pub(crate) fn new(value: &str) -> Option<Pattern> {
        if !value.contains('*') {
            return None;
        }
        Some(Pattern {
            text: value.to_owned(),
            parts: value.split('*').map(str::to_owned).collect(),
        })
    }

    /// The value as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches: the first part is a prefix, the last a suffix, the others appear in order
    /// between them without overlapping. Linear in `value` times the number of parts.
    pub(crate) fn matches(&self, value: &str) -> bool {
        let (Some(first), Some(last)) = (self.parts.first(), self.parts.last()) else {
            return false;
        };
        let Some(mut rest) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        let middle = &self.parts[1..self.parts.len() - 1];
        for part in middle {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn p(text: &str) -> Pattern {
        Pattern::new(text).unwrap_or_else(|| panic!("{text} has a *"))
    }

    #[test]
    fn trailing_middle_and_multiple_wildcards() {
        assert!(Pattern::new("plain").is_none());
        assert!(p("value*").matches("value1"));
        assert!(p("value*").matches("value"));
        assert!(!p("value*").matches("valu"));
        assert!(p("/api/*/action").matches("/api/123/action"));
        assert!(!p("/api/*/action").matches("/api/123/other"));
        assert!(p("/api/*/resource/*/action").matches("/api/v1/resource/123/action"));
        assert!(!p("/api/*/resource/*/action").matches("/api/v1/resource/123"));
        assert!(p("*").matches(""));
        assert!(p("a*a").matches("aa"));
        assert!(!p("a*a").matches("a"), "prefix and suffix must not overlap");
        assert!(p("*x*").matches("abxcd"));
    }
}
