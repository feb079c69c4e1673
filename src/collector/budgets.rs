//! Budgets as the collector sees them: every level of the sidecars' policy that has a
//! `budget` (the org, teams, virtual keys), its spend in the current period from the
//! roll-ups, what requests in flight hold reserved, and the `alert_at` marks crossed.
//! The policy file is read at every use, so an edited ConfigMap shows at once.
//! Periods are UTC: a day from midnight, a week from Monday, a month from the 1st.
//!
//! Reservations live where admission keeps them: in Redis (`governance.redis`), read here
//! with a read-only script; otherwise in each sidecar, which reports them with its budget
//! refresh (`POST /v1/reservations`).

use super::query::{self, Dim, UsageQuery};
use super::store::{Alert, KeyValue, Store};
use super::App;
use crate::config::raw::{RawBudget, RawLevel, RawTeam};
use crate::governance::fleet::{level_id, Fleet};
use crate::governance::LevelKind;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

pub use crate::governance::Per;

/// Redis keeps nano-dollars, the collector pico-dollars.
const PICO_PER_NANO: i64 = 1_000;

/// A level's budget as the policy states it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLevel {
    pub kind: LevelKind,
    /// `org`, the team's name or the key's id.
    pub name: String,
    /// The team of a team or key level; empty for the org.
    pub team: String,
    /// Pico-dollars.
    pub pico: i64,
    pub per: Per,
    pub alert_at: Vec<f64>,
}

/// The budgets of one policy file, and where its reservations are kept.
#[derive(Debug, Default, PartialEq)]
pub struct PolicyBudgets {
    pub levels: Vec<BudgetLevel>,
    /// `governance.redis`, its variables expanded (or why they could not be).
    pub redis: Option<Result<String, String>>,
}

/// The parts of the policy the collector reads. The rest (providers' keys and the like)
/// is the sidecars' business and may name variables the collector lacks.
#[derive(serde::Deserialize)]
struct PolicyPart {
    #[serde(default)]
    org: Option<RawLevel>,
    #[serde(default)]
    teams: BTreeMap<String, RawTeam>,
    #[serde(default)]
    governance: Option<GovernancePart>,
}

#[derive(serde::Deserialize)]
struct GovernancePart {
    #[serde(default)]
    redis: Option<String>,
}

pub fn read(path: &Path) -> Result<PolicyBudgets, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy {}: {e}", path.display()))?;
    let part: PolicyPart =
        serde_yaml::from_str(&text).map_err(|e| crate::config::yaml_error(e).to_string())?;
    let mut levels = Vec::new();
    let mut add = |kind: LevelKind, name: &str, team: &str, b: &Option<RawBudget>, at: &str| {
        let Some(b) = b else { return Ok(()) };
        levels.push(level(kind, name, team, b).map_err(|m| format!("{at}.budget: {m}"))?);
        Ok::<(), String>(())
    };
    if let Some(org) = &part.org {
        add(LevelKind::Org, "org", "", &org.budget, "org")?;
    }
    for (team, t) in &part.teams {
        add(
            LevelKind::Team,
            team,
            team,
            &t.budget,
            &format!("teams.{team}"),
        )?;
        for (i, k) in t.keys.iter().enumerate() {
            add(
                LevelKind::Key,
                &k.id,
                team,
                &k.budget,
                &format!("teams.{team}.keys[{i}]"),
            )?;
        }
    }
    let redis = part.governance.and_then(|g| g.redis).map(|url| {
        crate::config::expand::expand_vars(&url, &crate::config::expand::ProcessEnv)
            .map_err(|m| format!("governance.redis: {m}"))
    });
    Ok(PolicyBudgets { levels, redis })
}

fn level(kind: LevelKind, name: &str, team: &str, b: &RawBudget) -> Result<BudgetLevel, String> {
    let per = Per::parse(&b.per).ok_or("per: not one of day, week, month")?;
    if !b.usd.is_finite() || b.usd < 0.0 || b.usd > 9.0e6 {
        return Err("usd: must be between 0 and 9,000,000".into());
    }
    if b.alert_at.iter().any(|m| !m.is_finite() || *m <= 0.0) {
        return Err("alert_at: marks must be above 0".into());
    }
    Ok(BudgetLevel {
        kind,
        name: name.to_string(),
        team: team.to_string(),
        pico: (b.usd * 1e12).round() as i64,
        per,
        alert_at: b.alert_at.clone(),
    })
}

/// One period's spend, from the roll-ups: cost (pico-dollars) and requests.
#[derive(Debug, Default)]
pub struct PeriodSpend {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub org: (i64, i64),
    pub teams: HashMap<String, (i64, i64)>,
    pub keys: HashMap<String, (i64, i64)>,
}

