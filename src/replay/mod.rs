//! `portcullis replay`: the whole config over files, with no side effects.

mod evict;
pub mod output;
mod ranges;

use crate::config::Config;
use crate::detect::{Decision, JailStats};
use crate::parse::wrap::Wrap;
use crate::pipeline::{KitParsers, ParseKit, ParseStats, Pipeline, Preparsed, select_jails};
use crate::watch::lines::{Line, LineSplitter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Summary of a replay, printed at the end (or as the last JSON line).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub bytes: u64,
    pub formats: BTreeMap<String, ParseStats>,
    pub jails: BTreeMap<String, JailStats>,
    pub decisions: u64,
}

/// Which jails to run, and overrides for tuning.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these jails (disabled ones included when named). Empty: all enabled jails.
    pub jails: Vec<String>,
    /// Read every file with this format instead of the jails' own.
    pub format: Option<String>,
    pub wrap: Option<Wrap>,
}

/// A replay over files: each file is a source read by every selected jail.
pub struct Replay {
    pipeline: Pipeline,
    selection: Selection,
    bytes: u64,
    decision_count: u64,
    /// Threads parsing lines (the detecting thread comes on top); 0 reads
    /// single-threaded.
    parsers: usize,
}

/// Lines per chunk handed to a parser thread, when one thread reads them.
const CHUNK_LINES: usize = 4096;

/// Bytes at most per such chunk (and one line more): without it, 4,096
/// lines of 150 KB held 600 MB a chunk (found by an attacking session).
const CHUNK_BYTES: usize = 640 * 1024;

/// Lines between a line's entries being fetched ([`Pipeline::prefetch`])
/// and its counting.
const AHEAD: usize = 8;

/// Bytes of a regular file per range a parser thread reads itself (about
/// 1,600 lines of 160 bytes). Smaller ranges keep the ranges in flight
/// (their bytes and parsed events, which both threads touch) in fewer
/// megabytes: over 176 interleaved runs of each, 256 KiB took a median
/// 187 ms for the 1M-line bench log on two threads, 640 KiB 200 ms.
const RANGE_BYTES: u64 = 256 * 1024;

/// Lines at most per chunk of a range: a range of more (short lines) is
/// read in parts. Well above a range of real log lines (about 1,600), so
/// that only a file of unusually short lines has its ranges split.
const RANGE_LINES: usize = 4096;

/// Spare buffers a thread keeps for itself ([`ChunkParser::spare`]); more
/// go to the overflow pool, for any thread, and new ones are made only when
/// both are empty. Keeping `in_flight / threads + 2` each, with no overflow
/// pool, was 3 % faster on two threads with the cores far apart, but held
/// 188 MB on 16 threads, against 108 MB with this and 83 MB with one shared
/// pool.
const SPARES_KEPT: usize = 2;

/// A run of complete lines and their bytes: copied out of a stream by the
/// reading thread, or read from a file range by the parser thread itself
/// (then `data` may hold stale bytes past the last line: it is reused).
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    /// (offset in the source, start, end in `data`); `start == end ==
    /// usize::MAX` for a line over the length cap.
    lines: Vec<(u64, usize, usize)>,
    /// Bytes of the file the lines came from (ranges a parser thread read).
    bytes: u64,
}

/// What a parser thread is given.
enum Work {
    /// Lines the reading thread cut and copied (a pipe, stdin).
    Lines(Chunk),
    /// Range `k` of a regular file, which the thread reads itself.
    Range(u64),
    /// The rest of a range, from a line's start (past [`RANGE_LINES`]).
    Part { begin: u64, end: u64 },
}

/// Where the lines of a parallel read come from.
enum Input<'f, R> {
    /// Read and cut into lines by the detecting thread.
    Stream(R),
    /// A regular file of `len` bytes when the read began, read in ranges
    /// by the parser threads; what is appended meanwhile is read on as a
    /// stream.
    File { file: &'f std::fs::File, len: u64 },
}

/// A regular file read in ranges by the parser threads.
#[derive(Clone, Copy)]
struct Ranges<'f> {
    file: &'f std::fs::File,
    count: u64,
    max_line: usize,
}

