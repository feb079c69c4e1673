//! OpenAI chat completion, stream, embeddings and model-list bodies, shaped like the
//! documented API responses.

use super::Knobs;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub const WORDS: &[&str] = &[
    "Hello",
    " from",
    " the",
    " Switchyard",
    " mock",
    " upstream",
    ".",
    " It",
    " speaks",
    " the",
    " OpenAI",
    " wire",
    " format",
    " for",
    " tests",
    " and",
    " benchmarks",
    ".",
];

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id() -> String {
    format!("chatcmpl-mock{:016x}", fastrand::u64(..))
}

/// A rough, deterministic token count: about four characters a token, as OpenAI's docs say.
pub fn count_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

pub fn prompt_tokens(req: &Value) -> u64 {
    let Some(msgs) = req.get("messages").and_then(|m| m.as_array()) else {
        return 0;
    };
    msgs.iter()
        .map(|m| {
            let content = match m.get("content") {
                Some(Value::String(s)) => count_tokens(s),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                    .map(count_tokens)
                    .sum(),
                _ => 0,
            };
            content + 4
        })
        .sum::<u64>()
        + 3
}

fn model_of(req: &Value) -> String {
    req.get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("unknown")
        .to_string()
}

pub fn words(n: u32) -> impl Iterator<Item = &'static str> {
    WORDS.iter().copied().cycle().take(n as usize)
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    })
}

/// The function the mock "decides" to call: the first tool offered (or the one named by
/// tool_choice), unless tool_choice is "none" or the last message is already a tool result.
fn tool_to_call(req: &Value) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    if req.get("tool_choice").and_then(Value::as_str) == Some("none") {
        return None;
    }
    let last_role = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if last_role == Some("tool") {
        return None;
    }
    if let Some(n) = req
        .pointer("/tool_choice/function/name")
        .and_then(Value::as_str)
    {
        return Some(n.to_string());
    }
    tools
        .first()?
        .pointer("/function/name")?
        .as_str()
        .map(str::to_string)
}

const TOOL_ARGS: &str = r#"{"location": "Paris, France"}"#;

