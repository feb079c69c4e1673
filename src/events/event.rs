//! The usage event: one per request on the LLM path. One type, serialised by the sidecar
//! and parsed by the collector, so the two cannot drift; versioned (`v`) so a fleet can
//! be upgraded one pod at a time. It never carries prompt or completion text, nor a key.

use crate::price::Atto;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
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
    pub error_code: Option<Cow<'static, str>>,
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
    /// A strategy's name: static on the sidecar, so recording it allocates nothing.
    pub strategy: Cow<'static, str>,
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
    match super::line::ts_text(ts) {
        Some(b) => s.serialize_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => s.serialize_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }
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

#[cfg(test)]
pub(crate) mod tests {
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
