//! Splits a byte stream into lines, whatever the frame boundaries.
//!
//! The watch stream is NDJSON over chunked HTTP: a frame can end in the
//! middle of a line and can also hold several lines, so lines are
//! reassembled here before they are parsed. One line is capped so a
//! broken or hostile server cannot make the client buffer without bound.

use bytes::{Buf, Bytes, BytesMut};

/// The longest line accepted (a snapshot of a large registry is one line).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A line grew past the cap before its newline arrived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line longer than {limit} bytes")]
pub struct LineTooLong {
    pub limit: usize,
}

/// Accumulates frames and hands out complete lines.
#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes received but not yet returned as lines.
    buf: BytesMut,
    /// How far `buf` is known to hold no newline, so a long line that
    /// arrives in many frames is scanned once, not once per frame.
    scanned: usize,
    /// Longest line allowed, newline excluded.
    limit: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::with_limit(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    pub fn with_limit(limit: usize) -> Self {
        LineSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// Appends one frame of the body.
    pub fn push(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    /// The next complete, non-blank line without its `\n` (or `\r\n`),
    /// `Ok(None)` when more bytes are needed.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        loop {
            let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.limit {
                    return Err(LineTooLong { limit: self.limit });
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            if end > self.limit {
                // Dropped with its newline: a caller that goes on gets the
                // lines after it, instead of this error again and again.
                self.buf.advance(end + 1);
                return Err(LineTooLong { limit: self.limit });
            }
            let mut line = self.buf.split_to(end).freeze();
            self.buf.advance(1);
            if line.ends_with(b"\r") {
                line.truncate(line.len() - 1);
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
    }

    /// At end of stream: what is left after the last newline, if it is not
    /// blank (a final line the server did not terminate).
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.buf.split().freeze();
        self.scanned = 0;
        if rest.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut LineSplitter) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = s.next_line().unwrap() {
            out.push(String::from_utf8(l.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn an_ended_line_past_the_limit_is_refused_once_then_dropped() {
        let mut s = LineSplitter::with_limit(4);
        s.push(b"toolong\nok\n");
        assert_eq!(s.next_line(), Err(LineTooLong { limit: 4 }));
        assert_eq!(drain(&mut s), ["ok"]);
    }

    #[test]
    fn several_lines_in_one_frame() {
        let mut s = LineSplitter::default();
        s.push(b"{\"a\":1}\n{\"b\":2}\n{\"c\"");
        assert_eq!(drain(&mut s), ["{\"a\":1}", "{\"b\":2}"]);
        s.push(b":3}\n");
        assert_eq!(drain(&mut s), ["{\"c\":3}"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn one_line_across_many_frames() {
        let mut s = LineSplitter::default();
        for chunk in [&b"ab"[..], b"cd", b"", b"e"] {
            s.push(chunk);
            assert_eq!(drain(&mut s), Vec::<String>::new());
        }
        s.push(b"f\r\ng");
        assert_eq!(drain(&mut s), ["abcdef"]);
        assert_eq!(s.finish().as_deref(), Some(&b"g"[..]));
    }

    #[test]
    fn blank_lines_are_skipped() {
        let mut s = LineSplitter::default();
        s.push(b"\n\r\n  \nx\n\n");
        assert_eq!(drain(&mut s), ["x"]);
        s.push(b" \r\n");
        assert_eq!(drain(&mut s), Vec::<String>::new());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn caps_a_line_with_or_without_its_newline() {
        let mut s = LineSplitter::with_limit(4);
        s.push(b"1234\n");
        assert_eq!(drain(&mut s), ["1234"]);
        s.push(b"123");
        assert_eq!(s.next_line(), Ok(None));
        s.push(b"45");
        assert_eq!(s.next_line(), Err(LineTooLong { limit: 4 }));

        let mut s = LineSplitter::with_limit(4);
        s.push(b"12345\nok\n");
        assert_eq!(s.next_line(), Err(LineTooLong { limit: 4 }));
    }
}
