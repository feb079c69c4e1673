//! Server-sent events split incrementally: bytes in as they arrive from the network, whole
//! events out. Only the bytes of an event not yet complete are kept.

#[derive(Default)]
pub struct Splitter {
    pending: Vec<u8>,
    /// The last two bytes fed, to see a blank line that straddles two chunks.
    last: [u8; 2],
}

impl Splitter {
    /// Calls `on_event` with each event completed by `chunk` (its bytes, blank line included).
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut start = 0;
        let mut from = 0;
        // An event ends with a blank line: "\n\n" or "\n\r\n".
        while let Some(off) = memchr::memchr(b'\n', &chunk[from..]) {
            let i = from + off;
            let p1 = if i >= 1 { chunk[i - 1] } else { self.last[1] };
            let p2 = match i {
                0 => self.last[0],
                1 => self.last[1],
                _ => chunk[i - 2],
            };
            if p1 == b'\n' || (p1 == b'\r' && p2 == b'\n') {
                if self.pending.is_empty() {
                    on_event(&chunk[start..=i]);
                } else {
                    let mut ev = std::mem::take(&mut self.pending);
                    ev.extend_from_slice(&chunk[start..=i]);
                    on_event(&ev);
                    ev.clear();
                    self.pending = ev;
                }
                start = i + 1;
            }
            from = i + 1;
        }
        if start < chunk.len() {
            self.pending.extend_from_slice(&chunk[start..]);
        }
        match chunk.len() {
            0 => {}
            1 => self.last = [self.last[1], chunk[0]],
            n => self.last = [chunk[n - 2], chunk[n - 1]],
        }
    }

    /// Bytes of an event that never completed (a cut stream).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// The `data:` lines of one event, in order, without their prefix. (No translator needs the
/// `event:` name: every payload names its own type.) Allocation-free: this runs per event.
pub fn data_lines(ev: &[u8]) -> DataLines<'_> {
    DataLines { rest: ev }
}

pub struct DataLines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DataLines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (line, rest) = match memchr::memchr(b'\n', self.rest) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(v) = line.strip_prefix(b"data:") {
                return Some(trim_start(v));
            }
        }
        None
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    b.strip_prefix(b" ").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_of_an_event() {
        let ev = b"event: message_start\r\ndata: {\"a\":1}\r\n: comment\ndata:{\"b\":2}\n\n";
        let lines: Vec<&[u8]> = data_lines(ev).collect();
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(
            data_lines(b"data: [DONE]").collect::<Vec<_>>(),
            vec![&b"[DONE]"[..]]
        );
        assert_eq!(data_lines(b"event: ping\n\n").count(), 0);
    }
}
