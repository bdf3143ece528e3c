//! Windows: a length in the reference's units (`s`, `m`, `h`, `d`, `w`, `M`, `Y`) and an alignment.
//!
//! Guarantees:
//! - [`Window::epoch_at`] is a pure function of the window and the time: every node computes the same epoch for
//!   the same instant, so all nodes roll over on the same boundary without coordinating.
//! - `start_ms(epoch) <= t < start_ms(epoch + 1)` for every `t` with `epoch_at(t) == epoch` (for every `t` a
//!   window's boundaries can be placed at in `u64` milliseconds: up to the year 500 million for calendar
//!   windows, `u64::MAX` minus one window for the others).
//! - Calendar windows follow UTC: a day starts at 00:00, an ISO week on Monday, a month on the 1st and a year on
//!   1 January (leap years included). `2M` groups months in pairs counted from January 1970.
//! - Anchored windows ([`Alignment::Anchored`], text `30d@2026-12-01T10:00:00Z`) have their boundaries at
//!   `anchor + k × length` for every integer `k`, before the anchor as well as after it. Only the anchor's phase
//!   (`anchor mod length`) places those boundaries, so a window keeps the phase, never the anchor: two anchors with
//!   the same phase make the same window (equal, same hash), and it displays its phase as the anchor
//!   (`30d@1970-01-12T10:00:00Z`), which parses back to the same window. Months and years have no fixed length
//!   and cannot be anchored.
//! - A [`Window`] is `Copy` and 8 bytes.

use crate::UnixMs;
use std::fmt;

const MS_PER_SECOND: u64 = 1_000;
const MS_PER_DAY: u64 = 86_400_000;
/// 1970-01-01 was a Thursday; ISO weeks start on Monday, 3 days earlier.
const DAYS_FROM_MONDAY_TO_EPOCH: u64 = 3;
/// Calendar boundaries past this year are reported as `u64::MAX` ms (beyond what a `u64` of milliseconds holds).
const MAX_CALENDAR_YEAR: u64 = 500_000_000;
/// Upper bound on the count of a window (`10000s`, `12M`, …), so every boundary fits in `u64` milliseconds.
pub const MAX_WINDOW_COUNT: u32 = 100_000;
/// Longest anchored window, in ms: 2^42 ms, about 139 years (`50000d` is allowed, `10000w` is not). The phase
/// of an anchored window is kept in 42 bits of the 8-byte [`Window`].
pub const MAX_ANCHORED_LEN_MS: u64 = 1 << OFFSET_BITS;

// The packed form of a window: count in bits 0..17, unit in 17..20, alignment kind in 20..22, and for an
// anchored window the epoch offset (`(length - phase) % length`, in ms) in 22..64.
const COUNT_BITS: u32 = 17;
const UNIT_SHIFT: u32 = COUNT_BITS;
const KIND_SHIFT: u32 = UNIT_SHIFT + 3;
const OFFSET_SHIFT: u32 = KIND_SHIFT + 2;
const OFFSET_BITS: u32 = 64 - OFFSET_SHIFT;
const KIND_FIXED: u64 = 0;
const KIND_CALENDAR: u64 = 1;
const KIND_ANCHORED: u64 = 2;

