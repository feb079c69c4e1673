//! Each request translator (OpenAI chat → Anthropic Messages, → Gemini, and Anthropic
//! Messages → OpenAI chat) on any JSON a client can send: an answer or a clean error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::provider::{anthropic, gemini, messages};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(out) = anthropic::request(&req, "claude-fuzz", Some(64)) {
        assert_eq!(out["model"], "claude-fuzz");
    }
    let _ = gemini::request(&req);
    if let Ok(out) = messages::request(&req, "gpt-fuzz") {
        assert_eq!(out["model"], "gpt-fuzz");
    }
});
