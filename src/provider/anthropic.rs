//! Anthropic Messages API ⇄ OpenAI chat completions.
//! Request: system prompt, turns, images, tools and tool results, stop sequences, sampling,
//! `max_tokens` (required by Anthropic). Response and SSE stream: translated into
//! `chat.completion` objects and `chat.completion.chunk` events, tool-call deltas and
//! finish reasons mapped. Shapes follow docs.anthropic.com (Messages, Streaming Messages).

use super::chunks::{emit, ChunkWriter};
use super::{push_turn, text_of, Translator};
use crate::error::{ErrorCode, ProxyError};
use crate::sse;
use crate::usage::Usage;
use bytes::BytesMut;
use serde_json::{json, Map, Value};

pub const VERSION: &str = "2023-06-01";
/// Used when neither the request nor the catalog says how many tokens may be produced.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn invalid(msg: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, msg)
}

/// OpenAI content (string or parts) → Anthropic content blocks.
fn content_blocks(content: &Value) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts.iter().map(part_block).collect(),
        _ => Err(invalid(
            "message content must be a string or an array of parts",
        )),
    }
}

fn part_block(part: &Value) -> Result<Value, ProxyError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(
            json!({"type": "text", "text": part.get("text").cloned().unwrap_or(Value::String(String::new()))}),
        ),
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("image_url part without a url"))?;
            match url.strip_prefix("data:") {
                Some(rest) => {
                    let (meta, data) = rest
                        .split_once(',')
                        .ok_or_else(|| invalid("malformed data URL in image_url"))?;
                    let media_type = meta
                        .strip_suffix(";base64")
                        .ok_or_else(|| invalid("only base64 data URLs are supported for images"))?;
                    Ok(
                        json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
                    )
                }
                None => Ok(json!({"type": "image", "source": {"type": "url", "url": url}})),
            }
        }
        other => Err(invalid(format!(
            "content part type {:?} cannot be sent to an Anthropic model",
            other.unwrap_or("(none)")
        ))),
    }
}

/// The Messages request for an OpenAI chat completion request.
pub fn request(
    req: &Value,
    model: &str,
    default_max_tokens: Option<u32>,
) -> Result<Value, ProxyError> {
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::with_capacity(msgs.len());
    for m in msgs {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)),
            "user" => push_turn(&mut messages, "content", "user", content_blocks(content)?),
            "assistant" => {
                let mut blocks = content_blocks(content)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let args = c
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        let input: Value = serde_json::from_str(args)
                            .map_err(|_| invalid("tool call arguments must be a JSON object"))?;
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": c.get("id").cloned().unwrap_or(Value::Null),
                            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                            "input": input,
                        }));
                    }
                }
                push_turn(&mut messages, "content", "assistant", blocks);
            }
            "tool" => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                });
                push_turn(&mut messages, "content", "user", vec![block]);
            }
            other => return Err(invalid(format!("unknown message role {other:?}"))),
        }
    }

    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .or(default_max_tokens.map(u64::from))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    for k in ["temperature", "top_p"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "description": f.get("description").cloned().unwrap_or(Value::String(String::new())),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}})),
                })
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = req.get("tool_choice") {
        let mapped = match choice {
            Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
            Value::String(s) if s == "required" => Some(json!({"type": "any"})),
            Value::String(s) if s == "none" => Some(json!({"type": "none"})),
            Value::Object(_) => choice
                .pointer("/function/name")
                .map(|n| json!({"type": "tool", "name": n})),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert("tool_choice".into(), m);
        }
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

pub fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        Some("end_turn") | Some("stop_sequence") | Some("pause_turn") => json!("stop"),
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

/// Anthropic usage: `input_tokens` excludes cache reads and writes; OpenAI's
/// `prompt_tokens` includes them.
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let written = n("cache_creation_input_tokens");
    Usage {
        input: n("input_tokens") + cached + written,
        output: n("output_tokens"),
        cached_input: cached,
        reasoning: 0,
        cache_write: written,
    }
}

pub fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Messages response → a `chat.completion`.
pub fn response(msg: &Value) -> (Value, Usage) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                }
            })),
            _ => {}
        }
    }
    let usage = msg.get("usage").map(usage_of).unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": msg.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now(),
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": openai_usage(&usage),
    });
    (out, usage)
}

/// An Anthropic error body → OpenAI's error shape (status stays the provider's).
pub fn error(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some(json!({"error": {
        "message": e.get("message").cloned().unwrap_or(Value::Null),
        "type": e.get("type").cloned().unwrap_or(Value::Null),
        "param": null,
        "code": e.get("type").cloned().unwrap_or(Value::Null),
    }}))
}

/// Streamed: each Anthropic event becomes zero or more OpenAI chunks, as it arrives.
pub struct Stream {
    split: sse::Splitter,
    w: ChunkWriter,
    usage: Usage,
    saw_usage: bool,
    /// Anthropic content-block index → OpenAI tool_calls index.
    tool_index: Vec<(u64, usize)>,
    finished: bool,
    /// Text and tool-argument deltas relayed so far.
    deltas: u64,
}

