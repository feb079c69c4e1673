//! The usage event: one per request on the LLM path. One type, serialised by the sidecar
//! and parsed by the collector, so the two cannot drift; versioned (`v`) so a fleet can
//! be upgraded one pod at a time. It never carries prompt or completion text, nor a key.

use crate::price::Atto;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// The schema version this build writes.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub v: u32,
    /// UUIDv7: time-ordered, and the idempotency key of delivery.
    pub id: uuid::Uuid,
    /// When the request ended (UTC, millisecond precision).
    #[serde(serialize_with = "ts_millis")]
    pub ts: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub namespace: Arc<str>,
    #[serde(default)]
    pub pod: Arc<str>,
    #[serde(default)]
    pub service: Arc<str>,
    #[serde(default)]
    pub node: Arc<str>,
    pub team: Arc<str>,
    /// The virtual key's id (never the key), once governance identifies callers by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Arc<str>>,
    pub route: Arc<str>,
    /// The model the client asked for (absent when the body named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<Arc<str>>,
    /// The catalog model that answered (or was tried last).
    pub model: Arc<str>,
    pub provider: Arc<str>,
    /// Upstream attempts made (0 when the proxy answered itself).
    pub attempts: u32,
    /// The answer came from a later attempt than the plan's first.
    pub fallback: bool,
    /// The HTTP status the client received (0: the connection was cut before any).
    pub status: u16,
    /// The proxy's own error code, when the proxy answered with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<Arc<str>>,
    pub stream: bool,
    /// The response was cut before its end; tokens are those streamed so far.
    pub partial: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Exact, from the integer atto-dollar cost: written as a JSON number with every digit.
    pub cost_usd: Usd,
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    pub overhead_us: u64,
    pub policy_version: PolicyVersion,
    pub decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// The reload generation (1 = as started).
    pub generation: u64,
    /// Hex SHA-256 of the policy file the request ran under.
    pub sha256: Arc<str>,
}

/// How the upstream was chosen. Routing strategies fill in more as they learn to explain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Decision {
    pub strategy: Arc<str>,
    /// Why this target, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
    /// The request's complexity score in [0, 1], where its route computed one (what
    /// `switchyard whatif` re-routes by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// What the route's shadow would have chosen (recorded, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
}

/// A shadow route's decision for the same request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Shadow {
    pub route: Arc<str>,
    pub strategy: Arc<str>,
    /// The model it would have tried first.
    pub model: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A USD amount held exactly as integer atto-dollars (10⁻¹⁸), serialised as a JSON number
/// with all its digits and parsed back without passing through a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Usd(pub Atto);

/// RFC 3339 in UTC with milliseconds (`2026-11-23T09:34:15.371Z`), written digit by digit:
/// chrono's general formatter costs more than the rest of the event together.
fn ts_millis<S: Serializer>(ts: &chrono::DateTime<chrono::Utc>, s: S) -> Result<S::Ok, S::Error> {
    match ts_text(ts) {
        Some(b) => s.serialize_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => s.serialize_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }
}

/// The text of `ts_millis` for years 0–9999 (`None` outside them). The calendar date is
/// worked out once a day per thread; the time of day is arithmetic on the milliseconds.
fn ts_text(ts: &chrono::DateTime<chrono::Utc>) -> Option<[u8; 24]> {
    use chrono::Datelike;
    use std::cell::Cell;
    thread_local! {
        static DATE: Cell<(i64, [u8; 11])> = const { Cell::new((i64::MIN, [0; 11])) };
    }
    let millis = ts.timestamp_millis();
    let day = millis.div_euclid(86_400_000);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let put = |b: &mut [u8; 24], at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    let (cached_day, date) = DATE.get();
    if cached_day == day {
        b[..11].copy_from_slice(&date);
    } else {
        let year = ts.year();
        if !(0..=9999).contains(&year) {
            return None;
        }
        put(&mut b, 0, 4, year as u32);
        put(&mut b, 5, 2, ts.month());
        put(&mut b, 8, 2, ts.day());
        let mut date = [0; 11];
        date.copy_from_slice(&b[..11]);
        DATE.set((day, date));
    }
    let of_day = millis.rem_euclid(86_400_000) as u32;
    put(&mut b, 11, 2, of_day / 3_600_000);
    put(&mut b, 14, 2, of_day / 60_000 % 60);
    put(&mut b, 17, 2, of_day / 1000 % 60);
    put(&mut b, 20, 3, of_day % 1000);
    Some(b)
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = crate::price::usd_decimal(self.0);
        match serde_json::value::RawValue::from_string(text) {
            Ok(raw) => raw.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        // A number keeps its text through RawValue; a quoted decimal is accepted too.
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get().trim_matches('"');
        parse_usd(text).map(Usd).map_err(serde::de::Error::custom)
    }
}

