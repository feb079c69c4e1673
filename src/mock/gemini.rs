//! Gemini API (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`), shaped as documented at ai.google.dev.

use super::{delay, openai, St};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;

fn error(status: StatusCode, google_status: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "status": google_status}}))).into_response()
}

fn prompt_tokens(req: &Value) -> u64 {
    let count = |parts: &Value| -> u64 {
        parts
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    openai::count_tokens(t)
                } else if p.get("inline_data").is_some() || p.get("file_data").is_some() {
                    258
                } else {
                    openai::count_tokens(&p.to_string())
                }
            })
            .sum()
    };
    let sys = req
        .pointer("/systemInstruction/parts")
        .map(count)
        .unwrap_or(0);
    let contents: u64 = req
        .get("contents")
        .and_then(Value::as_array)
        .map(|c| c.iter().map(|m| count(&m["parts"])).sum())
        .unwrap_or(0);
    sys + contents
}

fn function_to_call(req: &Value) -> Option<String> {
    if req
        .pointer("/toolConfig/functionCallingConfig/mode")
        .and_then(Value::as_str)
        == Some("NONE")
    {
        return None;
    }
    // After a function response, the model answers in text.
    let last_is_result = req
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|m| m["parts"].as_array())
        .is_some_and(|p| p.iter().any(|x| x.get("functionResponse").is_some()));
    if last_is_result {
        return None;
    }
    req.pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub async fn generate(
    State(m): St,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Result<Value, _> = serde_json::from_slice(&body);
    m.record(
        &format!("/v1beta/models/{rest}"),
        &headers,
        json.as_ref().ok(),
    );
    let k = m.knobs_for(&headers);
    delay(k.latency_ms).await;
    if k.status != 0 {
        let status = StatusCode::from_u16(k.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let g = match k.status {
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            400 => "INVALID_ARGUMENT",
            _ => "INTERNAL",
        };
        let mut r = error(
            status,
            g,
            &format!("mock upstream forced status {}", k.status),
        );
        if let Some(s) = k.retry_after.and_then(|s| s.to_string().parse().ok()) {
            r.headers_mut().insert("retry-after", s);
        }
        return r;
    }
    if headers.get("x-goog-api-key").is_none() && !q.contains_key("key") {
        return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.");
    }
    let Some((model, method)) = rest.split_once(':') else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method");
    };
    let req = match json {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid JSON payload received.",
            )
        }
    };
    if req
        .get("contents")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let prompt = prompt_tokens(&req);
    let n = k.chunks.max(1);
    let words: Vec<&str> = openai::words(n).collect();
    let call = function_to_call(&req);
    let id = format!("mock{:016x}", fastrand::u64(..));
    let usage = |out: u64| json!({"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out});
    let call_part =
        |name: &str| json!({"functionCall": {"name": name, "args": {"location": "Paris, France"}}});
    match method {
        "generateContent" => {
            let (parts, out) = match &call {
                Some(name) => (vec![call_part(name)], 8),
                None => (vec![json!({"text": words.concat()})], n as u64),
            };
            Json(json!({
                "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage(out), "modelVersion": model, "responseId": id,
            }))
            .into_response()
        }
        "streamGenerateContent" => {
            if q.get("alt").map(String::as_str) != Some("sse") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "the mock streams with alt=sse only",
                );
            }
            let ev = |v: Value| Bytes::from(format!("data: {v}\r\n\r\n"));
            let mut events = Vec::new();
            match &call {
                Some(name) => events.push(ev(json!({
                    "candidates": [{"content": {"parts": [call_part(name)], "role": "model"}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": usage(8), "modelVersion": model, "responseId": id}))),
                None => {
                    for (i, w) in words.iter().enumerate() {
                        let mut c = json!({"content": {"parts": [{"text": w}], "role": "model"}, "index": 0});
                        if i + 1 == words.len() {
                            c["finishReason"] = json!("STOP");
                        }
                        events.push(ev(json!({"candidates": [c], "usageMetadata": usage(i as u64 + 1), "modelVersion": model, "responseId": id})));
                    }
                }
            }
            super::sse_response(events, &k)
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method"),
    }
}
