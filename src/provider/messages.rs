//! Anthropic clients (`/v1/messages`) served by OpenAI-format providers: the Messages
//! request becomes a chat completion request, and the completion (or its chunk stream)
//! becomes a Messages response (or Anthropic's SSE events).

use super::Translator;
use crate::error::{ErrorCode, ProxyError};
use crate::sse;
use crate::usage::Usage;
use bytes::BytesMut;
use serde_json::{json, Map, Value};

fn invalid(msg: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, msg)
}

fn block_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(b) => b
            .iter()
            .filter_map(|x| x.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Messages request → chat completion request (for model id `model`).
pub fn request(req: &Value, model: &str) -> Result<Value, ProxyError> {
    let mut messages = Vec::new();
    if let Some(system) = req.get("system") {
        messages.push(json!({"role": "system", "content": block_text(system)}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(invalid(format!("unknown message role {role:?}")));
        }
        let blocks = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) => b.clone(),
            _ => {
                return Err(invalid(
                    "message content must be a string or an array of blocks",
                ))
            }
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for b in &blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or(Value::Null)})),
                Some("image") => {
                    let src = &b["source"];
                    let url = match src.get("type").and_then(Value::as_str) {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            src.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                            src.get("data").and_then(Value::as_str).unwrap_or("")
                        ),
                        _ => src.get("url").and_then(Value::as_str).unwrap_or("").to_string(),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Some("tool_use") => calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                    "function": {"name": b.get("name").cloned().unwrap_or(Value::Null),
                                 "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string)}
                })),
                // A tool result is its own message in OpenAI's format, before the user's text.
                Some("tool_result") => messages.push(json!({
                    "role": "tool",
                    "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": block_text(b.get("content").unwrap_or(&Value::Null)),
                })),
                Some("thinking") | Some("redacted_thinking") => {}
                other => return Err(invalid(format!("content block {:?} cannot be sent to an OpenAI-format model", other.unwrap_or("(none)")))),
            }
        }
        if parts.is_empty() && calls.is_empty() {
            continue;
        }
        let all_text = parts.iter().all(|p| p["type"] == "text");
        let content = if parts.is_empty() {
            Value::Null
        } else if all_text {
            Value::String(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        } else {
            Value::Array(parts)
        };
        let mut msg = json!({"role": role, "content": content});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        messages.push(msg);
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_tokens") {
        out.insert("max_tokens".into(), n.clone());
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = req.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = req
        .get("stop_sequences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        out.insert("stop".into(), Value::Array(s.clone()));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let t: Vec<Value> = tools
            .iter()
            .filter(|t| t.get("input_schema").is_some())
            .map(|t| json!({"type": "function", "function": {
                "name": t.get("name").cloned().unwrap_or(Value::Null),
                "description": t.get("description").cloned().unwrap_or(Value::String(String::new())),
                "parameters": t.get("input_schema").cloned().unwrap_or(Value::Null)}}))
            .collect();
        if !t.is_empty() {
            out.insert("tools".into(), Value::Array(t));
        }
    }
    if let Some(c) = req.get("tool_choice") {
        let mapped = match c.get("type").and_then(Value::as_str) {
            Some("auto") => Some(json!("auto")),
            Some("any") => Some(json!("required")),
            Some("none") => Some(json!("none")),
            Some("tool") => Some(
                json!({"type": "function", "function": {"name": c.get("name").cloned().unwrap_or(Value::Null)}}),
            ),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert("tool_choice".into(), m);
        }
    }
    if let Some(u) = req.pointer("/metadata/user_id") {
        out.insert("user".into(), u.clone());
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        Some("length") => json!("max_tokens"),
        Some("tool_calls") | Some("function_call") => json!("tool_use"),
        Some("content_filter") => json!("refusal"),
        Some(_) => json!("end_turn"),
        None => Value::Null,
    }
}

fn usage_from_openai(u: &Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("/prompt_tokens"),
        output: n("/completion_tokens"),
        cached_input: n("/prompt_tokens_details/cached_tokens"),
        reasoning: n("/completion_tokens_details/reasoning_tokens"),
        cache_write: 0,
    }
}

/// Anthropic's usage: input excludes cache reads.
fn anthropic_usage(u: &Usage) -> Value {
    json!({"input_tokens": u.input - u.cached_input.min(u.input), "cache_read_input_tokens": u.cached_input,
           "cache_creation_input_tokens": 0, "output_tokens": u.output})
}

