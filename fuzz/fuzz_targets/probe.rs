//! The request probe and rewrite: never panics; a body it accepts, rewritten with another
//! model (and usage requested), is probed again as a request for that model.
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
    let again = probe(&out)
        .expect("the splice keeps the body valid")
        .expect("and keeps its model");
    assert_eq!(again.model, "fuzz-\"model\"");
    assert_eq!(again.stream, p.stream);
    if let Some(with_usage) = with_usage_requested(&body, &p, Some("m2")) {
        let again = probe(&with_usage)
            .expect("asking for usage keeps the body valid")
            .expect("and keeps its model");
        assert_eq!(again.model, "m2");
        assert_eq!(again.include_usage, Some(true));
    }
});
