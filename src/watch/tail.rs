//! Following one log path through rotation, with no line lost or read twice.
//!
//! A [`Tail`] holds the open file and notices, on every poll:
//! - **rename + create** (logrotate's default): the path names a new inode.
//!   The old file stays open and is drained (nginx keeps writing to it until it
//!   reopens its logs) until it has been quiet for [`OLD_FILE_GRACE`]; the new
//!   file is read from its start. Several rotations within the grace keep
//!   several old files draining, each until it goes quiet.
//! - **delete + recreate**: the same, the old inode simply gets no more data.
//! - **copytruncate**: same inode, but the file is shorter than our offset, or
//!   its first bytes no longer match the fingerprint taken when we opened it.
//!   The fingerprint catches the race where the writer has already appended
//!   more than our old offset after the truncation (a size check alone, as in
//!   fail2ban, reads from the middle of a new line there). Lines written
//!   between our last read and the copy are read from the rotated copy
//!   (`PATH.1`) when its fingerprint is ours.
//!
//! Positions are saved as (device, inode, offset, fingerprint), so a restart
//! resumes exactly, also when the file rotated while the daemon was down.

use super::lines::{Line, LineSplitter};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a rotated-away file is still drained after its last new data.
pub const OLD_FILE_GRACE: Duration = Duration::from_secs(5);
const FP_MAX: usize = 256;

/// Where reading resumes after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// Start of the first line not yet handed out.
    pub offset: u64,
    /// FNV-1a of the file's first `fp_len` bytes.
    pub fingerprint: u64,
    pub fp_len: u32,
    /// Offset from which to re-read, without acting, to rebuild windows.
    pub warm_from: u64,
    /// The file rotated away last (now `PATH.1`), when part of it is still
    /// inside the longest findtime: re-read after a restart too, so counts
    /// from just before a rotation survive the restart.
    #[serde(default)]
    pub previous: Option<PreviousFile>,
}

/// A rotated-away file and the part of it a restart must re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousFile {
    pub dev: u64,
    pub ino: u64,
    pub fingerprint: u64,
    pub fp_len: u32,
    /// Re-read (without acting) from here ...
    pub warm_from: u64,
    /// ... to here (what was read of it); the rest is read normally.
    pub offset: u64,
}

