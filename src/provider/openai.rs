//! OpenAI-format streams whose client did not ask for usage: the proxy asked for it
//! (`stream_options.include_usage`), so the extra usage-only chunk is taken out again —
//! clients that index `choices[0]` on every chunk would fail on it. Everything else is
//! relayed event by event as it completes.

use super::Translator;
use crate::sse;
use crate::usage::{self, Usage};
use bytes::BytesMut;

#[derive(Default)]
pub struct HideUsage {
    split: sse::Splitter,
    usage: Option<Usage>,
    deltas: u64,
}

impl HideUsage {
    fn event(&mut self, ev: &[u8], out: &mut BytesMut) {
        let mut data = sse::data_lines(ev);
        if let (Some(d), None) = (data.next(), data.next()) {
            if let Some(u) = usage::usage_only_chunk(d) {
                self.usage = Some(u);
                return;
            }
            if usage::is_content_delta(d) {
                self.deltas += 1;
            }
        }
        out.extend_from_slice(ev);
    }
}

impl Translator for HideUsage {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        let mut split = std::mem::take(&mut self.split);
        split.feed(chunk, |ev| self.event(ev, out));
        self.split = split;
    }

    fn finish(&mut self, out: &mut BytesMut) {
        // A trailing event without its blank line still belongs to the client.
        out.extend_from_slice(self.split.pending());
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn partial_usage(&self) -> Usage {
        Usage {
            output: self.deltas,
            ..Usage::default()
        }
    }

    fn streaming(&self) -> bool {
        true
    }

    fn keeps_upstream_headers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_is_hidden_and_counted() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\n",
            "data: [DONE]\n\n"
        );
        for piece in [1, 5, 1000] {
            let mut t = HideUsage::default();
            let mut out = BytesMut::new();
            for c in stream.as_bytes().chunks(piece) {
                t.feed(c, &mut out);
            }
            t.finish(&mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert!(!text.contains("\"choices\":[]"), "{text}");
            assert_eq!(text.matches("data: ").count(), 4);
            assert!(text.ends_with("data: [DONE]\n\n"));
            assert_eq!(t.usage().map(|u| (u.input, u.output)), Some((9, 1)));
            assert_eq!(t.partial_usage().output, 1);
        }
    }
}