/// A chunk back from a parser: its number, its lines and per line one
/// parsed entry per format group, or why its range could not be read.
struct Parsed {
    seq: u64,
    /// The [`ChunkParser::id`] of the thread that parsed it.
    by: usize,
    chunk: Chunk,
    pre: Vec<Preparsed>,
    error: Option<std::io::Error>,
    /// How long reading and parsing it took, into buffers that had been
    /// dropped from the caches or not (`None`: new buffers).
    took: Duration,
    dropped: Option<bool>,
    /// The rest of its range (begin, end), when it had more lines than a
    /// chunk takes.
    rest: Option<(u64, u64)>,
}

/// Buffers the detecting thread hands back for reuse, to the thread that
/// filled them ([`ChunkParser::spare`]): a chunk (when the parsers read the
/// file themselves) and the parsed entries.
#[derive(Default)]
struct Spare {
    chunk: Option<Chunk>,
    pre: Vec<Preparsed>,
    /// Dropped from the caches after counting ([`evict`]).
    dropped: bool,
}

/// One thread's parsing: parser threads run it in a loop, and the detecting
/// thread runs it too while it waits for the next chunk in log order.
struct ChunkParser<'f> {
    parsers: KitParsers,
    kit: ParseKit,
    groups: usize,
    ranges: Option<Ranges<'f>>,
    /// Which thread this is: buffers it filled come back to it.
    id: usize,
    /// Buffers back from the detecting thread, that this thread filled
    /// before. Reused by the thread that wrote them, they are written where
    /// they are cached: when the two threads run on cores that share no
    /// cache (this machine's slower phases), a buffer written by the other
    /// thread last had each of its lines brought over again.
    spare: Receiver<Spare>,
    /// Buffers any thread may take, when its own are all in use: those a
    /// thread's full pool did not take back. Without it, each thread made
    /// its own and a replay on 16 threads held 2.3 times the memory.
    overflow: Arc<Mutex<Receiver<Spare>>>,
}

impl ChunkParser<'_> {
    fn run(&mut self, seq: u64, work: Work) -> Parsed {
        let began = Instant::now();
        let (spare, dropped) = match (self.spare.try_recv().ok())
            .or_else(|| self.overflow.lock().ok()?.try_recv().ok())
        {
            Some(s) => {
                let dropped = s.dropped;
                (s, Some(dropped))
            }
            None => (Spare::default(), None),
        };
        let Spare {
            chunk: spare_chunk,
            mut pre,
            ..
        } = spare;
        let (mut error, mut rest) = (None, None);
        let read = |begin: u64, end: u64| {
            let r = self.ranges.expect("ranges are given only for a file");
            let mut chunk = spare_chunk.unwrap_or_default();
            match ranges::read_range(r.file, begin, end, r.max_line, RANGE_LINES, &mut chunk) {
                Ok(next) => rest = next.map(|b| (b, end)),
                Err(e) => error = Some(e),
            }
            chunk
        };
        let chunk = match work {
            Work::Lines(chunk) => chunk,
            Work::Range(k) => read(k * RANGE_BYTES, (k + 1) * RANGE_BYTES),
            Work::Part { begin, end } => read(begin, end),
        };
        let groups = self.groups;
        while pre.len() < chunk.lines.len() * groups {
            pre.extend(self.kit.slot());
        }
        for (i, &(_, start, end)) in chunk.lines.iter().enumerate() {
            if start != usize::MAX {
                let out = &mut pre[i * groups..(i + 1) * groups];
                self.parsers.parse(&chunk.data[start..end], out);
            }
        }
        Parsed {
            seq,
            by: self.id,
            chunk,
            pre,
            error,
            took: began.elapsed(),
            dropped,
            rest,
        }
    }
}