pub fn response(c: &Value) -> (Value, Usage) {
    let msg = c
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or(Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let input: Value = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
                            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": input}));
    }
    let usage = c.get("usage").map(usage_from_openai).unwrap_or_default();
    let out = json!({
        "id": c.get("id").cloned().unwrap_or(Value::Null),
        "type": "message", "role": "assistant",
        "model": c.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(c.pointer("/choices/0/finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": anthropic_usage(&usage),
    });
    (out, usage)
}

/// An OpenAI error body → Anthropic's error shape.
pub fn error(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some(json!({"type": "error", "error": {
        "type": e.get("type").cloned().unwrap_or(json!("api_error")),
        "message": e.get("message").cloned().unwrap_or(Value::Null),
    }}))
}

#[derive(PartialEq)]
enum Block {
    None,
    Text,
    Tool(u64),
}

/// OpenAI chunks → Anthropic's `message_start` … `message_stop` events.
pub struct Stream {
    split: sse::Splitter,
    started: bool,
    block: Block,
    index: u64,
    stop: Value,
    usage: Option<Usage>,
    deltas: u64,
    finished: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            split: sse::Splitter::default(),
            started: false,
            block: Block::None,
            index: 0,
            stop: Value::Null,
            usage: None,
            deltas: 0,
            finished: false,
        }
    }
}

fn ev(name: &str, data: Value, out: &mut BytesMut) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl Stream {
    fn close_block(&mut self, out: &mut BytesMut) {
        if self.block != Block::None {
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.index}),
                out,
            );
            self.index += 1;
            self.block = Block::None;
        }
    }

    fn chunk(&mut self, c: &Value, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            ev(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": c.get("id").cloned().unwrap_or(Value::Null), "type": "message", "role": "assistant", "content": [],
                "model": c.get("model").cloned().unwrap_or(Value::Null), "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
                out,
            );
        }
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage_from_openai(u));
        }
        let Some(choice) = c.pointer("/choices/0") else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.block != Block::Text {
                self.close_block(out);
                self.block = Block::Text;
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.index, "content_block": {"type": "text", "text": ""}}),
                    out,
                );
            }
            self.deltas += 1;
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": t}}),
                out,
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if self.block != Block::Tool(i) {
                self.close_block(out);
                self.block = Block::Tool(i);
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.index, "content_block": {
                    "type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
                    "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": {}}}),
                    out,
                );
            }
            if let Some(a) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.deltas += 1;
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "input_json_delta", "partial_json": a}}),
                    out,
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = stop_reason(Some(f));
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.finished || !self.started {
            return;
        }
        self.finished = true;
        self.close_block(out);
        let u = self.usage.unwrap_or_default();
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": self.stop, "stop_sequence": null},
                                   "usage": anthropic_usage(&u)}),
            out,
        );
        ev("message_stop", json!({"type": "message_stop"}), out);
    }
}

impl Translator for Stream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut split = std::mem::take(&mut self.split);
        split.feed(chunk, |e| {
            for d in sse::data_lines(e) {
                if d.starts_with(b"[DONE]") {
                    self.end(out);
                } else if let Ok(v) = serde_json::from_slice::<Value>(d) {
                    if v.get("error").is_some() {
                        if let Some(e) = error(d) {
                            ev("error", e, out);
                        }
                    } else {
                        self.chunk(&v, out);
                    }
                }
            }
        });
        self.split = split;
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.end(out);
    }

    fn usage(&self) -> Option<Usage> {
        self.finished.then_some(self.usage).flatten()
    }

    fn partial_usage(&self) -> Usage {
        let mut u = self.usage.unwrap_or_default();
        u.output = u.output.max(self.deltas);
        u
    }

    fn streaming(&self) -> bool {
        true
    }

    fn translate_error(&self, body: &[u8]) -> Option<Value> {
        error(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_shapes() {
        let req = json!({
            "model": "x", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.2, "stream": true,
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}, {"type": "text", "text": "and?"}]}
            ]
        });
        let out = request(&req, "gpt-4o-mini").unwrap();
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}})
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "cold"})
        );
        assert_eq!(m[4], json!({"role": "user", "content": "and?"}));
        assert_eq!(out["stop"], json!(["END"]));
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(
            out["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn stream_becomes_anthropic_events() {
        let s = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut t = Stream::default();
        let mut out = BytesMut::new();
        for c in s.as_bytes().chunks(11) {
            t.feed(c, &mut out);
        }
        t.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains("\"stop_reason\":\"tool_use\""));
        assert!(text.contains("\"output_tokens\":5"));
        assert_eq!(t.usage().map(|u| u.input), Some(12));
    }
}
