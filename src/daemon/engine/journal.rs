//! Journal sources in the engine (see [`crate::watch::journal`]): one
//! `journalctl` per distinct spec the jails name, kept across reloads, and
//! its cursor saved with the read positions so a restart resumes after the
//! last entry counted.

use super::{Engine, Msg};
use crate::state::{Table, Write};
use crate::watch::journal::{Entry, JournalReader, JournalSpec};
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Journal {
    /// By id (never reused: an entry read before a reload cannot reach
    /// another spec's jails).
    readers: BTreeMap<usize, JournalReader>,
    next_id: usize,
    routes: Vec<Route>,
}

struct Route {
    reader: usize,
    source: u32,
    offset: u64,
    /// The cursor of the last entry fed to the pipeline.
    cursor: Option<String>,
    key: String,
}

/// Where a spec's cursor is kept (in the positions table).
fn cursor_key(spec: &JournalSpec) -> String {
    format!("\u{0}{spec}")
}

impl Journal {
    /// (pipeline source, reader) pairs, for `status`.
    pub(super) fn sources(&self) -> impl Iterator<Item = (u32, &JournalReader)> {
        self.routes
            .iter()
            .filter_map(|r| Some((r.source, self.readers.get(&r.reader)?)))
    }

    /// The cursors to save with the read positions.
    pub(super) fn positions(&self) -> impl Iterator<Item = Write> + '_ {
        self.routes.iter().filter_map(|r| {
            let c = r.cursor.as_ref()?;
            Some(Write::put(Table::Positions, r.key.clone(), c))
        })
    }
}

impl Engine {
    /// A pipeline source and a reader for each journal spec the jails name:
    /// a running reader is kept (with its place), a new one starts after the
    /// saved cursor (or at the journal's end), one no jail names stops.
    pub(super) fn open_journal(&mut self, starting: bool) -> Result<(), String> {
        let mut groups: BTreeMap<JournalSpec, Vec<usize>> = BTreeMap::new();
        for (i, j) in self.pipeline.entries.iter().enumerate() {
            if let Some(spec) = &j.journal {
                groups.entry(spec.clone()).or_default().push(i);
            }
        }
        let mut old = std::mem::take(&mut self.journal.readers);
        let cursors: BTreeMap<usize, Option<String>> = self
            .journal
            .routes
            .drain(..)
            .map(|r| (r.reader, r.cursor))
            .collect();
        for (spec, jails) in groups {
            let key = cursor_key(&spec);
            let kept = old.iter().find(|(_, r)| r.spec == spec).map(|(&id, _)| id);
            let (reader, cursor) = match kept {
                Some(id) => {
                    let r = old.remove(&id).expect("found above");
                    self.journal.readers.insert(id, r);
                    (id, cursors.get(&id).cloned().flatten())
                }
                None => {
                    let saved: Option<String> = self.store.get(Table::Positions, &key)?;
                    let id = self.journal.next_id;
                    self.journal.next_id += 1;
                    let tx = std::sync::Mutex::new(self.tx.clone());
                    let deliver = move |e: Entry| {
                        let _ = tx.lock().map(|t| t.send(Msg::Journal(e)));
                    };
                    // The jails' longest findtime is read again, warm.
                    let rewind = jails
                        .iter()
                        .map(|&i| self.pipeline.entries[i].spec.findtime.as_secs())
                        .max()
                        .unwrap_or(0);
                    match JournalReader::start(spec.clone(), id, saved.as_deref(), rewind, deliver)
                    {
                        Ok(r) => {
                            tracing::info!(source = %spec, resumed = saved.is_some(), "journal source reading");
                            self.journal.readers.insert(id, r);
                        }
                        Err(e) if starting => return Err(e),
                        Err(e) => {
                            tracing::error!("{e}");
                            continue;
                        }
                    }
                    (id, saved)
                }
            };
            let source = self
                .pipeline
                .add_source(&spec.to_string(), &jails, None, None)?;
            self.journal.routes.push(Route {
                reader,
                source,
                offset: 0,
                cursor,
                key,
            });
        }
        drop(old);
        Ok(())
    }

    /// Feeds one entry to its source, then decides.
    pub(super) fn journal_entry(&mut self, e: Entry) {
        self.poll_started = std::time::Instant::now();
        if let Some(r) = self.journal.readers.get(&e.reader) {
            r.stats
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(r) = self
            .journal
            .routes
            .iter_mut()
            .find(|r| r.reader == e.reader)
        {
            self.pipeline.line(r.source, r.offset, &e.message, e.warm);
            r.offset += e.message.len() as u64 + 1;
            // A warm entry was counted before: the saved place stays after
            // the last one counted.
            if !e.warm {
                r.cursor = Some(e.cursor);
            }
        }
        self.handle_decisions();
        self.count_in_fleet();
    }
}
