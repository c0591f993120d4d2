//! Cutting one byte range of a regular file into lines, so that parser
//! threads read their own parts of a large file (with `pread`) instead of
//! one thread reading and copying every byte for them.
//!
//! A line belongs to the range its first byte is in. The lines of all ranges,
//! in range order, are exactly what [`LineSplitter`] cuts from the whole file
//! read from the start: same bytes, same offsets, same over-long lines;
//! except a last line without a newline, which is left out (its bytes not
//! counted): the replay reads on from there as a stream, which reads that
//! line whole if a writer finishes it meanwhile, and counts it as it is at
//! the end. Counted here, a line half-written when its range was read
//! became two broken lines (a helper session's finding). The tests below
//! compare the two on every way a range edge can fall.
//!
//! [`LineSplitter`]: crate::watch::lines::LineSplitter

use super::Chunk;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes read per call while looking for the end of a line that runs past
/// its range.
const READ_MORE: usize = 64 * 1024;

/// The bytes read for a range: `buf[..len]`. The vector is never shrunk,
/// so the memory behind `len` stays initialised from one range to the next
/// and reading into it costs no zeroing (that was 3-8 % of a parser thread).
struct Bytes<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
}

impl Bytes<'_> {
    fn get(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Room for `n` more bytes after `len`.
    fn reserve(&mut self, n: usize) {
        if self.buf.len() < self.len + n {
            self.buf.resize(self.len + n, 0);
        }
    }

    /// Appends up to `n` bytes of `file` at offset `*next`; `true` when the
    /// end of the file came first.
    fn fill(&mut self, file: &File, next: &mut u64, n: usize) -> io::Result<bool> {
        self.reserve(n);
        let end = self.len + n;
        while self.len < end {
            match file.read_at(&mut self.buf[self.len..end], *next) {
                Ok(0) => return Ok(true),
                Ok(k) => {
                    self.len += k;
                    *next += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

fn trim_cr(start: usize, end: usize, data: &[u8]) -> usize {
    if end > start && data[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

/// Cuts the lines of `file` that start in `begin..end` into `chunk` (whose
/// `data` holds their bytes, `lines` their offsets and spans; an over-long
/// line is `usize::MAX..usize::MAX`, as from the reading thread). Sets
/// `chunk.bytes` to the bytes from the range's first line to the end of its
/// last one, so the ranges' counts add up to the file's length.
///
/// At most `max_lines` lines: the offset of the next line is returned when
/// more start in the range, and the rest of the range is read from there
/// (a line starts there, so it is read as a range of its own would be).
/// Without the cap, 256 KiB of empty lines made one chunk of 262,144 parsed
/// entries, 90 MB, and 32 threads held 13.7 GB (an attacking session).
pub(super) fn read_range(
    file: &File,
    begin: u64,
    end: u64,
    max_line: usize,
    max_lines: usize,
    chunk: &mut Chunk,
) -> io::Result<Option<u64>> {
    chunk.lines.clear();
    chunk.bytes = 0;
    let data = &mut Bytes {
        buf: &mut chunk.data,
        len: 0,
    };
    // The byte before the range tells whether a line starts at `begin`.
    let mut next = begin.saturating_sub(1);
    // File offset of `data[i]` is `delta + i` (moved on past a skipped line).
    let mut delta = next;
    let span = usize::try_from(end.saturating_sub(begin)).unwrap_or(usize::MAX);
    let mut eof = data.fill(file, &mut next, span.saturating_add(1).min(1 << 24))?;
    let mut at = 0;
    if begin > 0 {
        // The first line here starts after the first newline from `begin - 1`.
        let mut scan = 0;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &data.get()[scan..]) {
                at = scan + i + 1;
                break;
            }
            // A line from an earlier range runs over this one: nothing here.
            if eof || delta + data.len as u64 >= end {
                return Ok(None);
            }
            scan = data.len;
            eof = data.fill(file, &mut next, READ_MORE)?;
        }
    }
    let first = delta + at as u64;
    loop {
        let offset = delta + at as u64;
        if offset >= end {
            break;
        }
        if chunk.lines.len() >= max_lines {
            chunk.bytes = offset - first;
            return Ok(Some(offset));
        }
        match memchr::memchr(b'\n', &data.get()[at..]) {
            Some(i) => {
                if i > max_line {
                    chunk.lines.push((offset, usize::MAX, usize::MAX));
                } else {
                    chunk
                        .lines
                        .push((offset, at, trim_cr(at, at + i, data.get())));
                }
                at += i + 1;
            }
            None if data.len - at > max_line => {
                // Too long: skip to its newline without keeping its bytes.
                chunk.lines.push((offset, usize::MAX, usize::MAX));
                data.len = at;
                let mut buf = Vec::new();
                loop {
                    let mut block = Bytes {
                        buf: &mut buf,
                        len: 0,
                    };
                    let block_start = next;
                    let end_of_file = block.fill(file, &mut next, READ_MORE)?;
                    if let Some(i) = memchr::memchr(b'\n', block.get()) {
                        data.extend(&block.get()[i + 1..]);
                        delta = block_start + i as u64 + 1 - at as u64;
                        eof = end_of_file;
                        break;
                    }
                    if end_of_file {
                        // No newline yet: left to the stream (module docs).
                        chunk.lines.pop();
                        chunk.bytes = offset - first;
                        return Ok(None);
                    }
                }
            }
            // A last line without a newline is left to the stream that
            // reads on (module docs).
            None if eof => break,
            None => eof = data.fill(file, &mut next, READ_MORE)?,
        }
    }
    chunk.bytes = delta + at as u64 - first;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::lines::{Line, LineSplitter};

    /// Lines by offset: their bytes, or `None` when over the cap.
    type Lines = Vec<(u64, Option<Vec<u8>>)>;

    /// What the reading thread makes of the whole file.
    fn split_whole(content: &[u8], max_line: usize) -> Lines {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max_line, 0);
        let mut take = |l: Line| match l {
            Line::Complete { bytes, offset } => out.push((offset, Some(bytes.to_vec()))),
            Line::TooLong { offset } => out.push((offset, None)),
        };
        s.push(content, &mut take);
        if s.pending() > 0 {
            s.push(b"\n", &mut take);
        }
        out
    }

    /// What the ranges cut: the whole file's lines but a last one without
    /// a newline, and the bytes before that one.
    fn whole_but_unended(content: &[u8], max_line: usize) -> (Lines, u64) {
        let mut lines = split_whole(content, max_line);
        match lines.last() {
            Some(&(offset, _)) if !content.ends_with(b"\n") => {
                lines.pop();
                (lines, offset)
            }
            _ => (lines, content.len() as u64),
        }
    }

    fn split_ranges(file: &File, len: u64, span: u64, max_line: usize) -> (Lines, u64) {
        split_ranges_of(file, len, span, max_line, usize::MAX)
    }

    /// Each range read in parts of at most `max_lines` lines.
    fn split_ranges_of(
        file: &File,
        len: u64,
        span: u64,
        max_line: usize,
        max_lines: usize,
    ) -> (Lines, u64) {
        let mut out = Vec::new();
        let mut bytes = 0;
        let ranges = len.div_ceil(span).max(1);
        // One chunk for every range, as the parser threads reuse theirs: the
        // bytes of an earlier range must never show through.
        let mut chunk = Chunk {
            data: vec![b'#'; 3 * READ_MORE],
            ..Chunk::default()
        };
        for k in 0..ranges {
            let end = (k + 1) * span;
            let mut from = k * span;
            loop {
                let rest = read_range(file, from, end, max_line, max_lines, &mut chunk).unwrap();
                assert!(chunk.lines.len() <= max_lines);
                bytes += chunk.bytes;
                for &(offset, start, stop) in &chunk.lines {
                    out.push((
                        offset,
                        (start != usize::MAX).then(|| chunk.data[start..stop].to_vec()),
                    ));
                }
                match rest {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        (out, bytes)
    }

    #[test]
    fn ranges_cut_exactly_the_lines_of_the_whole_file() {
        let contents: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            b"\n\n\n".to_vec(),
            b"a".to_vec(),
            b"ab\ncd\r\nef".to_vec(),
            b"ab\ncd\r\nef\n".to_vec(),
            b"short\nthis line is far too long for the cap\nok\nx\r\n\r\n".to_vec(),
            b"exactly10c\nexactly11cc\n0123456789\r\nend".to_vec(),
            b"this last line is too long and has no newline".to_vec(),
            [b"a\n".repeat(40), b"z".repeat(300), b"\nb\n".to_vec()].concat(),
        ];
        let dir = std::env::temp_dir().join(format!("portcullis-ranges-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (n, content) in contents.iter().enumerate() {
            let path = dir.join(format!("{n}.log"));
            std::fs::write(&path, content).unwrap();
            let file = File::open(&path).unwrap();
            for max_line in [10, 11, 1000] {
                let (want, want_bytes) = whole_but_unended(content, max_line);
                for span in 1..=content.len() as u64 + 2 {
                    let (got, bytes) = split_ranges(&file, content.len() as u64, span, max_line);
                    assert_eq!(got, want, "content {n}, span {span}, max_line {max_line}");
                    assert_eq!(bytes, want_bytes, "content {n}, span {span}");
                    // And with each range read in parts of a few lines.
                    for max_lines in [1, 2, 3] {
                        let len = content.len() as u64;
                        let (got, bytes) = split_ranges_of(&file, len, span, max_line, max_lines);
                        assert_eq!(got, want, "content {n}, span {span}, {max_lines} a part");
                        assert_eq!(bytes, want_bytes, "content {n}, span {span}");
                    }
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Lines longer than a read, crossing several ranges, over the cap or not.
    #[test]
    fn long_lines_across_many_reads() {
        let mut content = Vec::new();
        for len in [
            1,
            READ_MORE - 1,
            READ_MORE,
            READ_MORE + 1,
            3 * READ_MORE + 7,
            17,
        ] {
            content.extend(std::iter::repeat_n(b'q', len));
            content.push(b'\n');
        }
        content.extend(std::iter::repeat_n(b'r', 2 * READ_MORE + 3));
        let path = std::env::temp_dir().join(format!("portcullis-long-{}", std::process::id()));
        std::fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();
        for max_line in [READ_MORE, 4 * READ_MORE] {
            let (want, want_bytes) = whole_but_unended(&content, max_line);
            for span in [1000, READ_MORE as u64, 100_000, 1 << 20] {
                let (got, bytes) = split_ranges(&file, content.len() as u64, span, max_line);
                assert_eq!(got, want, "span {span}, max_line {max_line}");
                assert_eq!(bytes, want_bytes);
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
