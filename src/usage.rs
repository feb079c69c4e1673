//! Token usage read from responses as they are relayed, without holding them back:
//! OpenAI-format JSON bodies (the `usage` object, last in the document) and SSE streams
//! (the chunk carrying `usage`), scanned incrementally across TCP chunk boundaries.

use memchr::memmem::{Finder, FinderRev};
use serde::Deserialize;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token: fresh, read from the provider's cache, and written to it.
    pub input: u64,
    pub output: u64,
    /// Prompt tokens read from the provider's cache (part of `input`).
    pub cached_input: u64,
    pub reasoning: u64,
    /// Prompt tokens written to the provider's cache (part of `input`): Anthropic's
    /// `cache_creation_input_tokens`, billed at their own rate.
    pub cache_write: u64,
}

/// OpenAI's usage object: Chat Completions' names, or the Responses API's
/// (`input_tokens`, `output_tokens`, `input_tokens_details`, `output_tokens_details`).
#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Self {
        Usage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
            cached_input: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cache_write: 0,
        }
    }
}

const KEY: &[u8] = b"\"usage\"";

/// The usage of an OpenAI stream chunk that carries nothing else (`"choices":[]`), as sent
/// when `stream_options.include_usage` is on.
pub fn usage_only_chunk(data: &[u8]) -> Option<Usage> {
    EMPTY_CHOICES.find(data)?;
    usage_after_last_key(data)
}

/// A chunk carrying generated text or tool-call arguments: about one token each. Responses
/// API events name their type first (`{"type":"response.output_text.delta",…}`), so chat
/// chunks pay nothing for that check.
pub fn is_content_delta(data: &[u8]) -> bool {
    if let Some(kind) = data.strip_prefix(br#"{"type":"response."#) {
        return [
            &b"output_text.delta\""[..],
            b"function_call_arguments.delta\"",
            b"refusal.delta\"",
        ]
        .iter()
        .any(|k| kind.starts_with(k));
    }
    let non_empty = |finder: &Finder<'_>, key_len: usize| {
        finder
            .find(data)
            .is_some_and(|i| data.get(i + key_len) != Some(&b'"'))
    };
    non_empty(&CONTENT, 11) || non_empty(&ARGUMENTS, 13)
}

// Searchers built once: building one per event cost more than the search itself.
static EMPTY_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));
static ARGUMENTS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"arguments\":\""));

/// Parses the value after the last `"usage"` key in `buf`. Inside JSON strings quotes are
/// escaped, so the unescaped byte sequence `"usage"` can only be a key.
fn usage_after_last_key(buf: &[u8]) -> Option<Usage> {
    let pos = KEY_FINDER.rfind(buf)?;
    let rest = &buf[pos + KEY.len()..];
    let rest = skip_ws(rest);
    let rest = skip_ws(rest.strip_prefix(b":")?);
    if rest.starts_with(b"null") {
        return None;
    }
    let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<OpenAiUsage>();
    it.next()?.ok().map(Usage::from)
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

static KEY_FINDER: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(KEY));

/// How much of a JSON response's end is kept: the usage object sits last and is small.
const JSON_TAIL: usize = 8 * 1024;

/// Keeps the tail of a non-streamed JSON response; usage is parsed once it ends.
#[derive(Default)]
pub struct JsonTail {
    tail: Vec<u8>,
}

impl JsonTail {
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.len() >= JSON_TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - JSON_TAIL..]);
            return;
        }
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(JSON_TAIL);
        if overflow > 0 {
            self.tail.drain(..overflow);
        }
        self.tail.extend_from_slice(chunk);
    }

    pub fn finish(&self) -> Option<Usage> {
        usage_after_last_key(&self.tail)
    }
}

/// Incremental SSE scanner. Only the bytes of an event not yet complete are kept; complete
/// events are looked at once, and parsed only when they mention `"usage"`.
#[derive(Default)]
pub struct SseScanner {
    split: crate::sse::Splitter,
    pub usage: Option<Usage>,
    /// Complete `data:` events seen, `[DONE]` excluded.
    pub events: u64,
    /// Events that carried generated content: the output so far if the stream is cut.
    pub deltas: u64,
    pub done: bool,
}