/// Parses a non-negative decimal (`12`, `0.000150`, or JSON's exponent form `1.5e-6`) into
/// atto-dollars, exactly; a value finer than 10⁻¹⁸ is refused rather than rounded.
pub fn parse_usd(text: &str) -> Result<Atto, String> {
    const SCALE: i64 = 18;
    let bad = || {
        format!(
            "cost_usd {:?} is not a plain decimal",
            crate::error::clip(text)
        )
    };
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().map_err(|_| bad())?),
        None => (text, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (mantissa.contains('.') && !digits(frac)) || !(-40..=40).contains(&exp) {
        return Err(bad());
    }
    // All the digits as one integer, and the power of ten that scales it to atto-dollars.
    let all = format!("{whole}{frac}");
    let all = all.trim_start_matches('0');
    let shift = SCALE + exp - frac.len() as i64;
    let range = || "cost_usd is out of range".to_string();
    if all.is_empty() {
        return Ok(0);
    }
    let n: Atto = all.parse().map_err(|_| range())?;
    if shift >= 0 {
        10u128
            .checked_pow(shift as u32)
            .and_then(|p| n.checked_mul(p))
            .ok_or_else(range)
    } else {
        let p = 10u128.checked_pow((-shift) as u32).ok_or_else(range)?;
        if !n.is_multiple_of(p) {
            return Err("cost_usd has more digits than atto-dollar precision holds".into());
        }
        Ok(n / p)
    }
}

/// A new event id: UUIDv7 (RFC 9562) for the millisecond `ts`, with 74 random bits from
/// the thread's generator. `Uuid::now_v7` asks the kernel for randomness on every call,
/// which costs more than the rest of the event; ids need uniqueness, not secrecy, and the
/// generator is seeded per thread from the OS.
pub fn new_id(ts: &chrono::DateTime<chrono::Utc>) -> uuid::Uuid {
    let millis = u128::from(ts.timestamp_millis().max(0) as u64 & 0xFFFF_FFFF_FFFF);
    let rand_a = u128::from(fastrand::u16(..) & 0x0FFF);
    let rand_b = u128::from(fastrand::u64(..) & 0x3FFF_FFFF_FFFF_FFFF);
    uuid::Uuid::from_u128(millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)
}

/// `",\"name\":"`: a field's key as one literal, so writing it is a single copy.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl UsageEvent {
    /// One NDJSON line (no newline), exactly what the derived `Serialize` writes (a test
    /// holds the two equal, field by field), without serde's per-field machinery: every
    /// request pays for this line, and by hand it costs a quarter as much.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// `to_json`, appended to `out` (the spool writer's buffer: no copy of its own).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.reserve(1024);
        let mut w = Line(out);
        w.raw("{\"v\":");
        w.num(u64::from(self.v));
        w.raw(",\"id\":\"");
        w.raw(
            self.id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        w.raw("\",\"ts\":");
        match ts_text(&self.ts) {
            Some(text) => {
                w.0.push(b'"');
                w.0.extend_from_slice(&text);
                w.0.push(b'"');
            }
            None => w.string(&self.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        }
        w.field_str(key!("namespace"), &self.namespace);
        w.field_str(key!("pod"), &self.pod);
        w.field_str(key!("service"), &self.service);
        w.field_str(key!("node"), &self.node);
        w.field_str(key!("team"), &self.team);
        if let Some(k) = &self.key_id {
            w.field_str(key!("key_id"), k);
        }
        w.field_str(key!("route"), &self.route);
        if let Some(m) = &self.requested_model {
            w.field_str(key!("requested_model"), m);
        }
        w.field_str(key!("model"), &self.model);
        w.field_str(key!("provider"), &self.provider);
        w.field_num(key!("attempts"), u64::from(self.attempts));
        w.field_bool(key!("fallback"), self.fallback);
        w.field_num(key!("status"), u64::from(self.status));
        if let Some(c) = &self.error_code {
            w.field_str(key!("error_code"), c);
        }
        w.field_bool(key!("stream"), self.stream);
        w.field_bool(key!("partial"), self.partial);
        w.field_num(key!("input_tokens"), self.input_tokens);
        w.field_num(key!("output_tokens"), self.output_tokens);
        w.field_num(key!("cached_tokens"), self.cached_tokens);
        w.field_num(key!("cache_write_tokens"), self.cache_write_tokens);
        w.field_num(key!("reasoning_tokens"), self.reasoning_tokens);
        w.raw(key!("cost_usd"));
        crate::price::write_usd(self.cost_usd.0, w.0);
        w.field_num(key!("latency_ms"), self.latency_ms);
        if let Some(t) = self.ttft_ms {
            w.field_num(key!("ttft_ms"), t);
        }
        w.field_num(key!("overhead_us"), self.overhead_us);
        w.raw(",\"policy_version\":{\"generation\":");
        w.num(self.policy_version.generation);
        w.field_str(key!("sha256"), &self.policy_version.sha256);
        w.raw("},\"decision\":{\"strategy\":");
        w.string(&self.decision.strategy);
        if let Some(r) = &self.decision.reason {
            w.field_str(key!("reason"), r);
        }
        if let Some(score) = self.decision.score.filter(|s| s.is_finite()) {
            w.raw(key!("score"));
            w.raw(ryu::Buffer::new().format_finite(score));
        }
        if let Some(s) = &self.decision.shadow {
            w.raw(",\"shadow\":{\"route\":");
            w.string(&s.route);
            w.field_str(key!("strategy"), &s.strategy);
            w.field_str(key!("model"), &s.model);
            if let Some(r) = &s.reason {
                w.field_str(key!("reason"), r);
            }
            if let Some(score) = s.score.filter(|s| s.is_finite()) {
                w.raw(key!("score"));
                w.raw(ryu::Buffer::new().format_finite(score));
            }
            w.raw("}");
        }
        w.raw("}}");
    }
}

