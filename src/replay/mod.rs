//! `portcullis replay`: the whole config over files, with no side effects.

pub mod output;

use crate::config::Config;
use crate::detect::{Decision, JailStats};
use crate::parse::wrap::Wrap;
use crate::pipeline::{ParseKit, ParseStats, Pipeline, Preparsed, select_jails};
use crate::watch::lines::{Line, LineSplitter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};

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

/// Lines per chunk handed to a parser thread.
const CHUNK_LINES: usize = 4096;

/// A run of complete lines, copied out of the input, for a parser thread.
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    /// (offset in the source, start, end in `data`); `start == end ==
    /// usize::MAX` for a line over the length cap.
    lines: Vec<(u64, usize, usize)>,
}

/// A chunk back from a parser thread: its number, its lines, and per line
/// one parsed entry per format group.
type Parsed = (u64, Chunk, Vec<Preparsed>);

/// A parser thread: takes chunks until the queue closes, parses every line.
fn parse_chunks(
    kit: &ParseKit,
    groups: usize,
    work: &Mutex<Receiver<(u64, Chunk)>>,
    done: &Sender<Parsed>,
    spare: &Mutex<Receiver<Vec<Preparsed>>>,
) {
    let mut parsers = kit.parsers();
    loop {
        let next = work.lock().ok().and_then(|rx| rx.recv().ok());
        let Some((seq, chunk)) = next else { break };
        // Entries come back from the detecting thread with their buffers.
        let mut pre = spare
            .lock()
            .ok()
            .and_then(|rx| rx.try_recv().ok())
            .unwrap_or_default();
        while pre.len() < chunk.lines.len() * groups {
            pre.extend(kit.slot());
        }
        for (i, &(_, start, end)) in chunk.lines.iter().enumerate() {
            if start != usize::MAX {
                let out = &mut pre[i * groups..(i + 1) * groups];
                parsers.parse(&chunk.data[start..end], out);
            }
        }
        if done.send((seq, chunk, pre)).is_err() {
            break;
        }
    }
}

/// Puts parsed chunks back in log order and feeds them to the jails.
struct InOrder {
    source: u32,
    groups: usize,
    waiting: BTreeMap<u64, (Chunk, Vec<Preparsed>)>,
    /// The chunk the jails need next.
    next: u64,
    spare_chunks: Vec<Chunk>,
    spare_tx: Sender<Vec<Preparsed>>,
}

impl InOrder {
    fn accept(&mut self, r: &mut Replay, emit: &mut impl FnMut(&Replay, Decision), p: Parsed) {
        let (seq, chunk, pre) = p;
        self.waiting.insert(seq, (chunk, pre));
        let g = self.groups;
        while let Some((mut chunk, mut pre)) = self.waiting.remove(&self.next) {
            self.next += 1;
            for (i, &(offset, start, end)) in chunk.lines.iter().enumerate() {
                if start == usize::MAX {
                    r.pipeline.too_long(self.source, offset);
                } else {
                    let (line, entries) = (&chunk.data[start..end], &mut pre[i * g..(i + 1) * g]);
                    r.pipeline
                        .line_preparsed(self.source, offset, line, entries);
                }
            }
            for d in r.pipeline.take_decisions() {
                r.decision_count += 1;
                emit(r, d);
            }
            let _ = self.spare_tx.send(pre);
            chunk.data.clear();
            chunk.lines.clear();
            self.spare_chunks.push(chunk);
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
        mut input: impl Read,
        mut emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let source = self.add_source(name)?;
        if self.parsers > 0
            && let Some(kit) = self.pipeline.parse_kit(source)
        {
            return self.read_parallel(source, name, kit, input, emit);
        }
        let mut splitter = LineSplitter::new(self.pipeline.max_line(), 0);
        let mut buf = vec![0u8; 1 << 20];
        let mut eof = false;
        while !eof {
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading {name}: {e}")),
            };
            self.bytes += n as u64;
            let pipeline = &mut self.pipeline;
            let mut feed = |line: Line| match line {
                Line::Complete { bytes, offset } => pipeline.line(source, offset, bytes, false),
                Line::TooLong { offset } => pipeline.too_long(source, offset),
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
            for d in self.pipeline.take_decisions() {
                self.decision_count += 1;
                emit(self, d);
            }
        }
        Ok(())
    }

    /// [`Replay::read`] with lines parsed on `self.parsers` threads: this
    /// thread reads and splits the input into chunks of lines, parser threads
    /// turn each chunk into events, and this thread feeds the events to the
    /// jails in log order, so decisions, counters and samples are exactly
    /// those of a single-threaded read.
    fn read_parallel(
        &mut self,
        source: u32,
        name: &str,
        kit: ParseKit,
        mut input: impl Read,
        mut emit: impl FnMut(&Replay, Decision),
    ) -> Result<(), String> {
        let groups = kit.slot().len();
        let in_flight = 4 * self.parsers;
        let (work_tx, work_rx) = sync_channel::<(u64, Chunk)>(in_flight);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = channel::<Parsed>();
        let (spare_tx, spare_rx) = channel::<Vec<Preparsed>>();
        let spare_rx = Arc::new(Mutex::new(spare_rx));
        std::thread::scope(|scope| {
            // Owned here, so that any return closes the queue and the
            // parser threads end before the scope waits for them.
            let work_tx = work_tx;
            for _ in 0..self.parsers {
                let (work_rx, done_tx, spare_rx, kit) = (
                    work_rx.clone(),
                    done_tx.clone(),
                    spare_rx.clone(),
                    kit.clone(),
                );
                scope.spawn(move || parse_chunks(&kit, groups, &work_rx, &done_tx, &spare_rx));
            }
            drop(done_tx);
            let mut order = InOrder {
                source,
                groups,
                waiting: BTreeMap::new(),
                next: 0,
                spare_chunks: Vec::new(),
                spare_tx,
            };
            let mut splitter = LineSplitter::new(self.pipeline.max_line(), 0);
            let mut buf = vec![0u8; 1 << 20];
            let mut chunk = Chunk::default();
            let mut sent = 0u64;
            let mut result = Ok(());
            loop {
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        result = Err(format!("reading {name}: {e}"));
                        break;
                    }
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
                        Line::TooLong { offset } => {
                            chunk.lines.push((offset, usize::MAX, usize::MAX))
                        }
                    }
                    if chunk.lines.len() >= CHUNK_LINES {
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
                    // At most `in_flight` chunks between reading and the
                    // jails: memory stays bounded when parsing outpaces them.
                    while sent - order.next >= in_flight as u64 {
                        let r = done_rx.recv().map_err(|_| "a parser thread stopped")?;
                        order.accept(self, &mut emit, r);
                    }
                    work_tx
                        .send((sent, c))
                        .map_err(|_| "the parser threads stopped")?;
                    sent += 1;
                }
                if n == 0 {
                    break;
                }
            }
            drop(work_tx);
            while order.next < sent {
                let r = done_rx.recv().map_err(|_| "a parser thread stopped")?;
                order.accept(self, &mut emit, r);
            }
            result
        })
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
