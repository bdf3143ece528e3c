//! Export and import of counter values as JSON lines: backups of a data directory, and budgets seeded from a
//! gateway's own database.
//!
//! One line per value:
//! `{"key":"team-a","window":"1M","epoch":683,"start_unix_ms":1796083200000,"origin":"8f0c…","kind":"replica","value":1200}`.
//! An anchored window has `"alignment":"anchored"` and its `anchor` beside it (export writes the canonical
//! anchor, the phase as an instant: `"1970-01-29T10:00:00Z"`; only the phase matters, so import takes any
//! instant of the same phase, in RFC 3339 or Unix ms).
//!
//! Guarantees:
//! - [`export`] writes every value and floor of a snapshot, with its origin: importing an export back is a
//!   max-merge that changes nothing.
//! - [`parse`] reads every line before anything is merged, and the first bad line (with its number and the
//!   field at fault) refuses the whole input: nothing is half imported. Lines are at most [`MAX_LINE_BYTES`];
//!   keys at most the store's `limits.max_key_length`.
//! - A line without `origin` is counted under the import source's own origin ([`import_origin`], one per
//!   `--source` name), never under a node's: it adds to what the nodes count, and importing the same file twice
//!   (or a file whose values only grew) raises each value to the file's, never adds it twice.
//! - [`merge`] is a max-merge per (origin, key, window, epoch): it never lowers a value.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::UnixMs;
use crate::counter::{Alignment, Window, format_instant, parse_instant};
use crate::wire::{ArchivedOriginKind, Entry, OriginGroup, OriginKind, WireWindow};

use super::format::{ArchivedSnapshotBody, SnapshotBody};

/// Longest line [`parse`] reads, newline included.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One exported or imported value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The counter key.
    pub key: String,
    /// The window, as in limits: `"1d"`, `"1M"`, `"30s"`.
    pub window: String,
    /// `"fixed"`, `"calendar"` or `"anchored"`; omitted: the unit's default (fixed for s/m/h, calendar
    /// otherwise), or anchored when `anchor` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<String>,
    /// An anchored window's anchor: an RFC 3339 instant (`"2026-12-01T10:00:00Z"`) or Unix ms (as a string).
    /// Boundaries lie at `anchor + k × length`; only the anchor's phase matters. Export writes the phase as an
    /// instant. Only with `alignment` omitted or `"anchored"`, for windows in s, m, h, d or w.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// The window's epoch (its index since 1970). On import, any of `epoch`, `start_unix_ms` and
    /// `at_unix_ms` may name the window, and those given must name the same one (a line whose fields
    /// disagree is refused); none at all means the window current at import time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the window starts (Unix ms); must be a window start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_unix_ms: Option<u64>,
    /// Any instant inside the window (Unix ms). Import only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_unix_ms: Option<u64>,
    /// The origin's id in hex (16 digits). Omitted on import: the import source's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `"replica"` (a count, the default) or `"floor"` (an origin's value at a reset; needs `origin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The count.
    pub value: u64,
}

/// Why an import was refused. Nothing was merged.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: u64,
    },
    /// A line is not a valid value.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// One parsed value, ready for [`merge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Values or floors.
    pub kind: OriginKind,
    /// Whose.
    pub origin: u64,
    /// The value.
    pub entry: Entry,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Lines written.
    pub lines: u64,
    /// Distinct origins among them.
    pub origins: u64,
}

/// What [`merge`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Values (or floors) the snapshot did not have.
    pub added: u64,
    /// Values the import raised.
    pub raised: u64,
    /// Values the snapshot already had as high or higher.
    pub unchanged: u64,
}

/// The origin of values imported from `source` (a stable 64-bit id derived from the name; never 0). Distinct
/// names give distinct origins, so two systems' imports add up instead of overwriting each other.
pub fn import_origin(source: &str) -> u64 {
    let sum = ring::digest::digest(
        &ring::digest::SHA256,
        format!("bifrost-cluster import\0{source}").as_bytes(),
    );
    let mut id = [0u8; 8];
    id.copy_from_slice(&sum.as_ref()[..8]);
    u64::from_be_bytes(id).max(1)
}

