//! Limit policies held by the server: limits files in the descriptor format of envoyproxy/ratelimit, and the
//! rule matching of its `ShouldRateLimit`.
//!
//! A limits file holds one or more YAML documents, each a `domain` with nested `descriptors` (`key`, optional
//! `value`, optional `rate_limit`, `shadow_mode`, `quota_mode`, `detailed_metric`, `value_to_metric`,
//! `share_threshold`, `metadata`, nested `descriptors`). `rate_limit` has `unit` (second, minute, hour, day, week,
//! month, year), `requests_per_unit`, `unlimited`, `name`, `replaces`, and two fields of our own: `algorithm`
//! (`fixed_window`, the default, `sliding_window`, or `token_bucket` with `burst`, 1 to 3 × `requests_per_unit`:
//! a bucket of that capacity refilled at `requests_per_unit` per `unit`), `alignment` (`calendar`, the default,
//! `fixed` or `anchored`; only day and week windows differ between the first two: see
//! [`crate::counter::Alignment`]) and `anchor` (an RFC 3339 instant or Unix ms: the window resets at `anchor + k ×
//! unit`, before and after the anchor; only its phase matters; implies `alignment: anchored`; refused for months
//! and years).
//!
//! # Guarantees
//!
//! - **Compatible.** Every document envoyproxy/ratelimit accepts with the keys it knows loads here unchanged,
//!   and matches the same rule: per level, an exact `key`+`value` entry first, then the level's wildcard values
//!   in file order (`*` matches any run of characters, anywhere in the value), then the `key`-only entry; a
//!   rule applies only at the level of the descriptor's last entry (a request with more entries than the
//!   configured depth matches nothing).
//! - **Every error at once.** [`Policy::load`] reports every problem in one [`PolicyError`], each naming the
//!   file, the path of the descriptor (`descriptors[0].descriptors[2].rate_limit.unit`) and the rule broken;
//!   nothing of a refused set of files is used.
//! - **Bounded.** At most [`MAX_RULES`] descriptors in all, [`MAX_DEPTH`] levels and [`MAX_DOMAINS`] domains;
//!   keys and values of at most [`MAX_TEXT_BYTES`] bytes. The metric series a policy creates are its rules, so
//!   they are bounded too, whatever the requests carry.
//! - **Pure.** Parsing and matching do no I/O and read no clock (the files' text is passed in).

mod glob;
mod load;
mod matching;

#[cfg(test)]
mod tests;

pub use load::{PolicyError, PolicyProblem};
pub use matching::{Match, counter_key};

use std::collections::HashMap;

use crate::counter::{Algorithm, Window};

/// Most descriptors (rules and placeholders) in all the files of a policy.
pub const MAX_RULES: usize = 10_000;
/// Deepest nesting of `descriptors`.
pub const MAX_DEPTH: usize = 16;
/// Most domains.
pub const MAX_DOMAINS: usize = 1_000;
/// Longest domain, key, value or rule name, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// The unit of a rate limit, with the numbers of `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    /// `second` (1).
    Second,
    /// `minute` (2).
    Minute,
    /// `hour` (3).
    Hour,
    /// `day` (4): a UTC day.
    Day,
    /// `week` (7): an ISO week (Monday 00:00 UTC) unless `alignment: fixed`.
    Week,
    /// `month` (5): a calendar month (UTC).
    Month,
    /// `year` (6): a calendar year (UTC).
    Year,
}

