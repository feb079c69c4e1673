//! Writing OpenAI `chat.completion.chunk` events, for the formats whose streams are
//! translated into OpenAI's.

use bytes::BytesMut;
use serde_json::{json, Value};

pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    created: u64,
    /// The client asked for `stream_options.include_usage`: every chunk carries
    /// `"usage": null` and a usage-only chunk precedes `[DONE]`.
    include_usage: bool,
}

impl ChunkWriter {
    pub fn new(id: String, include_usage: bool) -> Self {
        ChunkWriter {
            id,
            model: String::new(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            include_usage,
        }
    }

    pub fn chunk(&self, delta: Value, finish: Value, out: &mut BytesMut) {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        emit(&c, out);
    }

    /// The end of the stream: the usage chunk if the client asked, then `[DONE]`.
    pub fn end(&self, usage: Value, out: &mut BytesMut) {
        if self.include_usage {
            emit(
                &json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage}),
                out,
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// One `data:` event.
pub fn emit(v: &Value, out: &mut BytesMut) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}
