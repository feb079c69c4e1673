//! Usage events as NDJSON lines, written by hand: every request pays for one, and serde's
//! per-field machinery cost four times as much. Most of a line (the pod's identity, the
//! team, route, model, provider and policy version) comes from the policy, so the spool
//! writer keeps that part rendered ([`Writer`]) and a line is mostly one copy. Those keys
//! come first and together, unlike the struct's order: JSON readers do not mind, and one
//! long run that repeats line after line is also what gzip compresses cheapest.

use super::event::UsageEvent;
use std::sync::Arc;

/// `",\"name\":"`: a field's key as one literal, so writing it is a single copy.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl UsageEvent {
    /// One NDJSON line (no newline) holding what the derived `Serialize` writes (a test
    /// holds the two equal, field by field).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// `to_json`, appended to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.reserve(1024);
        head(self, out);
        policy_part(self, out);
        rest(self, out);
    }
}

/// How many rendered policy parts the spool writer keeps: a sidecar sees few combinations
/// of team, route and model, and a reload makes new ones.
const CACHED: usize = 8;

/// Writes lines, keeping the policy part of the last few combinations rendered.
#[derive(Default)]
pub struct Writer {
    cache: Vec<Rendered>,
    /// The entry the next miss replaces.
    next: usize,
}

struct Rendered {
    /// The strings it was made from. Holding them keeps their addresses theirs, so that
    /// comparing addresses is comparing contents.
    from: [Arc<str>; 9],
    generation: u64,
    json: Vec<u8>,
}

/// The policy's strings in an event, in `Rendered::from`'s order.
fn policy_strings(e: &UsageEvent) -> [&Arc<str>; 9] {
    [
        &e.namespace,
        &e.pod,
        &e.service,
        &e.node,
        &e.team,
        &e.route,
        &e.model,
        &e.provider,
        &e.policy_version.sha256,
    ]
}

impl Writer {
    /// `UsageEvent::write_json`, the same bytes, with the policy part copied when it was
    /// rendered before.
    pub fn write(&mut self, e: &UsageEvent, out: &mut Vec<u8>) {
        out.reserve(1024);
        head(e, out);
        let strings = policy_strings(e);
        let hit = self.cache.iter().position(|r| {
            r.generation == e.policy_version.generation
                && r.from.iter().zip(strings).all(|(a, b)| Arc::ptr_eq(a, b))
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let mut json = Vec::with_capacity(256);
                policy_part(e, &mut json);
                let rendered = Rendered {
                    from: strings.map(Arc::clone),
                    generation: e.policy_version.generation,
                    json,
                };
                if self.cache.len() < CACHED {
                    self.cache.push(rendered);
                    self.cache.len() - 1
                } else {
                    let at = self.next;
                    self.next = (at + 1) % CACHED;
                    self.cache[at] = rendered;
                    at
                }
            }
        };
        out.extend_from_slice(&self.cache[at].json);
        rest(e, out);
    }
}

fn head(e: &UsageEvent, out: &mut Vec<u8>) {
    let mut w = Line(out);
    w.raw("{\"v\":");
    w.num(u64::from(e.v));
}

/// The fields that come from the policy and the pod, starting with their comma.
fn policy_part(e: &UsageEvent, out: &mut Vec<u8>) {
    let mut w = Line(out);
    w.field_str(key!("namespace"), &e.namespace);
    w.field_str(key!("pod"), &e.pod);
    w.field_str(key!("service"), &e.service);
    w.field_str(key!("node"), &e.node);
    w.field_str(key!("team"), &e.team);
    w.field_str(key!("route"), &e.route);
    w.field_str(key!("model"), &e.model);
    w.field_str(key!("provider"), &e.provider);
    w.raw(",\"policy_version\":{\"generation\":");
    w.num(e.policy_version.generation);
    w.field_str(key!("sha256"), &e.policy_version.sha256);
    w.raw("}");
}

