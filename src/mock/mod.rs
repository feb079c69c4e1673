//! `switchyard mock-upstream`: a fake OpenAI-compatible provider for demos, tests and
//! benches. It speaks the real wire format (JSON, SSE with the usage chunk, OpenAI error
//! bodies with `Retry-After`) and has knobs for latency, chunking, forced errors and
//! connections dropped mid-stream. Knobs come from the command line, from
//! `POST /mock/config` at run time, or per request from `x-mock-*` headers.

mod anthropic;
mod gemini;
mod openai;
mod responses;

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

/// Behaviour of the mock; every field can be overridden per request by `x-mock-<field>`
/// (dashes for underscores).
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(default)]
pub struct Knobs {
    /// Delay before the response header, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Content chunks in a streamed completion.
    #[arg(long, default_value_t = 8)]
    pub chunks: u32,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Answer every request with this status and an OpenAI error body (0 = off).
    #[arg(long, default_value_t = 0)]
    pub status: u16,
    /// `Retry-After` seconds sent with a forced status.
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Drop the connection after this many streamed chunks.
    #[arg(long)]
    pub drop_after: Option<u32>,
}

struct Mock {
    knobs: RwLock<Knobs>,
    log: Mutex<VecDeque<serde_json::Value>>,
    record: bool,
}

const LOG_CAP: usize = 1000;
const MAX_BODY: usize = 64 << 20;

