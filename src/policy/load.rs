//! Limits files → [`Policy`], collecting every problem.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_yaml_ng::{Mapping, Value};

use super::glob::Pattern;
use super::{
    Domain, Level, Limit, MAX_DEPTH, MAX_DOMAINS, MAX_RULES, MAX_TEXT_BYTES, Node, Policy,
    RateUnit, Rule, RuleLimit,
};
use crate::counter::{Algorithm, Alignment, parse_instant};

/// One broken rule of a limits file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file (as the caller named it), with `#N` for the N-th YAML document when it has several.
    pub file: String,
    /// The path inside the document: `domain`, `descriptors[1].rate_limit.unit`, … (empty: the whole document).
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.problem)
        }
    }
}

/// Why a set of limits files was refused: every problem found. Nothing of it was used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Each problem, in file order.
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the limits files", self.problems.len())?;
        for p in &self.problems {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

const DOCUMENT_KEYS: &[&str] = &["domain", "descriptors"];
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];
const RATE_LIMIT_KEYS: &[&str] = &[
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    // Ours.
    "algorithm",
    "burst",
    "alignment",
    "anchor",
];

struct Loader {
    problems: Vec<PolicyProblem>,
    file: String,
    rules: Vec<Rule>,
    descriptors: usize,
}

impl Loader {
    fn fail(&mut self, path: &str, problem: impl Into<String>) {
        self.problems.push(PolicyProblem {
            file: self.file.clone(),
            path: path.to_owned(),
            problem: problem.into(),
        });
    }

