//! Google Gemini API (`generateContent`, `streamGenerateContent?alt=sse`) ⇄ OpenAI chat
//! completions: roles and parts, system instruction, images, tools and function calls,
//! generation config; responses and SSE chunks translated back. Shapes follow
//! ai.google.dev/api/generate-content.

use super::chunks::{emit, ChunkWriter};
use super::{push_turn, text_of, Translator};
use crate::error::{ErrorCode, ProxyError};
use crate::sse;
use crate::usage::Usage;
use bytes::BytesMut;
use serde_json::{json, Map, Value};

fn invalid(msg: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::InvalidRequest, msg)
}

fn parts(content: &Value) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(items) => items
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(
                    json!({"text": p.get("text").cloned().unwrap_or(Value::String(String::new()))}),
                ),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid("image_url part without a url"))?;
                    match url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
                        Some((meta, data)) => {
                            let mime = meta.strip_suffix(";base64").ok_or_else(|| {
                                invalid("only base64 data URLs are supported for images")
                            })?;
                            Ok(json!({"inline_data": {"mime_type": mime, "data": data}}))
                        }
                        None => Ok(
                            json!({"file_data": {"mime_type": guess_mime(url), "file_uri": url}}),
                        ),
                    }
                }
                other => Err(invalid(format!(
                    "content part type {:?} cannot be sent to a Gemini model",
                    other.unwrap_or("(none)")
                ))),
            })
            .collect(),
        _ => Err(invalid(
            "message content must be a string or an array of parts",
        )),
    }
}

fn guess_mime(url: &str) -> &'static str {
    let lower = url.to_ascii_lowercase();
    if lower.ends_with(".png") {
        "image/png"
    } else if lower.ends_with(".webp") {
        "image/webp"
    } else if lower.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

/// The `generateContent` body for an OpenAI chat completion request.
pub fn request(req: &Value) -> Result<Value, ProxyError> {
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Gemini answers a function call by name; OpenAI by call id.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for m in msgs {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.push(json!({"text": text_of(content)})),
            "user" => push_turn(&mut contents, "parts", "user", parts(content)?),
            "assistant" => {
                let mut p = parts(content)?;
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let args: Value = serde_json::from_str(
                        c.pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}"),
                    )
                    .map_err(|_| invalid("tool call arguments must be a JSON object"))?;
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        call_names.push((id.to_string(), name.clone()));
                    }
                    p.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                push_turn(&mut contents, "parts", "model", p);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                let text = text_of(content);
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"result": text}));
                push_turn(
                    &mut contents,
                    "parts",
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return Err(invalid(format!("unknown message role {other:?}"))),
        }
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut gen = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            gen.insert(to.into(), v.clone());
        }
    }
    if let Some(v) = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        gen.insert("maxOutputTokens".into(), v.clone());
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            gen.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            gen.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if req.pointer("/response_format/type").and_then(Value::as_str) == Some("json_object") {
        gen.insert("responseMimeType".into(), json!("application/json"));
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let decls: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut d = json!({"name": f.get("name").cloned().unwrap_or(Value::Null)});
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(p) = f.get("parameters") {
                    d["parameters"] = p.clone();
                }
                d
            })
            .collect();
        if !decls.is_empty() {
            out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    if let Some(choice) = req.get("tool_choice") {
        let cfg = match choice {
            Value::String(s) if s == "auto" => Some(json!({"mode": "AUTO"})),
            Value::String(s) if s == "required" => Some(json!({"mode": "ANY"})),
            Value::String(s) if s == "none" => Some(json!({"mode": "NONE"})),
            Value::Object(_) => choice
                .pointer("/function/name")
                .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
            _ => None,
        };
        if let Some(c) = cfg {
            out.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    Ok(Value::Object(out))
}

fn finish_reason(reason: Option<&str>, has_calls: bool) -> Value {
    if has_calls {
        return json!("tool_calls");
    }
    match reason {
        None => Value::Null,
        Some("STOP") | Some("FINISH_REASON_UNSPECIFIED") | Some("MALFORMED_FUNCTION_CALL") => {
            json!("stop")
        }
        Some("MAX_TOKENS") => json!("length"),
        Some(_) => json!("content_filter"),
    }
}

/// Gemini's promptTokenCount includes cached tokens, like OpenAI's; thinking tokens are
/// output (OpenAI counts reasoning inside completion_tokens).
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("promptTokenCount"),
        output: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        cached_input: n("cachedContentTokenCount"),
        reasoning: n("thoughtsTokenCount"),
        cache_write: 0,
    }
}

fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input, "completion_tokens": u.output, "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Text and function calls of the first candidate.
fn candidate(resp: &Value, call_base: usize) -> (String, Vec<Value>, Option<String>) {
    let cand = resp.pointer("/candidates/0");
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in cand
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) != Some(true) {
                text.push_str(t);
            }
        }
        if let Some(fc) = p.get("functionCall") {
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{}", call_base + calls.len()));
            calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": fc.get("name").cloned().unwrap_or(Value::Null),
                             "arguments": fc.get("args").map_or_else(|| "{}".to_string(), Value::to_string)}
            }));
        }
    }
    let reason = cand
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (text, calls, reason)
}

pub fn response(resp: &Value) -> (Value, Usage) {
    let (text, calls, reason) = candidate(resp, 0);
    let usage = resp.get("usageMetadata").map(usage_of).unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    let has_calls = !calls.is_empty();
    if has_calls {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": resp.get("responseId").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now(),
        "model": resp.get("modelVersion").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_reason(reason.as_deref(), has_calls)}],
        "usage": openai_usage(&usage),
    });
    (out, usage)
}

/// A Google error body → OpenAI's error shape.
pub fn error(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let v = if let Some(first) = v.as_array().and_then(|a| a.first()) {
        first.clone()
    } else {
        v
    };
    let e = v.get("error")?;
    Some(json!({"error": {
        "message": e.get("message").cloned().unwrap_or(Value::Null),
        "type": e.get("status").cloned().unwrap_or(Value::Null),
        "param": null,
        "code": e.get("status").cloned().unwrap_or(Value::Null),
    }}))
}

/// `streamGenerateContent?alt=sse`: each event is a partial response with cumulative
/// usage; each becomes one OpenAI chunk.
pub struct Stream {
    split: sse::Splitter,
    w: ChunkWriter,
    usage: Option<Usage>,
    started: bool,
    calls: usize,
    finished: bool,
    deltas: u64,
}

impl Stream {
    pub fn new(include_usage: bool) -> Self {
        Stream {
            split: sse::Splitter::default(),
            w: ChunkWriter::new(
                format!("chatcmpl-gemini{:016x}", fastrand::u64(..)),
                include_usage,
            ),
            usage: None,
            started: false,
            calls: 0,
            finished: false,
            deltas: 0,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if v.get("error").is_some() {
            if let Some(e) = error(data) {
                emit(&e, out);
            }
            return;
        }
        if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
            self.w.model = m.to_string();
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = Some(usage_of(u));
        }
        if !self.started {
            self.started = true;
            self.w.chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                out,
            );
        }
        let (text, calls, reason) = candidate(&v, self.calls);
        if !text.is_empty() {
            self.deltas += 1;
            self.w.chunk(json!({"content": text}), Value::Null, out);
        }
        let n = calls.len();
        for (i, mut c) in calls.into_iter().enumerate() {
            self.deltas += 1;
            c["index"] = json!(self.calls + i);
            self.w.chunk(json!({"tool_calls": [c]}), Value::Null, out);
        }
        self.calls += n;
        if reason.is_some() {
            self.w.chunk(
                json!({}),
                finish_reason(reason.as_deref(), self.calls > 0),
                out,
            );
            self.end(out);
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.w
            .end(openai_usage(&self.usage.unwrap_or_default()), out);
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

    fn finish(&mut self, out: &mut BytesMut) {
        // Gemini ends the stream without a terminator event: close it for the client.
        if self.started {
            self.end(out);
        }
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
mod tests;