/// Runs the mock on `addr` until the process is stopped.
pub async fn serve(addr: SocketAddr, knobs: Knobs, record: bool) -> std::io::Result<()> {
    let state = Arc::new(Mock {
        knobs: RwLock::new(knobs),
        log: Mutex::new(VecDeque::with_capacity(64)),
        record,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(legacy_completions))
        .route("/v1/moderations", post(moderations))
        .route("/v1/images/generations", post(images))
        .route("/v1/responses", post(responses_api))
        .route("/responses", post(responses_api))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1beta/models/{*rest}", post(gemini::generate))
        // Azure OpenAI: the deployment in the path, `api-version` required.
        .route("/openai/deployments/{deployment}/{*op}", post(azure))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/mock/requests", get(requests).delete(clear_requests))
        .route("/mock/config", get(get_config).post(set_config))
        .fallback(not_found)
        // Providers accept far larger prompts than axum's 2 MiB default.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("mock upstream listening on {}", listener.local_addr()?);
    // Without TCP_NODELAY, small SSE events wait on delayed ACKs (~40 ms each).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

type St = AxState<Arc<Mock>>;

impl Mock {
    /// Knobs for one request: the current ones, overridden by `x-mock-*` headers.
    fn knobs_for(&self, headers: &HeaderMap) -> Knobs {
        let mut k = self.knobs.read().map(|k| k.clone()).unwrap_or_default();
        let num =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        if let Some(v) = num("x-mock-latency-ms") {
            k.latency_ms = v;
        }
        if let Some(v) = num("x-mock-chunks") {
            k.chunks = v.min(100_000) as u32;
        }
        if let Some(v) = num("x-mock-chunk-delay-ms") {
            k.chunk_delay_ms = v;
        }
        if let Some(v) = num("x-mock-status") {
            k.status = v as u16;
        }
        if let Some(v) = num("x-mock-retry-after") {
            k.retry_after = Some(v);
        }
        if let Some(v) = num("x-mock-drop-after") {
            k.drop_after = Some(v as u32);
        }
        k
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: Option<&serde_json::Value>) {
        if !self.record {
            return;
        }
        let hdrs: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let entry = serde_json::json!({
            "path": path,
            "headers": hdrs,
            "model": body.and_then(|b| b.get("model")).cloned(),
            "stream": body.and_then(|b| b.get("stream")).cloned(),
            "body_bytes": body.map(|b| b.to_string().len()),
            // Small bodies are kept whole so tests can check a translation field by field.
            "body": body.filter(|b| b.to_string().len() <= 64 * 1024).cloned(),
        });
        if let Ok(mut log) = self.log.lock() {
            if log.len() == LOG_CAP {
                log.pop_front();
            }
            log.push_back(entry);
        }
    }
}

/// A streamed response of ready-made SSE events, paced and cut by the knobs.
fn sse_response(events: Vec<bytes::Bytes>, k: &Knobs) -> Response {
    use axum::body::Body;
    let delay = std::time::Duration::from_millis(k.chunk_delay_ms);
    // Events after the first count towards `drop_after`.
    let drop_at = k.drop_after.map(|d| d as usize + 1);
    let body = futures_util::stream::unfold(
        (events.into_iter(), 0usize),
        move |(mut it, i)| async move {
            if i == usize::MAX {
                return None;
            }
            // Pace first, so every event before a drop has reached the socket.
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if drop_at == Some(i) {
                // An error from the body stream makes hyper abort the connection mid-response.
                return Some((
                    Err(std::io::Error::other("mock: dropping the connection")),
                    (it, usize::MAX),
                ));
            }
            let ev = it.next()?;
            Some((Ok::<bytes::Bytes, std::io::Error>(ev), (it, i + 1)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(
            axum::http::header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8",
        )
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn delay(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// OpenAI's error body, with `Retry-After` when asked.
fn forced_error(k: &Knobs) -> Response {
    let status = StatusCode::from_u16(k.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, code) = match k.status {
        429 => ("requests", "rate_limit_exceeded"),
        401 => ("invalid_request_error", "invalid_api_key"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "server_error"),
    };
    let body = serde_json::json!({"error": {
        "message": format!("mock upstream forced status {}", k.status),
        "type": kind, "param": null, "code": code,
    }});
    let mut resp = (status, Json(body)).into_response();
    if let Some(s) = k.retry_after {
        if let Ok(v) = s.to_string().parse() {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

fn bad_request(msg: &str) -> Response {
    let body = serde_json::json!({"error": {
        "message": msg, "type": "invalid_request_error", "param": null, "code": null,
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn chat(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
    m.record(&uri.to_string(), &headers, json.as_ref().ok());
    let k = m.knobs_for(&headers);
    delay(k.latency_ms).await;
    if k.status != 0 {
        return forced_error(&k);
    }
    let req = match json {
        Ok(v) => v,
        Err(e) => {
            return bad_request(&format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        }
    };
    if req.get("model").and_then(|v| v.as_str()).is_none() {
        return bad_request("you must provide a model parameter");
    }
    if req.get("stream").and_then(|v| v.as_bool()) == Some(true) {
        openai::stream(&req, &k)
    } else {
        Json(openai::completion(&req, &k)).into_response()
    }
}

/// The request recorded, the knobs applied, the JSON parsed: what every mock endpoint does
/// first. `Err` is the answer to send instead.
async fn accept(
    m: &Mock,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(serde_json::Value, Knobs), Response> {
    let json: Result<serde_json::Value, _> = serde_json::from_slice(body);
    m.record(&uri.to_string(), headers, json.as_ref().ok());
    let k = m.knobs_for(headers);
    delay(k.latency_ms).await;
    if k.status != 0 {
        return Err(forced_error(&k));
    }
    json.map(|v| (v, k))
        .map_err(|_| bad_request("We could not parse the JSON body of your request."))
}

async fn legacy_completions(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match accept(&m, &uri, &headers, &body).await {
        Ok((req, k)) if req.get("stream").and_then(|v| v.as_bool()) == Some(true) => {
            sse_response(openai::text_completion_events(&req, &k), &k)
        }
        Ok((req, k)) => Json(openai::text_completion(&req, &k)).into_response(),
        Err(r) => r,
    }
}

async fn moderations(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    json_answer(&m, &uri, &headers, &body, openai::moderation).await
}

async fn images(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    json_answer(&m, &uri, &headers, &body, openai::image).await
}

/// An endpoint whose answer is one JSON body built from the request.
async fn json_answer(
    m: &Mock,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    answer: fn(&serde_json::Value) -> serde_json::Value,
) -> Response {
    match accept(m, uri, headers, body).await {
        Ok((req, _)) => Json(answer(&req)).into_response(),
        Err(r) => r,
    }
}

async fn responses_api(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (req, k) = match accept(&m, &uri, &headers, &body).await {
        Ok(accepted) => accepted,
        Err(r) => return r,
    };
    if req.get("model").and_then(|v| v.as_str()).is_none() {
        return bad_request("you must provide a model parameter");
    }
    // The Responses API has no `stream_options.include_usage`: usage always comes.
    if req.pointer("/stream_options/include_usage").is_some() {
        return bad_request("Unknown parameter: 'stream_options.include_usage'.");
    }
    if req.get("stream").and_then(|v| v.as_bool()) == Some(true) {
        responses::stream(&req, &k)
    } else {
        Json(responses::response(&req, &k)).into_response()
    }
}

/// Azure answers a missing `api-version` or `api-key` before anything else.
fn azure_check(
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Option<Response> {
    if !query.contains_key("api-version") {
        return Some(bad_request("Missing required query parameter: api-version"));
    }
    if headers.get("api-key").is_none() {
        let body = serde_json::json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}});
        return Some((StatusCode::UNAUTHORIZED, Json(body)).into_response());
    }
    None
}

/// Azure's `/openai/deployments/{deployment}/{operation}`: the OpenAI handlers behind
/// Azure's own checks.
async fn azure(
    st: St,
    axum::extract::Path((_deployment, op)): axum::extract::Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = azure_check(&headers, &q) {
        return r;
    }
    match op.as_str() {
        "chat/completions" => chat(st, uri, headers, body).await,
        "embeddings" => embeddings(st, uri, headers, body).await,
        _ => not_found().await,
    }
}

async fn embeddings(
    AxState(m): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
    m.record(&uri.to_string(), &headers, json.as_ref().ok());
    let k = m.knobs_for(&headers);
    delay(k.latency_ms).await;
    if k.status != 0 {
        return forced_error(&k);
    }
    match json {
        Ok(req) => Json(openai::embeddings(&req)).into_response(),
        Err(e) => bad_request(&format!(
            "We could not parse the JSON body of your request. ({e})"
        )),
    }
}

async fn models(AxState(m): St, headers: HeaderMap) -> Response {
    m.record("/v1/models", &headers, None);
    let k = m.knobs_for(&headers);
    if k.status != 0 {
        return forced_error(&k);
    }
    Json(openai::models()).into_response()
}

async fn requests(AxState(m): St) -> Response {
    let log: Vec<serde_json::Value> = m
        .log
        .lock()
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default();
    Json(log).into_response()
}

async fn clear_requests(AxState(m): St) -> StatusCode {
    if let Ok(mut l) = m.log.lock() {
        l.clear();
    }
    StatusCode::NO_CONTENT
}

async fn get_config(AxState(m): St) -> Response {
    let k = m.knobs.read().map(|k| k.clone()).unwrap_or_default();
    Json(k).into_response()
}

async fn set_config(AxState(m): St, Json(k): Json<Knobs>) -> Response {
    if let Ok(mut cur) = m.knobs.write() {
        *cur = k.clone();
    }
    Json(k).into_response()
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {
        "message": "Invalid URL", "type": "invalid_request_error", "param": null, "code": null,
    }});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
