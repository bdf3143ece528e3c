//! Windows: a length in the reference's units (`s`, `m`, `h`, `d`, `w`, `M`, `Y`) and an alignment.
//!
//! Guarantees:
//! - [`Window::epoch_at`] is a pure function of the window and the time: every node computes the same epoch for
//!   the same instant, so all nodes roll over on the same boundary without coordinating.
//! - `start_ms(epoch) <= t < start_ms(epoch + 1)` for every `t` with `epoch_at(t) == epoch`.
//! - Calendar windows follow UTC: a day starts at 00:00, an ISO week on Monday, a month on the 1st and a year on
//!   1 January (leap years included). `2M` groups months in pairs counted from January 1970.

use std::fmt;

const MS_PER_SECOND: u64 = 1_000;
const MS_PER_DAY: u64 = 86_400_000;
/// 1970-01-01 was a Thursday; ISO weeks start on Monday, 3 days earlier.
const DAYS_FROM_MONDAY_TO_EPOCH: u64 = 3;
/// Calendar boundaries past this year are reported as `u64::MAX` ms (beyond what a `u64` of milliseconds holds).
const MAX_CALENDAR_YEAR: u64 = 500_000_000;
/// Upper bound on the count of a window (`10000s`, `12M`, …), so every boundary fits in `u64` milliseconds.
pub const MAX_WINDOW_COUNT: u32 = 100_000;

/// The unit of a window length, as written in the reference (`s`, `m`, `h`, `d`, `w`, `M`, `Y`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `s`: one second.
    Second,
    /// `m`: one minute.
    Minute,
    /// `h`: one hour.
    Hour,
    /// `d`: one UTC day.
    Day,
    /// `w`: one week (an ISO week, Monday to Sunday, when calendar aligned).
    Week,
    /// `M`: one calendar month (calendar alignment only).
    Month,
    /// `Y`: one calendar year (calendar alignment only).
    Year,
}

impl Unit {
    /// The suffix used in window strings.
    pub fn suffix(self) -> char {
        match self {
            Unit::Second => 's',
            Unit::Minute => 'm',
            Unit::Hour => 'h',
            Unit::Day => 'd',
            Unit::Week => 'w',
            Unit::Month => 'M',
            Unit::Year => 'Y',
        }
    }

    fn from_suffix(c: &str) -> Option<Unit> {
        Some(match c {
            "s" => Unit::Second,
            "m" => Unit::Minute,
            "h" => Unit::Hour,
            "d" => Unit::Day,
            "w" => Unit::Week,
            "M" => Unit::Month,
            "Y" => Unit::Year,
            _ => return None,
        })
    }

    /// Length in seconds for units of fixed length; `None` for months and years.
    fn fixed_seconds(self) -> Option<u64> {
        Some(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month | Unit::Year => return None,
        })
    }
}

/// How a window's boundaries are placed in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alignment {
    /// Window index = floor(unix_time / length). The default for `s`, `m` and `h`.
    Fixed,
    /// UTC day, ISO week starting Monday, month, year. The default for `d`, `w`, `M` and `Y`.
    Calendar,
}

/// A window: `count` × `unit`, with an alignment. Cheap to copy; usable as a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    count: u32,
    unit: Unit,
    alignment: Alignment,
}

/// Why a window could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The text is not `<count><unit>`.
    #[error(
        "invalid window {text:?}: expected <count><unit> with unit one of s, m, h, d, w, M, Y (e.g. \"1m\", \"30s\", \"1M\")"
    )]
    Syntax {
        /// The text given.
        text: String,
    },
    /// The count is zero or above [`MAX_WINDOW_COUNT`].
    #[error("invalid window count {count}: must be 1..={MAX_WINDOW_COUNT}")]
    Count {
        /// The count given.
        count: u64,
    },
    /// Months and years have no fixed length.
    #[error(
        "a window in {unit:?}s must be calendar aligned: months and years have no fixed length"
    )]
    FixedCalendarUnit {
        /// The unit given.
        unit: Unit,
    },
}

impl Window {
    /// One minute, fixed alignment.
    pub const MINUTE: Window = Window {
        count: 1,
        unit: Unit::Minute,
        alignment: Alignment::Fixed,
    };