/// Reading on one thread, a line ahead: each line is parsed and its jail
/// entries fetched ([`Pipeline::prefetch`]) before the line before it is
/// counted, so counting rarely waits for memory (measured: 5 % less time
/// than line by line on the seed's API log). Decisions are the same as line
/// by line: parsing carries no state from counting (`parse_kit` is `None`
/// where it would).
struct OneAhead {
    parsers: KitParsers,
    /// Entries of the held line and of the next.
    slots: [Vec<Preparsed>; 2],
    /// The offset of the line parsed into `slots[0]` and not counted yet.
    held: Option<u64>,
    /// Its bytes.
    line: Vec<u8>,
}

impl OneAhead {
    fn new(kit: ParseKit) -> OneAhead {
        OneAhead {
            parsers: kit.parsers(),
            slots: [kit.slot(), kit.slot()],
            held: None,
            line: Vec::new(),
        }
    }

    fn line(&mut self, pipeline: &mut Pipeline, source: u32, offset: u64, bytes: &[u8]) {
        let [held, next] = &mut self.slots;
        self.parsers.parse(bytes, next);
        pipeline.prefetch(source, next);
        if let Some(at) = self.held {
            pipeline.line_preparsed(source, at, &self.line, held);
        }
        self.slots.swap(0, 1);
        self.held = Some(offset);
        self.line.clear();
        self.line.extend_from_slice(bytes);
    }

    /// Counts the held line.
    fn flush(&mut self, pipeline: &mut Pipeline, source: u32) {
        if let Some(at) = self.held.take() {
            pipeline.line_preparsed(source, at, &self.line, &mut self.slots[0]);
        }
    }
}

/// A parser thread: takes chunks until the queue closes, parses every line.
fn parse_chunks(
    mut parser: ChunkParser,
    work: &Mutex<Receiver<(u64, Work)>>,
    done: &Sender<Parsed>,
) {
    loop {
        let next = work.lock().ok().and_then(|rx| rx.recv().ok());
        let Some((seq, work)) = next else { break };
        if done.send(parser.run(seq, work)).is_err() {
            break;
        }
    }
}

/// Hands chunks to the parser threads, puts them back in log order and
/// feeds them to the jails.
struct InOrder<'f> {
    source: u32,
    name: String,
    groups: usize,
    waiting: BTreeMap<u64, Parsed>,
    /// The chunk the jails need next.
    next: u64,
    /// Chunks handed out so far.
    sent: u64,
    /// Chunks at most between handing out and the jails.
    in_flight: u64,
    work_tx: SyncSender<(u64, Work)>,
    work_rx: Arc<Mutex<Receiver<(u64, Work)>>>,
    done_rx: Receiver<Parsed>,
    /// Per [`ChunkParser::id`], where its buffers go back.
    spare_tx: Vec<SyncSender<Spare>>,
    /// Where buffers go that their thread's pool has no room for.
    overflow: Sender<Spare>,
    /// Chunks to fill again (when this thread reads).
    spare_chunks: Vec<Chunk>,
    /// Per [`ChunkParser::id`], whether its chunks are dropped from the
    /// caches after counting, and what that costs and saves.
    eviction: Vec<evict::Eviction>,
    /// This thread's own parsing, for when it would otherwise wait.
    helper: ChunkParser<'f>,
}

