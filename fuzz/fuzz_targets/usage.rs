//! The usage scanners (SSE stream and JSON tail) on arbitrary provider bytes, cut at
//! arbitrary points: never a panic, and the same answer however the bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::usage::{is_content_delta, usage_only_chunk, JsonTail, SseScanner};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 31) + 1;
    let mut whole = SseScanner::default();
    whole.feed(data);
    let mut cut = SseScanner::default();
    let mut tail = JsonTail::default();
    for chunk in data.chunks(step) {
        cut.feed(chunk);
        tail.feed(chunk);
    }
    assert_eq!(whole.usage, cut.usage);
    assert_eq!(whole.events, cut.events);
    assert_eq!(whole.deltas, cut.deltas);
    let mut once = JsonTail::default();
    once.feed(data);
    assert_eq!(once.finish(), tail.finish());
    let _ = usage_only_chunk(data);
    let _ = is_content_delta(data);
});
