//! Parse and detect, wired together over named sources.
//!
//! A source is one stream of lines (a replayed file, a tailed path). Jails that
//! read a source and share a format and wrapping share one parser, so a line
//! is parsed once per distinct format, however many jails read it. `replay`
//! and the daemon both drive a [`Pipeline`], so they decide identically.

use crate::config::{Config, JailEntry};
use crate::detect::{Decision, Detector, Jail, KeyPlan, Origin};
use crate::enrich::GeoLookup;
use crate::parse::wrap::Wrap;
use crate::parse::{Event, FormatSpec, LineParser, Outcome, ParseError, Wanted, reason};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

/// Per-format parse counters of a source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParseStats {
    pub lines: u64,
    /// Lines re-read after a restart only to rebuild windows (counted once,
    /// in the run that first read them; not in `lines`).
    pub warm: u64,
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

    /// Counts a line that was parsed, and counted, with a note (its time was
    /// in the future, its bytes not UTF-8): under the reason, not as unparsed.
    fn note(&mut self, why: ParseError, source: &str, offset: u64, line: &str) {
        let r = self.reasons.entry(why.0).or_default();
        if r.count == 0 {
            let short: String = line.chars().take(200).collect();
            r.example = format!("{source}:{offset}: {short}");
        }
        r.count += 1;
    }

    fn merge(&mut self, other: &ParseStats) {
        self.lines += other.lines;
        self.warm += other.warm;
        self.parsed += other.parsed;
        self.partial += other.partial;
        self.unparsed += other.unparsed;
        for (k, v) in &other.reasons {
            let r = self.reasons.entry(k).or_default();
            if r.count == 0 {
                r.example = v.example.clone();
            }
            r.count += v.count;
        }
    }
}

/// Jails of one source sharing a format and wrapping.
struct Group {
    format: String,
    wrap: Wrap,
    /// The format as configured: what a [`ParseKit`] compiles again.
    spec: FormatSpec,
    parser: LineParser,
    jails: Vec<usize>,
    /// Whether a jail of the group reads an enriched field: only then are
    /// its events looked up (see `crate::enrich`).
    enrich: bool,
    event: Event,
    stats: ParseStats,
    /// Said once that most lines do not parse (a log_format that does not
    /// match the jail's `format` protects nothing, and would otherwise only
    /// show in `status`).
    warned_unparsed: bool,
}

/// One stream of lines and the jails reading it.
pub struct Source {
    pub name: String,
    groups: Vec<Group>,
    /// First offset of each second seen, oldest first, covering the longest
    /// `findtime` of the source's jails: where to re-read from after a restart
    /// so windows are rebuilt (see [`Source::warm_from`]).
    checkpoints: VecDeque<(u32, u64)>,
    /// The same for the file rotated away last (its own offsets).
    prev_checkpoints: VecDeque<(u32, u64)>,
    max_findtime: u32,
    /// Events older than this (ms) are parsed but not counted (`read_from = "findtime"`).
    pub skip_before: Option<i64>,
    /// The newest event time accepted from this source (ms): what a line
    /// dated in the future is counted as.
    newest: i64,
}

impl Source {
    /// Offset of the first line still inside the longest window of this
    /// source's jails: re-reading from here rebuilds every window exactly.
    pub fn warm_from(&self, current: u64) -> u64 {
        self.checkpoints.front().map_or(current, |c| c.1)
    }

    fn checkpoint(&mut self, time_ms: i64, offset: u64, old: bool) {
        let sec = (time_ms / 1000).clamp(0, u32::MAX as i64) as u32;
        let list = if old {
            &mut self.prev_checkpoints
        } else {
            &mut self.checkpoints
        };
        match list.back() {
            Some(&(last, _)) if sec <= last => {}
            _ => list.push_back((sec, offset)),
        }
        let newest = self
            .checkpoints
            .back()
            .map_or(0, |c| c.0)
            .max(self.prev_checkpoints.back().map_or(0, |c| c.0));
        for list in [&mut self.checkpoints, &mut self.prev_checkpoints] {
            while let Some(&(s, _)) = list.front() {
                if newest - s.min(newest) >= self.max_findtime {
                    list.pop_front();
                } else {
                    break;
                }
            }
        }
    }