pub fn completion(req: &Value, k: &Knobs) -> Value {
    let n = k.chunks.max(1);
    let text: String = words(n).collect();
    if let Some(name) = tool_to_call(req) {
        let out = count_tokens(TOOL_ARGS);
        return json!({
            "id": id(), "object": "chat.completion", "created": now(), "model": model_of(req),
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": format!("call_mock{:08x}", fastrand::u32(..)), "type": "function",
                                "function": {"name": name, "arguments": TOOL_ARGS}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage(prompt_tokens(req), out),
        });
    }
    json!({
        "id": id(),
        "object": "chat.completion",
        "created": now(),
        "model": model_of(req),
        "system_fingerprint": "fp_mock",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text, "refusal": null },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": usage(prompt_tokens(req), n as u64),
        "service_tier": "default"
    })
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Value,
    with_usage: bool,
) -> Value {
    let mut c = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
    });
    if with_usage {
        c["usage"] = Value::Null;
    }
    c
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE events of a streamed completion: role, content deltas, finish, optional usage
/// chunk (`stream_options.include_usage`), `[DONE]`.
pub fn stream_events(req: &Value, k: &Knobs) -> Vec<Bytes> {
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let id = id();
    let created = now();
    let model = model_of(req);
    let n = k.chunks.max(1);
    let mut events = Vec::with_capacity(n as usize + 4);
    if let Some(name) = tool_to_call(req) {
        let c = |delta: Value, finish: Value| {
            sse(&chunk(&id, created, &model, delta, finish, include_usage))
        };
        events.push(c(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
            "id": format!("call_mock{:08x}", fastrand::u32(..)), "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        let (a, b) = TOOL_ARGS.split_at(TOOL_ARGS.len() / 2);
        for part in [a, b] {
            events.push(c(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
        events.push(c(json!({}), json!("tool_calls")));
        if include_usage {
            events.push(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "fp_mock", "choices": [], "usage": usage(prompt_tokens(req), count_tokens(TOOL_ARGS))})));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        return events;
    }
    events.push(sse(&chunk(
        &id,
        created,
        &model,
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
        include_usage,
    )));
    for w in words(n) {
        events.push(sse(&chunk(
            &id,
            created,
            &model,
            json!({"content": w}),
            Value::Null,
            include_usage,
        )));
    }
    events.push(sse(&chunk(
        &id,
        created,
        &model,
        json!({}),
        json!("stop"),
        include_usage,
    )));
    if include_usage {
        events.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [],
            "usage": usage(prompt_tokens(req), n as u64)
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

pub fn stream(req: &Value, k: &Knobs) -> Response {
    super::sse_response(stream_events(req, k), k)
}

/// Legacy `/v1/completions`: the prompt's tokens in, the mock's words out.
pub fn text_completion(req: &Value, k: &Knobs) -> Value {
    let n = k.chunks.max(1);
    let prompt = req
        .get("prompt")
        .and_then(Value::as_str)
        .map_or(1, count_tokens);
    json!({
        "id": format!("cmpl-mock{:016x}", fastrand::u64(..)), "object": "text_completion",
        "created": now(), "model": model_of(req), "system_fingerprint": "fp_mock",
        "choices": [{ "text": words(n).collect::<String>(), "index": 0, "logprobs": null,
                      "finish_reason": "stop" }],
        "usage": { "prompt_tokens": prompt, "completion_tokens": n,
                   "total_tokens": prompt + u64::from(n) }
    })
}

/// Legacy completions streamed: a chunk a word, the usage chunk when asked, `[DONE]`.
pub fn text_completion_events(req: &Value, k: &Knobs) -> Vec<Bytes> {
    let n = k.chunks.max(1);
    let prompt = req
        .get("prompt")
        .and_then(Value::as_str)
        .map_or(1, count_tokens);
    let id = format!("cmpl-mock{:016x}", fastrand::u64(..));
    let (created, model) = (now(), model_of(req));
    let mut events: Vec<Bytes> = words(n)
        .map(|w| {
            sse(
                &json!({ "id": id, "object": "text_completion", "created": created,
                "model": model, "choices": [{ "text": w, "index": 0, "logprobs": null,
                "finish_reason": null }] }),
            )
        })
        .collect();
    if req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        events.push(sse(
            &json!({ "id": id, "object": "text_completion", "created": created,
            "model": model, "choices": [],
            "usage": { "prompt_tokens": prompt, "completion_tokens": n,
                       "total_tokens": prompt + u64::from(n) } }),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// `/v1/moderations`: free, and its answer carries no usage.
pub fn moderation(req: &Value) -> Value {
    json!({
        "id": format!("modr-mock{:08x}", fastrand::u32(..)),
        "model": req.get("model").and_then(Value::as_str).unwrap_or("omni-moderation-latest"),
        "results": [{ "flagged": false, "categories": { "violence": false },
                      "category_scores": { "violence": 0.0001 } }]
    })
}

/// `/v1/images/generations` as dall-e-3 answers it: no usage at all.
pub fn image(_req: &Value) -> Value {
    json!({ "created": now(), "data": [{ "url": "http://mock.invalid/image.png",
                                          "revised_prompt": "a mock image" }] })
}

pub fn embeddings(req: &Value) -> Value {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let tokens: u64 = inputs.iter().map(|s| count_tokens(s)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let seed = s
                .bytes()
                .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
            let v: Vec<f32> = (0..8)
                .map(|j| ((seed.wrapping_add(j * 97) % 2000) as f32 / 1000.0) - 1.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model_of(req),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens }
    })
}

pub fn models() -> Value {
    let ids = [
        "gpt-4o",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "mock-model",
    ];
    json!({
        "object": "list",
        "data": ids.iter().map(|id| json!({"id": id, "object": "model", "created": 1715367049, "owned_by": "switchyard-mock"})).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_with_usage_chunk() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "stream": true, "stream_options": {"include_usage": true}});
        let k = Knobs {
            chunks: 3,
            ..Default::default()
        };
        let ev = stream_events(&req, &k);
        // role + 3 content + finish + usage + DONE
        assert_eq!(ev.len(), 7);
        let usage: Value = serde_json::from_slice(&ev[5][6..ev[5].len() - 2]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(usage["usage"]["prompt_tokens"], prompt_tokens(&req));
        assert_eq!(&ev[6][..], b"data: [DONE]\n\n");
    }

    #[test]
    fn completion_counts() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}]});
        let k = Knobs {
            chunks: 5,
            ..Default::default()
        };
        let c = completion(&req, &k);
        assert_eq!(c["usage"]["completion_tokens"], 5);
        assert_eq!(c["usage"]["prompt_tokens"], 2 + 4 + 3);
        assert_eq!(c["model"], "m");
    }
}