impl Stream {
    pub fn new(include_usage: bool) -> Self {
        Stream {
            split: sse::Splitter::default(),
            w: ChunkWriter::new(String::new(), include_usage),
            usage: Usage::default(),
            saw_usage: false,
            tool_index: Vec::new(),
            finished: false,
            deltas: 0,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match ev.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &ev["message"];
                self.w.id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.w.model = m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Some(u) = m.get("usage") {
                    let u = usage_of(u);
                    self.usage.input = u.input;
                    self.usage.cached_input = u.cached_input;
                    self.usage.output = u.output;
                    self.saw_usage = true;
                }
                self.w.chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    out,
                );
            }
            Some("content_block_start") => {
                let block = &ev["content_block"];
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let idx = self.tool_index.len();
                    self.tool_index
                        .push((ev.get("index").and_then(Value::as_u64).unwrap_or(0), idx));
                    self.w.chunk(
                        json!({"tool_calls": [{"index": idx, "id": block.get("id").cloned().unwrap_or(Value::Null), "type": "function",
                                 "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}}]}),
                        Value::Null,
                        out,
                    );
                }
            }
            Some("content_block_delta") => {
                self.deltas += 1;
                let d = &ev["delta"];
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => self.w.chunk(
                        json!({"content": d.get("text").cloned().unwrap_or(Value::Null)}),
                        Value::Null,
                        out,
                    ),
                    Some("input_json_delta") => {
                        let block = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some(&(_, idx)) = self.tool_index.iter().find(|(b, _)| *b == block) {
                            self.w.chunk(
                                json!({"tool_calls": [{"index": idx, "function": {"arguments": d.get("partial_json").cloned().unwrap_or(Value::Null)}}]}),
                                Value::Null,
                                out,
                            );
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(n) = ev.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output = n;
                    self.saw_usage = true;
                }
                let reason = ev.pointer("/delta/stop_reason").and_then(Value::as_str);
                self.w.chunk(json!({}), finish_reason(reason), out);
            }
            Some("message_stop") => self.end(out),
            Some("error") => {
                if let Some(e) = error(data) {
                    emit(&e, out);
                }
            }
            _ => {} // ping, content_block_stop
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.w.end(openai_usage(&self.usage), out);
    }
}

impl Translator for Stream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut split = std::mem::take(&mut self.split);
        split.feed(chunk, |ev| {
            for d in sse::data_lines(ev) {
                self.event(d, out);
            }
        });
        self.split = split;
    }

    fn finish(&mut self, _out: &mut BytesMut) {}

    fn usage(&self) -> Option<Usage> {
        // Complete only once the message ended; before that it is partial.
        self.finished
            .then_some(self.usage)
            .filter(|_| self.saw_usage)
    }

    fn partial_usage(&self) -> Usage {
        // message_start already gave the input; output counted from the deltas.
        Usage {
            output: self.usage.output.max(self.deltas),
            ..self.usage
        }
    }

    fn streaming(&self) -> bool {
        true
    }

    fn translate_error(&self, body: &[u8]) -> Option<Value> {
        error(body)
    }
}

#[cfg(test)]
mod tests;

/// Anthropic clients to Anthropic providers: bytes relayed unchanged as they arrive, usage
/// read on the side (from `message_start`/`message_delta` events, or the JSON body).
#[derive(Default)]
pub struct Passthrough {
    split: sse::Splitter,
    is_stream: Option<bool>,
    body: Vec<u8>,
    usage: Usage,
    saw_usage: bool,
    done: bool,
    deltas: u64,
}

impl Passthrough {
    fn event(&mut self, data: &[u8]) {
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match ev.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = ev.pointer("/message/usage") {
                    self.usage = usage_of(u);
                    self.saw_usage = true;
                }
            }
            Some("message_delta") => {
                if let Some(n) = ev.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output = n;
                }
            }
            Some("content_block_delta") => self.deltas += 1,
            Some("message_stop") => self.done = true,
            _ => {}
        }
    }
}

/// Largest non-streamed Anthropic body kept aside to read its usage.
const MAX_USAGE_BODY: usize = 16 << 20;

impl Translator for Passthrough {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(chunk);
        let is_stream = *self
            .is_stream
            .get_or_insert_with(|| chunk.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{'));
        if is_stream {
            let mut split = std::mem::take(&mut self.split);
            split.feed(chunk, |ev| {
                for d in sse::data_lines(ev) {
                    self.event(d);
                }
            });
            self.split = split;
        } else if self.body.len() + chunk.len() <= MAX_USAGE_BODY {
            self.body.extend_from_slice(chunk);
        }
    }

    fn finish(&mut self, _out: &mut BytesMut) {
        if self.is_stream == Some(false) {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
                if let Some(u) = v.get("usage") {
                    self.usage = usage_of(u);
                    self.saw_usage = true;
                    self.done = true;
                }
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        (self.saw_usage && self.done).then_some(self.usage)
    }

    fn partial_usage(&self) -> Usage {
        Usage {
            output: self.usage.output.max(self.deltas),
            ..self.usage
        }
    }

    fn streaming(&self) -> bool {
        true
    }

    fn keeps_upstream_headers(&self) -> bool {
        true
    }
}