impl InOrder<'_> {
    /// Hands out one chunk of work, first taking in results while
    /// `in_flight` chunks are out, so memory stays bounded when parsing
    /// outpaces the jails.
    fn submit(
        &mut self,
        r: &mut Replay,
        emit: &mut impl FnMut(&Replay, Decision),
        work: Work,
    ) -> Result<(), String> {
        while self.sent - self.next >= self.in_flight {
            self.take_one(r, emit)?;
        }
        self.work_tx
            .send((self.sent, work))
            .map_err(|_| "the parser threads stopped")?;
        self.sent += 1;
        Ok(())
    }

    /// Takes every result still out.
    fn finish(
        &mut self,
        r: &mut Replay,
        emit: &mut impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        while self.next < self.sent {
            self.take_one(r, emit)?;
        }
        Ok(())
    }

    /// Takes in one parsed chunk: a finished one if there is one, else one
    /// this thread parses itself rather than wait, else the next to finish.
    fn take_one(
        &mut self,
        r: &mut Replay,
        emit: &mut impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let parsed = match self.done_rx.try_recv() {
            Ok(p) => p,
            Err(_) => {
                // `try_lock`: a parser thread waiting for work holds the lock.
                let queued = self
                    .work_rx
                    .try_lock()
                    .ok()
                    .and_then(|rx| rx.try_recv().ok());
                match queued {
                    Some((seq, work)) => self.helper.run(seq, work),
                    None => self.done_rx.recv().map_err(|_| "a parser thread stopped")?,
                }
            }
        };
        if let Some(e) = parsed.error {
            return Err(format!("reading {}: {e}", self.name));
        }
        self.accept(r, emit, parsed)
    }

    /// Takes in a parsed chunk, and counts every chunk that is next in log
    /// order; the rest of a range of many lines is read here, before the
    /// next range ([`RANGE_LINES`]).
    fn accept(
        &mut self,
        r: &mut Replay,
        emit: &mut impl FnMut(&Replay, Decision),
        parsed: Parsed,
    ) -> Result<(), String> {
        self.waiting.insert(parsed.seq, parsed);
        while let Some(mut parsed) = self.waiting.remove(&self.next) {
            loop {
                let rest = parsed.rest.take();
                self.count(r, emit, parsed);
                let Some((begin, end)) = rest else { break };
                parsed = self.helper.run(self.next, Work::Part { begin, end });
                if let Some(e) = parsed.error.take() {
                    return Err(format!("reading {}: {e}", self.name));
                }
            }
            self.next += 1;
        }
        Ok(())
    }

    /// Feeds one chunk's events to the jails, then hands its buffers back.
    fn count(&mut self, r: &mut Replay, emit: &mut impl FnMut(&Replay, Decision), parsed: Parsed) {
        let g = self.groups;
        let Parsed {
            by,
            mut chunk,
            mut pre,
            took,
            dropped,
            ..
        } = parsed;
        r.bytes += chunk.bytes;
        for (i, &(offset, start, end)) in chunk.lines.iter().enumerate() {
            // Parsed on another core: the event is fetched first, its
            // text `AHEAD` lines on (reading where the text is from the
            // event found in cache by then), then, `AHEAD` lines on
            // again, its jail entries. The line itself is read only for
            // evidence and examples, seldom: it is not fetched ahead.
            if let Some(far) = pre.get((i + 3 * AHEAD) * g..(i + 3 * AHEAD + 1) * g) {
                far.iter().for_each(Preparsed::prefetch);
            }
            if let Some(far) = pre.get((i + 2 * AHEAD) * g..(i + 2 * AHEAD + 1) * g) {
                far.iter().for_each(|p| p.event.prefetch_text());
            }
            if let Some(ahead) = pre.get_mut((i + AHEAD) * g..(i + AHEAD + 1) * g) {
                r.pipeline.prefetch(self.source, ahead);
            }
            if start == usize::MAX {
                r.pipeline.too_long(self.source, offset);
            } else {
                let (line, entries) = (&chunk.data[start..end], &mut pre[i * g..(i + 1) * g]);
                r.pipeline
                    .line_preparsed(self.source, offset, line, entries);
                entries.iter_mut().for_each(|p| p.event.give_back_long());
            }
        }
        for d in r.pipeline.take_decisions() {
            r.decision_count += 1;
            emit(r, d);
        }
        let dropped = by != self.helper.id && self.drop_if_cheaper(by, &chunk, &pre, took, dropped);
        chunk.lines.clear();
        chunk.bytes = 0;
        let spare = if self.helper.ranges.is_some() {
            // Its bytes stay: `read_range` reads over them.
            Spare {
                chunk: Some(chunk),
                pre,
                dropped,
            }
        } else {
            chunk.data.clear();
            self.spare_chunks.push(chunk);
            Spare {
                chunk: None,
                pre,
                dropped,
            }
        };
        self.give_back(by, spare);
    }

    /// Drops a chunk that thread `by` parsed, and this one counted, from
    /// the caches, when that is measured to save thread `by` more than it
    /// costs here ([`evict`]); `took` and `dropped` are how its parsing went.
    fn drop_if_cheaper(
        &mut self,
        by: usize,
        chunk: &Chunk,
        pre: &[Preparsed],
        took: Duration,
        dropped: Option<bool>,
    ) -> bool {
        let lines = chunk.lines.len();
        let policy = &mut self.eviction[by];
        if let Some(dropped) = dropped {
            policy.parsing_took(dropped, took, lines);
        }
        if !policy.choose() {
            return false;
        }
        let began = Instant::now();
        let used = &pre[..(lines * self.groups).min(pre.len())];
        for p in used {
            for (at, len) in p.event.heap() {
                evict::drop_from_caches(at, len);
            }
        }
        evict::drop_from_caches(used.as_ptr() as *const u8, std::mem::size_of_val(used));
        if self.helper.ranges.is_some() {
            // The parser thread wrote the line list (from a stream, this
            // thread did, and writes it again).
            evict::drop_from_caches(
                chunk.lines.as_ptr() as *const u8,
                std::mem::size_of_val(chunk.lines.as_slice()),
            );
        }
        policy.dropping_took(began.elapsed(), lines);
        true
    }

    /// Hands buffers back to the thread that filled them, or to any thread
    /// when that one has enough.
    fn give_back(&self, by: usize, spare: Spare) {
        if let Err(TrySendError::Full(spare)) = self.spare_tx[by].try_send(spare) {
            let _ = self.overflow.send(spare);
        }
    }
}