    /// A window of `count` units with the unit's default alignment (fixed for `s`/`m`/`h`, calendar otherwise).
    pub fn new(count: u32, unit: Unit) -> Result<Window, WindowError> {
        let alignment = match unit {
            Unit::Second | Unit::Minute | Unit::Hour => Alignment::Fixed,
            _ => Alignment::Calendar,
        };
        Window::with_alignment(count, unit, alignment)
    }

    /// A window with an explicit alignment. Months and years must be calendar aligned.
    pub fn with_alignment(
        count: u32,
        unit: Unit,
        alignment: Alignment,
    ) -> Result<Window, WindowError> {
        if count == 0 || count > MAX_WINDOW_COUNT {
            return Err(WindowError::Count {
                count: count.into(),
            });
        }
        if alignment == Alignment::Fixed && unit.fixed_seconds().is_none() {
            return Err(WindowError::FixedCalendarUnit { unit });
        }
        // Seconds, minutes and hours are the same whether "calendar" or fixed: normalise so equal windows hash
        // equal.
        let alignment = match unit {
            Unit::Second | Unit::Minute | Unit::Hour => Alignment::Fixed,
            _ => alignment,
        };
        Ok(Window {
            count,
            unit,
            alignment,
        })
    }

    /// Parses `"<count><unit>"`, e.g. `"1m"`, `"30s"`, `"1d"`, `"1M"`, with the unit's default alignment.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let syntax = || WindowError::Syntax {
            text: text.to_string(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        let (digits, suffix) = text.split_at(split);
        if digits.is_empty() {
            return Err(syntax());
        }
        let unit = Unit::from_suffix(suffix).ok_or_else(syntax)?;
        let count: u64 = digits.parse().map_err(|_| syntax())?;
        let count = u32::try_from(count).map_err(|_| WindowError::Count { count })?;
        Window::new(count, unit)
    }

    /// The count of units.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The unit.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The alignment.
    pub fn alignment(&self) -> Alignment {
        self.alignment
    }

    /// The length in milliseconds of a fixed-aligned window (every epoch equally long), `None` for calendar
    /// windows.
    pub fn fixed_len_ms(&self) -> Option<u64> {
        match self.alignment {
            Alignment::Fixed => Some(self.units_len_ms()),
            Alignment::Calendar => None,
        }
    }

    /// The length in milliseconds of one window whose unit has a fixed length (seconds to weeks, fixed or
    /// calendar-aligned); `None` for months and years, whose length varies.
    pub fn nominal_len_ms(&self) -> Option<u64> {
        self.unit.fixed_seconds().map(|s| {
            s.saturating_mul(u64::from(self.count))
                .saturating_mul(MS_PER_SECOND)
        })
    }

    /// `count` units of a fixed-length unit, in ms. `fixed_seconds` is Some for every unit this is called for
    /// (fixed-aligned windows, checked at construction, and the calendar arms for s/m/h).
    #[inline]
    fn units_len_ms(&self) -> u64 {
        self.unit.fixed_seconds().unwrap_or(1) * u64::from(self.count) * MS_PER_SECOND
    }

    /// The epoch (window index) containing `unix_ms`.
    #[inline]
    pub fn epoch_at(&self, unix_ms: u64) -> u64 {
        let count = u64::from(self.count);
        match (self.alignment, self.unit) {
            (Alignment::Fixed, _) => unix_ms / self.units_len_ms(),
            (Alignment::Calendar, Unit::Day) => unix_ms / MS_PER_DAY / count,
            (Alignment::Calendar, Unit::Week) => {
                (unix_ms / MS_PER_DAY + DAYS_FROM_MONDAY_TO_EPOCH) / 7 / count
            }
            (Alignment::Calendar, Unit::Month) => {
                let (year, month, _) = civil_from_days(unix_ms / MS_PER_DAY);
                ((year - 1970) * 12 + (month - 1)) / count
            }
            (Alignment::Calendar, Unit::Year) => {
                let (year, _, _) = civil_from_days(unix_ms / MS_PER_DAY);
                (year - 1970) / count
            }
            // Seconds, minutes and hours are normalised to Fixed at construction.
            (Alignment::Calendar, _) => unix_ms / self.units_len_ms(),
        }
    }

