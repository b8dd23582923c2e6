//! A server-sent-events decoder that turns arbitrarily split byte chunks into event payloads.
//! Only `data:` matters to chat completions; comments, `event:`, `id:` and `retry:` are skipped.

use crate::{Error, ErrorKind};

/// No single line may grow beyond this: a server that never sends a newline must not make us
/// buffer without bound.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct SseDecoder {
    buf: Vec<u8>,
    /// Where to continue looking for a newline in `buf` (everything before has none).
    scanned: usize,
    /// The `data:` lines of the event being assembled.
    data: Vec<String>,
    started: bool,
}

impl SseDecoder {
    /// Feeds bytes and returns the data of every event they complete, in order. Each event's
    /// data is returned as its lines, so a caller can tell multi-line data apart.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<String>>, Error> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut pos = self.scanned;
        while let Some(nl) = self.buf[pos..].iter().position(|&b| b == b'\n') {
            let end = pos + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line)
                .map_err(|_| Error::new(ErrorKind::Malformed, "model stream is not valid UTF-8"))?
                .to_owned();
            self.line(&line, &mut events);
            start = end + 1;
            pos = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(Error::new(ErrorKind::Malformed, "model stream line exceeds 16 MiB"));
        }
        Ok(events)
    }

    /// Ends the stream: a last line without a newline and a last event without a blank line
    /// still count, as lenient servers send them.
    pub(crate) fn finish(&mut self) -> Result<Vec<Vec<String>>, Error> {
        let mut events = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            let line = std::str::from_utf8(line)
                .map_err(|_| Error::new(ErrorKind::Malformed, "model stream is not valid UTF-8"))?
                .to_owned();
            self.line(&line, &mut events);
        }
        self.scanned = 0;
        self.line("", &mut events);
        Ok(events)
    }

    fn line(&mut self, line: &str, events: &mut Vec<Vec<String>>) {
        let line = if self.started {
            line
        } else {
            self.started = true;
            line.strip_prefix('\u{feff}').unwrap_or(line)
        };
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(std::mem::take(&mut self.data));
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment, often a keepalive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            self.data.push(value.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8], split: usize) -> Vec<Vec<String>> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for chunk in input.chunks(split) {
            out.extend(d.push(chunk).unwrap());
        }
        out.extend(d.finish().unwrap());
        out
    }

    #[test]
    fn events_survive_any_split() {
        let input =
            ": keepalive\r\n\r\ndata: {\"a\":\"é\"}\r\n\r\nevent: x\nid: 3\ndata:one\ndata: two\n\ndata: [DONE]\n\n";
        let want =
            vec![vec!["{\"a\":\"é\"}".to_owned()], vec!["one".to_owned(), "two".to_owned()], vec!["[DONE]".to_owned()]];
        for split in 1..input.len() {
            assert_eq!(decode_split(input.as_bytes(), split), want, "split {split}");
        }
    }

    #[test]
    fn trailing_event_without_blank_line_counts() {
        assert_eq!(decode_split(b"data: x", 3), vec![vec!["x".to_owned()]]);
        assert_eq!(decode_split(b"\xef\xbb\xbfdata: y\n", 2), vec![vec!["y".to_owned()]]);
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut d = SseDecoder::default();
        let err = d.push(b"data: \xff\xfe\n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed);
    }
}