/// Whether any byte is a control character, `"` or `\\`: eight bytes at a time, the last
/// eight overlapping the one before and a short string padded with spaces, so no byte is
/// ever looked at alone (a byte flagged falsely next to a true one only sends the string
/// down the careful path).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let flagged = |c: &[u8]| {
        let mut b = [b' '; 8];
        b[..c.len()].copy_from_slice(c);
        let x = u64::from_le_bytes(b);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = zero_byte(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(x ^ (ONES * u64::from(b'\\')));
        control | quote | backslash != 0
    };
    if s.len() <= 8 {
        return flagged(s);
    }
    let mut chunks = s.chunks_exact(8);
    if chunks.any(flagged) {
        return true;
    }
    !chunks.remainder().is_empty() && flagged(&s[s.len() - 8..])
}

/// A JSON line being written; keys are whole literals made by `key!`.
struct Line<'a>(&'a mut Vec<u8>);

impl Line<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn num(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n));
    }

    fn field_str(&mut self, key: &str, v: &str) {
        self.raw(key);
        self.string(v);
    }

    fn field_num(&mut self, key: &str, n: u64) {
        self.raw(key);
        self.num(n);
    }

    fn field_bool(&mut self, key: &str, b: bool) {
        self.raw(key);
        self.raw(if b { "true" } else { "false" });
    }

    /// A JSON string: quotes, backslashes and control characters escaped.
    fn string(&mut self, s: &str) {
        self.0.push(b'"');
        if !needs_escape(s.as_bytes()) {
            // Names from the policy and model ids: almost always the whole string as is.
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
            return;
        }
        let mut start = 0;
        for (i, &b) in s.as_bytes().iter().enumerate() {
            if b >= 0x20 && b != b'"' && b != b'\\' {
                continue;
            }
            self.0.extend_from_slice(&s.as_bytes()[start..i]);
            match b {
                b'"' => self.raw("\\\""),
                b'\\' => self.raw("\\\\"),
                b'\n' => self.raw("\\n"),
                b'\r' => self.raw("\\r"),
                b'\t' => self.raw("\\t"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.raw("\\u00");
                    self.0.push(HEX[usize::from(b >> 4)]);
                    self.0.push(HEX[usize::from(b & 15)]);
                }
            }
            start = i + 1;
        }
        self.0.extend_from_slice(&s.as_bytes()[start..]);
        self.0.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> UsageEvent {
        UsageEvent {
            v: VERSION,
            id: uuid::Uuid::now_v7(),
            ts: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3),
            namespace: "ml".into(),
            pod: "app-1".into(),
            service: "chatbot".into(),
            node: "n1".into(),
            team: "research".into(),
            key_id: None,
            route: "chat".into(),
            requested_model: Some("gpt-4o".into()),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            attempts: 1,
            fallback: false,
            status: 200,
            error_code: None,
            stream: true,
            partial: false,
            input_tokens: 12,
            output_tokens: 7,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost_usd: Usd(6_000_000_000_000),
            latency_ms: 5,
            ttft_ms: Some(2),
            overhead_us: 40,
            policy_version: PolicyVersion {
                generation: 1,
                sha256: "ab".into(),
            },
            decision: Decision {
                strategy: "weighted".into(),
                reason: None,
                score: None,
                shadow: None,
            },
        }
    }

    #[test]
    fn the_hand_written_line_is_what_serde_writes() {
        let mut e = sample();
        let same = |e: &UsageEvent| {
            let hand: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            let derived = serde_json::to_value(e).unwrap();
            assert_eq!(hand, derived);
            // And the collector's parser takes it back unchanged.
            let back: UsageEvent = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(&back, e);
        };
        same(&e);
        e.key_id = Some("alice-laptop".into());
        e.requested_model = None;
        e.error_code = Some("upstream_timeout".into());
        e.ttft_ms = None;
        e.decision.reason = Some("attempt 2 of the plan".into());
        e.decision.score = Some(0.4321);
        e.decision.shadow = Some(Shadow {
            route: "auto".into(),
            strategy: "complexity".into(),
            model: "small".into(),
            reason: Some("complexity; chose small; score 0.1 -> tier 1 (small)".into()),
            score: Some(0.1),
        });
        e.team = "quote\" back\\ nl\n tab\t bell\u{7} é 😀".into();
        e.cost_usd = Usd(123_456_789_000_000_000_001);
        e.input_tokens = u64::MAX;
        same(&e);
    }

    #[test]
    fn the_escape_check_misses_nothing() {
        for s in [
            "",
            "plain-model-name",
            "gpt-4o-mini-2024-07-18",
            "ünïcødé 😀 text",
        ] {
            assert!(!needs_escape(s.as_bytes()), "{s}");
        }
        for bad in ["\"", "\\", "\n", "\u{1f}"] {
            for at in 0..20 {
                let s = format!("{}{bad}{}", "a".repeat(at), "é".repeat(3));
                assert!(needs_escape(s.as_bytes()), "{s:?}");
            }
        }
        // Every single byte, at every place of every length up to three words.
        for b in 0u8..=255 {
            let want = b < 0x20 || b == b'"' || b == b'\\';
            for len in 1..=24 {
                for at in 0..len {
                    let mut v = vec![b'x'; len];
                    v[at] = b;
                    assert_eq!(needs_escape(&v), want, "byte {b} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn ids_are_uuid_v7_of_the_events_millisecond() {
        use chrono::TimeZone;
        let ts = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .unwrap()
            + chrono::Duration::milliseconds(345);
        let ids: std::collections::HashSet<uuid::Uuid> = (0..10_000).map(|_| new_id(&ts)).collect();
        assert_eq!(ids.len(), 10_000, "unique within one millisecond");
        for id in ids.iter().take(100) {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!((secs, nanos / 1_000_000), (ts.timestamp() as u64, 345));
        }
        // Later milliseconds sort later, as the collector's paging expects.
        assert!(new_id(&(ts + chrono::Duration::milliseconds(1))) > *ids.iter().max().unwrap());
    }

    #[test]
    fn timestamps_are_rfc3339_millis() {
        use chrono::TimeZone;
        // Across days, years and the epoch, whatever date the thread saw before.
        let start = chrono::Utc
            .with_ymd_and_hms(1969, 12, 31, 23, 0, 0)
            .unwrap();
        for step in 0..2000i64 {
            let ts =
                start + chrono::Duration::milliseconds(step * 7_777_777_777 % 1_000_000_000_000);
            let want = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(std::str::from_utf8(&ts_text(&ts).unwrap()).unwrap(), want);
        }
        let mut e = sample();
        e.ts = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::milliseconds(67);
        let text = String::from_utf8(e.to_json()).unwrap();
        assert!(
            text.contains("\"ts\":\"2026-01-02T03:04:05.067Z\""),
            "{text}"
        );
        let back: UsageEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.ts, e.ts);
    }

    #[test]
    fn round_trips_exactly() {
        let e = sample();
        let line = e.to_json();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains("\"cost_usd\":0.000006"), "{text}");
        assert!(!text.contains("key_id"), "absent key is omitted");
        let back: UsageEvent = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn usd_parses_without_floats() {
        assert_eq!(parse_usd("0").unwrap(), 0);
        assert_eq!(parse_usd("1.5").unwrap(), 1_500_000_000_000_000_000);
        assert_eq!(parse_usd("0.000000000000000001").unwrap(), 1);
        assert_eq!(parse_usd("6e-06").unwrap(), 6_000_000_000_000);
        assert_eq!(parse_usd("1.5E2").unwrap(), 150 * 1_000_000_000_000_000_000);
        assert_eq!(
            parse_usd("0.10000000000000000000").unwrap(),
            100_000_000_000_000_000
        );
        for bad in [
            "",
            ".",
            "1.",
            "-1",
            "1e-19",
            "1e",
            "e5",
            "0.0000000000000000001",
            "abc",
            "1.2.3",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad:?}");
        }
        let q: Usd = serde_json::from_str("\"0.25\"").unwrap();
        assert_eq!(q.0, 250_000_000_000_000_000);
    }
}