/// What a poll hands to its sink.
#[derive(Debug)]
pub enum TailEvent<'a> {
    Line(Line<'a>),
    /// A line re-read after a restart only to rebuild window state.
    WarmLine(Line<'a>),
    /// A line of a rotated-away file (drained after the rotation, or re-read
    /// after a restart, `warm`): its offsets are that file's.
    OldLine {
        line: Line<'a>,
        warm: bool,
    },
    /// A new file (or a truncated one) starts: offsets restart at 0.
    Reopened,
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

struct OpenFile {
    file: File,
    dev: u64,
    ino: u64,
    /// Next byte to read.
    read_at: u64,
    splitter: LineSplitter,
    fingerprint: u64,
    fp_len: u32,
}

impl OpenFile {
    fn open(path: &Path, offset: u64, max_line: usize) -> io::Result<OpenFile> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let mut f = OpenFile {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            read_at: offset,
            splitter: LineSplitter::new(max_line, offset),
            fingerprint: fnv1a(&[]),
            fp_len: 0,
        };
        f.refresh_fingerprint()?;
        Ok(f)
    }

    fn head(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.file.read_at(&mut buf[got..], got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Extends the fingerprint while the file is shorter than `FP_MAX`.
    fn refresh_fingerprint(&mut self) -> io::Result<()> {
        if (self.fp_len as usize) < FP_MAX {
            let head = self.head(FP_MAX)?;
            if head.len() > self.fp_len as usize {
                self.fingerprint = fnv1a(&head);
                self.fp_len = head.len() as u32;
            }
        }
        Ok(())
    }

    /// Whether the file still starts with the bytes we fingerprinted.
    fn same_head(&self) -> io::Result<bool> {
        let head = self.head(self.fp_len as usize)?;
        Ok(head.len() == self.fp_len as usize && fnv1a(&head) == self.fingerprint)
    }

    /// Reads to the end of the file, handing out complete lines. Returns bytes read.
    fn drain(
        &mut self,
        buf: &mut [u8],
        sink: &mut dyn FnMut(TailEvent),
        warm_until: u64,
        old: bool,
    ) -> io::Result<u64> {
        let mut total = 0;
        loop {
            let n = self.file.read_at(buf, self.read_at)?;
            if n == 0 {
                break;
            }
            self.read_at += n as u64;
            total += n as u64;
            self.splitter.push(&buf[..n], |line| {
                let offset = match line {
                    Line::Complete { offset, .. } | Line::TooLong { offset } => offset,
                };
                let warm = offset < warm_until;
                if old {
                    sink(TailEvent::OldLine { line, warm })
                } else if warm {
                    sink(TailEvent::WarmLine(line))
                } else {
                    sink(TailEvent::Line(line))
                }
            });
        }
        if total > 0 {
            self.refresh_fingerprint()?;
        }
        Ok(total)
    }

    fn matches(&self, pos: &Position) -> bool {
        self.dev == pos.dev && self.ino == pos.ino
    }
}

/// Where logrotate puts the previous file: `PATH.1`.
fn rotated_copy(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(".1");
    PathBuf::from(p)
}

/// One followed path.
pub struct Tail {
    pub path: PathBuf,
    cur: Option<OpenFile>,
    /// Rotated-away files still being drained, and when each last had data.
    old: Vec<(OpenFile, Instant)>,
    max_line: usize,
    buf: Vec<u8>,
    /// Lines before this offset of the current file are re-read to warm windows.
    warm_until: u64,
    /// The file rotated away last, and how far it was read.
    previous: Option<PreviousFile>,
}

impl Tail {
    pub fn new(path: PathBuf, max_line: usize) -> Tail {
        Tail {
            path,
            cur: None,
            old: Vec::new(),
            max_line,
            buf: vec![0; 256 * 1024],
            warm_until: 0,
            previous: None,
        }
    }

    fn rotated_copy(&self) -> PathBuf {
        rotated_copy(&self.path)
    }

    /// Opens the path for the first time. With a saved position the file is
    /// resumed where it stopped (re-reading from `warm_from` to rebuild
    /// windows); without one, `from_start` chooses its start or its end.
    pub fn start(
        &mut self,
        saved: Option<&Position>,
        from_start: bool,
        sink: &mut dyn FnMut(TailEvent),
    ) {
        let cur = match OpenFile::open(&self.path, 0, self.max_line) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), "log file does not exist (yet): nothing is read from it until it appears; check the jail's logpath");
                return;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "cannot open log file: {e}");
                return;
            }
        };
        let size = cur.file.metadata().map(|m| m.len()).unwrap_or(0);
        let Some(pos) = saved else {
            let at = if from_start { 0 } else { size };
            self.cur = Some(OpenFile {
                read_at: at,
                splitter: LineSplitter::new(self.max_line, at),
                ..cur
            });
            return;
        };
        if cur.matches(pos) && size >= pos.offset && self.head_matches(&cur, pos) {
            // The file rotated away just before the stop: re-read its part of
            // the windows (and read what was written to it since), first.
            if let Some(p) = &pos.previous
                && let Ok(old) = OpenFile::open(&self.rotated_copy(), 0, self.max_line)
                && old.ino != cur.ino
                && (old.dev == p.dev && old.ino == p.ino
                    || old
                        .head(p.fp_len as usize)
                        .is_ok_and(|h| p.fp_len > 0 && fnv1a(&h) == p.fingerprint))
            {
                let from = p.warm_from.min(p.offset);
                let mut old = OpenFile {
                    read_at: from,
                    splitter: LineSplitter::new(self.max_line, from),
                    ..old
                };
                let _ = old.drain(&mut self.buf, sink, p.offset, true);
                self.previous = Some(PreviousFile {
                    offset: old.splitter.committed_offset(),
                    ..p.clone()
                });
                // Still drained while the writer may append to it.
                self.old.push((old, Instant::now()));
            }
            // Resume; re-read the tail of the windows first.
            let from = pos.warm_from.min(pos.offset);
            self.warm_until = pos.offset;
            self.cur = Some(OpenFile {
                read_at: from,
                splitter: LineSplitter::new(self.max_line, from),
                ..cur
            });
            return;
        }
        // Rotated while we were down: finish the old file if it is still
        // there: renamed to `PATH.1` (same inode), or copied there before a
        // truncation (another inode that starts with our bytes).
        let copied = |old: &OpenFile| {
            old.ino != cur.ino
                && pos.fp_len > 0
                && old
                    .head(pos.fp_len as usize)
                    .is_ok_and(|h| h.len() == pos.fp_len as usize && fnv1a(&h) == pos.fingerprint)
        };
        let old = OpenFile::open(&self.rotated_copy(), 0, self.max_line)
            .ok()
            .filter(|old| (!cur.matches(pos) && old.matches(pos)) || copied(old));
        if let Some(old) = old {
            {
                let from = pos.warm_from.min(pos.offset);
                let mut old = OpenFile {
                    read_at: from,
                    splitter: LineSplitter::new(self.max_line, from),
                    ..old
                };
                let _ = old.drain(&mut self.buf, sink, pos.offset, false);
                Self::finish(&mut old, sink);
                self.previous = Some(PreviousFile {
                    dev: old.dev,
                    ino: old.ino,
                    fingerprint: pos.fingerprint,
                    fp_len: pos.fp_len,
                    warm_from: 0,
                    offset: old.splitter.committed_offset(),
                });
                tracing::info!(path = %self.path.display(), "finished the file rotated while stopped");
            }
        } else if cur.matches(pos) {
            tracing::warn!(path = %self.path.display(), "log file was truncated while stopped and its copy is not in PATH.1; reading from its start");
        }
        sink(TailEvent::Reopened);
        self.cur = Some(cur);
    }

    fn head_matches(&self, f: &OpenFile, pos: &Position) -> bool {
        match f.head(pos.fp_len as usize) {
            Ok(h) => h.len() == pos.fp_len as usize && fnv1a(&h) == pos.fingerprint,
            Err(_) => false,
        }
    }

    /// A file that will get no more data: its last line counts even without a newline.
    fn finish(f: &mut OpenFile, sink: &mut dyn FnMut(TailEvent)) {
        if f.splitter.pending() > 0 {
            f.splitter.push(b"\n", |line| sink(TailEvent::Line(line)));
        }
    }

    /// Reads whatever is new, following rotation. Cheap when nothing changed.
    pub fn poll(&mut self, sink: &mut dyn FnMut(TailEvent)) {
        if let Err(e) = self.poll_inner(sink) {
            tracing::warn!(path = %self.path.display(), "reading log file: {e}");
        }
    }

    fn poll_inner(&mut self, sink: &mut dyn FnMut(TailEvent)) -> io::Result<()> {
        // 1. The rotated-away files, each until it goes quiet.
        let mut i = 0;
        while i < self.old.len() {
            let (old, last) = &mut self.old[i];
            if old.drain(&mut self.buf, sink, 0, true)? > 0 {
                *last = Instant::now();
            } else if last.elapsed() >= OLD_FILE_GRACE {
                Self::finish(old, sink);
                self.old.remove(i);
                continue;
            }
            i += 1;
        }
        // 2. A file that did not exist yet.
        let Some(cur) = &mut self.cur else {
            match OpenFile::open(&self.path, 0, self.max_line) {
                Ok(f) => {
                    tracing::info!(path = %self.path.display(), "log file appeared; reading it from its start");
                    sink(TailEvent::Reopened);
                    self.cur = Some(f);
                    return self.poll_inner(sink);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        // 3. Truncated in place (copytruncate)?
        let size = cur.file.metadata()?.len();
        if size < cur.read_at || !cur.same_head()? {
            if let Ok(c) = OpenFile::open(&rotated_copy(&self.path), 0, self.max_line) {
                // The copy holds what was written between our last read and the truncation.
                let ours = c
                    .head(cur.fp_len as usize)
                    .is_ok_and(|h| fnv1a(&h) == cur.fingerprint);
                if ours && c.ino != cur.ino {
                    let mut c = OpenFile {
                        read_at: cur.read_at,
                        splitter: std::mem::replace(&mut cur.splitter, LineSplitter::new(0, 0)),
                        ..c
                    };
                    c.drain(&mut self.buf, sink, 0, false)?;
                    Self::finish(&mut c, sink);
                    // The copy is the previous file now (same bytes, same offsets).
                    self.previous = Some(PreviousFile {
                        dev: c.dev,
                        ino: c.ino,
                        fingerprint: cur.fingerprint,
                        fp_len: cur.fp_len,
                        warm_from: 0,
                        offset: c.splitter.committed_offset(),
                    });
                } else {
                    self.previous = None;
                }
            }
            tracing::info!(path = %self.path.display(), "log file was truncated; reading it from its start");
            sink(TailEvent::Reopened);
            let fresh = OpenFile::open(&self.path, 0, self.max_line)?;
            *cur = fresh;
            self.warm_until = 0;
        }
        // 4. New data.
        let warm_until = std::mem::take(&mut self.warm_until);
        cur.drain(&mut self.buf, sink, warm_until, false)?;
        // 5. Renamed or deleted and recreated?
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() != cur.dev || m.ino() != cur.ino => {
                let new = OpenFile::open(&self.path, 0, self.max_line)?;
                tracing::info!(path = %self.path.display(), "log file was rotated; following the new file");
                let old = std::mem::replace(cur, new);
                self.previous = Some(PreviousFile {
                    dev: old.dev,
                    ino: old.ino,
                    fingerprint: old.fingerprint,
                    fp_len: old.fp_len,
                    warm_from: 0,
                    offset: old.splitter.committed_offset(),
                });
                self.old.push((old, Instant::now()));
                sink(TailEvent::Reopened);
                self.cur
                    .as_mut()
                    .expect("just set")
                    .drain(&mut self.buf, sink, 0, false)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The position to save, or `None` while the file does not exist.
    /// `warm_from(offset)` and `prev_warm_from(offset)` say where the windows
    /// start in the current and in the previous file (`None`: not inside).
    pub fn position(
        &self,
        warm_from: impl Fn(u64) -> u64,
        prev_warm_from: impl Fn(u64) -> Option<u64>,
    ) -> Option<Position> {
        let cur = self.cur.as_ref()?;
        let offset = cur.splitter.committed_offset();
        let previous = self.previous.as_ref().and_then(|p| {
            // How far the previous file has been read, if it is still drained.
            let offset = self
                .old
                .iter()
                .find(|(f, _)| f.dev == p.dev && f.ino == p.ino)
                .map_or(p.offset, |(f, _)| f.splitter.committed_offset());
            let warm_from = prev_warm_from(offset)?;
            Some(PreviousFile {
                warm_from: warm_from.min(offset),
                offset,
                ..p.clone()
            })
        });
        Some(Position {
            dev: cur.dev,
            ino: cur.ino,
            offset,
            fingerprint: cur.fingerprint,
            fp_len: cur.fp_len,
            warm_from: warm_from(offset).min(offset),
            previous,
        })
    }

    /// Bytes not yet read from the current file (tail lag).
    pub fn lag(&self) -> u64 {
        let Some(cur) = &self.cur else { return 0 };
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        size.saturating_sub(cur.read_at)
    }
}