impl RateUnit {
    /// The spelling of the limits file (case-insensitive there, as envoyproxy/ratelimit reads it).
    pub fn from_name(name: &str) -> Option<RateUnit> {
        Some(match name.to_ascii_lowercase().as_str() {
            "second" => RateUnit::Second,
            "minute" => RateUnit::Minute,
            "hour" => RateUnit::Hour,
            "day" => RateUnit::Day,
            "week" => RateUnit::Week,
            "month" => RateUnit::Month,
            "year" => RateUnit::Year,
            _ => return None,
        })
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
            RateUnit::Week => "week",
            RateUnit::Month => "month",
            RateUnit::Year => "year",
        }
    }

    /// The protobuf enum number.
    pub fn proto_number(self) -> i32 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 2,
            RateUnit::Hour => 3,
            RateUnit::Day => 4,
            RateUnit::Month => 5,
            RateUnit::Year => 6,
            RateUnit::Week => 7,
        }
    }

    /// The unit of protobuf enum number `n` (`UNKNOWN` and unknown numbers: `None`).
    pub fn from_proto(n: i32) -> Option<RateUnit> {
        Some(match n {
            1 => RateUnit::Second,
            2 => RateUnit::Minute,
            3 => RateUnit::Hour,
            4 => RateUnit::Day,
            5 => RateUnit::Month,
            6 => RateUnit::Year,
            7 => RateUnit::Week,
            _ => return None,
        })
    }

    /// The counter window of one unit with `alignment`. Months and years are always calendar windows (a
    /// `fixed` or anchored alignment for them is refused when the file loads).
    pub fn window(self, alignment: crate::counter::Alignment) -> Option<Window> {
        self.window_with(alignment).ok()
    }

    /// [`RateUnit::window`], saying why when there is none.
    pub fn window_with(
        self,
        alignment: crate::counter::Alignment,
    ) -> Result<Window, crate::counter::WindowError> {
        use crate::counter::Unit;
        let unit = match self {
            RateUnit::Second => Unit::Second,
            RateUnit::Minute => Unit::Minute,
            RateUnit::Hour => Unit::Hour,
            RateUnit::Day => Unit::Day,
            RateUnit::Week => Unit::Week,
            RateUnit::Month => Unit::Month,
            RateUnit::Year => Unit::Year,
        };
        Window::with_alignment(1, unit, alignment)
    }
}

/// What a rule limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleLimit {
    /// `unlimited: true`: always OK, never counted.
    Unlimited,
    /// `requests_per_unit` per `unit`.
    Limited(Limit),
}

/// A finite limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// `requests_per_unit` (0 refuses every request, as in envoyproxy/ratelimit).
    pub requests_per_unit: u32,
    /// `unit`.
    pub unit: RateUnit,
    /// The counter window: one `unit`, with the rule's `alignment`.
    pub window: Window,
    /// `algorithm`.
    pub algorithm: Algorithm,
}

/// One descriptor with a `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Index in [`Policy::rules`].
    pub id: usize,
    /// The domain it belongs to.
    pub domain: String,
    /// envoyproxy/ratelimit's stat key: the domain and each level's `key` or `key_value`, joined with `.`
    /// (`rl.foo_bar.baz`). Unique within a policy; the `rule` label of the per-rule metrics.
    pub stat_key: String,
    /// Where it is: the file and the descriptor path.
    pub location: String,
    /// `rate_limit.name`.
    pub name: Option<String>,
    /// `rate_limit.replaces[].name`.
    pub replaces: Vec<String>,
    /// `shadow_mode`: an over-limit decision is reported, counted in metrics, and answered OK.
    pub shadow_mode: bool,
    /// `quota_mode`: an over-limit decision makes the overall answer OVER_LIMIT only when every quota-mode
    /// descriptor of the request is over its limit (envoyproxy/ratelimit's rule).
    pub quota_mode: bool,
    /// The limit.
    pub limit: RuleLimit,
}

/// A descriptor of the tree (with or without a rule).
#[derive(Debug, Clone, Default)]
struct Node {
    rule: Option<usize>,
    /// `share_threshold` on a wildcard value: every value it matches shares one counter.
    share_threshold: bool,
    children: Level,
}

/// One level of `descriptors`.
#[derive(Debug, Clone, Default)]
struct Level {
    /// `key` → `value` → node.
    by_value: HashMap<String, HashMap<String, usize>>,
    /// `key` (no value) → node.
    by_key: HashMap<String, usize>,
    /// `(key, value pattern, node)` in file order.
    wildcards: Vec<(String, glob::Pattern, usize)>,
}

/// The descriptor tree of one domain.
#[derive(Debug, Clone, Default)]
struct Domain {
    root: Level,
    nodes: Vec<Node>,
}

/// Every domain's rules, loaded from limits files. Cheap to share behind an `Arc`; replaced whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    domains: HashMap<String, Domain>,
    rules: Vec<Rule>,
}

impl Policy {
    /// Every rule, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `domain` is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The configured domains, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut d: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        d.sort_unstable();
        d
    }
}