const _: () = assert!(MAX_WINDOW_COUNT < 1 << COUNT_BITS);
const _: () = assert!(std::mem::size_of::<Window>() == 8);

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

    /// The unit's code, in the packed window and on the wire: 0 = s, 1 = m, 2 = h, 3 = d, 4 = w, 5 = M, 6 = Y.
    pub(crate) const fn code(self) -> u8 {
        self as u8
    }

    /// The unit of a [`Unit::code`]; `None` for any other number.
    pub(crate) fn from_code(code: u8) -> Option<Unit> {
        Some(match code {
            0 => Unit::Second,
            1 => Unit::Minute,
            2 => Unit::Hour,
            3 => Unit::Day,
            4 => Unit::Week,
            5 => Unit::Month,
            6 => Unit::Year,
            _ => return None,
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
    /// Boundaries at `anchor + k × length` for every integer `k`: a budget that resets relative to when it
    /// started. Only the anchor's phase matters: [`Window::with_alignment`] takes any anchor as `phase_ms`
    /// (Unix ms) and keeps `phase_ms % length`; [`Window::alignment`] returns that canonical phase, below the
    /// length. Units of fixed length only (`s` to `w`), at most [`MAX_ANCHORED_LEN_MS`] long.
    Anchored {
        /// The anchor's phase in ms: a boundary lies at every `phase_ms + k × length`.
        phase_ms: u64,
    },
}

/// A window: `count` × `unit`, with an alignment. Cheap to copy (8 bytes); usable as a map key. Windows are
/// ordered by count, unit, then alignment (fixed, calendar, anchored by phase).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// See the packed layout above: canonical, so equal windows have equal bits.
    bits: u64,
}

/// Why a window could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The text is not `<count><unit>` or `<count><unit>@<anchor>`.
    #[error(
        "invalid window {text:?}: expected <count><unit> with unit one of s, m, h, d, w, M, Y (e.g. \"1m\", \"30s\", \"1M\"), optionally @<anchor> (\"30d@2026-12-01T10:00:00Z\")"
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
    /// Months and years have no fixed length, so they cannot be anchored.
    #[error(
        "a window in {unit:?}s cannot be anchored: months and years have no fixed length (anchor a window in s, m, h, d or w, e.g. \"30d@2026-12-01T10:00:00Z\")"
    )]
    AnchoredCalendarUnit {
        /// The unit given.
        unit: Unit,
    },
    /// An anchored window longer than [`MAX_ANCHORED_LEN_MS`].
    #[error(
        "an anchored window of {len_ms} ms is too long: at most {MAX_ANCHORED_LEN_MS} ms (about 139 years)"
    )]
    AnchoredTooLong {
        /// The window's length.
        len_ms: u64,
    },
    /// The anchor is neither an RFC 3339 instant nor Unix milliseconds.
    #[error(
        "invalid anchor {text:?}: expected an RFC 3339 instant from 1970 to 9999 (\"2026-12-01T10:00:00Z\", \"2026-12-01T11:00:00+01:00\") or Unix milliseconds"
    )]
    Anchor {
        /// The anchor text given.
        text: String,
    },
}

impl Window {
    /// One minute, fixed alignment.
    pub const MINUTE: Window = Window::pack(1, Unit::Minute, KIND_FIXED, 0);

    const fn pack(count: u32, unit: Unit, kind: u64, offset_ms: u64) -> Window {
        Window {
            bits: count as u64
                | (unit.code() as u64) << UNIT_SHIFT
                | kind << KIND_SHIFT
                | offset_ms << OFFSET_SHIFT,
        }
    }

    /// A window of `count` units with the unit's default alignment (fixed for `s`/`m`/`h`, calendar otherwise).
    pub fn new(count: u32, unit: Unit) -> Result<Window, WindowError> {
        let alignment = match unit {
            Unit::Second | Unit::Minute | Unit::Hour => Alignment::Fixed,
            _ => Alignment::Calendar,
        };
        Window::with_alignment(count, unit, alignment)
    }

    /// A window of `count` units anchored at `anchor_unix_ms`: its boundaries lie at `anchor_unix_ms + k ×
    /// length` for every integer `k`. Only the anchor's phase is kept (see [`Alignment::Anchored`]).
    pub fn anchored(count: u32, unit: Unit, anchor_unix_ms: u64) -> Result<Window, WindowError> {
        Window::with_alignment(
            count,
            unit,
            Alignment::Anchored {
                phase_ms: anchor_unix_ms,
            },
        )
    }

