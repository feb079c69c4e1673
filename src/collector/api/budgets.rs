//! The governance endpoints: budgets per level (`/v1/budgets`), the period's spend for the
//! sidecars to seed their budgets from (`/v1/spend`), the sidecars' reservations
//! (`/v1/reservations`) and budget alerts (`/v1/alerts`).

use super::{bad_query, error, reader, team_of, unauthorized, unavailable, AppState, Params};
use crate::collector::budgets::{self as policy, Per, PolicyBudgets};
use crate::collector::config::Role;
use crate::collector::store::Held;
use crate::collector::{auth, query, App};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// The policy's budgets; none without a policy file.
fn read_policy(app: &App) -> Result<PolicyBudgets, Response> {
    let Some(path) = &app.cfg.policy else {
        return Ok(PolicyBudgets::default());
    };
    policy::read(path).map_err(|e| {
        tracing::warn!("budgets: {e}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "policy_unreadable",
            "the policy file's budgets cannot be read; see the collector's log",
        )
    })
}

/// Sidecars (the ingest token) and readers of every team's figures.
fn fleet_reader(app: &App, headers: &HeaderMap) -> bool {
    auth::ingest(&app.cfg, headers)
        || matches!(
            auth::reader(&app.cfg, headers),
            Some(Role::Admin | Role::Finance)
        )
}

/// `GET /v1/budgets`: every level with a budget — spend this period, reserved, remaining.
/// A team reader sees its team's level and its keys, not the org's nor other teams'.
pub async fn status(State(app): AppState, headers: HeaderMap) -> Response {
    let role = match reader(&app, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut budgets = match read_policy(&app) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if let Some(own) = team_of(&role) {
        budgets.levels.retain(|l| l.team == own);
    }
    match policy::status(&app, budgets).await {
        Ok(levels) => {
            let levels: Vec<_> = levels.iter().map(policy::to_json).collect();
            axum::Json(serde_json::json!({ "levels": levels })).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/spend?per=day|week|month`: the current period's spend of the org, of each team
/// and of each virtual key, in pico-dollars. Sidecars read it (with their ingest token) to
/// seed their budgets; admin and finance readers may too. Team readers may not: it names
/// every team.
pub async fn spend(State(app): AppState, headers: HeaderMap, Query(q): Params) -> Response {
    if !fleet_reader(&app, &headers) {
        return unauthorized();
    }
    let Some(per) = q.get("per").and_then(|p| Per::parse(p)) else {
        return bad_query("per must be one of day, week, month", false);
    };
    let spend = match policy::period_spend(&app.store, per, chrono::Utc::now()).await {
        Ok(s) => s,
        Err(e) => return unavailable(&e),
    };
    let costs = |m: std::collections::HashMap<String, (i64, i64)>| -> serde_json::Map<_, _> {
        m.into_iter()
            .map(|(k, (cost, _))| (k, cost.into()))
            .collect()
    };
    axum::Json(serde_json::json!({
        "per": per.as_str(),
        "period_start": spend.start.timestamp(),
        "org": spend.org.0,
        "teams": costs(spend.teams),
        "keys": costs(spend.keys),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    /// The reporting sidecar's own id (stable for its life).
    sidecar: String,
    /// How long the report holds: a sidecar that stops reporting stops counting after it.
    ttl_s: u32,
    held: Vec<Held>,
}

/// `POST /v1/reservations` (ingest token): a sidecar that keeps its budgets in process
/// reports what its requests in flight hold, replacing its previous report.
pub async fn report_reservations(
    State(app): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !auth::ingest(&app.cfg, &headers) {
        return unauthorized();
    }
    let report: Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "not a reservations report: {}",
                    crate::error::clip(&e.to_string())
                ),
            )
        }
    };
    let bad = report.sidecar.is_empty()
        || report.sidecar.len() > 256
        || !(1..=3600).contains(&report.ttl_s)
        || report
            .held
            .iter()
            .any(|h| !matches!(h.level.as_str(), "org" | "team" | "key") || h.pico < 0);
    if bad {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "sidecar must be 1-256 bytes, ttl_s 1-3600, each level org|team|key with pico >= 0",
        );
    }
    let now = chrono::Utc::now().timestamp_millis();
    let expires = now + i64::from(report.ttl_s) * 1000;
    match app
        .store
        .put_reservations(&report.sidecar, &report.held, expires, now)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/alerts?from=`: budget alerts recorded since `from` (default the last 30 days),
/// newest first, at most 1000; a team reader's own team's only.
pub async fn alerts(State(app): AppState, headers: HeaderMap, Query(p): Params) -> Response {
    let role = match reader(&app, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let now = chrono::Utc::now();
    let from = match p.get("from").map(|s| query::parse_time(s, now)) {
        None => now - chrono::Duration::days(30),
        Some(Ok(t)) => t,
        Some(Err(m)) => return bad_query(&m, false),
    };
    match app
        .store
        .alerts(from.timestamp_millis(), team_of(&role), 1000)
        .await
    {
        Ok(rows) => {
            let usd = query::usd_json;
            let rows: Vec<_> = rows
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "level": a.level,
                        "name": a.name,
                        "team": a.team,
                        "period_start": a.period_start,
                        "mark": a.mark_ppm as f64 / 1e6,
                        "spend_usd": usd(a.spend_pico),
                        "budget_usd": usd(a.budget_pico),
                        "ts": chrono::DateTime::from_timestamp_millis(a.ts_ms)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({ "alerts": rows })).into_response()
        }
        Err(e) => unavailable(&e),
    }
}