/// Writes every value and floor of `body` to `out`, one JSON line each.
pub fn export(body: &ArchivedSnapshotBody, out: &mut impl Write) -> std::io::Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut origins = std::collections::BTreeSet::new();
    for group in body.groups.iter() {
        let kind = match group.kind {
            ArchivedOriginKind::Replica => "replica",
            ArchivedOriginKind::Floor => "floor",
            // Snapshots hold neither aggregates nor reset commands (a node hears them again from its peers).
            ArchivedOriginKind::Aggregate
            | ArchivedOriginKind::AggregateFloor
            | ArchivedOriginKind::Reset => continue,
        };
        let origin = group.origin.to_native();
        for e in group.entries.iter() {
            // `decode` checked every window; a bad one here would be a bug, so it is skipped, not guessed.
            let Ok(window) = e.window.window() else {
                continue;
            };
            let epoch = e.epoch.to_native();
            let line = Line {
                key: e.key.as_str().to_owned(),
                window: window_text(window),
                alignment: non_default_alignment(window),
                anchor: match window.alignment() {
                    Alignment::Anchored { phase_ms } => Some(format_instant(phase_ms)),
                    _ => None,
                },
                epoch: Some(epoch),
                start_unix_ms: Some(window.start_ms(epoch)),
                at_unix_ms: None,
                origin: Some(format!("{origin:016x}")),
                kind: Some(kind.to_owned()),
                value: e.value.to_native(),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            origins.insert(origin);
            report.lines += 1;
        }
    }
    report.origins = origins.len() as u64;
    Ok(report)
}

/// `"1d"` for a window (its alignment goes in its own field).
fn window_text(window: Window) -> String {
    format!("{}{}", window.count(), window.unit().suffix())
}

/// `Some("fixed")` for a fixed day or week, `Some("anchored")` for an anchored window; `None` when the
/// alignment is the unit's default.
fn non_default_alignment(window: Window) -> Option<String> {
    match Window::new(window.count(), window.unit()) {
        Ok(default) if default.alignment() == window.alignment() => None,
        _ => Some(
            match window.alignment() {
                Alignment::Fixed => "fixed",
                Alignment::Calendar => "calendar",
                Alignment::Anchored { .. } => "anchored",
            }
            .to_owned(),
        ),
    }
}

/// Reads every line of `input` (blank lines are skipped). Lines without `origin` go under `default_origin`;
/// lines without a window position go in the window current at `now_ms`.
pub fn parse(
    mut input: impl BufRead,
    default_origin: u64,
    now_ms: u64,
    max_key_length: usize,
) -> Result<Vec<Imported>, ImportError> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        number += 1;
        buf.clear();
        let read = Read::by_ref(&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if read == 0 {
            return Ok(out);
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(ImportError::LineTooLong { line: number });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |message: String| ImportError::Line {
            line: number,
            message,
        };
        let line: Line = serde_json::from_slice(&buf).map_err(|e| bad(e.to_string()))?;
        out.push(
            line_value(line, default_origin, now_ms, max_key_length)
                .map_err(|m| bad(m.to_owned()))?,
        );
    }
}