/// What changes from one request to the next, and the closing brace.
fn rest(e: &UsageEvent, out: &mut Vec<u8>) {
    let mut w = Line(out);
    w.raw(",\"id\":\"");
    w.raw(
        e.id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    w.raw("\",\"ts\":");
    match ts_text(&e.ts) {
        Some(text) => {
            w.0.push(b'"');
            w.0.extend_from_slice(&text);
            w.0.push(b'"');
        }
        None => w.string(&e.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }
    if let Some(m) = &e.requested_model {
        w.field_str(key!("requested_model"), m);
    }
    if let Some(k) = &e.key_id {
        w.field_str(key!("key_id"), k);
    }
    w.field_num(key!("attempts"), u64::from(e.attempts));
    w.field_bool(key!("fallback"), e.fallback);
    w.field_num(key!("status"), u64::from(e.status));
    w.field_bool(key!("stream"), e.stream);
    w.field_bool(key!("partial"), e.partial);
    w.field_num(key!("input_tokens"), e.input_tokens);
    w.field_num(key!("output_tokens"), e.output_tokens);
    w.field_num(key!("cached_tokens"), e.cached_tokens);
    w.field_num(key!("cache_write_tokens"), e.cache_write_tokens);
    w.field_num(key!("reasoning_tokens"), e.reasoning_tokens);
    w.raw(key!("cost_usd"));
    crate::price::write_usd(e.cost_usd.0, w.0);
    w.field_num(key!("latency_ms"), e.latency_ms);
    if let Some(t) = e.ttft_ms {
        w.field_num(key!("ttft_ms"), t);
    }
    w.field_num(key!("overhead_us"), e.overhead_us);
    if let Some(c) = &e.error_code {
        w.field_str(key!("error_code"), c);
    }
    w.raw(",\"decision\":{\"strategy\":");
    w.string(&e.decision.strategy);
    if let Some(r) = &e.decision.reason {
        w.field_str(key!("reason"), r);
    }
    if let Some(score) = e.decision.score.filter(|s| s.is_finite()) {
        w.raw(key!("score"));
        w.raw(ryu::Buffer::new().format_finite(score));
    }
    if let Some(s) = &e.decision.shadow {
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

/// The text of `ts_millis` for years 0–9999 (`None` outside them). The calendar date is
/// worked out once a day per thread; the time of day is arithmetic on the milliseconds.
pub(super) fn ts_text(ts: &chrono::DateTime<chrono::Utc>) -> Option<[u8; 24]> {
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

/// A JSON line being written; keys are whole literals made by `key!`. The small writers
/// are always inlined so that each key's length is a constant where it is copied: a few
/// moves instead of a call to `memcpy` (0.24k fewer instructions a line).
struct Line<'a>(&'a mut Vec<u8>);

impl Line<'_> {
    #[inline(always)]
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    #[inline(always)]
    fn num(&mut self, n: u64) {
        // Most of an event's counts are one digit (attempts, the token kinds a request did
        // not use): one byte, without itoa's buffer and copy.
        if n < 10 {
            self.0.push(b'0' + n as u8);
        } else {
            self.raw(itoa::Buffer::new().format(n));
        }
    }

    #[inline(always)]
    fn field_str(&mut self, key: &str, v: &str) {
        self.raw(key);
        self.string(v);
    }

    #[inline(always)]
    fn field_num(&mut self, key: &str, n: u64) {
        self.raw(key);
        self.num(n);
    }

    #[inline(always)]
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
    use crate::events::{Shadow, Usd};

    #[test]
    fn the_hand_written_line_is_what_serde_writes() {
        let mut e = crate::events::event::tests::sample();
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
        let mut e = crate::events::event::tests::sample();
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
    fn the_writer_writes_what_write_json_writes_hit_or_miss() {
        let base = crate::events::event::tests::sample();
        let mut writer = Writer::default();
        // Twelve teams (more than the cache keeps), each seen three times, two generations.
        let teams: Vec<Arc<str>> = (0..12).map(|i| Arc::from(format!("team-{i}"))).collect();
        for round in 0..3 {
            for (i, team) in teams.iter().enumerate() {
                let mut e = base.clone();
                e.team = team.clone();
                e.policy_version.generation = 1 + (i % 2) as u64;
                e.input_tokens = (round * 100 + i) as u64;
                let mut line = Vec::new();
                writer.write(&e, &mut line);
                assert_eq!(line, e.to_json(), "round {round}, team {i}");
            }
        }
        assert_eq!(writer.cache.len(), CACHED);
        // Equal text in another allocation is a miss, never a wrong hit.
        let mut e = base.clone();
        e.team = Arc::from("team-11 ");
        let mut line = Vec::new();
        writer.write(&e, &mut line);
        assert_eq!(line, e.to_json());
    }
}
