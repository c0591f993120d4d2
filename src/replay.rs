//! `portcullis replay`: the whole config over files, with no side effects.
//!
//! The same parse and detect code as the daemon, driven from files instead of
//! tails. Jails that share a format and wrapping share one parser, so each
//! line is parsed once per distinct format, however many jails read it.

use crate::config::{Config, JailEntry};
use crate::detect::{Decision, Detector, Jail, JailStats, Origin};
use crate::parse::wrap::Wrap;
use crate::parse::{Event, LineParser, Outcome, ParseError, Wanted, reason};
use crate::watch::lines::{Line, LineSplitter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;

/// Per-format parse counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParseStats {
    pub lines: u64,
    pub parsed: u64,
    /// Partial container-runtime records joined into later lines.
    pub partial: u64,
    pub unparsed: u64,
    /// Count and first example (`source:offset: line`) per reason.
    pub reasons: BTreeMap<&'static str, ReasonStat>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReasonStat {
    pub count: u64,
    pub example: String,
}

impl ParseStats {
    fn refuse(&mut self, why: ParseError, source: &str, offset: u64, line: &str) {
        self.unparsed += 1;
        let r = self.reasons.entry(why.0).or_default();
        if r.count == 0 {
            let short: String = line.chars().take(200).collect();
            r.example = format!("{source}:{offset}: {short}");
        }
        r.count += 1;
    }
}

/// Jails sharing one format and wrapping.
struct SourceGroup {
    format: String,
    wrap: Wrap,
    parser: LineParser,
    jails: Vec<usize>,
    event: Event,
    stats: ParseStats,
}

/// Summary of a replay, printed at the end (or as the last JSON line).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub bytes: u64,
    pub formats: BTreeMap<String, ParseStats>,
    pub jails: BTreeMap<String, JailStats>,
    pub decisions: u64,
}

/// A runnable set of jails over lines.
pub struct Replay {
    groups: Vec<SourceGroup>,
    detector: Detector,
    pub sources: Vec<String>,
    decisions: Vec<Decision>,
    max_line: usize,
    bytes: u64,
    decision_count: u64,
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

impl Replay {
    pub fn new(config: &Config, sel: &Selection) -> Result<Replay, String> {
        for name in &sel.jails {
            if !config.jails.iter().any(|j| &j.spec.name == name) {
                let names: Vec<&str> = config.jails.iter().map(|j| j.spec.name.as_str()).collect();
                return Err(format!(
                    "no jail named `{name}` (jails: {})",
                    names.join(", ")
                ));
            }
        }
        let chosen: Vec<&JailEntry> = config
            .jails
            .iter()
            .filter(|j| {
                if sel.jails.is_empty() {
                    j.enabled
                } else {
                    sel.jails.contains(&j.spec.name)
                }
            })
            .collect();
        if chosen.is_empty() {
            return Err("no enabled jails to run".into());
        }
        let mut wanted = Wanted::default();
        let jails: Vec<Jail> = chosen
            .iter()
            .map(|j| Jail::compile(&j.spec, &mut wanted))
            .collect();
        let mut groups: Vec<SourceGroup> = Vec::new();
        for (i, j) in chosen.iter().enumerate() {
            let format = sel.format.clone().unwrap_or_else(|| j.format.clone());
            let wrap = sel.wrap.unwrap_or(j.wrap);
            if let Some(g) = groups
                .iter_mut()
                .find(|g| g.format == format && g.wrap == wrap)
            {
                g.jails.push(i);
                continue;
            }
            let spec = config
                .formats
                .get(&format)
                .cloned()
                .or_else(|| crate::parse::FormatSpec::builtin(&format))
                .ok_or_else(|| format!("unknown format `{format}`"))?;
            let compiled = spec
                .compile(&wanted)
                .map_err(|e| format!("format `{format}`: {e}"))?;
            let parser = LineParser::new(
                compiled,
                wrap,
                config.trusted_proxies.clone(),
                config.max_line_bytes(),
            );
            groups.push(SourceGroup {
                format,
                wrap,
                parser,
                jails: vec![i],
                event: Event::new(&wanted),
                stats: ParseStats::default(),
            });
        }
        let ignore_keys = config.main.ignore_keys.clone();
        Ok(Replay {
            groups,
            detector: Detector::new(jails, config.ignore.clone(), ignore_keys),
            sources: Vec::new(),
            decisions: Vec::new(),
            max_line: config.max_line_bytes(),
            bytes: 0,
            decision_count: 0,
        })
    }

    /// Feeds one line (without newline) from source `source` at `offset`.
    pub fn line(&mut self, source: u32, offset: u64, bytes: &[u8]) {
        let lossy;
        let (text, bad_utf8) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, false),
            Err(_) => {
                lossy = String::from_utf8_lossy(bytes);
                (&*lossy, true)
            }
        };
        let name = &self.sources[source as usize];
        for g in &mut self.groups {
            g.stats.lines += 1;
            if bad_utf8 {
                // Counted, then parsed anyway: nginx escapes non-ASCII, so
                // invalid UTF-8 means another writer, not a lost event.
                g.stats
                    .reasons
                    .entry(reason::INVALID_UTF8.0)
                    .or_default()
                    .count += 1;
            }
            match g.parser.parse(text, &mut g.event) {
                Ok(Outcome::Event) => {
                    g.stats.parsed += 1;
                    let origin = Origin { source, offset };
                    self.detector
                        .process(&g.jails, &g.event, text, origin, &mut self.decisions);
                }
                Ok(Outcome::Pending) => g.stats.partial += 1,
                Err(why) => g.stats.refuse(why, name, offset, text),
            }
        }
    }

    fn too_long(&mut self, source: u32, offset: u64) {
        let name = &self.sources[source as usize];
        for g in &mut self.groups {
            g.stats.lines += 1;
            g.stats
                .refuse(reason::TOO_LONG, name, offset, "(line not kept)");
        }
    }

    /// Reads a whole stream as source `name`, calling `emit` for each decision.
    pub fn read(
        &mut self,
        name: &str,
        mut input: impl Read,
        mut emit: impl FnMut(&Replay, Decision),
    ) -> std::io::Result<()> {
        self.sources.push(name.to_string());
        let source = (self.sources.len() - 1) as u32;
        let mut splitter = LineSplitter::new(self.max_line, 0);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.bytes += n as u64;
            splitter.push(&buf[..n], |line| match line {
                Line::Complete { bytes, offset } => self.line(source, offset, bytes),
                Line::TooLong { offset } => self.too_long(source, offset),
            });
            for d in std::mem::take(&mut self.decisions) {
                self.decision_count += 1;
                emit(self, d);
            }
        }
        // A last line without a newline still counts in a replay.
        if splitter.pending() > 0 {
            splitter.push(b"\n", |line| match line {
                Line::Complete { bytes, offset } => self.line(source, offset, bytes),
                Line::TooLong { offset } => self.too_long(source, offset),
            });
        }
        for d in std::mem::take(&mut self.decisions) {
            self.decision_count += 1;
            emit(self, d);
        }
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        let mut formats = BTreeMap::new();
        for g in &self.groups {
            let name = match g.wrap {
                Wrap::None => g.format.clone(),
                w => format!("{} ({w:?} wrapped)", g.format).to_lowercase(),
            };
            formats.insert(name, g.stats.clone());
        }
        let jails = self
            .detector
            .jails
            .iter()
            .map(|j| (j.name.to_string(), j.stats()))
            .collect();
        Summary {
            bytes: self.bytes,
            formats,
            jails,
            decisions: self.decision_count,
        }
    }
}
