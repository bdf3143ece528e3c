//! Durations as the reference writes them: `"500ms"`, `"10s"`, `"1m"`, `"1h"`.
//!
//! Grammar: one or more `<whole number><unit>` parts with units `h`, `m`, `s`, `ms`, largest first and each at
//! most once (`"1m30s"` is accepted, as Go's `time.ParseDuration` would). No sign, no spaces, no fraction. The
//! resolution is one millisecond. Whether zero is allowed is decided by each field (see its range).

use std::fmt;
use std::str::FromStr;

use super::error::DurationError;

/// A duration from a config file, with millisecond resolution.
///
/// It displays and serializes as its canonical string: the largest unit that expresses it exactly (`10000 ms`
/// → `"10s"`, `90 s` → `"90s"`, `1500 ms` → `"1500ms"`), which parses back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration {
    millis: u64,
}

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

impl ConfigDuration {
    /// Zero.
    pub const ZERO: ConfigDuration = ConfigDuration { millis: 0 };

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// A duration of `secs` seconds (saturating at `u64::MAX` milliseconds).
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            millis: secs.saturating_mul(1_000),
        }
    }

    /// Parses a duration string; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        // Index in UNITS of the last unit seen; the next one must come strictly later (smaller).
        let mut last_unit: Option<usize> = None;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(DurationError::Malformed);
            }
            let digits = &text[start..i];
            if i < bytes.len() && bytes[i] == b'.' {
                return Err(DurationError::Fraction);
            }
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &text[unit_start..i];
            if unit.is_empty() {
                if i == bytes.len() {
                    return Err(DurationError::MissingUnit {
                        number: digits.to_owned(),
                    });
                }
                return Err(DurationError::Malformed);
            }
            let Some(unit_index) = UNITS.iter().position(|(name, _)| *name == unit) else {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_owned(),
                });
            };
            if last_unit.is_some_and(|last| unit_index <= last) {
                return Err(DurationError::UnitOrder);
            }
            last_unit = Some(unit_index);
            let number: u64 = digits.parse().map_err(|_| DurationError::Overflow)?;
            let part = number
                .checked_mul(UNITS[unit_index].1)
                .ok_or(DurationError::Overflow)?;
            total = total.checked_add(part).ok_or(DurationError::Overflow)?;
        }
        Ok(Self { millis: total })
    }

    /// Whole milliseconds.
    pub const fn as_millis(&self) -> u64 {
        self.millis
    }

    /// As a [`std::time::Duration`].
    pub const fn as_std(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }

    /// `true` for a zero duration.
    pub const fn is_zero(&self) -> bool {
        self.millis == 0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        for (name, factor) in UNITS {
            if self.millis.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.millis / factor);
            }
        }
        // Unreachable in practice: the last unit has factor 1.
        write!(f, "{}ms", self.millis)
    }
}

impl FromStr for ConfigDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<ConfigDuration> for std::time::Duration {
    fn from(d: ConfigDuration) -> Self {
        d.as_std()
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("duration \"{text}\": {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u64 {
        match ConfigDuration::parse(text) {
            Ok(d) => d.as_millis(),
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn err(text: &str) -> DurationError {
        match ConfigDuration::parse(text) {
            Ok(d) => panic!("{text:?} should be refused, got {d}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms("0ms"), 0);
        assert_eq!(ms("007s"), 7_000);
    }

    #[test]
    fn parses_compound_largest_first() {
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1h1m1s1ms"), 3_661_001);
        assert_eq!(ms("2s500ms"), 2_500);
        assert_eq!(err("30s1m"), DurationError::UnitOrder);
        assert_eq!(err("1s1s"), DurationError::UnitOrder);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(err(""), DurationError::Empty);
        assert_eq!(
            err("10"),
            DurationError::MissingUnit {
                number: "10".into()
            }
        );
        assert_eq!(err("10x"), DurationError::UnknownUnit { unit: "x".into() });
        assert_eq!(err("10d"), DurationError::UnknownUnit { unit: "d".into() });
        assert_eq!(
            err("10us"),
            DurationError::UnknownUnit { unit: "us".into() }
        );
        assert_eq!(err("10S"), DurationError::UnknownUnit { unit: "S".into() });
        assert_eq!(err("1.5s"), DurationError::Fraction);
        assert_eq!(err("-1s"), DurationError::Malformed);
        assert_eq!(err("+1s"), DurationError::Malformed);
        assert_eq!(err(" 1s"), DurationError::Malformed);
        assert_eq!(err("1s "), DurationError::Malformed);
        assert_eq!(err("1 s"), DurationError::Malformed);
        assert_eq!(err("s"), DurationError::Malformed);
        assert_eq!(err("ms"), DurationError::Malformed);
        assert_eq!(err("1s-"), DurationError::Malformed);
        assert_eq!(err("１s"), DurationError::Malformed); // full-width digit
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(err("99999999999999999999999ms"), DurationError::Overflow);
        assert_eq!(err("18446744073709551615s"), DurationError::Overflow);
        assert_eq!(err("5124095576030432h"), DurationError::Overflow);
        // u64::MAX milliseconds is the largest value, and fits.
        assert_eq!(ms("18446744073709551615ms"), u64::MAX);
        assert_eq!(err("18446744073709551615ms1ms"), DurationError::UnitOrder);
        // Each part fits; their sum does not.
        assert_eq!(
            ms("5124095576030h25m"),
            5_124_095_576_030 * 3_600_000 + 25 * 60_000
        );
        assert_eq!(err("5124095576030h26m"), DurationError::Overflow);
    }

    #[test]
    fn canonical_display_round_trips() {
        for (text, canonical) in [
            ("10s", "10s"),
            ("10000ms", "10s"),
            ("60s", "1m"),
            ("90s", "90s"),
            ("1m30s", "90s"),
            ("120m", "2h"),
            ("1500ms", "1500ms"),
            ("5ms", "5ms"),
            ("0ms", "0s"),
        ] {
            let d = ConfigDuration::parse(text).unwrap_or_default();
            assert_eq!(d.to_string(), canonical, "{text}");
            assert_eq!(ConfigDuration::parse(canonical), Ok(d), "{canonical}");
        }
    }

    #[test]
    fn converts_to_std() {
        assert_eq!(
            ConfigDuration::from_millis(1500).as_std(),
            std::time::Duration::from_millis(1500)
        );
        let std: std::time::Duration = ConfigDuration::from_secs(10).into();
        assert_eq!(std, std::time::Duration::from_secs(10));
        assert_eq!(ConfigDuration::from_secs(u64::MAX).as_millis(), u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back_to_the_same_value(millis in proptest::prelude::any::<u64>()) {
            let d = ConfigDuration::from_millis(millis);
            proptest::prop_assert_eq!(ConfigDuration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in "[0-9a-z.+ -]{0,24}") {
            let _ = ConfigDuration::parse(&text);
        }
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let d = ConfigDuration::from_millis(60_000);
        assert_eq!(serde_json::to_string(&d).ok().as_deref(), Some("\"1m\""));
        let back: Result<ConfigDuration, _> = serde_json::from_str("\"1m\"");
        assert_eq!(back.ok(), Some(d));
        assert!(serde_json::from_str::<ConfigDuration>("\"1x\"").is_err());
    }
}