impl Replay {
    pub fn new(config: &Config, sel: &Selection) -> Result<Replay, String> {
        let jails = select_jails(config, &sel.jails)?;
        if let Some(name) = &sel.format {
            let spec = config
                .formats
                .get(name)
                .cloned()
                .or_else(|| crate::parse::FormatSpec::builtin(name));
            if spec.is_some_and(|s| s.lacks_peer()) && !config.main.forwarded_for_has_peer {
                eprintln!(
                    "warning: format `{name}` has no peer address; clients are taken from \
                     X-Forwarded-For's right-most hop, which is safe only if the proxy appends \
                     the peer (`forwarded_for_has_peer`, see the README's Safety section)"
                );
            }
        }
        let pipeline = Pipeline::new(config, jails);
        Ok(Replay {
            pipeline,
            selection: sel.clone(),
            bytes: 0,
            decision_count: 0,
            parsers: std::thread::available_parallelism().map_or(0, |n| n.get() - 1),
        })
    }

    /// Uses `threads` threads in all (one detects in log order, the others
    /// parse); 1 reads everything on the calling thread. The decisions are
    /// the same either way.
    pub fn set_threads(&mut self, threads: usize) {
        self.parsers = threads.saturating_sub(1);
    }

    /// The name of source `id` (a file name, or `(stdin)`).
    pub fn source_name(&self, id: u32) -> &str {
        self.pipeline
            .sources
            .get(id as usize)
            .map_or("?", |s| s.name.as_str())
    }

    /// Adds a source for lines fed with [`Replay::line`].
    pub fn add_source(&mut self, name: &str) -> Result<u32, String> {
        let all: Vec<usize> = (0..self.pipeline.entries.len()).collect();
        let sel = &self.selection;
        self.pipeline
            .add_source(name, &all, sel.format.as_deref(), sel.wrap)
    }

    /// Feeds one line of source `source`.
    pub fn line(&mut self, source: u32, offset: u64, bytes: &[u8]) {
        self.pipeline.line(source, offset, bytes, false);
    }