impl SseScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut split = std::mem::take(&mut self.split);
        split.feed(chunk, |ev| self.event(ev));
        self.split = split;
    }

    fn event(&mut self, ev: &[u8]) {
        for line in ev
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"data:"))
        {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = skip_ws(data);
            if data.starts_with(b"[DONE]") {
                self.done = true;
                continue;
            }
            self.events += 1;
            if is_content_delta(data) {
                self.deltas += 1;
            }
            if let Some(u) = usage_after_last_key(data) {
                self.usage = Some(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE_CHUNK: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":2}}}"#;

    fn stream() -> String {
        let mut s = String::new();
        s.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\": 5\"}}],\"usage\":null}\n\n");
        s.push_str(
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        );
        s.push_str(USAGE_CHUNK);
        s.push_str("\n\ndata: [DONE]\n\n");
        s
    }

    #[test]
    fn finds_usage_in_a_stream_split_anywhere() {
        let s = stream();
        let expect = Usage {
            input: 11,
            output: 7,
            cached_input: 3,
            reasoning: 2,
            cache_write: 0,
        };
        for cut in 0..s.len() {
            for cut2 in cut..s.len().min(cut + 7) {
                let mut sc = SseScanner::default();
                sc.feed(&s.as_bytes()[..cut]);
                sc.feed(&s.as_bytes()[cut..cut2]);
                sc.feed(&s.as_bytes()[cut2..]);
                assert_eq!(sc.usage, Some(expect), "cut at {cut}/{cut2}");
                assert_eq!(sc.events, 3);
                assert!(sc.done);
            }
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openai/");
        std::fs::read(format!("{path}{name}")).unwrap()
    }

    #[test]
    fn documented_openai_response_and_stream() {
        let mut t = JsonTail::default();
        for c in fixture("response.json").chunks(100) {
            t.feed(c);
        }
        assert_eq!(
            t.finish(),
            Some(Usage {
                input: 1117,
                output: 46,
                cached_input: 1024,
                reasoning: 0,
                cache_write: 0,
            })
        );
        for piece in [1, 3, 64, 1 << 16] {
            let mut sc = SseScanner::default();
            for c in fixture("stream-usage.sse").chunks(piece) {
                sc.feed(c);
            }
            assert_eq!(sc.usage.map(|u| (u.input, u.output)), Some((9, 2)));
            assert_eq!(sc.deltas, 2);
            assert!(sc.done);
        }
    }

    #[test]
    fn crlf_events() {
        let s = stream().replace('\n', "\r\n");
        let mut sc = SseScanner::default();
        for b in s.as_bytes().chunks(5) {
            sc.feed(b);
        }
        assert_eq!(sc.usage.map(|u| u.input), Some(11));
        assert!(sc.done);
    }

    #[test]
    fn json_body_usage() {
        let body = format!(
            r#"{{"id":"x","choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":5,"completion_tokens":9}}}}"#,
            "a\\\"usage\\\":1 ".repeat(5000)
        );
        for size in [1, 100, 4096, 1 << 20] {
            let mut t = JsonTail::default();
            for c in body.as_bytes().chunks(size) {
                t.feed(c);
            }
            assert_eq!(
                t.finish(),
                Some(Usage {
                    input: 5,
                    output: 9,
                    ..Default::default()
                })
            );
        }
        let mut t = JsonTail::default();
        t.feed(br#"{"error":{"message":"x"}}"#);
        assert_eq!(t.finish(), None);
    }

    #[test]
    fn documented_responses_api_answer_and_stream() {
        let mut t = JsonTail::default();
        for c in fixture("responses.json").chunks(64) {
            t.feed(c);
        }
        assert_eq!(
            t.finish(),
            Some(Usage {
                input: 36,
                output: 87,
                cached_input: 0,
                reasoning: 0,
                cache_write: 0,
            })
        );
        let sse = fixture("responses-stream.sse");
        for step in [1, 7, 100, sse.len()] {
            let mut sc = SseScanner::default();
            for c in sse.chunks(step) {
                sc.feed(c);
            }
            assert_eq!(
                sc.usage,
                Some(Usage {
                    input: 37,
                    output: 11,
                    cached_input: 0,
                    reasoning: 0,
                    cache_write: 0,
                }),
                "read {step} bytes at a time"
            );
            assert_eq!(sc.deltas, 2, "the two output_text.delta events");
        }
        // Cut after the first delta: no total yet, one delta relayed.
        let cut = sse
            .windows(b"response.output_text.done".len())
            .position(|w| w == b"response.output_text.done")
            .unwrap();
        let mut sc = SseScanner::default();
        sc.feed(&sse[..cut]);
        assert_eq!(sc.usage, None);
        assert_eq!(sc.deltas, 2);
        assert!(is_content_delta(
            br#"{"type":"response.function_call_arguments.delta","delta":"{\"a"}"#
        ));
        assert!(!is_content_delta(
            br#"{"type":"response.output_text.done","text":"x"}"#
        ));
    }

    /// A Responses stream that ends `incomplete` (max_output_tokens) or `failed` still
    /// carries usage on its final event; it is billed all the same.
    #[test]
    fn responses_incomplete_and_failed_carry_usage() {
        for kind in ["response.incomplete", "response.failed"] {
            let ev = format!(
                "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":9,\"response\":{{\"id\":\"resp_1\",\"status\":\"incomplete\",\"usage\":{{\"input_tokens\":12,\"input_tokens_details\":{{\"cached_tokens\":4}},\"output_tokens\":64,\"output_tokens_details\":{{\"reasoning_tokens\":60}},\"total_tokens\":76}}}}}}\n\n"
            );
            let mut sc = SseScanner::default();
            sc.feed(ev.as_bytes());
            assert_eq!(
                sc.usage,
                Some(Usage {
                    input: 12,
                    output: 64,
                    cached_input: 4,
                    reasoning: 60,
                    cache_write: 0,
                }),
                "{kind}"
            );
        }
    }
}