    /// Where the windows start in the file rotated away last, if they reach
    /// into it at all.
    pub fn prev_warm_from(&self, _read_to: u64) -> Option<u64> {
        self.prev_checkpoints.front().map(|c| c.1)
    }

    /// The longest `findtime` of this source's jails, in seconds.
    pub fn max_findtime(&self) -> u32 {
        self.max_findtime
    }

    /// Takes over the checkpoints and the counters of the same file's
    /// previous source (reload), so counters stay monotonic for the run.
    pub fn adopt(&mut self, old: &Source) {
        self.checkpoints = old.checkpoints.clone();
        self.prev_checkpoints = old.prev_checkpoints.clone();
        self.newest = old.newest;
        for g in &mut self.groups {
            if let Some(o) = old
                .groups
                .iter()
                .find(|o| o.format == g.format && o.wrap == g.wrap)
            {
                g.stats = o.stats.clone();
            }
        }
    }

    /// Whether jail `j` reads this source.
    pub fn has_jail(&self, j: usize) -> bool {
        self.groups.iter().any(|g| g.jails.contains(&j))
    }

    /// Parse counters of the formats that jail `j` reads here.
    pub fn jail_stats(&self, j: usize) -> ParseStats {
        let mut out = ParseStats::default();
        for g in self.groups.iter().filter(|g| g.jails.contains(&j)) {
            out.merge(&g.stats);
        }
        out
    }

    /// The file was replaced: its checkpoints become the previous file's.
    pub fn file_rotated(&mut self) {
        self.prev_checkpoints = std::mem::take(&mut self.checkpoints);
    }

    /// Forgets checkpoints (the file was replaced; its offsets mean nothing now).
    pub fn reset_checkpoints(&mut self) {
        self.checkpoints.clear();
    }

    /// Parse counters summed over the source's formats, and per format.
    pub fn stats(&self) -> BTreeMap<String, ParseStats> {
        self.groups
            .iter()
            .map(|g| {
                let name = match g.wrap {
                    Wrap::None => g.format.clone(),
                    w => format!("{} ({w:?} wrapped)", g.format).to_lowercase(),
                };
                (name, g.stats.clone())
            })
            .collect()
    }
}

/// What a thread needs to parse one source's lines as its [`Pipeline`] does
/// (`portcullis replay` parses on every core and detects in log order).
#[derive(Clone)]
pub struct ParseKit {
    specs: Vec<FormatSpec>,
    /// Per group: whether its events are enriched.
    enrich: Vec<bool>,
    geo: Option<GeoLookup>,
    wanted: Wanted,
    trusted: crate::parse::addr::NetSet,
    max_line: usize,
    /// Per group: how its text key is made (see [`KeyPlan`]).
    plans: Vec<Option<KeyPlan>>,
}

/// A thread's parsers (one per format group) and enrichment, from a [`ParseKit`].
pub struct KitParsers {
    parsers: Vec<LineParser>,
    enrich: Vec<bool>,
    geo: Option<GeoLookup>,
    plans: Vec<Option<KeyPlan>>,
    key_buf: String,
    scratch: String,
}

impl KitParsers {
    /// Parses (and enriches) one line as [`Pipeline::line`] would, into
    /// `out` (one entry per group).
    pub fn parse(&mut self, bytes: &[u8], out: &mut [Preparsed]) {
        let (text, bad_utf8) = line_str(bytes);
        let groups = self.parsers.iter_mut().zip(&self.enrich).zip(&self.plans);
        for (((p, &enrich), plan), o) in groups.zip(out) {
            o.bad_utf8 = bad_utf8;
            o.result = p.parse(&text, &mut o.event);
            if o.result == Ok(Outcome::Event) {
                if enrich {
                    enrich_event(&mut self.geo, &mut o.event);
                }
                if let Some(plan) = plan {
                    plan.hint(&mut o.event, &mut self.key_buf, &mut self.scratch);
                }
            }
        }
    }
}

/// A line as text, and whether it was not UTF-8 (then read lossily: the
/// line is still parsed, and counted under `invalid_utf8`).
fn line_str(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    match crate::parse::scan::line_text(bytes) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    }
}

