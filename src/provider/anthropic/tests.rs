//! Translation checked against Anthropic's documented examples (tests/fixtures/anthropic).

use super::*;
use crate::provider::Translator;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/anthropic/");
    std::fs::read(format!("{path}{name}")).unwrap()
}

fn chunks(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn request_maps_system_turns_images_tools_and_limits() {
    let req = json!({
        "model": "claude-fast",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.3, "top_p": 0.9, "stop": "END", "user": "u-42", "stream": true
    });
    let out = request(&req, "claude-3-5-haiku-20241022", None).unwrap();
    assert_eq!(out["model"], "claude-3-5-haiku-20241022");
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(out["system"], "Be brief.\n\nUse metric units.");
    assert_eq!(out["temperature"], 0.3);
    assert_eq!(out["top_p"], 0.9);
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert_eq!(out["metadata"]["user_id"], "u-42");
    assert_eq!(out["stream"], true);
    assert_eq!(
        out["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        out["tools"][0]["input_schema"]["properties"]["location"]["type"],
        "string"
    );
    let msgs = out["messages"].as_array().unwrap();
    // user, assistant(tool_use), user(tool_result + "Thanks" merged)
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        msgs[0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(
        msgs[0]["content"][2]["source"],
        json!({"type": "url", "url": "https://example.com/cat.jpg"})
    );
    assert_eq!(
        msgs[1]["content"][0],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(
        msgs[2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"})
    );
    assert_eq!(
        msgs[2]["content"][1],
        json!({"type": "text", "text": "Thanks"})
    );

    let limited = request(
        &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 77}),
        "m",
        Some(1000),
    )
    .unwrap();
    assert_eq!(limited["max_tokens"], 77);
    let catalog = request(
        &json!({"messages": [{"role": "user", "content": "x"}]}),
        "m",
        Some(1000),
    )
    .unwrap();
    assert_eq!(catalog["max_tokens"], 1000);
    assert!(catalog.get("stream").is_none());
    for (choice, expect) in [("auto", "auto"), ("required", "any"), ("none", "none")] {
        let r = request(&json!({"messages": [], "tool_choice": choice}), "m", None).unwrap();
        assert_eq!(r["tool_choice"]["type"], expect);
    }
    assert!(request(
        &json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        "m",
        None
    )
    .is_err());
}

#[test]
fn response_text_and_cache_usage() {
    let (out, usage) = response(&serde_json::from_slice(&fixture("response-text.json")).unwrap());
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    // OpenAI's prompt_tokens include cached input; Anthropic's input_tokens do not.
    assert_eq!(
        usage,
        Usage {
            input: 2095 + 1800,
            output: 503,
            cached_input: 1800,
            reasoning: 0,
            cache_write: 0,
        }
    );
    assert_eq!(out["usage"]["prompt_tokens"], 3895);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 1800);
}

#[test]
fn response_tool_use() {
    let (out, usage) =
        response(&serde_json::from_slice(&fixture("response-tool-use.json")).unwrap());
    let msg = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["tool_calls"][0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(
        msg["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(usage.output, 96);
}

fn run_stream(name: &str, include_usage: bool, piece: usize) -> (Vec<u8>, Option<Usage>) {
    let mut t = Stream::new(include_usage);
    let mut out = BytesMut::new();
    for c in fixture(name).chunks(piece) {
        t.feed(c, &mut out);
    }
    t.finish(&mut out);
    (out.to_vec(), t.usage())
}

#[test]
fn stream_text_any_split() {
    for piece in [1, 7, 64, 100_000] {
        let (out, usage) = run_stream("stream-text.sse", true, piece);
        let c = chunks(&out);
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = c
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello!");
        let finish: Vec<&Value> = c
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, vec![&json!("stop")]);
        let last = c.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 25);
        assert_eq!(last["usage"]["completion_tokens"], 15);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(
            usage,
            Some(Usage {
                input: 25,
                output: 15,
                ..Default::default()
            })
        );
        assert!(c.iter().all(|c| c["object"] == "chat.completion.chunk"
            && c["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"));
    }
    // Without include_usage the client gets no usage chunk, but the proxy still counts.
    let (out, usage) = run_stream("stream-text.sse", false, 13);
    assert!(chunks(&out).iter().all(|c| c.get("usage").is_none()));
    assert_eq!(usage.map(|u| u.output), Some(15));
}

#[test]
fn stream_tool_use() {
    let (out, usage) = run_stream("stream-tool-use.sse", false, 5);
    let c = chunks(&out);
    let start = c
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .unwrap();
    assert_eq!(
        start["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(start["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    let args: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    assert!(c
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(
        usage,
        Some(Usage {
            input: 472,
            output: 89,
            ..Default::default()
        })
    );
}

#[test]
fn errors_take_openai_shape() {
    let e = error(&fixture("error-overloaded.json")).unwrap();
    assert_eq!(e["error"]["message"], "Overloaded");
    assert_eq!(e["error"]["code"], "overloaded_error");
}

/// Anthropic's documented prompt-caching example, priced from the shipped catalog:
/// reads at the cached rate, writes at their own (1.25 × input), neither dropped.
#[test]
fn cache_reads_and_writes_are_priced_at_their_own_rates() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/anthropic/usage-cache.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let prices =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/prices.yaml")).unwrap();
    let catalog = crate::price::Catalog::parse(&prices).unwrap();
    // Sonnet: $3 in, $3.75 cache write, $0.30 cache read, $15 out per million.
    let sonnet = catalog.lookup("claude-sonnet-4-5").unwrap();

    let first = usage_of(&v["first_call_writes_the_cache"]);
    assert_eq!(first.input, 21 + 188_086);
    assert_eq!(first.cache_write, 188_086);
    assert_eq!(first.cached_input, 0);
    // 21 × 3 + 188086 × 3.75 + 393 × 15 = 711,280.5 µ$
    assert_eq!(crate::price::usd_decimal(sonnet.cost(&first)), "0.7112805");

    let second = usage_of(&v["second_call_reads_it"]);
    assert_eq!(second.cached_input, 188_086);
    assert_eq!(second.cache_write, 0);
    // 21 × 3 + 188086 × 0.30 + 393 × 15 = 62,383.8 µ$
    assert_eq!(crate::price::usd_decimal(sonnet.cost(&second)), "0.0623838");
}
