//! Roll-ups: per hour (and per day) × team × key × model × provider × route × service, the
//! sums of the events, and their latencies as a histogram of counts in log-spaced buckets
//! held in the same row — mergeable by addition, so percentiles over any range and grouping
//! come from roll-ups alone, one row per group and period.

use crate::events::UsageEvent;
use std::collections::BTreeMap;

/// Buckets per doubling: bucket edges grow by 2^(1/4) ≈ 1.19, so a percentile read from
/// buckets is within ±9 % of the true value.
const PER_DOUBLING: f64 = 4.0;
/// 2^(130/4) ms is far beyond any request; everything longer shares the last bucket.
pub const BUCKETS: i32 = 130;

/// The bucket of a latency: 0 for 0 ms, then `floor(4 · log2(ms)) + 1`.
pub fn bucket(ms: u64) -> i32 {
    if ms == 0 {
        return 0;
    }
    let b = ((ms as f64).log2() * PER_DOUBLING).floor() as i32 + 1;
    b.clamp(1, BUCKETS - 1)
}

/// The range a bucket covers, in ms: `[lower, upper)`.
fn bounds(b: i32) -> (f64, f64) {
    if b <= 0 {
        return (0.0, 1.0);
    }
    let lo = 2f64.powf(f64::from(b - 1) / PER_DOUBLING);
    let hi = 2f64.powf(f64::from(b) / PER_DOUBLING);
    (lo, hi)
}

/// Latency counts by bucket (index = bucket), trimmed after the last non-zero one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(pub Vec<i64>);

impl Histogram {
    pub fn record(&mut self, ms: u64) {
        let b = bucket(ms) as usize;
        if self.0.len() <= b {
            self.0.resize(b + 1, 0);
        }
        self.0[b] += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        if self.0.len() < o.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a = a.saturating_add(*b);
        }
    }

    /// SQLite's form: each count as 8 bytes, little-endian.
    pub fn to_blob(&self) -> Vec<u8> {
        self.0.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    /// A blob this code wrote; anything else reads as empty rather than failing a query.
    pub fn from_blob(b: &[u8]) -> Histogram {
        Histogram(
            b.chunks_exact(8)
                .take(BUCKETS as usize)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        )
    }

    /// PostgreSQL's form, as array text (`{1,0,3}`), cast to `bigint[]` in SQL.
    pub fn to_pg_text(&self) -> String {
        let mut s = String::with_capacity(2 + self.0.len() * 3);
        s.push('{');
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(itoa::Buffer::new().format(*n));
        }
        s.push('}');
        s
    }

    /// The `q` quantile (0–1), interpolated linearly inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.0.iter().filter(|n| **n > 0).sum();
        if total <= 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0i64;
        for (b, &n) in self.0.iter().enumerate() {
            if n <= 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let (lo, hi) = bounds(b as i32);
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * within);
            }
            seen += n;
        }
        Some(bounds(self.0.len() as i32 - 1).1)
    }
}

/// The roll-up row an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Unix seconds at the start of the hour.
    pub hour: i64,
    pub team: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub route: String,
    pub service: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: i64,
    pub errors: i64,
    pub fallbacks: i64,
    pub partials: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// Pico-dollars (10⁻¹²): exact for any price with up to six decimals per million
    /// tokens; a row holds up to $9.2 M.
    pub cost_pico: i64,
    pub latency_ms_sum: i64,
    pub latency: Histogram,
}

/// What one batch adds to the roll-ups, in key order (a fixed lock order for databases
/// that several collectors write at once).
#[derive(Debug, Default)]
pub struct Delta {
    pub sums: BTreeMap<Key, Sums>,
}

/// A failed request: an error status, or none at all (the connection was cut).
pub fn is_error(e: &UsageEvent) -> bool {
    e.status == 0 || e.status >= 400
}

