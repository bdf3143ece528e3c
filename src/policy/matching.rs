//! Descriptor → rule, as envoyproxy/ratelimit's `GetLimit` finds it.

use super::{Level, Policy, Rule};

/// What a descriptor matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match<'p> {
    /// The request's domain is not configured.
    UnknownDomain,
    /// No rule at the descriptor's depth.
    NoRule,
    /// A rule, with the counter key of this descriptor under it.
    Rule {
        /// The rule.
        rule: &'p Rule,
        /// The counter key (see [`counter_key`]); values matched by a `share_threshold` wildcard are
        /// replaced by the wildcard, so they share one count.
        key: String,
    },
}

impl Policy {
    /// The rule of a descriptor of `domain` with `entries` (`(key, value)` in request order).
    pub fn lookup(&self, domain: &str, entries: &[(&str, &str)]) -> Match<'_> {
        let Some(tree) = self.domains.get(domain) else {
            return Match::UnknownDomain;
        };
        let mut level: &Level = &tree.root;
        let mut shared: Vec<Option<&str>> = vec![None; entries.len()];
        for (i, (key, value)) in entries.iter().enumerate() {
            let exact = level
                .by_value
                .get(*key)
                .and_then(|values| values.get(*value));
            let wildcard = || {
                level
                    .wildcards
                    .iter()
                    .find(|(k, pattern, _)| k == key && pattern.matches(value))
                    .map(|(_, pattern, index)| (pattern, *index))
            };
            let index = match exact {
                Some(index) => Some(*index),
                None => match wildcard() {
                    Some((pattern, index)) => {
                        if tree.nodes[index].share_threshold {
                            shared[i] = Some(pattern.text());
                        }
                        Some(index)
                    }
                    None => level.by_key.get(*key).copied(),
                },
            };
            let Some(index) = index else {
                return Match::NoRule;
            };
            let node = &tree.nodes[index];
            if i + 1 == entries.len() {
                return match node.rule {
                    Some(rule) => Match::Rule {
                        rule: &self.rules[rule],
                        key: counter_key(domain, entries, &shared),
                    },
                    None => Match::NoRule,
                };
            }
            level = &node.children;
        }
        Match::NoRule
    }
}

/// The counter key of a descriptor: `rls|<domain>|<key>=<value>|...`, each part escaped (`%`, `|` and `=` as
/// `%25`, `%7C`, `%3D`) so distinct descriptors never share a key. `shared[i]`, when given, stands for the
/// value of entry `i`.
pub fn counter_key(domain: &str, entries: &[(&str, &str)], shared: &[Option<&str>]) -> String {
    let mut key = String::with_capacity(
        4 + domain.len()
            + entries
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>(),
    );
    key.push_str("rls|");
    escape(&mut key, domain);
    for (i, (k, v)) in entries.iter().enumerate() {
        key.push('|');
        escape(&mut key, k);
        key.push('=');
        escape(&mut key, shared.get(i).copied().flatten().unwrap_or(v));
    }
    key
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
}