    /// The decisions made since the last call (after [`Replay::line`]).
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        let d = self.pipeline.take_decisions();
        self.decision_count += d.len() as u64;
        d
    }

    /// Reads a whole stream as source `name`, calling `emit` for each decision.
    pub fn read(
        &mut self,
        name: &str,
        input: impl Read,
        emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let source = self.add_source(name)?;
        self.read_stream(source, name, input, emit)
    }

    /// [`Replay::read`] for a file. A regular file is cut into byte ranges
    /// that the parser threads read themselves, so that reading and copying
    /// lines is not left to the thread that feeds the jails.
    pub fn read_file(
        &mut self,
        name: &str,
        file: std::fs::File,
        emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let source = self.add_source(name)?;
        let len = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        if let Some(len) = len
            && self.parsers > 0
            && let Some(kit) = self.pipeline.parse_kit(source)
        {
            let input: Input<std::io::Empty> = Input::File { file: &file, len };
            return self.read_parallel(source, name, kit, input, emit);
        }
        self.read_stream(source, name, file, emit)
    }

    fn read_stream(
        &mut self,
        source: u32,
        name: &str,
        mut input: impl Read,
        mut emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        if self.parsers > 0
            && let Some(kit) = self.pipeline.parse_kit(source)
        {
            return self.read_parallel(source, name, kit, Input::Stream(input), emit);
        }
        let mut splitter = LineSplitter::new(self.pipeline.max_line(), 0);
        let mut buf = vec![0u8; 1 << 20];
        let mut eof = false;
        let mut ahead = self.pipeline.parse_kit(source).map(OneAhead::new);
        while !eof {
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading {name}: {e}")),
            };
            self.bytes += n as u64;
            let pipeline = &mut self.pipeline;
            let mut feed = |line: Line| match (&mut ahead, line) {
                (Some(a), Line::Complete { bytes, offset }) => {
                    a.line(pipeline, source, offset, bytes)
                }
                (Some(a), Line::TooLong { offset }) => {
                    a.flush(pipeline, source);
                    pipeline.too_long(source, offset)
                }
                (None, Line::Complete { bytes, offset }) => {
                    pipeline.line(source, offset, bytes, false)
                }
                (None, Line::TooLong { offset }) => pipeline.too_long(source, offset),
            };
            if n == 0 {
                // A last line without a newline still counts in a replay.
                eof = true;
                if splitter.pending() > 0 {
                    splitter.push(b"\n", &mut feed);
                }
            } else {
                splitter.push(&buf[..n], &mut feed);
            }
            if let (true, Some(a)) = (eof, &mut ahead) {
                a.flush(&mut self.pipeline, source);
            }
            for d in self.pipeline.take_decisions() {
                self.decision_count += 1;
                emit(self, d);
            }
        }
        Ok(())
    }

    /// [`Replay::read`] with lines parsed on `self.parsers` threads (and on
    /// this one while it would wait): chunks of lines go to the parser
    /// threads, and this thread feeds the events to the jails in log order,
    /// so decisions, counters and samples are exactly those of a
    /// single-threaded read.
    fn read_parallel<R: Read>(
        &mut self,
        source: u32,
        name: &str,
        kit: ParseKit,
        input: Input<R>,
        mut emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let groups = kit.slot().len();
        let in_flight = 4 * (self.parsers as u64 + 1);
        let ranges = match &input {
            Input::File { file, len } => Some(Ranges {
                file,
                count: len.div_ceil(RANGE_BYTES).max(1),
                max_line: self.pipeline.max_line(),
            }),
            Input::Stream(_) => None,
        };
        let (work_tx, work_rx) = sync_channel::<(u64, Work)>(in_flight as usize);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = channel::<Parsed>();
        // Parser threads are ids `0..parsers`, this thread's parsing the last.
        let (spare_tx, spare_rx): (Vec<_>, Vec<_>) = (0..=self.parsers)
            .map(|_| sync_channel::<Spare>(SPARES_KEPT))
            .unzip();
        let (overflow_tx, overflow_rx) = channel::<Spare>();
        let overflow_rx = Arc::new(Mutex::new(overflow_rx));
        let mut parsers: Vec<ChunkParser> = (spare_rx.into_iter().enumerate())
            .map(|(id, spare)| ChunkParser {
                parsers: kit.parsers(),
                kit: kit.clone(),
                groups,
                ranges,
                id,
                spare,
                overflow: overflow_rx.clone(),
            })
            .collect();
        let helper = parsers.pop().expect("one for this thread");
        std::thread::scope(|scope| {
            for parser in parsers {
                let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
                scope.spawn(move || parse_chunks(parser, &work_rx, &done_tx));
            }
            drop(done_tx);
            // Owns the queue's sending end: however this ends, dropping it
            // ends the parser threads before the scope waits for them.
            let mut order = InOrder {
                source,
                name: name.to_string(),
                groups,
                waiting: BTreeMap::new(),
                next: 0,
                sent: 0,
                in_flight,
                work_tx,
                work_rx: work_rx.clone(),
                done_rx,
                spare_tx,
                overflow: overflow_tx,
                spare_chunks: Vec::new(),
                eviction: (0..=self.parsers).map(|_| Default::default()).collect(),
                helper,
            };
            let handed = match input {
                Input::File { file, .. } => {
                    let (count, start) = (ranges.map_or(0, |r| r.count), self.bytes);
                    (0..count)
                        .try_for_each(|k| order.submit(self, &mut emit, Work::Range(k)))
                        .and_then(|_| order.finish(self, &mut emit))
                        .and_then(|_| {
                            // What was written since the read began (a live
                            // log): read on from there as a stream, in chunks
                            // of bounded size, not as one growing range.
                            let read = self.bytes - start;
                            let mut rest = file;
                            rest.seek(std::io::SeekFrom::Start(read))
                                .map_err(|e| format!("reading {name}: {e}"))?;
                            self.cut_stream(&mut order, name, rest, read, &mut emit)
                        })
                }
                Input::Stream(input) => self.cut_stream(&mut order, name, input, 0, &mut emit),
            };
            handed.and_then(|_| order.finish(self, &mut emit))
        })
    }

    /// Reads a stream (whose first byte is at `offset`) on this thread and
    /// hands its lines out in chunks.
    fn cut_stream(
        &mut self,
        order: &mut InOrder,
        name: &str,
        mut input: impl Read,
        offset: u64,
        emit: &mut impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let mut splitter = LineSplitter::new(self.pipeline.max_line(), offset);
        let mut buf = vec![0u8; 1 << 20];
        let mut chunk = Chunk::default();
        loop {
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading {name}: {e}")),
            };
            self.bytes += n as u64;
            let mut full: Vec<Chunk> = Vec::new();
            let mut add = |line: Line| {
                match line {
                    Line::Complete { bytes, offset } => {
                        let start = chunk.data.len();
                        chunk.data.extend_from_slice(bytes);
                        chunk.lines.push((offset, start, chunk.data.len()));
                    }
                    Line::TooLong { offset } => chunk.lines.push((offset, usize::MAX, usize::MAX)),
                }
                if chunk.lines.len() >= CHUNK_LINES || chunk.data.len() >= CHUNK_BYTES {
                    let fresh = order.spare_chunks.pop().unwrap_or_default();
                    full.push(std::mem::replace(&mut chunk, fresh));
                }
            };
            if n == 0 {
                // A last line without a newline still counts in a replay.
                if splitter.pending() > 0 {
                    splitter.push(b"\n", &mut add);
                }
                if !chunk.lines.is_empty() {
                    full.push(std::mem::take(&mut chunk));
                }
            } else {
                splitter.push(&buf[..n], &mut add);
            }
            for c in full {
                order.submit(self, emit, Work::Lines(c))?;
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    pub fn summary(&self) -> Summary {
        let jails = self
            .pipeline
            .detector
            .jails
            .iter()
            .map(|j| (j.name.to_string(), j.stats()))
            .collect();
        Summary {
            bytes: self.bytes,
            formats: self.pipeline.format_stats(),
            jails,
            decisions: self.decision_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::embedded;

    /// The built-in config and the seed's API log.
    fn seed() -> (Config, Vec<u8>) {
        let config = Config::load(&embedded::files()).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/api_audit/sample.log");
        (config, std::fs::read(path).unwrap())
    }

    /// The decisions (with evidence) and summary of a read, as text.
    fn outcome(r: &Replay, decisions: Vec<Decision>) -> (Vec<String>, String) {
        let d = decisions.iter().map(|d| format!("{d:?}")).collect();
        (d, serde_json::to_string(&r.summary()).unwrap())
    }

    /// A live log read while it grows: the ranges cover what the file held
    /// when the read began, and the rest is read on as a stream (in chunks
    /// of bounded size: the last range used to read on to the end, holding
    /// everything appended meanwhile). Simulated by telling the read the
    /// file was shorter than it is.
    ///
    /// Also a file whose last line has no newline (yet): the ranges leave
    /// it to the stream, which reads it whole if a writer finishes it
    /// meanwhile (a line half-written when its range was read had become
    /// two broken lines), and counts it as it is at the end, as one thread
    /// does.
    #[test]
    fn what_is_appended_during_a_read_is_read_on_as_a_stream() {
        for unended in [false, true] {
            appended_read_on(unended);
        }
    }

    fn appended_read_on(unended: bool) {
        let (config, sample) = seed();
        let mut content = sample.repeat((4 * RANGE_BYTES as usize).div_ceil(sample.len()));
        if unended {
            content.pop();
            assert!(!content.ends_with(b"\n"));
        }
        let path =
            std::env::temp_dir().join(format!("portcullis-grow-{}-{unended}", std::process::id()));
        std::fs::write(&path, &content).unwrap();

        let mut one = Replay::new(&config, &Selection::default()).unwrap();
        one.set_threads(1);
        let mut decisions = Vec::new();
        one.read("log", content.as_slice(), |_, d| decisions.push(d))
            .unwrap();
        let want = outcome(&one, decisions);
        assert!(want.0.len() > 5, "the sample decides");

        for len in [
            0,
            1,
            RANGE_BYTES + 7,
            content.len() as u64 / 2,
            content.len() as u64,
        ] {
            let file = std::fs::File::open(&path).unwrap();
            let mut many = Replay::new(&config, &Selection::default()).unwrap();
            many.set_threads(3);
            let source = many.add_source("log").unwrap();
            let kit = many.pipeline.parse_kit(source).unwrap();
            let mut decisions = Vec::new();
            let input: Input<std::io::Empty> = Input::File { file: &file, len };
            many.read_parallel(source, "log", kit, input, |_, d| decisions.push(d))
                .unwrap();
            assert!(
                outcome(&many, decisions) == want,
                "file of {len} bytes when the read began"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// The one-line-ahead read (parse, fetch the next line's entries, count
    /// the line before) decides exactly as the daemon's line-by-line path,
    /// whose counting finds nothing prefetched: same decisions, evidence
    /// and counters, over the seed's log with lines that lack the key,
    /// over-long lines and invalid UTF-8 mixed in.
    #[test]
    fn reading_a_line_ahead_decides_as_line_by_line() {
        let (config, sample) = seed();
        let mut content = Vec::new();
        for (i, line) in sample.split(|&b| b == b'\n').enumerate() {
            content.extend_from_slice(line);
            content.push(b'\n');
            match i % 7 {
                // The line again without its key id (and its last field).
                1 => {
                    let cut = line.iter().rposition(|&b| b == b' ').unwrap_or(0);
                    content.extend_from_slice(&line[..cut]);
                    content.extend_from_slice(b" -\n");
                }
                3 => content.extend_from_slice(&[b'x'; 20_000]),
                5 => content.extend_from_slice(b"\xff\xfe 10.0.0.1 garbage\n"),
                _ => {}
            }
            if i % 7 == 3 {
                content.push(b'\n');
            }
        }
        let mut ahead = Replay::new(&config, &Selection::default()).unwrap();
        let mut decisions = Vec::new();
        ahead
            .read("log", content.as_slice(), |_, d| decisions.push(d))
            .unwrap();
        let want = outcome(&ahead, decisions);
        assert!(want.0.len() > 5, "the sample decides");

        let mut one = Replay::new(&config, &Selection::default()).unwrap();
        let source = one.add_source("log").unwrap();
        let mut splitter = LineSplitter::new(one.pipeline.max_line(), 0);
        splitter.push(&content, &mut |line: Line| match line {
            Line::Complete { bytes, offset } => one.line(source, offset, bytes),
            Line::TooLong { offset } => one.pipeline.too_long(source, offset),
        });
        one.bytes = content.len() as u64;
        let decisions = one.take_decisions();
        assert!(outcome(&one, decisions) == want);
    }
}
