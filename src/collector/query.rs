//! `/v1/usage`: parameters parsed into a typed query, and rows rendered as JSON or CSV.

use super::rollup::Sums;
use super::store::{KeyValue, UsageRow};
use crate::events::Usd;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use std::collections::HashMap;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Team,
    Model,
    Provider,
    Route,
    Service,
    Key,
    Day,
    Hour,
}

impl Dim {
    pub const ALL: [Dim; 8] = [
        Dim::Team,
        Dim::Model,
        Dim::Provider,
        Dim::Route,
        Dim::Service,
        Dim::Key,
        Dim::Day,
        Dim::Hour,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Team => "team",
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::Route => "route",
            Dim::Service => "service",
            Dim::Key => "key",
            Dim::Day => "day",
            Dim::Hour => "hour",
        }
    }

    /// The roll-up expression grouped on (fixed text: never from the request).
    pub fn column(self) -> &'static str {
        match self {
            Dim::Team => "team",
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::Route => "route",
            Dim::Service => "service",
            Dim::Key => "key_id",
            Dim::Day => "(hour / 86400) * 86400",
            Dim::Hour => "hour",
        }
    }

    pub fn is_time(self) -> bool {
        matches!(self, Dim::Day | Dim::Hour)
    }

    fn parse(s: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// A usage query over hourly roll-ups: `from` rounds down and `to` up to the hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from_hour: i64,
    /// Exclusive.
    pub to_hour: i64,
    pub group_by: Vec<Dim>,
    pub team: Option<String>,
    pub model: Option<String>,
}

/// A time as RFC 3339, a date (`2026-11-23`, midnight UTC), unix seconds, or a span back
/// from now (`7d`, `24h`, `30m`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Utc
            .timestamp_opt(secs, 0)
            .single()
            .ok_or_else(|| format!("{secs} is out of range"));
    }
    if let Ok(span) = humantime::parse_duration(s) {
        let span = chrono::Duration::from_std(span).map_err(|_| "span is too long".to_string())?;
        return now
            .checked_sub_signed(span)
            .ok_or_else(|| "span is too long".to_string());
    }
    Err(format!(
        "{:?} is not a time (RFC 3339, YYYY-MM-DD, unix seconds, or a span like 7d)",
        crate::error::clip(s)
    ))
}

/// The query a reader may run. A team reader is held to its team whatever it asks.
pub fn usage_query(
    params: &HashMap<String, String>,
    team_of_reader: Option<&str>,
    now: DateTime<Utc>,
) -> Result<UsageQuery, String> {
    let from = match params.get("from") {
        Some(s) => parse_time(s, now)?,
        None => now - chrono::Duration::days(30),
    };
    let to = match params.get("to") {
        Some(s) => parse_time(s, now)?,
        None => now,
    };
    let from_hour = from.timestamp().div_euclid(3600) * 3600;
    let to_hour = (to.timestamp() + 3599).div_euclid(3600) * 3600;
    if to_hour <= from_hour {
        return Err("`to` must be after `from`".into());
    }
    let mut group_by = Vec::new();
    if let Some(g) = params.get("group_by").filter(|g| !g.is_empty()) {
        for name in g.split(',') {
            let d = Dim::parse(name.trim()).ok_or_else(|| {
                format!(
                    "group_by {:?} is not one of team, model, provider, route, service, key, day, hour",
                    crate::error::clip(name)
                )
            })?;
            if !group_by.contains(&d) {
                group_by.push(d);
            }
        }
    }
    let team = params.get("team").filter(|t| !t.is_empty()).cloned();
    let team = match (team_of_reader, team) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(format!("this token reads team {own:?} only"))
        }
        (Some(own), _) => Some(own.to_string()),
        (None, t) => t,
    };
    Ok(UsageQuery {
        from_hour,
        to_hour,
        group_by,
        team,
        model: params.get("model").filter(|m| !m.is_empty()).cloned(),
    })
}