/// The enrich stage for one event (a no-op without `[geoip]`).
fn enrich_event(geo: &mut Option<GeoLookup>, ev: &mut Event) {
    if let Some(geo) = geo {
        if let Some(ip) = ev.client {
            ev.geo = geo.get(ip);
            if let Some(g) = &ev.geo {
                ev.geo_fp = [g.country_fp, g.region_fp];
            }
        }
        ev.geo_missing = geo.missing();
    }
}

/// One line parsed by a [`ParseKit`] parser, for one format group.
#[repr(C)]
pub struct Preparsed {
    /// The line was not UTF-8 (it was parsed lossily), as the parsing
    /// thread found: the detecting thread does not check again.
    pub bad_utf8: bool,
    pub result: Result<Outcome, crate::parse::ParseError>,
    /// Last: the event's first bytes are what counting reads first (see
    /// [`Preparsed::prefetch`]), right after the two fields above.
    pub event: Event,
}

impl Preparsed {
    /// Asks for this line's result and its event's first bytes (what
    /// counting reads of every event: [`Event::HOT_BYTES`]) to be brought
    /// into this core's cache: parsed on another thread, some lines before
    /// it is counted here.
    pub fn prefetch(&self) {
        let hot = std::mem::offset_of!(Preparsed, event) + Event::HOT_BYTES;
        crate::prefetch::bytes(self as *const Preparsed, hot, 8);
    }
}

impl ParseKit {
    /// One parser per format group, in group order, and a lookup cache.
    pub fn parsers(&self) -> KitParsers {
        let parsers = self
            .specs
            .iter()
            .map(|spec| {
                let format = spec
                    .compile(&self.wanted)
                    .expect("compiled once already, by the pipeline");
                LineParser::new(format, Wrap::None, self.trusted.clone(), self.max_line)
            })
            .collect();
        KitParsers {
            parsers,
            enrich: self.enrich.clone(),
            geo: self.geo.clone(),
            plans: self.plans.clone(),
            key_buf: String::new(),
            scratch: String::new(),
        }
    }

    /// An empty entry per group: storage for one line.
    pub fn slot(&self) -> Vec<Preparsed> {
        self.specs
            .iter()
            .map(|_| Preparsed {
                result: Ok(Outcome::Pending),
                event: Event::new(&self.wanted),
                bad_utf8: false,
            })
            .collect()
    }
}

/// Parsers and jails over any number of sources.
pub struct Pipeline {
    pub detector: Detector,
    pub sources: Vec<Source>,
    /// Jail names in detector order, with their config.
    pub entries: Vec<JailEntry>,
    wanted: Wanted,
    formats: BTreeMap<String, FormatSpec>,
    trusted: crate::parse::addr::NetSet,
    max_line: usize,
    decisions: Vec<Decision>,
    /// (jail, target) of decisions made while re-reading after a restart:
    /// the engine checks them against the ledger (a target unbanned since
    /// must be able to fire again).
    warm_fired: Vec<(std::sync::Arc<str>, crate::detect::Target)>,
    /// The wall clock (ms) as last read; read again only when a line looks
    /// newer than it, so the common line costs no clock read.
    clock_ms: i64,
    /// Lookups of the enrich stage, with `[geoip]`.
    geo: Option<GeoLookup>,
}

/// How far (ms) a line's time may run ahead of the wall clock. Beyond it, the
/// line counts at its source's newest accepted time: one line dated next year
/// would otherwise move its key's window a year ahead and make every real
/// match after it "too late" to count.
pub const FUTURE_TOLERANCE_MS: i64 = 30_000;

