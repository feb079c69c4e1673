//! The sidecar's exchange with the collector, every `governance.refresh`:
//! - the period's spend so far, read (`GET /v1/spend`), so a budget counts what the whole
//!   fleet spent, and what this sidecar spent before a restart. In process the figure joins
//!   the ledger (see `ledger`); with Redis it is set once per period key, only if Redis has
//!   none yet (`HSETNX`), so N sidecars never add it N times;
//! - without Redis, what this sidecar's requests in flight hold reserved, reported
//!   (`POST /v1/reservations`) so the collector's `/v1/budgets` shows it.

use super::{lock, Governor, LevelKind, Per, Rules};
use crate::price::Atto;
use ahash::AHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pico-dollars (the collector's unit) to atto-dollars.
const ATTO_PER_PICO: Atto = 1_000_000;

/// One period's spend, as the collector reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    pub per: Per,
    /// Unix seconds.
    pub start: i64,
    pub org: Atto,
    pub teams: AHashMap<String, Atto>,
    pub keys: AHashMap<String, Atto>,
}

#[derive(serde::Deserialize)]
struct Wire {
    per: String,
    period_start: i64,
    org: i64,
    teams: std::collections::HashMap<String, i64>,
    keys: std::collections::HashMap<String, i64>,
}

fn atto(pico: i64) -> Atto {
    Atto::from(pico.max(0) as u64) * ATTO_PER_PICO
}

/// The periods the policy's budgets use.
pub fn periods(rules: &Rules) -> Vec<Per> {
    let mut out = Vec::new();
    for l in rules.levels() {
        if let Some(b) = &l.budget {
            if !out.contains(&b.per) {
                out.push(b.per);
            }
        }
    }
    out
}

/// Reads one period's spend from the collector at `base` (its base URL).
pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    per: Per,
) -> Result<Spend, String> {
    let url = format!(
        "{}/v1/spend?per={}",
        base.trim_end_matches('/'),
        per.as_str()
    );
    let mut req = client.get(&url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: {}", resp.status()));
    }
    let w: Wire = resp.json().await.map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Spend {
        per: Per::parse(&w.per).ok_or_else(|| format!("GET {url}: unknown period {:?}", w.per))?,
        start: w.period_start,
        org: atto(w.org),
        teams: w.teams.into_iter().map(|(k, v)| (k, atto(v))).collect(),
        keys: w.keys.into_iter().map(|(k, v)| (k, atto(v))).collect(),
    })
}

/// One level's reservations in this process.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Held {
    pub level: &'static str,
    pub name: Arc<str>,
    pub period_start: i64,
    pub pico: i64,
}

/// Reports this sidecar's reservations, replacing its previous report, valid for `ttl`.
pub async fn report(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    sidecar: &str,
    ttl: Duration,
    held: &[Held],
) -> Result<(), String> {
    let url = format!("{}/v1/reservations", base.trim_end_matches('/'));
    let body = serde_json::json!({
        "sidecar": sidecar,
        "ttl_s": ttl.as_secs().clamp(1, 3600),
        "held": held,
    });
    let mut req = client
        .post(&url)
        .json(&body)
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("POST {url}: {}", resp.status()));
    }
    Ok(())
}

impl Governor {
    /// What requests in flight hold reserved, per level with a budget (in process; with
    /// Redis the holds are there). Levels holding nothing are left out.
    pub fn held(&self, rules: &Rules) -> Vec<Held> {
        let mut out = Vec::new();
        for level in rules.levels().filter(|l| l.budget.is_some()) {
            let state = self.state(level);
            let c = lock(&state.inner);
            let (Some(start), true) = (c.ledger.period(), c.ledger.reserved > 0) else {
                continue;
            };
            out.push(Held {
                level: level.kind.as_str(),
                name: level.name.clone(),
                period_start: start.timestamp(),
                pico: i64::try_from(c.ledger.reserved.div_ceil(ATTO_PER_PICO)).unwrap_or(i64::MAX),
            });
        }
        out
    }

    /// Takes in the collector's figures for the current period of `spend.per`.
    pub fn seed(&self, rules: &Rules, spend: &Spend) {
        let now = chrono::Utc::now();
        let (current, _) = spend.per.period(now);
        if current.timestamp() != spend.start {
            return; // read across a period's end: the next refresh has the new one
        }
        let at = Instant::now();
        for level in rules.levels() {
            if level.budget.as_ref().is_none_or(|b| b.per != spend.per) {
                continue;
            }
            let figure = match level.kind {
                LevelKind::Org => spend.org,
                LevelKind::Team => spend.teams.get(&*level.name).copied().unwrap_or(0),
                LevelKind::Key => spend.keys.get(&*level.name).copied().unwrap_or(0),
            };
            let state = self.state(level);
            let mut c = lock(&state.inner);
            c.ledger.seed(current, figure, at);
            if let Some(b) = &level.budget {
                state
                    .gauges
                    .budget(b.limit, c.ledger.spent(), c.ledger.reserved);
            }
            drop(c);
            lock(&self.seeds).insert((level.kind, level.name.clone()), (spend.start, figure));
        }
    }

    /// The collector's figure for a level's period, if read (for seeding Redis).
    pub(super) fn seed_of(&self, kind: LevelKind, name: &Arc<str>, period: i64) -> Option<Atto> {
        lock(&self.seeds)
            .get(&(kind, name.clone()))
            .filter(|(p, _)| *p == period)
            .map(|(_, figure)| *figure)
    }
}