    /// The first millisecond of `epoch` (saturating at 0 for the ISO week that began before 1970).
    #[inline]
    pub fn start_ms(&self, epoch: u64) -> u64 {
        let count = u64::from(self.count);
        match (self.alignment, self.unit) {
            (Alignment::Calendar, Unit::Day) => {
                epoch.saturating_mul(count).saturating_mul(MS_PER_DAY)
            }
            (Alignment::Calendar, Unit::Week) => epoch
                .saturating_mul(count)
                .saturating_mul(7)
                .saturating_sub(DAYS_FROM_MONDAY_TO_EPOCH)
                .saturating_mul(MS_PER_DAY),
            (Alignment::Calendar, Unit::Month) => {
                let months = epoch.saturating_mul(count);
                let year = 1970u64.saturating_add(months / 12);
                if year > MAX_CALENDAR_YEAR {
                    return u64::MAX;
                }
                days_from_civil(year, months % 12 + 1, 1).saturating_mul(MS_PER_DAY)
            }
            (Alignment::Calendar, Unit::Year) => {
                let year = 1970u64.saturating_add(epoch.saturating_mul(count));
                if year > MAX_CALENDAR_YEAR {
                    return u64::MAX;
                }
                days_from_civil(year, 1, 1).saturating_mul(MS_PER_DAY)
            }
            (_, _) => epoch.saturating_mul(self.units_len_ms()),
        }
    }

    /// The first millisecond after `epoch`: when a window that is full now resets.
    #[inline]
    pub fn end_ms(&self, epoch: u64) -> u64 {
        self.start_ms(epoch.saturating_add(1))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())?;
        let default_alignment = match self.unit {
            Unit::Second | Unit::Minute | Unit::Hour => Alignment::Fixed,
            _ => Alignment::Calendar,
        };
        if self.alignment != default_alignment {
            write!(f, " (fixed)")?;
        }
        Ok(())
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian, for days ≥ 0.
/// Howard Hinnant's `civil_from_days`; divisions are by constants.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year ≥ 1970, month 1..=12, day) → days since 1970-01-01. Inverse of [`civil_from_days`].
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time, for readable tests.
    fn utc(year: u64, month: u64, day: u64, h: u64, m: u64, s: u64) -> u64 {
        (days_from_civil(year, month, day) * 86_400 + h * 3_600 + m * 60 + s) * 1_000
    }

    #[test]
    fn parse_accepts_reference_units_and_rejects_garbage() {
        for (text, count, unit) in [
            ("1s", 1, Unit::Second),
            ("30s", 30, Unit::Second),
            ("1m", 1, Unit::Minute),
            ("12h", 12, Unit::Hour),
            ("1d", 1, Unit::Day),
            ("1w", 1, Unit::Week),
            ("1M", 1, Unit::Month),
            ("1Y", 1, Unit::Year),
        ] {
            let w = Window::parse(text).unwrap();
            assert_eq!((w.count(), w.unit()), (count, unit), "{text}");
            assert_eq!(w.to_string(), text);
        }
        for bad in [
            "",
            "m",
            "0s",
            "1",
            "1x",
            "-1s",
            "1.5m",
            "1 m",
            "99999999999s",
            "1ms",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(
            Window::with_alignment(1, Unit::Month, Alignment::Fixed),
            Err(WindowError::FixedCalendarUnit { .. })
        ));
    }

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (0..146_097 * 2).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn fixed_window_boundaries() {
        let w = Window::parse("1m").unwrap();
        let t = utc(2026, 11, 24, 10, 15, 59) + 999;
        let e = w.epoch_at(t);
        assert_eq!(w.start_ms(e), utc(2026, 11, 24, 10, 15, 0));
        assert_eq!(w.epoch_at(t + 1), e + 1);
        assert_eq!(w.end_ms(e), t + 1);
        let w30 = Window::parse("30s").unwrap();
        assert_eq!(w30.epoch_at(29_999), 0);
        assert_eq!(w30.epoch_at(30_000), 1);
    }