    fn mapping<'v>(&mut self, path: &str, value: &'v Value, known: &[&str]) -> Option<&'v Mapping> {
        let Value::Mapping(map) = value else {
            self.fail(path, format!("expected a mapping, got {}", kind(value)));
            return None;
        };
        for k in map.keys() {
            match k.as_str() {
                Some(name) if known.contains(&name) => {}
                Some(name) => self.fail(
                    &join(path, name),
                    format!("unknown key {name:?} (known: {})", known.join(", ")),
                ),
                None => self.fail(path, format!("a key that is not a string: {}", kind(k))),
            }
        }
        Some(map)
    }

    /// A scalar as text (YAML `value: 123` is the string "123", as Go's decoder reads it into a string).
    fn text(&mut self, path: &str, value: &Value) -> Option<String> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                self.fail(path, format!("expected a string, got {}", kind(other)));
                return None;
            }
        };
        if text.len() > MAX_TEXT_BYTES {
            self.fail(
                path,
                format!("{} bytes; at most {MAX_TEXT_BYTES}", text.len()),
            );
            return None;
        }
        Some(text)
    }

    fn bool(&mut self, path: &str, value: Option<&Value>) -> bool {
        match value {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.fail(path, format!("expected true or false, got {}", kind(other)));
                false
            }
        }
    }

    fn document(&mut self, value: &Value, domains: &mut HashMap<String, Domain>) {
        let Some(map) = self.mapping("", value, DOCUMENT_KEYS) else {
            return;
        };
        let domain = match map.get("domain") {
            None | Some(Value::Null) => {
                self.fail("domain", "required");
                None
            }
            Some(v) => self.text("domain", v).filter(|d| {
                if d.is_empty() {
                    self.fail("domain", "must not be empty");
                }
                !d.is_empty()
            }),
        };
        let mut tree = Domain::default();
        let mut stat_key = domain.clone().unwrap_or_default();
        if let Some(list) = map.get("descriptors") {
            let domain_name = domain.clone().unwrap_or_default();
            let mut root = Level::default();
            self.level(
                "descriptors",
                list,
                &domain_name,
                &mut stat_key,
                1,
                &mut root,
                &mut tree.nodes,
            );
            tree.root = root;
        }
        let Some(domain) = domain else { return };
        if domains.contains_key(&domain) {
            self.fail(
                "domain",
                format!("duplicate domain {domain:?}: domains are unique across all limits files"),
            );
            return;
        }
        if domains.len() >= MAX_DOMAINS {
            self.fail("domain", format!("more than {MAX_DOMAINS} domains"));
            return;
        }
        domains.insert(domain, tree);
    }

    #[allow(clippy::too_many_arguments)]
    fn level(
        &mut self,
        path: &str,
        value: &Value,
        domain: &str,
        parent_stat: &mut String,
        depth: usize,
        out: &mut Level,
        nodes: &mut Vec<Node>,
    ) {
        let items = match value {
            Value::Null => return,
            Value::Sequence(items) => items,
            other => {
                self.fail(
                    path,
                    format!("expected a list of descriptors, got {}", kind(other)),
                );
                return;
            }
        };
        if depth > MAX_DEPTH {
            self.fail(path, format!("nested deeper than {MAX_DEPTH} levels"));
            return;
        }
        let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            self.descriptors += 1;
            if self.descriptors > MAX_RULES {
                if self.descriptors == MAX_RULES + 1 {
                    self.fail(&at, format!("more than {MAX_RULES} descriptors in all"));
                }
                continue;
            }
            let Some(map) = self.mapping(&at, item, DESCRIPTOR_KEYS) else {
                continue;
            };
            let key = match map.get("key") {
                None | Some(Value::Null) => {
                    self.fail(&join(&at, "key"), "required (descriptor has empty key)");
                    None
                }
                Some(v) => self.text(&join(&at, "key"), v).filter(|k| {
                    if k.is_empty() {
                        self.fail(&join(&at, "key"), "must not be empty");
                    }
                    !k.is_empty()
                }),
            };
            let value = match map.get("value") {
                None | Some(Value::Null) => None,
                Some(v) => self.text(&join(&at, "value"), v).filter(|v| !v.is_empty()),
            };
            let shadow_mode = self.bool(&join(&at, "shadow_mode"), map.get("shadow_mode"));
            let quota_mode = self.bool(&join(&at, "quota_mode"), map.get("quota_mode"));
            let _ = self.bool(&join(&at, "detailed_metric"), map.get("detailed_metric"));
            let _ = self.bool(&join(&at, "value_to_metric"), map.get("value_to_metric"));
            let share_threshold =
                self.bool(&join(&at, "share_threshold"), map.get("share_threshold"));
            if let Some(meta) = map.get("metadata")
                && !matches!(meta, Value::Mapping(_) | Value::Null)
            {
                self.fail(
                    &join(&at, "metadata"),
                    format!("expected a mapping, got {}", kind(meta)),
                );
            }
            let Some(key) = key else { continue };
            let final_key = match &value {
                Some(v) => format!("{key}_{v}"),
                None => key.clone(),
            };
            if !seen.insert((key.clone(), value.clone())) {
                self.fail(
                    &at,
                    format!("duplicate descriptor composite key '{parent_stat}.{final_key}'"),
                );
                continue;
            }
            let pattern = value.as_deref().and_then(Pattern::new);
            if share_threshold && pattern.is_none() {
                self.fail(
                    &join(&at, "share_threshold"),
                    format!("share_threshold can only be used with wildcard values (containing '*'), but found key '{final_key}'"),
                );
            }
            let stat_key = format!("{parent_stat}.{final_key}");
            let rule = match map.get("rate_limit") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    self.rate_limit(&join(&at, "rate_limit"), v)
                        .map(|(name, replaces, limit)| {
                            let id = self.rules.len();
                            self.rules.push(Rule {
                                id,
                                domain: domain.to_owned(),
                                stat_key: stat_key.clone(),
                                location: format!("{}: {at}", self.file),
                                name,
                                replaces,
                                shadow_mode,
                                quota_mode,
                                limit,
                            });
                            id
                        })
                }
            };
            let index = nodes.len();
            nodes.push(Node {
                rule,
                share_threshold,
                children: Level::default(),
            });
            if let Some(children) = map.get("descriptors") {
                let mut level = Level::default();
                let mut child_stat = stat_key.clone();
                self.level(
                    &join(&at, "descriptors"),
                    children,
                    domain,
                    &mut child_stat,
                    depth + 1,
                    &mut level,
                    nodes,
                );
                nodes[index].children = level;
            }
            match (value, pattern) {
                (None, _) => {
                    out.by_key.insert(key, index);
                }
                (Some(_), Some(pattern)) => out.wildcards.push((key, pattern, index)),
                (Some(value), None) => {
                    out.by_value.entry(key).or_default().insert(value, index);
                }
            }
        }
    }

    /// The `burst` of a token bucket of `requests_per_unit` (required, 1 to 3 × requests_per_unit); a
    /// placeholder burst of 1 after a problem.
    fn burst(&mut self, path: &str, value: Option<&Value>, requests_per_unit: u32) -> Algorithm {
        let at = join(path, "burst");
        let burst = match value {
            None | Some(Value::Null) => {
                self.fail(&at, "required for algorithm: token_bucket");
                None
            }
            Some(Value::Number(n)) => n.as_u64().or_else(|| {
                self.fail(&at, format!("expected an integer 1..=2^64-1, got {n}"));
                None
            }),
            Some(other) => {
                self.fail(&at, format!("expected an integer, got {}", kind(other)));
                None
            }
        };
        let checked = burst.map(|b| Algorithm::token_bucket(b, u64::from(requests_per_unit)));
        match checked {
            Some(Ok(algorithm)) => algorithm,
            Some(Err(e)) => {
                self.fail(&at, format!("{e} (requests_per_unit)"));
                Algorithm::TokenBucket {
                    burst: std::num::NonZeroU64::MIN,
                }
            }
            None => Algorithm::TokenBucket {
                burst: std::num::NonZeroU64::MIN,
            },
        }
    }

    fn rate_limit(
        &mut self,
        path: &str,
        value: &Value,
    ) -> Option<(Option<String>, Vec<String>, RuleLimit)> {
        let map = self.mapping(path, value, RATE_LIMIT_KEYS)?;
        let before = self.problems.len();
        let unlimited = self.bool(&join(path, "unlimited"), map.get("unlimited"));
        let unit = match map.get("unit") {
            None | Some(Value::Null) => None,
            Some(v) => self.text(&join(path, "unit"), v).and_then(|u| {
                let unit = RateUnit::from_name(&u);
                if unit.is_none() {
                    self.fail(
                        &join(path, "unit"),
                        format!("invalid rate limit unit '{u}' (second, minute, hour, day, week, month, year)"),
                    );
                }
                unit
            }),
        };
        let requests_per_unit = match map.get("requests_per_unit") {
            // envoyproxy/ratelimit reads a missing value as 0 (every request over the limit).
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    self.fail(
                        &join(path, "requests_per_unit"),
                        format!("expected an integer 0..=4294967295, got {n}"),
                    );
                    0
                }
            },
            Some(other) => {
                self.fail(
                    &join(path, "requests_per_unit"),
                    format!("expected an integer, got {}", kind(other)),
                );
                0
            }
        };
        let name = match map.get("name") {
            None | Some(Value::Null) => None,
            Some(v) => self.text(&join(path, "name"), v).filter(|n| !n.is_empty()),
        };
        let mut replaces = Vec::new();
        match map.get("replaces") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{}[{i}]", join(path, "replaces"));
                    let Some(entry) = self.mapping(&at, item, &["name"]) else {
                        continue;
                    };
                    match entry.get("name").map(|v| self.text(&join(&at, "name"), v)) {
                        Some(Some(n)) if !n.is_empty() => {
                            if name.as_deref() == Some(n.as_str()) {
                                self.fail(
                                    &join(&at, "name"),
                                    "replaces should not contain name of same descriptor",
                                );
                            }
                            replaces.push(n);
                        }
                        Some(None) => {}
                        _ => self.fail(&at, "should not have an empty replaces entry"),
                    }
                }
            }
            Some(other) => self.fail(
                &join(path, "replaces"),
                format!("expected a list of {{name: ...}}, got {}", kind(other)),
            ),
        }
        let algorithm = match map.get("algorithm") {
            None | Some(Value::Null) => Algorithm::FixedWindow,
            Some(Value::String(s)) if s == "fixed_window" => Algorithm::FixedWindow,
            Some(Value::String(s)) if s == "sliding_window" => Algorithm::SlidingWindow,
            Some(Value::String(s)) if s == "token_bucket" => {
                self.burst(path, map.get("burst"), requests_per_unit)
            }
            Some(other) => {
                self.fail(
                    &join(path, "algorithm"),
                    format!(
                        "expected fixed_window, sliding_window or token_bucket, got {}",
                        kind(other)
                    ),
                );
                Algorithm::FixedWindow
            }
        };
        if !matches!(algorithm, Algorithm::TokenBucket { .. })
            && !matches!(map.get("burst"), None | Some(Value::Null))
        {
            self.fail(
                &join(path, "burst"),
                format!("only for algorithm: token_bucket, not {}", algorithm.name()),
            );
        }
        let anchor = match map.get("anchor") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match parse_instant(s) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    self.fail(&join(path, "anchor"), e.to_string());
                    None
                }
            },
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                self.fail(
                    &join(path, "anchor"),
                    format!(
                        "expected an RFC 3339 instant (2026-12-01T10:00:00Z) or Unix milliseconds, got {}",
                        kind(other)
                    ),
                );
                None
            }
        };
        let anchored = |phase_ms| Alignment::Anchored { phase_ms };
        let alignment = match map.get("alignment") {
            None | Some(Value::Null) => anchor.map_or(Alignment::Calendar, anchored),
            Some(Value::String(s)) if s == "calendar" => Alignment::Calendar,
            Some(Value::String(s)) if s == "fixed" => Alignment::Fixed,
            Some(Value::String(s)) if s == "anchored" => {
                if !map.contains_key("anchor") {
                    self.fail(&join(path, "anchor"), "required with alignment: anchored");
                }
                anchor.map_or(Alignment::Calendar, anchored)
            }
            Some(other) => {
                self.fail(
                    &join(path, "alignment"),
                    format!("expected calendar, fixed or anchored, got {}", kind(other)),
                );
                Alignment::Calendar
            }
        };
        if anchor.is_some() && !matches!(alignment, Alignment::Anchored { .. }) {
            self.fail(
                &join(path, "anchor"),
                "only for an anchored window (alignment: anchored, or no alignment)",
            );
        }
        let limit = if unlimited {
            if unit.is_some() {
                self.fail(
                    &join(path, "unit"),
                    "should not specify rate limit unit when unlimited",
                );
            }
            RuleLimit::Unlimited
        } else {
            let Some(unit) = unit else {
                if !map.contains_key("unit") {
                    self.fail(&join(path, "unit"), "required unless unlimited: true");
                }
                return None;
            };
            let window = match unit.window_with(alignment) {
                Ok(window) => window,
                Err(e) if matches!(alignment, Alignment::Anchored { .. }) => {
                    self.fail(&join(path, "anchor"), e.to_string());
                    return None;
                }
                Err(_) => {
                    self.fail(
                        &join(path, "alignment"),
                        format!("a {} window is always calendar aligned", unit.as_str()),
                    );
                    return None;
                }
            };
            RuleLimit::Limited(Limit {
                requests_per_unit,
                unit,
                window,
                algorithm,
            })
        };
        (self.problems.len() == before).then_some((name, replaces, limit))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(_) => "a tagged value".to_owned(),
    }
}

