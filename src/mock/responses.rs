//! The OpenAI Responses API (`POST /v1/responses`): the JSON answer and its SSE stream,
//! shaped as OpenAI documents them — named events (`event: response.created` …), text in
//! `response.output_text.delta` events, and usage (`input_tokens`, `output_tokens` and
//! their `_details`) on the final `response.completed` event and in the JSON body.

use super::openai::{count_tokens, now, words};
use super::Knobs;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

fn id(prefix: &str) -> String {
    format!("{prefix}_mock{:016x}", fastrand::u64(..))
}

/// Tokens of `input` (a string, or messages whose content is a string or input parts) and
/// `instructions`.
pub fn input_tokens(req: &Value) -> u64 {
    let text_tokens = |v: &Value| match v {
        Value::String(s) => count_tokens(s),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(count_tokens)
            .sum(),
        _ => 0,
    };
    let input = match req.get("input") {
        Some(Value::String(s)) => count_tokens(s) + 4,
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| m.get("content").map_or(0, text_tokens) + 4)
            .sum(),
        _ => 0,
    };
    input + req.get("instructions").map_or(0, text_tokens) + 3
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": output,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": input + output
    })
}

/// The response object; `usage` null and status `in_progress` until it is done.
fn object(req: &Value, resp_id: &str, msg_id: &str, text: Option<&str>, usage: Value) -> Value {
    let done = text.is_some();
    let output = match text {
        Some(t) => json!([{
            "type": "message", "id": msg_id, "status": "completed", "role": "assistant",
            "content": [{ "type": "output_text", "text": t, "annotations": [] }]
        }]),
        None => json!([]),
    };
    json!({
        "id": resp_id, "object": "response", "created_at": now(),
        "status": if done { "completed" } else { "in_progress" },
        "error": null, "incomplete_details": null,
        "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "model": req.get("model").cloned().unwrap_or(Value::Null),
        "output": output,
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": { "effort": null, "summary": null },
        "store": true, "temperature": 1.0, "text": { "format": { "type": "text" } },
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage, "user": null, "metadata": {}
    })
}

pub fn response(req: &Value, k: &Knobs) -> Value {
    let n = k.chunks.max(1);
    let text: String = words(n).collect();
    object(
        req,
        &id("resp"),
        &id("msg"),
        Some(&text),
        usage(input_tokens(req), u64::from(n)),
    )
}

/// One named event. OpenAI writes `type` and `sequence_number` first; serde_json's map
/// would sort them in among the other keys, so the object is assembled by hand.
fn event(seq: &mut u64, name: &str, data: Value) -> Bytes {
    let rest = data.to_string();
    let fields = rest.strip_prefix('{').unwrap_or("}");
    let sep = if fields == "}" { "" } else { "," };
    let line = format!(
        "event: {name}\ndata: {{\"type\":\"{name}\",\"sequence_number\":{seq}{sep}{fields}\n\n"
    );
    *seq += 1;
    Bytes::from(line)
}

pub fn stream_events(req: &Value, k: &Knobs) -> Vec<Bytes> {
    let n = k.chunks.max(1);
    let (resp_id, msg_id) = (id("resp"), id("msg"));
    let mut seq = 0;
    let pending = object(req, &resp_id, &msg_id, None, Value::Null);
    let mut events = vec![
        event(&mut seq, "response.created", json!({ "response": pending })),
        event(
            &mut seq,
            "response.in_progress",
            json!({ "response": pending }),
        ),
        event(
            &mut seq,
            "response.output_item.added",
            json!({ "output_index": 0, "item": { "id": msg_id, "type": "message",
                "status": "in_progress", "role": "assistant", "content": [] } }),
        ),
        event(
            &mut seq,
            "response.content_part.added",
            json!({ "item_id": msg_id, "output_index": 0, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [] } }),
        ),
    ];
    for w in words(n) {
        events.push(event(
            &mut seq,
            "response.output_text.delta",
            json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": w }),
        ));
    }
    let text: String = words(n).collect();
    events.push(event(
        &mut seq,
        "response.output_text.done",
        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "text": text }),
    ));
    events.push(event(
        &mut seq,
        "response.content_part.done",
        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0,
            "part": { "type": "output_text", "text": text, "annotations": [] } }),
    ));
    let done = object(
        req,
        &resp_id,
        &msg_id,
        Some(&text),
        usage(input_tokens(req), u64::from(n)),
    );
    events.push(event(
        &mut seq,
        "response.output_item.done",
        json!({ "output_index": 0, "item": done["output"][0] }),
    ));
    events.push(event(
        &mut seq,
        "response.completed",
        json!({ "response": done }),
    ));
    events
}

pub fn stream(req: &Value, k: &Knobs) -> Response {
    super::sse_response(stream_events(req, k), k)
}
