//! The SSE splitter: however the bytes are cut into reads, the same events come out, and
//! what never completed is kept as pending.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::sse::{data_lines, Splitter};

fn events(data: &[u8], step: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut s = Splitter::default();
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        s.feed(chunk, |ev| {
            for line in data_lines(ev) {
                let _ = line;
            }
            out.push(ev.to_vec())
        });
    }
    (out, s.pending().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = events(data, data.len());
    let cut = events(data, usize::from(step % 17) + 1);
    assert_eq!(whole, cut);
    let total: usize = whole.0.iter().map(Vec::len).sum::<usize>() + whole.1.len();
    assert_eq!(total, data.len());
});
