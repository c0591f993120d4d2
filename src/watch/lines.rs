//! Cutting a byte stream into lines, with a cap on line length.
//!
//! Complete lines are handed out straight from the caller's buffer; only a
//! partial last line is copied, to wait for its newline. A line longer than
//! the cap is reported once, as too long, and skipped up to its newline, so
//! one runaway line cannot grow memory or desynchronise the stream.

/// One line cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Without its `\n` (and without a `\r` before it).
    Complete { bytes: &'a [u8], offset: u64 },
    /// Longer than the cap; its bytes were dropped.
    TooLong { offset: u64 },
}

#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max_len: usize,
    /// Inside an over-long line: drop bytes up to the next newline.
    skipping: bool,
    /// Stream offset of the next byte to be pushed.
    offset: u64,
    /// Stream offset where `partial` (or the skipped line) starts.
    line_start: u64,
}

fn trim_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

impl LineSplitter {
    pub fn new(max_len: usize, offset: u64) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max_len,
            skipping: false,
            offset,
            line_start: offset,
        }
    }

    /// Stream offset up to which every line has been handed out: where a
    /// restart must resume so that the partial line is read again.
    pub fn committed_offset(&self) -> u64 {
        if self.partial.is_empty() && !self.skipping {
            self.offset
        } else {
            self.line_start
        }
    }

    /// Bytes of a partial line waiting for its newline.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; calls `f` for each line they complete.
    pub fn push(&mut self, mut data: &[u8], mut f: impl FnMut(Line)) {
        while !data.is_empty() {
            let nl = memchr::memchr(b'\n', data);
            let chunk_len = nl.map_or(data.len(), |i| i);
            if self.skipping {
                if let Some(i) = nl {
                    self.skipping = false;
                    self.advance(i + 1);
                    self.line_start = self.offset;
                    data = &data[i + 1..];
                } else {
                    self.advance(data.len());
                    data = &[];
                }
                continue;
            }
            if self.partial.len() + chunk_len > self.max_len {
                f(Line::TooLong {
                    offset: self.line_start,
                });
                self.partial.clear();
                self.skipping = true;
                continue;
            }
            match nl {
                Some(i) => {
                    let start = self.line_start;
                    if self.partial.is_empty() {
                        f(Line::Complete {
                            bytes: trim_cr(&data[..i]),
                            offset: start,
                        });
                    } else {
                        self.partial.extend_from_slice(&data[..i]);
                        f(Line::Complete {
                            bytes: trim_cr(&self.partial),
                            offset: start,
                        });
                        self.partial.clear();
                    }
                    self.advance(i + 1);
                    self.line_start = self.offset;
                    data = &data[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    self.advance(data.len());
                    data = &[];
                }
            }
        }
    }

    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &mut LineSplitter, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        s.push(data, |l| {
            out.push(match l {
                Line::Complete { bytes, offset } => {
                    format!("{offset}:{}", String::from_utf8_lossy(bytes))
                }
                Line::TooLong { offset } => format!("{offset}:TOO LONG"),
            })
        });
        out
    }

    #[test]
    fn splits_and_waits_for_partial_lines() {
        let mut s = LineSplitter::new(100, 0);
        assert_eq!(collect(&mut s, b"ab\ncd\r\nef"), ["0:ab", "3:cd"]);
        assert_eq!(s.committed_offset(), 7);
        assert_eq!(collect(&mut s, b"g\n"), ["7:efg"]);
        assert_eq!(s.committed_offset(), 11);
    }

    #[test]
    fn long_lines_are_skipped_and_stream_resyncs() {
        let mut s = LineSplitter::new(4, 0);
        assert_eq!(collect(&mut s, b"123"), Vec::<String>::new());
        assert_eq!(collect(&mut s, b"4567"), ["0:TOO LONG"]);
        assert_eq!(collect(&mut s, b"89\nok\n"), ["10:ok"]);
        assert_eq!(collect(&mut s, b"abcdefgh\nx\n"), ["13:TOO LONG", "22:x"]);
    }
}
