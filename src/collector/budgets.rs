//! `/v1/budgets`: each team's spend in its current budget period, against the budget in the
//! sidecars' own policy file (read on every call, so an edited ConfigMap shows at once).
//! Periods are UTC: a day from midnight, a week from Monday, a month from the 1st.

use crate::config::raw::RawTeam;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Day,
    Week,
    Month,
}

impl Per {
    pub fn parse(s: &str) -> Option<Per> {
        match s {
            "day" => Some(Per::Day),
            "week" => Some(Per::Week),
            "month" => Some(Per::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Day => "day",
            Per::Week => "week",
            Per::Month => "month",
        }
    }

    /// The period holding `now`: `[start, end)`.
    pub fn period(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let midnight =
            |d: chrono::NaiveDate| Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN));
        let today = now.date_naive();
        match self {
            Per::Day => (midnight(today), midnight(today) + Duration::days(1)),
            Per::Week => {
                let monday =
                    today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
                (midnight(monday), midnight(monday) + Duration::days(7))
            }
            Per::Month => {
                let first = today.with_day(1).unwrap_or(today);
                let next = if first.month() == 12 {
                    chrono::NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    chrono::NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .unwrap_or(first);
                (midnight(first), midnight(next))
            }
        }
    }
}

/// A team's budget as the policy states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub team: String,
    /// Pico-dollars.
    pub pico: i64,
    pub per: Per,
}

#[derive(serde::Deserialize)]
struct PolicyTeams {
    #[serde(default)]
    teams: BTreeMap<String, RawTeam>,
}

/// The budgets in a policy file. Only `teams:` is read: the rest of the policy (providers'
/// keys and the like) is the sidecars' business and may name variables the collector lacks.
pub fn read(path: &Path) -> Result<Vec<Budget>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy {}: {e}", path.display()))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| crate::config::yaml_error(e).to_string())?;
    let teams = match value.get("teams") {
        Some(t) => {
            serde_yaml::from_value::<PolicyTeams>(serde_yaml::Value::Mapping(
                [(serde_yaml::Value::from("teams"), t.clone())]
                    .into_iter()
                    .collect(),
            ))
            .map_err(|e| crate::config::yaml_error(e).to_string())?
            .teams
        }
        None => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for (team, t) in teams {
        let Some(b) = t.budget else { continue };
        let per = Per::parse(&b.per)
            .ok_or_else(|| format!("teams.{team}.budget.per: not one of day, week, month"))?;
        if !b.usd.is_finite() || b.usd < 0.0 || b.usd > 9.0e6 {
            return Err(format!(
                "teams.{team}.budget.usd: must be between 0 and 9,000,000"
            ));
        }
        out.push(Budget {
            team,
            pico: (b.usd * 1e12).round() as i64,
            per,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_calendar_periods() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap(); // a Thursday
        let (s, e) = Per::Day.period(now);
        assert_eq!(
            (s.to_rfc3339(), e.to_rfc3339()),
            (
                "2026-12-31T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
        let (s, _) = Per::Week.period(now);
        assert_eq!(s.to_rfc3339(), "2026-12-28T00:00:00+00:00");
        let (s, e) = Per::Month.period(now);
        assert_eq!(
            (s.to_rfc3339(), e.to_rfc3339()),
            (
                "2026-12-01T00:00:00+00:00".into(),
                "2027-01-01T00:00:00+00:00".into()
            )
        );
    }

    #[test]
    fn reads_only_teams_from_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            "providers: { openai: { format: openai, base_url: \"${UNSET_IN_COLLECTOR}\" } }\nteams:\n  research: { budget: { usd: 200, per: day } }\n  ops: {}\n",
        )
        .unwrap();
        let b = read(&p).unwrap();
        assert_eq!(
            b,
            vec![Budget {
                team: "research".into(),
                pico: 200_000_000_000_000,
                per: Per::Day
            }]
        );
    }
}
