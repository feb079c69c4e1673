//! The request probe and rewrite: never panics; a body it accepts, rewritten with another
//! model (and usage requested), is still JSON naming that model.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::rewrite::{probe, with_model, with_usage_requested};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(Some(p)) = probe(&body) else {
        return;
    };
    let out = with_model(&body, &p.model_span, Some("fuzz-\"model\"")).to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("the splice keeps JSON valid");
    assert_eq!(v["model"], "fuzz-\"model\"");
    if let Some(with_usage) = with_usage_requested(&body, &p, Some("m2")) {
        let v: serde_json::Value =
            serde_json::from_slice(&with_usage).expect("usage request keeps JSON valid");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m2");
    }
});