/// Counts a time more than [`FUTURE_TOLERANCE_MS`] ahead of the wall clock
/// at `newest` (the source's newest accepted time; the clock if none yet).
/// `clock_ms` is the clock as last read, read again only when a time looks
/// ahead of it. Returns whether `time` was clamped.
fn clamp_future(time: &mut i64, newest: i64, clock_ms: &mut i64) -> bool {
    if *time <= *clock_ms + FUTURE_TOLERANCE_MS {
        return false;
    }
    *clock_ms = wall_clock_ms();
    if *time <= *clock_ms + FUTURE_TOLERANCE_MS {
        return false;
    }
    *time = if newest > 0 { newest } else { *clock_ms };
    true
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Pipeline {
    /// New allowlist and trusted proxies (their files changed), for every
    /// source from its next line on.
    pub fn set_lists(
        &mut self,
        ignore: crate::parse::addr::NetSet,
        trusted: crate::parse::addr::NetSet,
    ) {
        self.detector.set_ignore(ignore);
        for src in &mut self.sources {
            for g in &mut src.groups {
                g.parser.set_trusted(trusted.clone());
            }
        }
        self.trusted = trusted;
    }

    /// Compiles `jails` (a subset of `config.jails`).
    pub fn new(config: &Config, jails: Vec<JailEntry>) -> Pipeline {
        let mut wanted = Wanted::default();
        let compiled: Vec<Jail> = jails
            .iter()
            .map(|j| Jail::compile(&j.spec, &mut wanted))
            .collect();
        Pipeline {
            detector: Detector::new(
                compiled,
                config.ignore.clone(),
                config.main.ignore_keys.clone(),
            ),
            sources: Vec::new(),
            entries: jails,
            wanted,
            formats: config.formats.clone(),
            trusted: config.trusted_proxies.clone(),
            max_line: config.max_line_bytes(),
            decisions: Vec::new(),
            warm_fired: Vec::new(),
            clock_ms: wall_clock_ms(),
            geo: config.geo.clone().map(GeoLookup::new),
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    pub fn jail_index(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|j| j.spec.name == name)
    }

    /// Adds a source read by `jails` (indices), each with its own format and
    /// wrapping unless `format`/`wrap` override them. Returns the source id.
    pub fn add_source(
        &mut self,
        name: &str,
        jails: &[usize],
        format: Option<&str>,
        wrap: Option<Wrap>,
    ) -> Result<u32, String> {
        let mut groups: Vec<Group> = Vec::new();
        let mut max_findtime = 1;
        for &i in jails {
            let entry = &self.entries[i];
            max_findtime =
                max_findtime.max(entry.spec.findtime.as_secs().min(u32::MAX as u64) as u32);
            let format = format.map_or_else(|| entry.format.clone(), String::from);
            let wrap = wrap.unwrap_or(entry.wrap);
            if let Some(g) = groups
                .iter_mut()
                .find(|g| g.format == format && g.wrap == wrap)
            {
                g.jails.push(i);
                continue;
            }
            let spec = self
                .formats
                .get(&format)
                .cloned()
                .or_else(|| FormatSpec::builtin(&format))
                .ok_or_else(|| format!("unknown format `{format}`"))?;
            let compiled = spec
                .compile(&self.wanted)
                .map_err(|e| format!("format `{format}`: {e}"))?;
            groups.push(Group {
                spec: spec.clone(),
                parser: LineParser::new(compiled, wrap, self.trusted.clone(), self.max_line),
                format,
                wrap,
                enrich: false,
                jails: vec![i],
                event: Event::new(&self.wanted),
                stats: ParseStats::default(),
                warned_unparsed: false,
            });
        }
        for g in &mut groups {
            g.enrich = g.jails.iter().any(|&j| self.entries[j].geo_field.is_some());
        }
        self.sources.push(Source {
            name: name.to_string(),
            groups,
            checkpoints: VecDeque::new(),
            prev_checkpoints: VecDeque::new(),
            max_findtime,
            skip_before: None,
            newest: 0,
        });
        Ok((self.sources.len() - 1) as u32)
    }

    /// Feeds one line (without its newline). With `warm`, the line only
    /// rebuilds window state (after a restart): its decisions are dropped,
    /// because the ledger already holds them.
    pub fn line(&mut self, source: u32, offset: u64, bytes: &[u8], warm: bool) {
        self.line_in(source, offset, bytes, warm, false)
    }

    /// [`Pipeline::line`] for a line of the current file (`old = false`) or
    /// of a rotated-away one, whose offsets are checkpointed apart.
    pub fn line_in(&mut self, source: u32, offset: u64, bytes: &[u8], warm: bool, old: bool) {
        self.line_inner(source, offset, bytes, warm, old, None)
    }

    /// A kit for parsing `source`'s lines on other threads exactly as this
    /// pipeline would, or `None` when its parsing carries state from line to
    /// line (container records split over several lines).
    pub fn parse_kit(&self, source: u32) -> Option<ParseKit> {
        let src = self.sources.get(source as usize)?;
        if src.groups.iter().any(|g| g.wrap != Wrap::None) {
            return None;
        }
        Some(ParseKit {
            specs: src.groups.iter().map(|g| g.spec.clone()).collect(),
            enrich: src.groups.iter().map(|g| g.enrich).collect(),
            geo: self.geo.clone(),
            wanted: self.wanted.clone(),
            trusted: self.trusted.clone(),
            max_line: self.max_line,
            plans: src
                .groups
                .iter()
                .map(|g| self.detector.key_plan(&g.jails))
                .collect(),
        })
    }

    /// [`Pipeline::line`] for a line already parsed by a [`ParseKit`]'s
    /// parsers: `pre` holds one entry per format group, in order.
    pub fn line_preparsed(
        &mut self,
        source: u32,
        offset: u64,
        bytes: &[u8],
        pre: &mut [Preparsed],
    ) {
        self.line_inner(source, offset, bytes, false, false, Some(pre))
    }

    /// Readies a line parsed by a [`ParseKit`]'s parsers for
    /// [`Pipeline::line_preparsed`], a line or more before it is fed (see
    /// [`Detector::prefetch`]): the jails' entries for it are fetched while
    /// the lines before it are counted.
    pub fn prefetch(&mut self, source: u32, pre: &mut [Preparsed]) {
        let Some(src) = self.sources.get(source as usize) else {
            return;
        };
        for (g, p) in src.groups.iter().zip(pre) {
            if p.result == Ok(Outcome::Event) {
                self.detector.prefetch(&g.jails, &mut p.event);
            }
        }
    }

    fn line_inner(
        &mut self,
        source: u32,
        offset: u64,
        bytes: &[u8],
        warm: bool,
        old: bool,
        mut pre: Option<&mut [Preparsed]>,
    ) {
        // The text of the line: checked here unless a parsing thread did
        // (then made only if a counter needs an example of it).
        let (text, bad_utf8) = match pre.as_deref() {
            Some([first, ..]) => (None, first.bad_utf8),
            _ => {
                let (text, bad) = line_str(bytes);
                (Some(text), bad)
            }
        };
        let example = || {
            text.as_deref()
                .map_or_else(|| String::from_utf8_lossy(bytes), Cow::Borrowed)
        };
        let src = &mut self.sources[source as usize];
        let mut first_time = None;
        for (gi, g) in src.groups.iter_mut().enumerate() {
            if warm {
                // Counted in the run that first read it; only windows are rebuilt.
                g.stats.warm += 1;
                if let Ok(Outcome::Event) = g.parser.parse(&example(), &mut g.event) {
                    if g.enrich {
                        enrich_event(&mut self.geo, &mut g.event);
                    }
                    // The same clamp as when the line was first read.
                    clamp_future(&mut g.event.time, src.newest, &mut self.clock_ms);
                    first_time.get_or_insert(g.event.time);
                    src.newest = src.newest.max(g.event.time);
                    let origin = Origin { source, offset };
                    self.detector.process_warm(
                        &g.jails,
                        &g.event,
                        bytes,
                        origin,
                        &mut self.decisions,
                    );
                }
                continue;
            }
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
            // The event: parsed here, or by a parsing thread (which enriched
            // it too), used where it lies rather than moved (it is large).
            let (parsed, ev) = match pre.as_deref_mut().and_then(|p| p.get_mut(gi)) {
                Some(p) => (p.result, &mut p.event),
                None => {
                    let r = g.parser.parse(&example(), &mut g.event);
                    if g.enrich && r == Ok(Outcome::Event) {
                        enrich_event(&mut self.geo, &mut g.event);
                    }
                    (r, &mut g.event)
                }
            };
            match parsed {
                Ok(Outcome::Event) => {
                    g.stats.parsed += 1;
                    if clamp_future(&mut ev.time, src.newest, &mut self.clock_ms) {
                        g.stats
                            .note(reason::FUTURE_TIME, &src.name, offset, &example());
                    }
                    src.newest = src.newest.max(ev.time);
                    first_time.get_or_insert(ev.time);
                    if src.skip_before.is_some_and(|t| ev.time < t) {
                        continue;
                    }
                    let origin = Origin { source, offset };
                    let before = self.decisions.len();
                    self.detector
                        .process(&g.jails, ev, bytes, origin, &mut self.decisions);
                    if let Some(geo) = &mut self.geo {
                        annotate(geo, &mut self.decisions[before..]);
                    }
                }
                Ok(Outcome::Pending) => g.stats.partial += 1,
                Err(why) => {
                    g.stats.refuse(why, &src.name, offset, &example());
                    let st = &g.stats;
                    if !g.warned_unparsed && st.unparsed >= 100 && st.unparsed * 2 > st.lines {
                        g.warned_unparsed = true;
                        tracing::warn!(
                            source = src.name,
                            format = g.format,
                            "{} of the first {} lines do not parse as format `{}` ({}, e.g. {}): \
                             they are not counted by any jail; set the jails' `format` to what \
                             the proxy writes (`portcullis replay` shows which one parses)",
                            st.unparsed,
                            st.lines,
                            g.format,
                            why.0,
                            crate::text::printable(
                                &example().chars().take(120).collect::<String>()
                            ),
                        );
                    }
                }
            }
        }
        if let Some(t) = first_time {
            src.checkpoint(t, offset, old);
        }
        if warm {
            self.warm_fired
                .extend(self.decisions.drain(..).map(|d| (d.jail, d.target)));
        }
    }

    /// Decisions made while re-reading (see `warm_fired`), since the last call.
    pub fn take_warm_fired(&mut self) -> Vec<(std::sync::Arc<str>, crate::detect::Target)> {
        std::mem::take(&mut self.warm_fired)
    }

    /// Counts a line that was longer than the cap.
    pub fn too_long(&mut self, source: u32, offset: u64) {
        let src = &mut self.sources[source as usize];
        for g in &mut src.groups {
            g.stats.lines += 1;
            g.stats
                .refuse(reason::TOO_LONG, &src.name, offset, "(line not kept)");
        }
    }

    /// Decisions made since the last call.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }

    /// Parse counters per format, summed over sources.
    pub fn format_stats(&self) -> BTreeMap<String, ParseStats> {
        let mut out: BTreeMap<String, ParseStats> = BTreeMap::new();
        for s in &self.sources {
            for (name, st) in s.stats() {
                out.entry(name).or_default().merge(&st);
            }
        }
        out
    }

    /// Moves the counting state of jails whose config did not change from
    /// `old` into this pipeline (used by reload).
    pub fn adopt_unchanged(&mut self, old: &mut Pipeline) -> Vec<String> {
        let mut kept = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let Some(j) = old.jail_index(&entry.spec.name) else {
                continue;
            };
            if format!("{:?}", old.entries[j]) == format!("{entry:?}") {
                self.detector.jails[i].take_state_from(&mut old.detector.jails[j]);
                kept.push(entry.spec.name.clone());
            }
        }
        kept
    }
}

/// Adds what the databases say of each evidence line's client (for
/// `replay`, incidents and digests): once per decision, not per line.
fn annotate(geo: &mut GeoLookup, decisions: &mut [Decision]) {
    for e in decisions.iter_mut().flat_map(|d| &mut d.evidence) {
        if let Some(ip) = e.client {
            e.geo = geo.get(ip);
        }
    }
}

/// Chooses jails for a run: named ones (disabled included), or all enabled.
pub fn select_jails(config: &Config, names: &[String]) -> Result<Vec<JailEntry>, String> {
    for name in names {
        if !config.jails.iter().any(|j| &j.spec.name == name) {
            let all: Vec<&str> = config.jails.iter().map(|j| j.spec.name.as_str()).collect();
            return Err(format!(
                "no jail named `{name}` (jails: {})",
                all.join(", ")
            ));
        }
    }
    for j in config.jails.iter().filter(|j| names.contains(&j.spec.name)) {
        if let Some(key) = j.geo_missing {
            return Err(format!(
                "jail `{}` reads `{}`, which needs `{key}` in `[geoip]` (portcullis.toml)",
                j.spec.name,
                j.geo_field.as_deref().unwrap_or("?")
            ));
        }
    }
    let chosen: Vec<JailEntry> = config
        .jails
        .iter()
        .filter(|j| {
            if names.is_empty() {
                j.enabled
            } else {
                names.contains(&j.spec.name)
            }
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err("no enabled jails to run".into());
    }
    Ok(chosen)
}