    #[test]
    fn day_and_iso_week_boundaries() {
        let day = Window::parse("1d").unwrap();
        let e = day.epoch_at(utc(2026, 11, 24, 23, 59, 59));
        assert_eq!(day.end_ms(e), utc(2026, 11, 25, 0, 0, 0));
        let week = Window::parse("1w").unwrap();
        // 2026-11-23 is a Monday.
        let monday = utc(2026, 11, 23, 0, 0, 0);
        let e = week.epoch_at(monday);
        assert_eq!(week.start_ms(e), monday);
        assert_eq!(
            week.epoch_at(monday - 1),
            e - 1,
            "Sunday night belongs to the previous week"
        );
        assert_eq!(week.epoch_at(utc(2026, 11, 29, 23, 59, 59)), e);
        assert_eq!(week.end_ms(e), utc(2026, 11, 30, 0, 0, 0));
        // The week containing 1970-01-01 starts on Monday 1969-12-29, saturated to 0.
        assert_eq!(week.epoch_at(0), 0);
        assert_eq!(week.start_ms(0), 0);
        assert_eq!(week.start_ms(1), utc(1970, 1, 5, 0, 0, 0));
    }

    #[test]
    fn month_boundaries_including_leap_february() {
        let month = Window::parse("1M").unwrap();
        let feb_2024 = month.epoch_at(utc(2024, 2, 10, 12, 0, 0));
        assert_eq!(month.start_ms(feb_2024), utc(2024, 2, 1, 0, 0, 0));
        assert_eq!(month.end_ms(feb_2024), utc(2024, 3, 1, 0, 0, 0));
        assert_eq!(
            month.epoch_at(utc(2024, 2, 29, 23, 59, 59)),
            feb_2024,
            "29 Feb 2024 exists"
        );
        let feb_2023 = month.epoch_at(utc(2023, 2, 28, 23, 59, 59));
        assert_eq!(
            month.epoch_at(utc(2023, 3, 1, 0, 0, 0)),
            feb_2023 + 1,
            "2023 has no 29 Feb"
        );
        // Century rules: 2100 is not a leap year, 2000 is.
        let feb_2100 = month.epoch_at(utc(2100, 2, 28, 0, 0, 0));
        assert_eq!(month.end_ms(feb_2100), utc(2100, 3, 1, 0, 0, 0));
        let feb_2000 = month.epoch_at(utc(2000, 2, 1, 0, 0, 0));
        assert_eq!(
            month.end_ms(feb_2000) - month.start_ms(feb_2000),
            29 * MS_PER_DAY
        );
        // December rolls into January of the next year.
        let dec = month.epoch_at(utc(2026, 12, 31, 23, 59, 59));
        assert_eq!(month.end_ms(dec), utc(2027, 1, 1, 0, 0, 0));
        // Two-month windows pair months from January 1970.
        let two = Window::parse("2M").unwrap();
        assert_eq!(
            two.epoch_at(utc(2026, 1, 15, 0, 0, 0)),
            two.epoch_at(utc(2026, 2, 28, 0, 0, 0))
        );
        assert_ne!(
            two.epoch_at(utc(2026, 2, 28, 0, 0, 0)),
            two.epoch_at(utc(2026, 3, 1, 0, 0, 0))
        );
    }

    #[test]
    fn year_boundaries_with_leap_years() {
        let year = Window::parse("1Y").unwrap();
        let y2024 = year.epoch_at(utc(2024, 12, 31, 23, 59, 59));
        assert_eq!(year.start_ms(y2024), utc(2024, 1, 1, 0, 0, 0));
        assert_eq!(year.end_ms(y2024) - year.start_ms(y2024), 366 * MS_PER_DAY);
        assert_eq!(year.epoch_at(utc(2025, 1, 1, 0, 0, 0)), y2024 + 1);
    }

    #[test]
    fn every_instant_lies_inside_its_epoch() {
        let windows = [
            "1s", "7s", "1m", "1h", "1d", "3d", "1w", "2w", "1M", "3M", "1Y",
        ];
        let mut t = 0u64;
        while t < utc(2200, 1, 1, 0, 0, 0) {
            for text in windows {
                let w = Window::parse(text).unwrap();
                let e = w.epoch_at(t);
                assert!(
                    w.start_ms(e) <= t && t < w.end_ms(e),
                    "{text} at {t}: epoch {e}"
                );
            }
            t += 7_777_777_777; // about 90 days, irregular so boundaries are crossed at odd offsets
        }
    }
}