/// One line's value, or what is wrong with it.
fn line_value(
    line: Line,
    default_origin: u64,
    now_ms: u64,
    max_key_length: usize,
) -> Result<Imported, String> {
    if line.key.is_empty() {
        return Err("key: empty".to_owned());
    }
    if line.key.len() > max_key_length {
        return Err(format!(
            "key: {} bytes, longer than limits.max_key_length = {max_key_length}",
            line.key.len()
        ));
    }
    let parsed = Window::parse(&line.window).map_err(|e| format!("window: {e}"))?;
    if matches!(parsed.alignment(), Alignment::Anchored { .. })
        && (line.alignment.is_some() || line.anchor.is_some())
    {
        return Err(
            "window: anchored in the window text; give the anchor there or in anchor, not both"
                .to_owned(),
        );
    }
    let alignment = match (line.alignment.as_deref(), line.anchor.as_deref()) {
        (None, None) => None,
        (Some("fixed"), None) => Some(Alignment::Fixed),
        (Some("calendar"), None) => Some(Alignment::Calendar),
        (Some("anchored") | None, Some(anchor)) => Some(Alignment::Anchored {
            phase_ms: parse_instant(anchor).map_err(|e| format!("anchor: {e}"))?,
        }),
        (Some("anchored"), None) => {
            return Err("anchor: required with alignment \"anchored\"".to_owned());
        }
        (Some(other @ ("fixed" | "calendar")), Some(_)) => {
            return Err(format!(
                "anchor: only for an anchored window, not alignment {other:?}"
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "alignment: {other:?}; expected \"fixed\", \"calendar\" or \"anchored\""
            ));
        }
    };
    let window = match alignment {
        None => parsed,
        Some(alignment) => Window::with_alignment(parsed.count(), parsed.unit(), alignment)
            .map_err(|e| match alignment {
                Alignment::Anchored { .. } => format!("anchor: {e}"),
                _ => format!("alignment: {e}"),
            })?,
    };
    let mut epoch = None;
    for (field, candidate) in [
        ("epoch", line.epoch),
        (
            "start_unix_ms",
            line.start_unix_ms
                .map(|ms| window.epoch_at(UnixMs::new(ms))),
        ),
        (
            "at_unix_ms",
            line.at_unix_ms.map(|ms| window.epoch_at(UnixMs::new(ms))),
        ),
    ] {
        let Some(candidate) = candidate else { continue };
        match epoch {
            None => epoch = Some(candidate),
            Some(e) if e == candidate => {}
            Some(e) => {
                return Err(format!(
                    "{field}: names window epoch {candidate}, another field names {e}"
                ));
            }
        }
    }
    if let Some(start) = line.start_unix_ms
        && window.start_ms(window.epoch_at(UnixMs::new(start))) != start
    {
        return Err(format!(
            "start_unix_ms: {start} is not the start of a {} window",
            line.window
        ));
    }
    let epoch = epoch.unwrap_or_else(|| window.epoch_at(UnixMs::new(now_ms)));
    if window.epoch_at(UnixMs::new(window.start_ms(epoch))) != epoch {
        return Err(format!(
            "epoch: {epoch} is beyond the last {} window this build can place in time",
            line.window
        ));
    }
    let kind = match line.kind.as_deref() {
        None | Some("replica") => OriginKind::Replica,
        Some("floor") => OriginKind::Floor,
        Some(other) => {
            return Err(format!(
                "kind: {other:?}; expected \"replica\" or \"floor\""
            ));
        }
    };
    let origin = match line.origin.as_deref() {
        None if kind == OriginKind::Floor => {
            return Err("origin: a floor needs the origin it belongs to".to_owned());
        }
        None => default_origin,
        Some(hex) => match u64::from_str_radix(hex, 16) {
            Ok(id) if id != 0 && hex.len() <= 16 => id,
            _ => return Err(format!("origin: {hex:?} is not a non-zero 64-bit hex id")),
        },
    };
    Ok(Imported {
        kind,
        origin,
        entry: Entry {
            key: line.key,
            window: WireWindow::from(window),
            epoch,
            value: line.value,
        },
    })
}

/// Identity of one value inside its origin group: key, window (count, unit, alignment, phase) and epoch.
type Slot = (String, (u32, u8, u8, u64), u64);

