//! Latency histograms with fixed log-scale buckets, whose bucket counts are G-counters, so histograms from all
//! nodes merge exactly (add the counts) and cluster-wide percentiles come from the merged buckets.
//!
//! Buckets (latency in µs): values 0..=3 have a bucket each; above, every power of two is split into 4 equal
//! buckets, so a bucket spans at most 25 % of its lower bound. A quantile is reported as its bucket's midpoint:
//! **relative error at most 12.5 %** (11.1 % in the top sub-bucket of an octave). Values from 2^36 µs (19 h)
//! up share the last bucket. [`BUCKETS`] buckets in all; the bucket of a value is a few instructions
//! (a table lookup from 4 ms to 1 s; elsewhere a conversion to f64 and a shift: its exponent and top mantissa
//! bits are the bucket).

use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: u64 = 4;
/// log2 of [`SUB`].
const SUB_BITS: u32 = 2;
/// Values at or above 2^MAX_EXP µs go to the last bucket.
const MAX_EXP: u32 = 36;
/// Number of buckets.
pub const BUCKETS: usize = (SUB + (MAX_EXP as u64 - SUB_BITS as u64) * SUB) as usize;

/// From 2^12 µs on, every bucket boundary is a multiple of 2^10 µs (a bucket spans 2^(exp-2) µs), so up to
/// [`BY_KIB_END`] µs the bucket is a function of `micros >> 10`: this table, one load instead of a conversion.
const BY_KIB_START: u64 = 1 << 12;
/// End (exclusive) of the table's range: 2^20 µs, about one second.
const BY_KIB_END: u64 = 1 << 20;
const _: () = assert!(BUCKETS <= 256, "bucket indices must fit the table's u8");
static BUCKET_BY_KIB: [u8; (BY_KIB_END >> 10) as usize] = {
    let mut table = [0u8; (BY_KIB_END >> 10) as usize];
    let mut kib = (BY_KIB_START >> 10) as usize;
    while kib < table.len() {
        // Below BUCKETS, which fits a u8 (asserted above).
        table[kib] = bucket_by_leading_zeros((kib as u64) << 10) as u8;
        kib += 1;
    }
    table
};

/// The bucket by its definition in integers: `SUB + (exp - SUB_BITS) * SUB + sub`, where `exp` is the position
/// of the leading one and `sub` the SUB_BITS bits below it. Builds the table; `bucket_of` must agree with it.
const fn bucket_by_leading_zeros(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let v = if micros < (1u64 << MAX_EXP) {
        micros
    } else {
        (1u64 << MAX_EXP) - 1
    };
    let exp = 63 - v.leading_zeros(); // ≥ SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + (exp - SUB_BITS) as u64 * SUB + sub) as usize
}

/// The bucket of a latency of `micros` µs.
#[inline]
pub fn bucket_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    if micros.wrapping_sub(BY_KIB_START) < BY_KIB_END - BY_KIB_START {
        // 4 ms to 1 s, the common latencies: a table lookup (see `BUCKET_BY_KIB`).
        return usize::from(BUCKET_BY_KIB[(micros >> 10) as usize]);
    }
    let v = micros.min((1u64 << MAX_EXP) - 1);
    // The bucket is `bucket_by_leading_zeros(v)`, whose `exp` and `sub` are both in the bits of `v` as an f64,
    // exact below 2^53: the biased exponent `exp + 1023` above 52 mantissa bits, whose top SUB_BITS are `sub`.
    // So the top bits are `((exp + 1023) << SUB_BITS) | sub`, and the bucket is those minus a constant. The conversion is one
    // instruction on every x86-64 (`cvtsi2sd`); the leading-zero count it replaces is `bsr` there unless the
    // build targets a CPU with `lzcnt`, and measured about 3 ns slower on the hot path (docs/benchmarks.md).
    let key = (v as i64 as f64).to_bits() >> (52 - SUB_BITS);
    (key - ((1023 << SUB_BITS) + u64::from(SUB_BITS) * SUB - SUB)) as usize
}