/// Atto-dollars to pico-dollars, half up.
pub fn pico(atto: u128) -> i64 {
    i64::try_from((atto + 500_000) / 1_000_000).unwrap_or(i64::MAX)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Sums {
    /// The counts `/v1/usage` reports, under their API names, in column order.
    pub fn counts(&self) -> [(&'static str, i64); 8] {
        [
            ("requests", self.requests),
            ("errors", self.errors),
            ("fallbacks", self.fallbacks),
            ("partial", self.partials),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_tokens", self.cached_tokens),
            ("reasoning_tokens", self.reasoning_tokens),
        ]
    }

    pub fn merge(&mut self, o: &Sums) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.fallbacks += o.fallbacks;
        self.partials += o.partials;
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
        self.cost_pico = self.cost_pico.saturating_add(o.cost_pico);
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(o.latency_ms_sum);
        self.latency.merge(&o.latency);
    }
}

impl Delta {
    /// The same sums, per day (`hour` set to the day's start).
    pub fn daily(&self) -> Delta {
        let day = |k: &Key| Key {
            hour: k.hour - k.hour.rem_euclid(86_400),
            ..k.clone()
        };
        let mut d = Delta::default();
        for (k, s) in &self.sums {
            d.sums.entry(day(k)).or_default().merge(s);
        }
        d
    }

    pub fn add(&mut self, e: &UsageEvent) {
        let ts = e.ts.timestamp();
        let key = Key {
            hour: ts - ts.rem_euclid(3600),
            team: e.team.to_string(),
            key_id: e.key_id.as_deref().unwrap_or("").to_string(),
            model: e.model.to_string(),
            provider: e.provider.to_string(),
            route: e.route.to_string(),
            service: e.service.to_string(),
        };
        let s = self.sums.entry(key).or_default();
        s.requests += 1;
        s.errors += i64::from(is_error(e));
        s.fallbacks += i64::from(e.fallback);
        s.partials += i64::from(e.partial);
        s.input_tokens = s.input_tokens.saturating_add(clamp(e.input_tokens));
        s.output_tokens = s.output_tokens.saturating_add(clamp(e.output_tokens));
        s.cached_tokens = s.cached_tokens.saturating_add(clamp(e.cached_tokens));
        s.reasoning_tokens = s.reasoning_tokens.saturating_add(clamp(e.reasoning_tokens));
        s.cost_pico = s.cost_pico.saturating_add(pico(e.cost_usd.0));
        s.latency_ms_sum = s.latency_ms_sum.saturating_add(clamp(e.latency_ms));
        s.latency.record(e.latency_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for ms in [0, 1, 2, 3, 5, 10, 100, 1000, 60_000, 3_600_000, u64::MAX] {
            let b = bucket(ms);
            assert!(b >= last, "{ms}");
            last = b;
            let (lo, hi) = bounds(b);
            if ms > 0 && b < BUCKETS - 1 {
                assert!(lo <= ms as f64 && (ms as f64) < hi, "{ms}: {lo}..{hi}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p95 = h.quantile(0.95).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.09, "{p50}");
        assert!((p95 - 950.0).abs() / 950.0 < 0.09, "{p95}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn histograms_merge_and_encode() {
        let mut a = Histogram::default();
        a.record(3);
        let mut b = Histogram::default();
        b.record(3000);
        b.record(0);
        a.merge(&b);
        assert_eq!(a.0.iter().sum::<i64>(), 3);
        assert_eq!(Histogram::from_blob(&a.to_blob()), a);
        assert!(a.to_pg_text().starts_with("{1,0,0,0,0,0,0,1,"));
        assert_eq!(Histogram::from_blob(&[1, 2, 3]), Histogram::default());
    }

    #[test]
    fn cost_rounds_half_up_to_pico() {
        assert_eq!(pico(0), 0);
        assert_eq!(pico(499_999), 0);
        assert_eq!(pico(500_000), 1);
        assert_eq!(pico(150_000_000_000_000), 150_000_000);
    }
}
