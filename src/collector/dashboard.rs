//! The dashboard: one static page and its script, served from the binary. Chart.js is
//! vendored from the npm registry (`assets/chart.umd.min.js`, MIT, version in its header).
//! The page asks for a reader token and calls the same `/v1/usage` API as everyone else,
//! so a team token sees its own team only, here as everywhere.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("assets/dashboard.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const CHART_JS: &str = include_str!("assets/chart.umd.min.js");

/// Scripts from this origin only; no inline code, no third-party hosts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    let body = match name.as_str() {
        "dashboard.js" => SCRIPT,
        "chart.umd.min.js" => CHART_JS,
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