/// The bucket of a latency.
#[inline]
pub fn bucket_of_duration(latency: Duration) -> usize {
    // Not `as_micros`: its u128 arithmetic is a wide multiply on the hot path. Saturates like it would.
    let secs = latency.as_secs();
    let sub_second = u64::from(latency.subsec_micros());
    if secs == 0 {
        // Sub-second latencies skip the multiply and the saturation (one step less before the bucket is known).
        return bucket_of(sub_second);
    }
    bucket_of(secs.saturating_mul(1_000_000).saturating_add(sub_second))
}

/// `(lowest, highest)` µs of bucket `i` (inclusive).
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let exp = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    let low = (SUB + sub) * width;
    (low, low + width - 1)
}

/// The value a quantile in bucket `i` is reported as: the bucket's midpoint, in µs.
pub fn bucket_midpoint(i: usize) -> u64 {
    let (low, high) = bucket_bounds(i);
    low + (high - low) / 2
}

/// A histogram: one count per bucket. Merging adds counts, so it is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        self.add_bucket(bucket_of_duration(latency), 1);
    }

    /// Adds `n` to bucket `i` (ignored when `i` is out of range).
    pub fn add_bucket(&mut self, i: usize, n: u64) {
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.saturating_add(n);
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c = c.saturating_add(*o);
        }
    }

    /// The count of bucket `i`.
    pub fn bucket(&self, i: usize) -> u64 {
        self.counts.get(i).copied().unwrap_or(0)
    }

    /// Total samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// The `q` quantile (0.0..=1.0) in µs: the midpoint of the bucket holding the sample of rank
    /// ⌈q × count⌉ (at least 1). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(bucket_midpoint(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_each_spans_at_most_a_quarter_of_its_lower_bound() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, high) = bucket_bounds(i);
            assert_eq!(
                low,
                next,
                "bucket {i} starts where {} ended",
                i.saturating_sub(1)
            );
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high), i);
            if low >= SUB {
                assert!((high - low + 1) * 4 <= low, "bucket {i}: {low}..={high}");
                let mid = bucket_midpoint(i);
                let worst = (mid - low).max(high - mid) as f64 / low as f64;
                assert!(worst <= 0.125, "bucket {i}: relative error {worst}");
            }
            next = high + 1;
        }
        assert_eq!(next, 1 << MAX_EXP);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_table_and_float_buckets_match_the_integer_definition() {
        // Every value up to 2^20 µs, then each power of two and its neighbours, then a deterministic spread.
        for v in 0..(1u64 << 20) {
            assert_eq!(bucket_of(v), bucket_by_leading_zeros(v), "{v} µs");
        }
        for e in 0..64 {
            let p = 1u64 << e;
            for v in [
                p - 1,
                p,
                p + 1,
                p | (p >> 1),
                p | (p >> 2),
                (p | (p >> 1)) - 1,
            ] {
                assert_eq!(bucket_of(v), bucket_by_leading_zeros(v), "{v} µs");
            }
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x >> (x % 64);
            assert_eq!(bucket_of(v), bucket_by_leading_zeros(v), "{v} µs");
        }
    }

    #[test]
    fn quantiles_of_a_known_sample() {
        let mut h = Histogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).expect("p50") as f64;
        let p99 = h.quantile(0.99).expect("p99") as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 <= 0.125, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 <= 0.125, "{p99}");
        assert_eq!(Histogram::new().quantile(0.5), None);
    }

    #[test]
    fn merged_histograms_equal_one_fed_every_sample() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for i in 0..1_000u64 {
            let d = Duration::from_micros(i * i % 77_777 + 3);
            if i % 3 == 0 {
                a.record(d)
            } else {
                b.record(d)
            }
            all.record(d);
        }
        a.merge(&b);
        assert_eq!(a, all);
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
    }
}