/// Max-merges `values` into `body` (a snapshot read from the data directory; `None` starts an empty one).
pub fn merge(body: Option<SnapshotBody>, values: Vec<Imported>) -> (SnapshotBody, MergeReport) {
    let mut body = body.unwrap_or(SnapshotBody {
        node_id: String::new(),
        replica_id: 0,
        written_at_ms: 0,
        groups: Vec::new(),
    });
    let kind_code = |kind: OriginKind| kind as u8;
    let mut groups: BTreeMap<(u8, u64), (OriginKind, BTreeMap<Slot, u64>)> = BTreeMap::new();
    let slot = |e: &Entry| {
        (
            e.key.clone(),
            (
                e.window.count,
                e.window.unit,
                e.window.alignment,
                e.window.phase_ms,
            ),
            e.epoch,
        )
    };
    for group in body.groups.drain(..) {
        let values = &mut groups
            .entry((kind_code(group.kind), group.origin))
            .or_insert_with(|| (group.kind, BTreeMap::new()))
            .1;
        for e in group.entries {
            let held = values.entry(slot(&e)).or_insert(0);
            *held = (*held).max(e.value);
        }
    }
    let mut report = MergeReport::default();
    for value in values {
        let held = groups
            .entry((kind_code(value.kind), value.origin))
            .or_insert_with(|| (value.kind, BTreeMap::new()))
            .1
            .entry(slot(&value.entry));
        match held {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(value.entry.value);
                report.added += 1;
            }
            std::collections::btree_map::Entry::Occupied(mut o) if *o.get() < value.entry.value => {
                o.insert(value.entry.value);
                report.raised += 1;
            }
            std::collections::btree_map::Entry::Occupied(_) => report.unchanged += 1,
        }
    }
    body.groups = groups
        .into_iter()
        .map(|((_, origin), (kind, values))| OriginGroup {
            origin,
            kind,
            entries: values
                .into_iter()
                .map(
                    |((key, (count, unit, alignment, phase_ms), epoch), value)| Entry {
                        key,
                        window: WireWindow {
                            count,
                            unit,
                            alignment,
                            phase_ms,
                        },
                        epoch,
                        value,
                    },
                )
                .collect(),
        })
        .collect();
    (body, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format;

    const NOW: u64 = 1_796_000_000_000;

    fn parse_text(text: &str) -> Result<Vec<Imported>, ImportError> {
        parse(text.as_bytes(), import_origin("test"), NOW, 256)
    }

    fn export_text(body: &SnapshotBody) -> String {
        let bytes = format::encode(body).expect("encodes");
        let archived = format::decode(&bytes).expect("decodes");
        let mut out = Vec::new();
        export(archived, &mut out).expect("writes");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_line_without_origin_counts_under_the_source_and_a_repeat_import_adds_nothing() {
        let text = "{\"key\":\"team-a\",\"window\":\"1M\",\"value\":1200}\n\n{\"key\":\"team-b\",\"window\":\"1d\",\"value\":7}";
        let values = parse_text(text).expect("parses");
        assert_eq!(values.len(), 2);
        assert!(values.iter().all(|v| v.origin == import_origin("test")));
        let month = Window::parse("1M").expect("window");
        assert_eq!(values[0].entry.epoch, month.epoch_at(UnixMs::new(NOW)));
        let (once, first) = merge(None, values.clone());
        assert_eq!(first.added, 2);
        let (twice, second) = merge(Some(once.clone()), values);
        assert_eq!(
            second,
            MergeReport {
                added: 0,
                raised: 0,
                unchanged: 2
            }
        );
        assert_eq!(once, twice);
    }

    #[test]
    fn an_export_imported_back_changes_nothing() {
        let body = SnapshotBody {
            node_id: "n1".into(),
            replica_id: 7,
            written_at_ms: NOW,
            groups: vec![
                OriginGroup {
                    origin: 7,
                    kind: OriginKind::Replica,
                    entries: vec![Entry {
                        key: "k".into(),
                        window: WireWindow::from(Window::parse("1d").expect("window")),
                        epoch: 20_787,
                        value: 40,
                    }],
                },
                OriginGroup {
                    origin: 9,
                    kind: OriginKind::Floor,
                    entries: vec![Entry {
                        key: "k".into(),
                        window: WireWindow::from(
                            Window::with_alignment(1, crate::counter::Unit::Day, Alignment::Fixed)
                                .expect("window"),
                        ),
                        epoch: 20_787,
                        value: 3,
                    }],
                },
            ],
        };
        let text = export_text(&body);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\"alignment\":\"fixed\""), "{text}");
        let values = parse_text(&text).expect("an export parses");
        let (merged, report) = merge(Some(body.clone()), values);
        assert_eq!(report.unchanged, 2);
        assert_eq!(merged.groups, body.groups);
    }

    #[test]
    fn an_anchored_window_round_trips_with_its_anchor() {
        let window = Window::parse("30d@2026-12-01T10:00:00Z").expect("window");
        let epoch = window.epoch_at(UnixMs::new(NOW));
        let body = SnapshotBody {
            node_id: "n1".into(),
            replica_id: 7,
            written_at_ms: NOW,
            groups: vec![OriginGroup {
                origin: 7,
                kind: OriginKind::Replica,
                entries: vec![Entry {
                    key: "budget/team-a".into(),
                    window: WireWindow::from(window),
                    epoch,
                    value: 1_200,
                }],
            }],
        };
        let text = export_text(&body);
        assert!(
            text.contains("\"alignment\":\"anchored\",\"anchor\":\"1970-01-29T10:00:00Z\""),
            "{text}"
        );
        let values = parse_text(&text).expect("an export parses");
        assert_eq!(values[0].entry.window.window(), Ok(window));
        let (merged, report) = merge(Some(body.clone()), values);
        assert_eq!(report.unchanged, 1);
        assert_eq!(merged.groups, body.groups);
        // Any anchor of the same phase names the same window: the budget's own start, in RFC 3339 or Unix ms,
        // with the window given by `at_unix_ms`.
        let start = 1_796_119_200_000; // 2026-12-01T10:00:00Z
        for anchor in [
            "2026-12-01T10:00:00Z",
            "1796119200000",
            "2026-12-01T11:00:00+01:00",
        ] {
            let line = format!(
                "{{\"key\":\"budget/team-a\",\"window\":\"30d\",\"anchor\":\"{anchor}\",\"at_unix_ms\":{start},\"value\":5}}"
            );
            let values = parse_text(&line).expect(anchor);
            assert_eq!(values[0].entry.window.window(), Ok(window), "{anchor}");
            assert_eq!(window.start_ms(values[0].entry.epoch), start, "{anchor}");
        }
        // The window text may carry the anchor itself.
        let values = parse_text(&format!(
            "{{\"key\":\"k\",\"window\":\"30d@{start}\",\"value\":5}}"
        ))
        .expect("anchored window text");
        assert_eq!(values[0].entry.window.window(), Ok(window));
    }

    #[test]
    fn merging_never_lowers_a_value() {
        let line =
            |v: u64| format!("{{\"key\":\"k\",\"window\":\"1M\",\"epoch\":683,\"value\":{v}}}");
        let (high, _) = merge(None, parse_text(&line(50)).expect("parses"));
        let (after, report) = merge(Some(high.clone()), parse_text(&line(10)).expect("parses"));
        assert_eq!(report.unchanged, 1);
        assert_eq!(after, high);
        let (raised, report) = merge(Some(high), parse_text(&line(60)).expect("parses"));
        assert_eq!(report.raised, 1);
        assert_eq!(raised.groups[0].entries[0].value, 60);
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number_and_field() {
        let cases = [
            ("{\"key\":\"k\",\"window\":\"1q\",\"value\":1}", "window"),
            ("{\"key\":\"\",\"window\":\"1d\",\"value\":1}", "key: empty"),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"value\":-1}",
                "invalid value",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"value\":1,\"colour\":1}",
                "colour",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1M\",\"alignment\":\"fixed\",\"value\":1}",
                "alignment",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1M\",\"anchor\":\"2026-12-01T00:00:00Z\",\"value\":1}",
                "anchor: a window in Months cannot be anchored",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"alignment\":\"anchored\",\"value\":1}",
                "anchor: required",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"alignment\":\"fixed\",\"anchor\":\"0\",\"value\":1}",
                "anchor: only for an anchored window",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"anchor\":\"soon\",\"value\":1}",
                "anchor: invalid anchor",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d@0\",\"anchor\":\"0\",\"value\":1}",
                "not both",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"kind\":\"floor\",\"value\":1}",
                "origin",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"origin\":\"zz\",\"value\":1}",
                "origin",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"epoch\":1,\"at_unix_ms\":1796000000000,\"value\":1}",
                "at_unix_ms",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1d\",\"start_unix_ms\":5,\"value\":1}",
                "start_unix_ms",
            ),
            (
                "{\"key\":\"k\",\"window\":\"1M\",\"epoch\":18446744073709551615,\"value\":1}",
                "epoch",
            ),
        ];
        for (bad, field) in cases {
            let text = format!("{{\"key\":\"ok\",\"window\":\"1d\",\"value\":1}}\n{bad}\n");
            let error = parse_text(&text).expect_err(bad).to_string();
            assert!(error.starts_with("line 2: "), "{bad}: {error}");
            assert!(error.contains(field), "{bad}: {error}");
        }
        let long_key = "k".repeat(300);
        let error = parse_text(&format!(
            "{{\"key\":\"{long_key}\",\"window\":\"1d\",\"value\":1}}"
        ))
        .expect_err("a long key")
        .to_string();
        assert!(error.contains("limits.max_key_length"), "{error}");
    }

    #[test]
    fn a_line_longer_than_the_bound_is_refused_without_reading_it_all() {
        /// Counts the bytes taken from an endless line.
        struct Endless<'a>(&'a std::cell::Cell<u64>);
        impl Read for Endless<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                buf.fill(b'x');
                self.0.set(self.0.get() + buf.len() as u64);
                Ok(buf.len())
            }
        }
        let taken = std::cell::Cell::new(0);
        let input = std::io::BufReader::new(b"{\"key\":\"".chain(Endless(&taken)));
        match parse(input, import_origin("test"), NOW, 256) {
            Err(ImportError::LineTooLong { line: 1 }) => {}
            other => panic!("expected LineTooLong, got {other:?}"),
        }
        // The bound plus at most one buffer of read-ahead, not the endless rest.
        assert!(
            taken.get() <= MAX_LINE_BYTES as u64 + 8 * 1024,
            "read {} bytes",
            taken.get()
        );
    }

    #[test]
    fn sources_have_distinct_stable_origins() {
        assert_eq!(import_origin("billing-db"), import_origin("billing-db"));
        assert_ne!(import_origin("billing-db"), import_origin("import"));
        assert_ne!(import_origin(""), 0);
    }
}
