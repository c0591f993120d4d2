//! `portcullis replay`: the whole config over files, with no side effects.

use crate::config::Config;
use crate::detect::{Decision, JailStats};
use crate::parse::wrap::Wrap;
use crate::pipeline::{ParseStats, Pipeline, select_jails};
use crate::watch::lines::{Line, LineSplitter};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;

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
        })
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