    /// A window with an explicit alignment. Months and years must be calendar aligned; an anchored window's
    /// `phase_ms` may be any anchor (Unix ms): it is reduced to its phase.
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
        let len_ms = unit
            .fixed_seconds()
            .map(|s| s * u64::from(count) * MS_PER_SECOND);
        match alignment {
            Alignment::Fixed if len_ms.is_none() => Err(WindowError::FixedCalendarUnit { unit }),
            Alignment::Anchored { phase_ms } => {
                let len_ms = len_ms.ok_or(WindowError::AnchoredCalendarUnit { unit })?;
                if len_ms > MAX_ANCHORED_LEN_MS {
                    return Err(WindowError::AnchoredTooLong { len_ms });
                }
                let offset = (len_ms - phase_ms % len_ms) % len_ms;
                Ok(Window::pack(count, unit, KIND_ANCHORED, offset))
            }
            // Seconds, minutes and hours are the same whether "calendar" or fixed: normalise so equal windows
            // hash equal.
            Alignment::Fixed | Alignment::Calendar => {
                let kind = match (alignment, unit) {
                    (_, Unit::Second | Unit::Minute | Unit::Hour) | (Alignment::Fixed, _) => {
                        KIND_FIXED
                    }
                    _ => KIND_CALENDAR,
                };
                Ok(Window::pack(count, unit, kind, 0))
            }
        }
    }

    /// Parses `"<count><unit>"`, e.g. `"1m"`, `"30s"`, `"1d"`, `"1M"`, with the unit's default alignment, or
    /// `"<count><unit>@<anchor>"`, an anchored window: `"30d@2026-12-01T10:00:00Z"` (RFC 3339, `Z` or an
    /// offset, fractions of a second to the ms) or `"1h@1796119200000"` (Unix ms). `"<count><unit> (fixed)"`
    /// is a day or week window of fixed length counted from the Unix epoch instead of the calendar (what
    /// `Display` shows for one, so every window's text parses back to it; months and years have no fixed length
    /// and refuse it).
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let syntax = || WindowError::Syntax {
            text: text.to_string(),
        };
        if let Some(length) = text.strip_suffix(FIXED_SUFFIX) {
            if length.contains('@') {
                return Err(syntax());
            }
            let window = Window::parse(length)?;
            return Window::with_alignment(window.count(), window.unit(), Alignment::Fixed);
        }
        let (length, anchor) = match text.split_once('@') {
            Some((length, anchor)) => (length, Some(anchor)),
            None => (text, None),
        };
        let split = length
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        let (digits, suffix) = length.split_at(split);
        if digits.is_empty() {
            return Err(syntax());
        }
        let unit = Unit::from_suffix(suffix).ok_or_else(syntax)?;
        let count: u64 = digits.parse().map_err(|_| syntax())?;
        let count = u32::try_from(count).map_err(|_| WindowError::Count { count })?;
        match anchor {
            None => Window::new(count, unit),
            Some(anchor) => Window::anchored(count, unit, parse_instant(anchor)?),
        }
    }

    /// The count of units.
    #[inline]
    pub fn count(&self) -> u32 {
        (self.bits & ((1 << COUNT_BITS) - 1)) as u32
    }

    /// The unit.
    #[inline]
    pub fn unit(&self) -> Unit {
        // Only codes written by `Window`'s constructors are ever decoded.
        Unit::from_code(((self.bits >> UNIT_SHIFT) & 0b111) as u8).unwrap_or(Unit::Year)
    }

    #[inline]
    fn kind(&self) -> u64 {
        (self.bits >> KIND_SHIFT) & 0b11
    }

    /// The alignment (an anchored window's canonical phase, below its length).
    pub fn alignment(&self) -> Alignment {
        match self.kind() {
            KIND_FIXED => Alignment::Fixed,
            KIND_CALENDAR => Alignment::Calendar,
            _ => {
                let len = self.units_len_ms();
                Alignment::Anchored {
                    phase_ms: (len - self.epoch_offset_ms()) % len,
                }
            }
        }
    }

    /// What [`Window::epoch_at`] adds to the time before dividing by the length of a window of fixed length:
    /// `(length - phase) % length` for an anchored window, 0 for every other window. So an anchored window's
    /// epoch `e` starts at `e × length - offset` (epoch 0 is cut at the Unix epoch), and one anchored at a
    /// multiple of its length has the epochs of the fixed window of that length.
    #[inline(always)]
    pub fn epoch_offset_ms(&self) -> u64 {
        self.bits >> OFFSET_SHIFT
    }

    /// The packed form, a canonical 64-bit code of the window (equal windows, equal codes; distinct windows,
    /// distinct codes), for hashing.
    #[inline(always)]
    pub(crate) fn code(&self) -> u64 {
        self.bits
    }

    /// The length in milliseconds of a window whose epochs are all equally long (fixed and anchored windows),
    /// `None` for calendar windows. Epoch `e` of such a window starts at `e × length -`
    /// [`Window::epoch_offset_ms`] (0 for the first epoch of an anchored window, cut at the Unix epoch).
    pub fn fixed_len_ms(&self) -> Option<u64> {
        match self.kind() {
            KIND_CALENDAR => None,
            _ => Some(self.units_len_ms()),
        }
    }

    /// The length in milliseconds of one window whose unit has a fixed length (seconds to weeks, fixed,
    /// calendar-aligned or anchored); `None` for months and years, whose length varies.
    pub fn nominal_len_ms(&self) -> Option<u64> {
        self.unit().fixed_seconds().map(|s| {
            s.saturating_mul(u64::from(self.count()))
                .saturating_mul(MS_PER_SECOND)
        })
    }

    /// `count` units of a fixed-length unit, in ms. `fixed_seconds` is Some for every unit this is called for
    /// (fixed and anchored windows, checked at construction, and the calendar arms for s/m/h).
    #[inline]
    fn units_len_ms(&self) -> u64 {
        self.unit().fixed_seconds().unwrap_or(1) * u64::from(self.count()) * MS_PER_SECOND
    }

    /// The epoch (window index) containing the time `at`.
    #[inline]
    pub fn epoch_at(&self, at: UnixMs) -> u64 {
        let unix_ms = at.get();
        let count = u64::from(self.count());
        match (self.kind(), self.unit()) {
            (KIND_FIXED, _) => unix_ms / self.units_len_ms(),
            (KIND_ANCHORED, _) => {
                unix_ms.wrapping_add(self.epoch_offset_ms()) / self.units_len_ms()
            }
            (_, Unit::Day) => unix_ms / MS_PER_DAY / count,
            (_, Unit::Week) => (unix_ms / MS_PER_DAY + DAYS_FROM_MONDAY_TO_EPOCH) / 7 / count,
            (_, Unit::Month) => {
                let (year, month, _) = civil_from_days(unix_ms / MS_PER_DAY);
                ((year - 1970) * 12 + (month - 1)) / count
            }
            (_, Unit::Year) => {
                let (year, _, _) = civil_from_days(unix_ms / MS_PER_DAY);
                (year - 1970) / count
            }
            // Seconds, minutes and hours are normalised to Fixed at construction.
            (_, _) => unix_ms / self.units_len_ms(),
        }
    }

    /// The first millisecond of `epoch` (saturating at 0 for the ISO week that began before 1970 and the first
    /// epoch of an anchored window).
    #[inline]
    pub fn start_ms(&self, epoch: u64) -> u64 {
        let count = u64::from(self.count());
        match (self.kind(), self.unit()) {
            (KIND_CALENDAR, Unit::Day) => epoch.saturating_mul(count).saturating_mul(MS_PER_DAY),
            (KIND_CALENDAR, Unit::Week) => epoch
                .saturating_mul(count)
                .saturating_mul(7)
                .saturating_sub(DAYS_FROM_MONDAY_TO_EPOCH)
                .saturating_mul(MS_PER_DAY),
            (KIND_CALENDAR, Unit::Month) => {
                let months = epoch.saturating_mul(count);
                let year = 1970u64.saturating_add(months / 12);
                if year > MAX_CALENDAR_YEAR {
                    return u64::MAX;
                }
                days_from_civil(year, months % 12 + 1, 1).saturating_mul(MS_PER_DAY)
            }
            (KIND_CALENDAR, Unit::Year) => {
                let year = 1970u64.saturating_add(epoch.saturating_mul(count));
                if year > MAX_CALENDAR_YEAR {
                    return u64::MAX;
                }
                days_from_civil(year, 1, 1).saturating_mul(MS_PER_DAY)
            }
            (KIND_ANCHORED, _) => epoch
                .saturating_mul(self.units_len_ms())
                .saturating_sub(self.epoch_offset_ms()),
            (_, _) => epoch.saturating_mul(self.units_len_ms()),
        }
    }

    /// The first millisecond after `epoch`: when a window that is full now resets.
    #[inline]
    pub fn end_ms(&self, epoch: u64) -> u64 {
        self.start_ms(epoch.saturating_add(1))
    }
}

