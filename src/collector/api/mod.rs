//! The collector's HTTP API (axum). Every error is OpenAI-shaped JSON with a stable `code`.
// Helpers return the finished error response as their `Err`: it is built once, on the error
// path only, and boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use super::config::Role;
use super::store::Incoming;
mod budgets;

use super::{auth, dashboard, query, App};
use crate::events::UsageEvent;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

type AppState = State<Arc<App>>;
type Params = Query<HashMap<String, String>>;

pub fn router(app: Arc<App>) -> Router {
    // The compressed body is bounded here, the decompressed one in `decode`.
    let limit = app.cfg.max_body_bytes;
    Router::new()
        .route("/v1/events", post(ingest).get(list_events))
        .route("/v1/usage", get(usage))
        .route("/v1/budgets", get(budgets::status))
        .route("/v1/spend", get(budgets::spend))
        .route("/v1/reservations", post(budgets::report_reservations))
        .route("/v1/alerts", get(budgets::alerts))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard::page))
        .route("/assets/{name}", get(dashboard::asset))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": code } });
    (status, axum::Json(body)).into_response()
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
}

fn unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!("database: {e}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the database is unavailable; retry later",
    )
}

fn reader(app: &App, headers: &HeaderMap) -> Result<Role, Response> {
    auth::reader(&app.cfg, headers).ok_or_else(unauthorized)
}

fn team_of(role: &Role) -> Option<&str> {
    match role {
        Role::Team(t) => Some(t),
        Role::Admin | Role::Finance => None,
    }
}

/// The request body as sent, or decompressed (zstd or gzip); never more than `max` bytes
/// out, whatever the compressed size promised.
fn decode(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Vec<u8>, Response> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    let mut out = Vec::with_capacity(body.len() * 4);
    let limit = max as u64 + 1;
    let read = if coding.eq_ignore_ascii_case("gzip") {
        flate2::read::GzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out)
    } else if coding.eq_ignore_ascii_case("zstd") {
        zstd::stream::read::Decoder::with_buffer(body)
            .and_then(|mut d| {
                // A frame may ask for a window of up to 2 GB; ours use 512 KB.
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Ok(d)
            })
            .and_then(|d| d.take(limit).read_to_end(&mut out))
    } else if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
        return Ok(body.to_vec());
    } else {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "content-encoding must be zstd, gzip or none",
        ));
    };
    match read {
        Ok(n) if n > max => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the decompressed batch is larger than max_body_bytes",
        )),
        Ok(_) => Ok(out),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not valid for its content-encoding",
        )),
    }
}

/// The largest zstd window a batch may use: 16 MB.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

async fn ingest(State(app): AppState, headers: HeaderMap, body: Bytes) -> Response {
    let m = &app.metrics;
    if !auth::ingest(&app.cfg, &headers) {
        m.batches.with_label_values(&["unauthorized"]).inc();
        return unauthorized();
    }
    let text = match decode(&headers, &body, app.cfg.max_body_bytes) {
        Ok(t) => t,
        Err(resp) => {
            let why = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_body"
            };
            m.batches.with_label_values(&[why]).inc();
            return resp;
        }
    };
    let mut batch = Vec::new();
    let mut rejected = 0u64;
    // (stored through the group-commit workers, see `ingest`)
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Later schema versions keep v1's fields; a line without them is malformed.
        match (
            serde_json::from_slice::<UsageEvent>(line),
            std::str::from_utf8(line),
        ) {
            (Ok(event), Ok(text)) if event.v >= 1 => batch.push(Incoming {
                event,
                line: text.to_string(),
            }),
            _ => rejected += 1,
        }
    }
    if rejected > 0 {
        m.events.with_label_values(&["rejected"]).inc_by(rejected);
        tracing::warn!(rejected, "ingest: malformed usage events rejected");
    }
    let start = Instant::now();
    let backend = match *app.store {
        super::store::Store::Sqlite { .. } => "sqlite",
        super::store::Store::Postgres(_) => "postgres",
    };
    match app.ingest.submit(batch).await {
        Ok(s) => {
            m.ingest_seconds
                .with_label_values(&[backend])
                .observe(start.elapsed().as_secs_f64());
            m.batches.with_label_values(&["ok"]).inc();
            m.events.with_label_values(&["stored"]).inc_by(s.stored);
            m.events
                .with_label_values(&["duplicate"])
                .inc_by(s.duplicates);
            axum::Json(serde_json::json!({
                "stored": s.stored,
                "duplicates": s.duplicates,
                "rejected": rejected,
            }))
            .into_response()
        }
        Err(e) => {
            m.batches.with_label_values(&["db_error"]).inc();
            unavailable(&e)
        }
    }
}

async fn usage(State(app): AppState, headers: HeaderMap, Query(p): Params) -> Response {
    let role = match reader(&app, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let q = match query::usage_query(&p, team_of(&role), chrono::Utc::now()) {
        Ok(q) => q,
        Err(msg) => return bad_query(&msg, team_of(&role).is_some()),
    };
    let rows = match app.store.usage(&q).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    match p.get("format").map(String::as_str) {
        None | Some("json") => axum::Json(query::to_json(&rows, &q.group_by)).into_response(),
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"usage.csv\"",
                ),
            ],
            query::to_csv(&rows, &q.group_by),
        )
            .into_response(),
        Some(_) => bad_query("format must be json or csv", false),
    }
}

/// A team reader asking for another team is refused outright (403), not shown nothing.
fn bad_query(msg: &str, team_reader: bool) -> Response {
    if team_reader && msg.starts_with("this token reads team") {
        return error(StatusCode::FORBIDDEN, "forbidden", msg);
    }
    error(StatusCode::BAD_REQUEST, "invalid_request", msg)
}

async fn list_events(State(app): AppState, headers: HeaderMap, Query(p): Params) -> Response {
    let role = match reader(&app, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let now = chrono::Utc::now();
    let time = |k: &str, default: i64| match p.get(k) {
        Some(s) => query::parse_time(s, now).map(|t| t.timestamp_millis()),
        None => Ok(default),
    };
    let (from, to) = match (time("from", 0), time("to", i64::MAX)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(m), _) | (_, Err(m)) => return bad_query(&m, false),
    };
    let limit = match p.get("limit").map(|l| l.parse::<i64>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return bad_query("limit must be between 1 and 1000", false),
    };
    let after = match p.get("after").map(|a| uuid::Uuid::parse_str(a)) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return bad_query("after must be an event id", false),
    };
    let asked = p.get("team").filter(|t| !t.is_empty()).map(String::as_str);
    let team = match (team_of(&role), asked) {
        (Some(own), Some(t)) if own != t => {
            return bad_query(&format!("this token reads team {own:?} only"), true)
        }
        (Some(own), _) => Some(own),
        (None, t) => t,
    };
    let rows = match app.store.events(from, to, team, after, limit).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    // The stored lines are JSON already: joined, not parsed and re-serialised.
    let mut body = String::from("{\"events\":[");
    for (i, (_, line)) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(line);
    }
    body.push_str("],\"next\":");
    match rows.last() {
        Some((id, _)) if rows.len() as i64 == limit => {
            body.push_str(&serde_json::Value::from(id.as_str()).to_string())
        }
        _ => body.push_str("null"),
    }
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(app): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(app): AppState) -> Response {
    if app.store.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
    }
}
