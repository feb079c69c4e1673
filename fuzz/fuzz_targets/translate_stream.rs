//! Each response translator (Anthropic and Gemini streams to OpenAI chunks, OpenAI chunks
//! to Anthropic events, non-streamed bodies, the Anthropic passthrough) fed arbitrary
//! provider bytes cut at arbitrary points: never a panic, and usage is always answerable.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::provider::{anthropic, gemini, messages, Translator, Whole};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let include_usage = sel & 0x80 != 0;
    let mut t: Box<dyn Translator> = match sel % 7 {
        0 => Box::new(anthropic::Stream::new(include_usage)),
        1 => Box::new(gemini::Stream::new(include_usage)),
        2 => Box::new(messages::Stream::default()),
        3 => Box::new(anthropic::Passthrough::default()),
        4 => Box::new(Whole::new(anthropic::response, anthropic::error)),
        5 => Box::new(Whole::new(gemini::response, gemini::error)),
        _ => Box::new(Whole::new(messages::response, messages::error)),
    };
    let step = usize::from((sel >> 3) % 13) + 1;
    let mut out = BytesMut::new();
    for chunk in data.chunks(step) {
        t.feed(chunk, &mut out);
        let _ = t.so_far();
    }
    t.finish(&mut out);
    let _ = t.usage();
    let _ = t.partial_usage();
    let _ = t.translate_error(data);
    let _ = t.streaming();
});