impl PartialOrd for Window {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Window {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.count(), self.unit(), self.alignment()).cmp(&(
            other.count(),
            other.unit(),
            other.alignment(),
        ))
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("count", &self.count())
            .field("unit", &self.unit())
            .field("alignment", &self.alignment())
            .finish()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count(), self.unit().suffix())?;
        let default_alignment = match self.unit() {
            Unit::Second | Unit::Minute | Unit::Hour => Alignment::Fixed,
            _ => Alignment::Calendar,
        };
        match self.alignment() {
            Alignment::Anchored { phase_ms } => write!(f, "@{}", format_instant(phase_ms))?,
            alignment if alignment != default_alignment => f.write_str(FIXED_SUFFIX)?,
            _ => {}
        }
        Ok(())
    }
}

/// What `Display` appends to a day or week window of fixed length (see [`Window::parse`]).
const FIXED_SUFFIX: &str = " (fixed)";

/// Unix ms of an anchor: an RFC 3339 instant (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00.5+01:00`; `T` or a
/// space between date and time; years 1970 to 9999; fractions below the ms are dropped) or plain Unix ms.
pub fn parse_instant(text: &str) -> Result<u64, WindowError> {
    parse_rfc3339(text).ok_or_else(|| WindowError::Anchor {
        text: text.to_owned(),
    })
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if !b.is_empty() && b.len() <= 20 && b.iter().all(u8::is_ascii_digit) {
        return text.parse().ok();
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let punct = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(punct(4, b"-")
        && punct(7, b"-")
        && punct(10, b"Tt ")
        && punct(13, b":")
        && punct(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if year < 1970 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if punct(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
        // The first three digits, right-padded: ".5" is 500 ms.
        millis = (start..start + 3).fold(0, |n, j| {
            n * 10
                + b.get(j)
                    .filter(|_| j < i)
                    .map_or(0, |d| u64::from(d - b'0'))
        });
    }
    let offset_ms: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && punct(i + 3, b":") => {
            let (h, m) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let ms = i64::try_from((h * 60 + m) * 60_000).ok()?;
            if *sign == b'+' { ms } else { -ms }
        }
        _ => return None,
    };
    let local = days_from_civil(year, month, day) * MS_PER_DAY
        + ((hour * 60 + minute) * 60 + second) * MS_PER_SECOND
        + millis;
    // Local time minus the offset is UTC; before 1970 is refused.
    u64::try_from(i64::try_from(local).ok()?.checked_sub(offset_ms)?).ok()
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `unix_ms` as RFC 3339 in UTC: `2026-12-01T10:00:00Z`, with `.mmm` when the ms are not zero.
pub fn format_instant(unix_ms: u64) -> String {
    let (year, month, day) = civil_from_days(unix_ms / MS_PER_DAY);
    let in_day = unix_ms % MS_PER_DAY;
    let seconds = in_day / MS_PER_SECOND;
    let (hour, minute, second) = (seconds / 3_600, seconds / 60 % 60, seconds % 60);
    let millis = in_day % MS_PER_SECOND;
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
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
        let e = w.epoch_at(UnixMs::new(t));
        assert_eq!(w.start_ms(e), utc(2026, 11, 24, 10, 15, 0));
        assert_eq!(w.epoch_at(UnixMs::new(t + 1)), e + 1);
        assert_eq!(w.end_ms(e), t + 1);
        let w30 = Window::parse("30s").unwrap();
        assert_eq!(w30.epoch_at(UnixMs::new(29_999)), 0);
        assert_eq!(w30.epoch_at(UnixMs::new(30_000)), 1);
    }

    #[test]
    fn day_and_iso_week_boundaries() {
        let day = Window::parse("1d").unwrap();
        let e = day.epoch_at(UnixMs::new(utc(2026, 11, 24, 23, 59, 59)));
        assert_eq!(day.end_ms(e), utc(2026, 11, 25, 0, 0, 0));
        let week = Window::parse("1w").unwrap();
        // 2026-11-23 is a Monday.
        let monday = utc(2026, 11, 23, 0, 0, 0);
        let e = week.epoch_at(UnixMs::new(monday));
        assert_eq!(week.start_ms(e), monday);
        assert_eq!(
            week.epoch_at(UnixMs::new(monday - 1)),
            e - 1,
            "Sunday night belongs to the previous week"
        );
        assert_eq!(week.epoch_at(UnixMs::new(utc(2026, 11, 29, 23, 59, 59))), e);
        assert_eq!(week.end_ms(e), utc(2026, 11, 30, 0, 0, 0));
        // The week containing 1970-01-01 starts on Monday 1969-12-29, saturated to 0.
        assert_eq!(week.epoch_at(UnixMs::new(0)), 0);
        assert_eq!(week.start_ms(0), 0);
        assert_eq!(week.start_ms(1), utc(1970, 1, 5, 0, 0, 0));
    }

    #[test]
    fn month_boundaries_including_leap_february() {
        let month = Window::parse("1M").unwrap();
        let feb_2024 = month.epoch_at(UnixMs::new(utc(2024, 2, 10, 12, 0, 0)));
        assert_eq!(month.start_ms(feb_2024), utc(2024, 2, 1, 0, 0, 0));
        assert_eq!(month.end_ms(feb_2024), utc(2024, 3, 1, 0, 0, 0));
        assert_eq!(
            month.epoch_at(UnixMs::new(utc(2024, 2, 29, 23, 59, 59))),
            feb_2024,
            "29 Feb 2024 exists"
        );
        let feb_2023 = month.epoch_at(UnixMs::new(utc(2023, 2, 28, 23, 59, 59)));
        assert_eq!(
            month.epoch_at(UnixMs::new(utc(2023, 3, 1, 0, 0, 0))),
            feb_2023 + 1,
            "2023 has no 29 Feb"
        );
        // Century rules: 2100 is not a leap year, 2000 is.
        let feb_2100 = month.epoch_at(UnixMs::new(utc(2100, 2, 28, 0, 0, 0)));
        assert_eq!(month.end_ms(feb_2100), utc(2100, 3, 1, 0, 0, 0));
        let feb_2000 = month.epoch_at(UnixMs::new(utc(2000, 2, 1, 0, 0, 0)));
        assert_eq!(
            month.end_ms(feb_2000) - month.start_ms(feb_2000),
            29 * MS_PER_DAY
        );
        // December rolls into January of the next year.
        let dec = month.epoch_at(UnixMs::new(utc(2026, 12, 31, 23, 59, 59)));
        assert_eq!(month.end_ms(dec), utc(2027, 1, 1, 0, 0, 0));
        // Two-month windows pair months from January 1970.
        let two = Window::parse("2M").unwrap();
        assert_eq!(
            two.epoch_at(UnixMs::new(utc(2026, 1, 15, 0, 0, 0))),
            two.epoch_at(UnixMs::new(utc(2026, 2, 28, 0, 0, 0)))
        );
        assert_ne!(
            two.epoch_at(UnixMs::new(utc(2026, 2, 28, 0, 0, 0))),
            two.epoch_at(UnixMs::new(utc(2026, 3, 1, 0, 0, 0)))
        );
    }

    #[test]
    fn year_boundaries_with_leap_years() {
        let year = Window::parse("1Y").unwrap();
        let y2024 = year.epoch_at(UnixMs::new(utc(2024, 12, 31, 23, 59, 59)));
        assert_eq!(year.start_ms(y2024), utc(2024, 1, 1, 0, 0, 0));
        assert_eq!(year.end_ms(y2024) - year.start_ms(y2024), 366 * MS_PER_DAY);
        assert_eq!(
            year.epoch_at(UnixMs::new(utc(2025, 1, 1, 0, 0, 0))),
            y2024 + 1
        );
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
                let e = w.epoch_at(UnixMs::new(t));
                assert!(
                    w.start_ms(e) <= t && t < w.end_ms(e),
                    "{text} at {t}: epoch {e}"
                );
            }
            t += 7_777_777_777; // about 90 days, irregular so boundaries are crossed at odd offsets
        }
    }

    #[test]
    fn anchored_boundaries_before_and_after_the_anchor() {
        let anchor = utc(2026, 12, 1, 10, 0, 0);
        let w = Window::anchored(30, Unit::Day, anchor).unwrap();
        let len = 30 * MS_PER_DAY;
        assert_eq!(w.fixed_len_ms(), Some(len));
        let e = w.epoch_at(UnixMs::new(anchor));
        assert_eq!(w.start_ms(e), anchor, "the anchor is a boundary");
        assert_eq!(w.end_ms(e), anchor + len);
        assert_eq!(
            w.epoch_at(UnixMs::new(anchor - 1)),
            e - 1,
            "the instant before is in the epoch before"
        );
        assert_eq!(
            w.start_ms(e - 1),
            anchor - len,
            "boundaries before the anchor too"
        );
        assert_eq!(w.epoch_at(UnixMs::new(anchor + len - 1)), e);
        assert_eq!(w.epoch_at(UnixMs::new(anchor + len)), e + 1);
        assert_eq!(w.start_ms(e + 5), anchor + 5 * len);
        // Boundaries are not those of the calendar or of the Unix epoch.
        assert_ne!(w.start_ms(e) % MS_PER_DAY, 0);
        // The first epoch is cut at the Unix epoch.
        assert_eq!(w.epoch_at(UnixMs::new(0)), 0);
        assert_eq!(w.start_ms(0), 0);
        assert_eq!(w.start_ms(1), anchor % len);
        // A one-hour window anchored at :17:30.250.
        let h = Window::parse("1h@2026-12-01T10:17:30.250Z").unwrap();
        let t = utc(2026, 12, 1, 12, 0, 0);
        assert_eq!(
            h.start_ms(h.epoch_at(UnixMs::new(t))),
            utc(2026, 12, 1, 11, 17, 30) + 250
        );
    }

    #[test]
    fn equal_phases_make_equal_windows() {
        use std::hash::BuildHasher;
        let anchor = utc(2026, 12, 1, 10, 0, 0);
        let week = 7 * MS_PER_DAY;
        let a = Window::anchored(1, Unit::Week, anchor).unwrap();
        let b = Window::anchored(1, Unit::Week, anchor + 52 * week).unwrap();
        let c = Window::anchored(1, Unit::Week, anchor % week).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let state =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        assert_eq!(state.hash_one(a), state.hash_one(b));
        assert_eq!(
            a.alignment(),
            Alignment::Anchored {
                phase_ms: anchor % week
            }
        );
        assert_ne!(a, Window::anchored(1, Unit::Week, anchor + 1).unwrap());
        assert_ne!(a, Window::parse("1w").unwrap());
        // Anchored at a multiple of the length: the fixed window's epochs, yet a window of its own.
        let zero = Window::anchored(1, Unit::Day, 20 * MS_PER_DAY).unwrap();
        let fixed = Window::with_alignment(1, Unit::Day, Alignment::Fixed).unwrap();
        assert_ne!(zero, fixed);
        assert_eq!(zero.epoch_offset_ms(), 0);
        for t in [0, 1, MS_PER_DAY - 1, MS_PER_DAY, anchor] {
            assert_eq!(
                zero.epoch_at(UnixMs::new(t)),
                fixed.epoch_at(UnixMs::new(t))
            );
        }
        assert!(
            Window::parse("1d").unwrap() < a,
            "ordered by count, unit, alignment"
        );
    }

    #[test]
    fn months_years_and_overlong_windows_are_not_anchored() {
        for (unit, name) in [(Unit::Month, "Month"), (Unit::Year, "Year")] {
            let e = Window::anchored(1, unit, 0).unwrap_err();
            assert_eq!(e, WindowError::AnchoredCalendarUnit { unit });
            assert!(e.to_string().contains(name), "{e}");
        }
        assert!(matches!(
            Window::parse("1M@2026-12-01T00:00:00Z"),
            Err(WindowError::AnchoredCalendarUnit { unit: Unit::Month })
        ));
        assert!(Window::parse("50000d@0").is_ok());
        assert!(matches!(
            Window::parse("10000w@0"),
            Err(WindowError::AnchoredTooLong { .. })
        ));
        assert!(matches!(
            Window::anchored(0, Unit::Day, 0),
            Err(WindowError::Count { count: 0 })
        ));
    }

    #[test]
    fn anchored_text_round_trips_through_parse() {
        for (text, shown) in [
            ("30d@2026-12-01T10:00:00Z", "30d@1970-01-29T10:00:00Z"),
            ("1w@2026-12-03T00:00:00Z", "1w@1970-01-01T00:00:00Z"),
            ("1h@2026-12-01T10:17:30.25Z", "1h@1970-01-01T00:17:30.250Z"),
            ("1h@2026-12-01T11:17:30+01:00", "1h@1970-01-01T00:17:30Z"),
            ("1h@2026-12-01 10:17:30z", "1h@1970-01-01T00:17:30Z"),
            ("1m@1796119230000", "1m@1970-01-01T00:00:30Z"),
            ("10s@1970-01-01T00:00:00Z", "10s@1970-01-01T00:00:00Z"),
        ] {
            let w = Window::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(w.to_string(), shown, "{text}");
            assert_eq!(Window::parse(shown), Ok(w), "{shown}");
        }
        for bad in [
            "1h@",
            "1h@yesterday",
            "1h@2026-12-01",
            "1h@2026-12-01T10:00:00",
            "1h@2026-13-01T10:00:00Z",
            "1h@2026-02-29T10:00:00Z",
            "1h@2026-12-01T24:00:00Z",
            "1h@1969-12-31T23:59:59Z",
            "1h@1970-01-01T00:30:00+01:00",
            "1h@2026-12-01T10:00:00.Z",
            "1h@2026-12-01T10:00:00+0100",
            "1h@-5",
            "@2026-12-01T10:00:00Z",
            "1h@2026-12-01T10:00:00Z@0",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            parse_instant("2024-02-29T23:59:59.999Z"),
            Ok(utc(2024, 2, 29, 23, 59, 59) + 999)
        );
        assert_eq!(
            format_instant(utc(2024, 2, 29, 23, 59, 59) + 9),
            "2024-02-29T23:59:59.009Z"
        );
    }

    #[test]
    fn every_alignment_round_trips_through_its_text() {
        let units = [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Week,
            Unit::Month,
            Unit::Year,
        ];
        for unit in units {
            for alignment in [
                Alignment::Fixed,
                Alignment::Calendar,
                Alignment::Anchored { phase_ms: 1_000 },
            ] {
                let Ok(w) = Window::with_alignment(3, unit, alignment) else {
                    continue;
                };
                assert_eq!(Window::parse(&w.to_string()), Ok(w), "{w}");
            }
        }
        let fixed_day = Window::parse("1d (fixed)").unwrap();
        assert_eq!(fixed_day.alignment(), Alignment::Fixed);
        assert_ne!(fixed_day, Window::parse("1d").unwrap());
        // Months have no fixed length; an anchor and a fixed alignment exclude each other.
        assert!(Window::parse("1M (fixed)").is_err());
        assert!(Window::parse("1d@2026-12-01T00:00:00Z (fixed)").is_err());
        assert!(Window::parse("1d(fixed)").is_err());
    }

    proptest::proptest! {
        #[test]
        fn anchored_epochs_hold_every_instant(
            count in 1u32..=1_000,
            unit in 0usize..5,
            anchor in 0u64..(1 << 46),
            t in 0u64..(1 << 53),
        ) {
            let unit = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week][unit];
            let w = Window::anchored(count, unit, anchor).unwrap();
            let len = w.fixed_len_ms().unwrap();
            let e = w.epoch_at(UnixMs::new(t));
            proptest::prop_assert!(w.start_ms(e) <= t && t < w.start_ms(e + 1), "{w} at {t}: epoch {e}");
            proptest::prop_assert_eq!(w.end_ms(e), w.start_ms(e + 1));
            // Every boundary but the cut at 0 lies on the anchor's grid.
            if e > 0 {
                proptest::prop_assert_eq!(w.start_ms(e) % len, anchor % len);
            }
            proptest::prop_assert_eq!(w.epoch_at(UnixMs::new(w.start_ms(e))), e);
            proptest::prop_assert_eq!(Window::parse(&w.to_string()), Ok(w));
            proptest::prop_assert_eq!(Window::anchored(count, unit, anchor % len + len * 3), Ok(w));
        }
    }
}
