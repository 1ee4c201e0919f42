//! An incremental parser of `text/event-stream` (the WHATWG server-sent events format) that
//! accepts the body in arbitrary byte chunks, as it arrives from the network.
//!
//! Lines end in `\n`, `\r\n` or `\r` (a `\r` at the end of one chunk and a `\n` at the start of
//! the next are one line ending). `data:` lines of one event are joined with `\n`; a blank
//! line dispatches the event; `:` lines are comments; `event:` sets the type; other fields
//! (`id`, `retry`) are ignored. One space after the colon is dropped. Bytes are buffered until
//! a line is complete, so multi-byte UTF-8 split across chunks is never cut; a line that is
//! not UTF-8 is an error. A line, or an event's data, longer than [`MAX_LINE_BYTES`] is an
//! error too: memory stays bounded whatever the server sends (an endless line without a line
//! end, a stream of `data:` lines without a blank line).

/// Longest line, and longest data of one event, the parser holds (4 MiB; a streamed token
/// event is well under 1 KiB).
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field (empty when absent, i.e. `message`).
    pub event: String,
    pub data: String,
}

/// A stream the parser refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event stream line {line} is not UTF-8")]
    NotUtf8 { line: usize },
    #[error("event stream line {line} is longer than {limit} bytes without a line end (the parser holds at most that much)")]
    LineTooLong { line: usize, limit: usize },
    #[error("event ending at line {line} has more than {limit} bytes of data without a blank line to end it")]
    EventTooLong { line: usize, limit: usize },
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was a `\r` that ended a line (a following `\n` belongs to it).
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    lines: usize,
    /// [`MAX_LINE_BYTES`] unless set by [`SseParser::with_limit`]; 0 means the default.
    limit: usize,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that holds at most `limit` bytes of one line or one event's data.
    pub fn with_limit(limit: usize) -> Self {
        SseParser { limit: limit.max(1), ..Self::default() }
    }

    fn limit(&self) -> usize {
        if self.limit == 0 {
            MAX_LINE_BYTES
        } else {
            self.limit
        }
    }

    /// Feed bytes; return the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut out)?,
                b'\r' => {
                    self.end_line(&mut out)?;
                    self.after_cr = true;
                }
                _ => {
                    if self.line.len() >= self.limit() {
                        return Err(SseError::LineTooLong { line: self.lines + 1, limit: self.limit() });
                    }
                    self.line.push(b)
                }
            }
        }
        Ok(out)
    }

    /// Bytes received that are not yet part of a dispatched event (a stream that ends with
    /// these was cut mid-event).
    pub fn pending(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.lines += 1;
        let raw = std::mem::take(&mut self.line);
        if raw.is_empty() {
            if self.has_data {
                out.push(SseEvent { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.data) });
                self.has_data = false;
            } else {
                self.event.clear();
            }
            return Ok(());
        }
        let line = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8 { line: self.lines })?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                if self.data.len() + value.len() + 1 > self.limit() {
                    return Err(SseError::EventTooLong { line: self.lines, limit: self.limit() });
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent { event: String::new(), data: data.into() }
    }

    #[test]
    fn fields_comments_and_line_endings() {
        let body = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:two\ndata: lines\n\ndata: [DONE]\r\r";
        let got = parse_all(&[body]);
        assert_eq!(got, vec![ev("{\"a\":1}"), SseEvent { event: "x".into(), data: "two\nlines".into() }, ev("[DONE]")]);
    }

    #[test]
    fn cr_and_lf_split_across_chunks_is_one_line_ending() {
        let got = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\n\n"]);
        assert_eq!(got, vec![ev("a"), ev("b")]);
    }

    #[test]
    fn unfinished_event_is_pending_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"x\"").unwrap().is_empty());
        assert!(p.pending());
        let mut q = SseParser::new();
        assert_eq!(q.push(b"data: a\n\n").unwrap(), vec![ev("a")]);
        assert!(!q.pending());
    }

    #[test]
    fn an_endless_line_is_refused_with_bounded_memory() {
        let mut p = SseParser::with_limit(1000);
        assert!(p.push(&[b'a'; 600]).unwrap().is_empty());
        let e = p.push(&[b'a'; 600]).unwrap_err();
        assert!(matches!(e, SseError::LineTooLong { line: 1, limit: 1000 }), "{e:?}");
        assert!(p.line.capacity() < 4096, "the line buffer grew past the limit");
        // Exactly the limit is fine; data lines that add up past it are refused.
        let mut q = SseParser::with_limit(8);
        assert_eq!(q.push(b"data:123\n\n").unwrap(), vec![ev("123")]);
        assert!(matches!(q.push(b"data:1\ndata:2\ndata:3\ndata:4\ndata:5\n"), Err(SseError::EventTooLong { .. })));
        // The default limit is a few MiB.
        let mut d = SseParser::new();
        let big = vec![b'x'; MAX_LINE_BYTES];
        assert!(d.push(&big).is_ok());
        assert!(matches!(d.push(b"x"), Err(SseError::LineTooLong { .. })));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert!(SseParser::new().push(b"data: \xff\xfe\n\n").is_err());
    }

    /// A body in the OpenAI streaming shape with multi-byte text, CRLF and LF endings,
    /// comments and multi-line data.
    fn sample_body() -> Vec<u8> {
        let mut s = String::new();
        for i in 0..12 {
            let eol = if i % 3 == 0 { "\r\n" } else { "\n" };
            if i % 5 == 0 {
                s.push_str(&format!(": ping {i}{eol}"));
            }
            s.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i} héllo ✓\"}}}}]}}{eol}{eol}"
            ));
        }
        s.push_str("event: note\ndata: first\ndata: second\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    proptest! {
        /// Splitting the byte stream at arbitrary points yields exactly the events of the
        /// unsplit stream.
        #[test]
        fn any_split_yields_the_same_events(cuts in proptest::collection::vec(0usize..10_000, 0..40)) {
            let body = sample_body();
            let whole = parse_all(&[&body]);
            prop_assert_eq!(whole.len(), 14);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                chunks.push(&body[prev..p]);
                prev = p;
            }
            chunks.push(&body[prev..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }

        /// Byte-at-a-time feeding too.
        #[test]
        fn byte_at_a_time(extra in 0usize..3) {
            let body = sample_body();
            let whole = parse_all(&[&body]);
            let step = 1 + extra;
            let chunks: Vec<&[u8]> = body.chunks(step).collect();
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }
}