impl PeriodSpend {
    pub fn of(&self, kind: LevelKind, name: &str) -> (i64, i64) {
        match kind {
            LevelKind::Org => self.org,
            LevelKind::Team => self.teams.get(name).copied().unwrap_or_default(),
            LevelKind::Key => self.keys.get(name).copied().unwrap_or_default(),
        }
    }
}

/// The current `per` period's spend of the org, each team and each key: one read of the
/// roll-ups grouped by team and key.
pub async fn period_spend(
    store: &Store,
    per: Per,
    now: DateTime<Utc>,
) -> Result<PeriodSpend, sqlx::Error> {
    let (start, end) = per.period(now);
    let rows = store
        .usage(&UsageQuery {
            from_hour: start.timestamp(),
            to_hour: end.timestamp(),
            group_by: vec![Dim::Team, Dim::Key],
            team: None,
            model: None,
        })
        .await?;
    let mut out = PeriodSpend {
        start,
        end,
        ..PeriodSpend::default()
    };
    let add = |to: &mut (i64, i64), cost: i64, requests: i64| {
        to.0 += cost;
        to.1 += requests;
    };
    for r in rows {
        let (cost, requests) = (r.sums.cost_pico, r.sums.requests);
        add(&mut out.org, cost, requests);
        let text = |i: usize| match r.keys.get(i) {
            Some(KeyValue::Text(t)) if !t.is_empty() => Some(t.clone()),
            _ => None,
        };
        if let Some(team) = text(0) {
            add(out.teams.entry(team).or_default(), cost, requests);
        }
        if let Some(key) = text(1) {
            add(out.keys.entry(key).or_default(), cost, requests);
        }
    }
    Ok(out)
}

/// A level's standing in its current period.
#[derive(Debug)]
pub struct LevelStatus {
    pub level: BudgetLevel,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// What the stored events cost.
    pub spend_pico: i64,
    pub requests: i64,
    /// Held by requests in flight; `None` when where they are kept cannot be read.
    pub reserved_pico: Option<i64>,
    /// The spend Redis enforces (fleet mode): ahead of the stored events by what is still
    /// being shipped.
    pub redis_spent_pico: Option<i64>,
    /// `redis`, `sidecars` or `unavailable`.
    pub reserved_from: &'static str,
}

impl LevelStatus {
    pub fn remaining_pico(&self) -> i64 {
        let spent = self.spend_pico.max(self.redis_spent_pico.unwrap_or(0));
        self.level.pico - spent - self.reserved_pico.unwrap_or(0)
    }
}

/// Every budget level's standing now.
pub async fn status(app: &App, policy: PolicyBudgets) -> Result<Vec<LevelStatus>, sqlx::Error> {
    let now = Utc::now();
    let mut spends: Vec<(Per, PeriodSpend)> = Vec::new();
    for l in &policy.levels {
        if !spends.iter().any(|(p, _)| *p == l.per) {
            spends.push((l.per, period_spend(&app.store, l.per, now).await?));
        }
    }
    let mut out: Vec<LevelStatus> = policy
        .levels
        .into_iter()
        .filter_map(|level| {
            let spend = &spends.iter().find(|(p, _)| *p == level.per)?.1;
            let (spend_pico, requests) = spend.of(level.kind, &level.name);
            Some(LevelStatus {
                start: spend.start,
                end: spend.end,
                spend_pico,
                requests,
                reserved_pico: None,
                redis_spent_pico: None,
                reserved_from: "unavailable",
                level,
            })
        })
        .collect();
    match &policy.redis {
        Some(Ok(url)) => match redis_figures(app, url, &out).await {
            Ok(figures) => {
                for (s, (spent, reserved)) in out.iter_mut().zip(figures) {
                    s.redis_spent_pico = Some(spent * PICO_PER_NANO);
                    s.reserved_pico = Some(reserved * PICO_PER_NANO);
                    s.reserved_from = "redis";
                }
            }
            Err(e) => tracing::warn!("budgets: reservations in Redis cannot be read: {e}"),
        },
        Some(Err(e)) => tracing::warn!("budgets: {e}"),
        None => {
            let held = app.store.reservations(now.timestamp_millis()).await?;
            for s in &mut out {
                let level = s.level.kind.as_str();
                s.reserved_pico = Some(
                    held.iter()
                        .filter(|h| {
                            h.level == level
                                && h.name == s.level.name
                                && h.period_start == s.start.timestamp()
                        })
                        .map(|h| h.pico)
                        .sum(),
                );
                s.reserved_from = "sidecars";
            }
        }
    }
    Ok(out)
}