fn key_text(d: Dim, v: &KeyValue) -> String {
    match v {
        KeyValue::Text(s) => s.clone(),
        KeyValue::Time(t) => {
            let Some(t) = Utc.timestamp_opt(*t, 0).single() else {
                return t.to_string();
            };
            if d == Dim::Day {
                t.format("%Y-%m-%d").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            }
        }
    }
}

/// Pico-dollars as an exact USD decimal.
/// Pico-dollars as the API writes USD (an exact decimal number; never below 0).
pub fn usd_json(pico: i64) -> serde_json::Value {
    serde_json::to_value(usd(pico.max(0))).unwrap_or_default()
}

pub fn usd(pico: i64) -> Usd {
    Usd(u128::try_from(pico).unwrap_or(0) * 1_000_000)
}

fn ms(v: Option<f64>) -> Option<f64> {
    v.map(|x| (x * 10.0).round() / 10.0)
}

pub fn to_json(rows: &[UsageRow], dims: &[Dim]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for (d, v) in dims.iter().zip(&r.keys) {
                o.insert(d.name().into(), key_text(*d, v).into());
            }
            let s = &r.sums;
            for (k, v) in s.counts() {
                o.insert(k.into(), v.into());
            }
            o.insert(
                "cost_usd".into(),
                serde_json::to_value(usd(s.cost_pico)).unwrap_or_default(),
            );
            o.insert(
                "p50_latency_ms".into(),
                ms(r.sums.latency.quantile(0.5)).into(),
            );
            o.insert(
                "p95_latency_ms".into(),
                ms(r.sums.latency.quantile(0.95)).into(),
            );
            serde_json::Value::Object(o)
        })
        .collect();
    serde_json::json!({ "rows": rows })
}

pub fn to_csv(rows: &[UsageRow], dims: &[Dim]) -> String {
    let mut out = String::new();
    let mut head: Vec<&str> = dims.iter().map(|d| d.name()).collect();
    head.extend(Sums::default().counts().map(|(k, _)| k));
    head.extend(["cost_usd", "p50_latency_ms", "p95_latency_ms"]);
    out.push_str(&head.join(","));
    out.push('\n');
    for r in rows {
        let mut cells: Vec<String> = dims
            .iter()
            .zip(&r.keys)
            .map(|(d, v)| csv_cell(&key_text(*d, v)))
            .collect();
        let s = &r.sums;
        for (_, v) in s.counts() {
            cells.push(v.to_string());
        }
        cells.push(crate::price::usd_decimal(usd(s.cost_pico).0));
        for q in [0.5, 0.95] {
            cells.push(ms(r.sums.latency.quantile(q)).map_or(String::new(), |v| v.to_string()));
        }
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// does not run a cell as a formula.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> HashMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn times_and_groups() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 10, 30, 0).unwrap();
        let q = usage_query(
            &params(&[
                ("from", "7d"),
                ("group_by", "team,model,day"),
                ("model", "gpt-4o"),
            ]),
            None,
            now,
        )
        .unwrap();
        assert_eq!(q.group_by, vec![Dim::Team, Dim::Model, Dim::Day]);
        assert_eq!(
            q.from_hour,
            Utc.with_ymd_and_hms(2026, 11, 16, 10, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert_eq!(
            q.to_hour,
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert!(usage_query(&params(&[("group_by", "team;drop")]), None, now).is_err());
        assert!(usage_query(&params(&[("from", "yesterday")]), None, now).is_err());
        assert_eq!(
            parse_time("2026-11-01", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_team_reader_is_held_to_its_team() {
        let now = Utc::now();
        let q = usage_query(&params(&[]), Some("research"), now).unwrap();
        assert_eq!(q.team.as_deref(), Some("research"));
        let q = usage_query(&params(&[("team", "research")]), Some("research"), now).unwrap();
        assert_eq!(q.team.as_deref(), Some("research"));
        assert!(usage_query(&params(&[("team", "search")]), Some("research"), now).is_err());
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
