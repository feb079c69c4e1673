//! Anthropic Messages API (`POST /v1/messages`): JSON and SSE shaped as in Anthropic's
//! "Messages" and "Streaming Messages" documentation, tool use included.

use super::{delay, openai, St};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn input_tokens(req: &Value) -> u64 {
    let text_of = |c: &Value| -> u64 {
        match c {
            Value::String(s) => openai::count_tokens(s),
            Value::Array(blocks) => blocks
                .iter()
                .map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        openai::count_tokens(b.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("tool_result") => openai::count_tokens(
                        &b.get("content").map(|c| c.to_string()).unwrap_or_default(),
                    ),
                    Some("tool_use") => openai::count_tokens(
                        &b.get("input").map(|c| c.to_string()).unwrap_or_default(),
                    ),
                    Some("image") => 85,
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    };
    let system = req.get("system").map(text_of).unwrap_or(0);
    let msgs: u64 = req
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|m| 3 + m.get("content").map(text_of).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    system + msgs + 5
}

/// The tool the mock "decides" to call: the first one offered, unless tool_choice forbids.
fn chosen_tool(req: &Value) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    if req.pointer("/tool_choice/type").and_then(Value::as_str) == Some("none") {
        return None;
    }
    if let Some(name) = req.pointer("/tool_choice/name").and_then(Value::as_str) {
        return Some(name.to_string());
    }
    tools.first()?.get("name")?.as_str().map(str::to_string)
}

const TOOL_INPUT: &str = r#"{"location": "Paris, France", "unit": "celsius"}"#;

pub async fn messages(axum::extract::State(m): St, headers: HeaderMap, body: Bytes) -> Response {
    let json: Result<Value, _> = serde_json::from_slice(&body);
    m.record("/v1/messages", &headers, json.as_ref().ok());
    let k = m.knobs_for(&headers);
    delay(k.latency_ms).await;
    if k.status != 0 {
        let status = StatusCode::from_u16(k.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match k.status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            401 => "authentication_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        let mut r = error(
            status,
            kind,
            &format!("mock upstream forced status {}", k.status),
        );
        if let Some(s) = k.retry_after.and_then(|s| s.to_string().parse().ok()) {
            r.headers_mut().insert("retry-after", s);
        }
        return r;
    }
    if headers.get("x-api-key").is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version header is required",
        );
    }
    let req = match json {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid JSON body",
            )
        }
    };
    for field in ["model", "max_tokens", "messages"] {
        if req.get(field).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("{field}: Field required"),
            );
        }
    }
    let model = req["model"].as_str().unwrap_or("").to_string();
    let id = format!("msg_mock{:016x}", fastrand::u64(..));
    let input = input_tokens(&req);
    let n = k.chunks.max(1);
    let tool = chosen_tool(&req);
    let words: Vec<&str> = openai::words(n).collect();
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut content = vec![json!({"type": "text", "text": words.concat()})];
        let (stop, output) = match &tool {
            Some(name) => {
                content.push(json!({"type": "tool_use", "id": format!("toolu_mock{:012x}", fastrand::u64(..)), "name": name,
                                    "input": serde_json::from_str::<Value>(TOOL_INPUT).unwrap_or(Value::Null)}));
                ("tool_use", n as u64 + openai::count_tokens(TOOL_INPUT))
            }
            None => ("end_turn", n as u64),
        };
        return Json(json!({
            "id": id, "type": "message", "role": "assistant", "content": content, "model": model,
            "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": output}
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for w in &words {
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut output = n as u64;
    let mut stop = "end_turn";
    if let Some(name) = &tool {
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": format!("toolu_mock{:012x}", fastrand::u64(..)), "name": name, "input": {}}})));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}})));
        let (a, b) = TOOL_INPUT.split_at(TOOL_INPUT.len() / 2);
        for part in [a, b] {
            events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
        output += openai::count_tokens(TOOL_INPUT);
        stop = "tool_use";
    }
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    super::sse_response(events, &k)
}