async fn redis_figures(
    app: &App,
    url: &str,
    levels: &[LevelStatus],
) -> Result<Vec<(i64, i64)>, String> {
    let fleet = {
        let mut current = app.redis.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref().filter(|f| f.url == url) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(Fleet::new(url)?);
                *current = Some(f.clone());
                f
            }
        }
    };
    let keys: Vec<(String, i64)> = levels
        .iter()
        .map(|s| {
            (
                level_id(s.level.kind.as_str(), &s.level.name),
                s.start.timestamp(),
            )
        })
        .collect();
    fleet.read_budgets(&keys).await
}

/// Records every `alert_at` mark the stored spend has crossed this period, once per level,
/// mark and period however many collectors share the database; returns the new ones.
pub async fn check_alerts(app: &App, policy: &PolicyBudgets) -> Result<Vec<Alert>, sqlx::Error> {
    let now = Utc::now();
    let mut spends: Vec<(Per, PeriodSpend)> = Vec::new();
    let mut new = Vec::new();
    for l in policy.levels.iter().filter(|l| !l.alert_at.is_empty()) {
        if !spends.iter().any(|(p, _)| *p == l.per) {
            spends.push((l.per, period_spend(&app.store, l.per, now).await?));
        }
        let Some((_, spend)) = spends.iter().find(|(p, _)| *p == l.per) else {
            continue;
        };
        let (spent, _) = spend.of(l.kind, &l.name);
        for mark in &l.alert_at {
            // Nothing spent crosses no mark, even of a zero budget.
            if spent <= 0 || (spent as f64) < mark * l.pico as f64 {
                continue;
            }
            let alert = Alert {
                level: l.kind.as_str().to_string(),
                name: l.name.clone(),
                team: l.team.clone(),
                period_start: spend.start.timestamp(),
                mark_ppm: (mark * 1e6).round() as i64,
                spend_pico: spent,
                budget_pico: l.pico,
                ts_ms: now.timestamp_millis(),
            };
            if app.store.record_alert(&alert).await? {
                new.push(alert);
            }
        }
    }
    Ok(new)
}

/// A status as `/v1/budgets` shows it.
pub fn to_json(s: &LevelStatus) -> serde_json::Value {
    let usd = query::usd_json;
    let mut v = serde_json::json!({
        "level": s.level.kind.as_str(),
        "name": s.level.name,
        "per": s.level.per.as_str(),
        "period_start": s.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "period_end": s.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "budget_usd": usd(s.level.pico),
        "spend_usd": usd(s.spend_pico),
        "reserved_usd": s.reserved_pico.map(usd),
        "reserved_from": s.reserved_from,
        "remaining_usd": usd(s.remaining_pico()),
        "requests": s.requests,
    });
    if !s.level.team.is_empty() {
        v["team"] = s.level.team.clone().into();
    }
    if let Some(r) = s.redis_spent_pico {
        v["redis_spent_usd"] = usd(r);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_levels_budget_and_nothing_else_of_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            "providers: { openai: { format: openai, base_url: \"${UNSET_IN_COLLECTOR}\" } }\n\
             org: { budget: { usd: 1000, per: month } }\n\
             teams:\n  research:\n    budget: { usd: 200, per: day, alert_at: [0.5, 1.0] }\n    \
             keys: [ { id: alice, hash: \"sha256:00\", budget: { usd: 5, per: week } } ]\n  ops: {}\n",
        )
        .unwrap();
        let b = read(&p).unwrap();
        assert_eq!(b.redis, None);
        let got: Vec<(LevelKind, &str, &str, i64, Per, usize)> = b
            .levels
            .iter()
            .map(|l| (l.kind, &*l.name, &*l.team, l.pico, l.per, l.alert_at.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    LevelKind::Org,
                    "org",
                    "",
                    1_000_000_000_000_000,
                    Per::Month,
                    0
                ),
                (
                    LevelKind::Team,
                    "research",
                    "research",
                    200_000_000_000_000,
                    Per::Day,
                    2
                ),
                (
                    LevelKind::Key,
                    "alice",
                    "research",
                    5_000_000_000_000,
                    Per::Week,
                    0
                ),
            ]
        );
    }

    #[test]
    fn a_redis_url_naming_a_missing_variable_is_an_error_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            "governance: { redis: \"${SWITCHYARD_TEST_UNSET_REDIS}\" }\n",
        )
        .unwrap();
        let b = read(&p).unwrap();
        assert!(b.levels.is_empty());
        assert!(matches!(b.redis, Some(Err(_))));
    }
}