impl Policy {
    /// Loads limits files, each `(name, text)`: the name is only used in errors and rule locations. A file
    /// may hold several YAML documents (`---`), each one domain; an empty document is skipped.
    pub fn load<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Policy, PolicyError> {
        let mut domains = HashMap::new();
        let mut loader = Loader {
            problems: Vec::new(),
            file: String::new(),
            rules: Vec::new(),
            descriptors: 0,
        };
        for (name, text) in files {
            let mut documents = Vec::new();
            for document in serde_yaml_ng::Deserializer::from_str(text) {
                match serde::Deserialize::deserialize(document) {
                    Ok(value) => documents.push(value),
                    Err(e) => {
                        loader.file = name.to_owned();
                        loader.fail("", format!("invalid YAML: {e}"));
                        break;
                    }
                }
            }
            let several = documents.len() > 1;
            for (i, value) in documents.iter().enumerate() {
                loader.file = if several {
                    format!("{name}#{}", i + 1)
                } else {
                    name.to_owned()
                };
                if matches!(value, Value::Null) {
                    continue;
                }
                loader.document(value, &mut domains);
            }
        }
        if !loader.problems.is_empty() {
            return Err(PolicyError {
                problems: loader.problems,
            });
        }
        Ok(Policy {
            domains,
            rules: loader.rules,
        })
    }
}
