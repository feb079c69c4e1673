//! Translation checked against Gemini's documented shapes (tests/fixtures/gemini).

use super::*;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemini/");
    std::fs::read(format!("{path}{name}")).unwrap()
}

#[test]
fn request_maps_roles_parts_tools_and_config() {
    let req = json!({
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather, and what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_7", "content": "{\"temp_c\": 21}"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "temperature": 0.1, "top_p": 0.5, "max_tokens": 300, "stop": ["X"]
    });
    let out = request(&req).unwrap();
    assert_eq!(
        out["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    let c = out["contents"].as_array().unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(
        c[0]["parts"][1],
        json!({"inline_data": {"mime_type": "image/jpeg", "data": "/9j/4AAQ"}})
    );
    assert_eq!(c[1]["role"], "model");
    assert_eq!(
        c[1]["parts"][0],
        json!({"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}})
    );
    assert_eq!(
        c[2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}})
    );
    assert_eq!(c[2]["parts"][1], json!({"text": "thanks"}));
    assert_eq!(
        out["generationConfig"],
        json!({"temperature": 0.1, "topP": 0.5, "maxOutputTokens": 300, "stopSequences": ["X"]})
    );
    assert_eq!(
        out["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
}

#[test]
fn response_text_usage_with_thinking_and_cache() {
    let (out, u) = response(&serde_json::from_slice(&fixture("response-text.json")).unwrap());
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "AI learns patterns from data to make predictions."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["model"], "gemini-2.5-flash");
    assert_eq!(
        u,
        Usage {
            input: 8,
            output: 11 + 26,
            cached_input: 2,
            reasoning: 26,
            cache_write: 0,
        }
    );
    assert_eq!(
        out["usage"]["completion_tokens_details"]["reasoning_tokens"],
        26
    );
}

#[test]
fn response_function_call() {
    let (out, u) =
        response(&serde_json::from_slice(&fixture("response-function-call.json")).unwrap());
    let call = &out["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "get_current_temperature");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"location": "London"})
    );
    assert_eq!(u.input, 65);
}

#[test]
fn stream_any_split() {
    for piece in [1, 9, 4096] {
        let mut t = Stream::new(true);
        let mut out = BytesMut::new();
        for c in fixture("stream-text.sse").chunks(piece) {
            t.feed(c, &mut out);
        }
        t.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "The sky is blue because of Rayleigh scattering.");
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"));
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert_eq!(
            t.usage(),
            Some(Usage {
                input: 9,
                output: 12,
                ..Default::default()
            })
        );
    }
}

#[test]
fn google_errors_take_openai_shape() {
    let e = error(&fixture("error-invalid-argument.json")).unwrap();
    assert_eq!(e["error"]["code"], "INVALID_ARGUMENT");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("API key not valid"));
}
