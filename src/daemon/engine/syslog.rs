//! Syslog sources in the engine (see [`crate::watch::syslog`]): one
//! listener per socket the jails name, kept across reloads, and one
//! pipeline source per (socket, tag), fed as batches arrive.

use super::{Engine, Msg};
use crate::watch::syslog::{Listen, Listener, Received};
use std::collections::BTreeMap;

/// The listeners and where their messages go.
#[derive(Default)]
pub(super) struct Syslog {
    /// By id (ids are never reused, so a batch sent before a reload cannot
    /// reach another socket's jails).
    listeners: BTreeMap<usize, Listener>,
    next_id: usize,
    routes: Vec<Route>,
}

/// Messages of `listener` with `tag` (`None`: every message) feed `source`.
struct Route {
    listener: usize,
    tag: Option<Box<[u8]>>,
    source: u32,
    /// A position per message, as a file's offset (evidence refers to it).
    offset: u64,
}

impl Syslog {
    /// (pipeline source, listener) pairs, for `status`.
    pub(super) fn sources(&self) -> impl Iterator<Item = (u32, &Listener)> {
        self.routes
            .iter()
            .filter_map(|r| Some((r.source, self.listeners.get(&r.listener)?)))
    }
}

impl Engine {
    /// Makes a pipeline source for each (socket, tag) the jails read, and a
    /// listener for each socket: kept if it already runs, started if new,
    /// stopped if no jail reads it any more. At start a socket that cannot
    /// be bound is an error; at a reload it is logged and the rest go on.
    pub(super) fn open_syslog(&mut self, starting: bool) -> Result<(), String> {
        let mut groups: BTreeMap<(Listen, Option<String>), Vec<usize>> = BTreeMap::new();
        for (i, j) in self.pipeline.entries.iter().enumerate() {
            if let Some((listen, tag)) = &j.syslog {
                groups
                    .entry((listen.clone(), tag.clone()))
                    .or_default()
                    .push(i);
            }
        }
        let access = self
            .config
            .main
            .syslog
            .clone()
            .unwrap_or_default()
            .access()?;
        let mut old = std::mem::take(&mut self.syslog.listeners);
        let mut ids: BTreeMap<Listen, usize> = BTreeMap::new();
        for (listen, _) in groups.keys() {
            if ids.contains_key(listen) {
                continue;
            }
            if let Some((&id, _)) = old.iter().find(|(_, l)| &l.listen == listen) {
                let l = old.remove(&id).expect("found above");
                self.syslog.listeners.insert(id, l);
                ids.insert(listen.clone(), id);
                continue;
            }
            let id = self.syslog.next_id;
            self.syslog.next_id += 1;
            let tx = std::sync::Mutex::new(self.tx.clone());
            let deliver = move |batch: Vec<Received>| {
                let _ = tx.lock().map(|t| t.send(Msg::Syslog(batch)));
            };
            match Listener::start(listen.clone(), id, access, deliver) {
                Ok(l) => {
                    tracing::info!(listen = %listen, "syslog source listening");
                    self.syslog.listeners.insert(id, l);
                    ids.insert(listen.clone(), id);
                }
                Err(e) if starting => return Err(e),
                Err(e) => tracing::error!("{e}"),
            }
        }
        // What is left of `old` is dropped here: those sockets close.
        drop(old);
        self.syslog.routes.clear();
        for ((listen, tag), jails) in groups {
            let Some(&listener) = ids.get(&listen) else {
                continue;
            };
            let name = match &tag {
                Some(t) => format!("syslog {listen} tag {t}"),
                None => format!("syslog {listen}"),
            };
            let source = self.pipeline.add_source(&name, &jails, None, None)?;
            self.syslog.routes.push(Route {
                listener,
                tag: tag.map(|t| t.into_bytes().into_boxed_slice()),
                source,
                offset: 0,
            });
        }
        Ok(())
    }

    /// Feeds a batch of messages to the sources their socket and tag route
    /// them to, then decides, as after reading files.
    pub(super) fn syslog_lines(&mut self, batch: Vec<Received>) {
        self.poll_started = std::time::Instant::now();
        if let Some(first) = batch.first()
            && let Some(l) = self.syslog.listeners.get(&first.listener)
        {
            l.stats.done(batch.len());
        }
        let mut unrouted = 0;
        for m in &batch {
            let mut routed = false;
            for r in &mut self.syslog.routes {
                if r.listener == m.listener && r.tag.as_deref().is_none_or(|t| t == &*m.tag) {
                    self.pipeline.line(r.source, r.offset, &m.line, false);
                    r.offset += m.line.len() as u64 + 1;
                    routed = true;
                }
            }
            unrouted += u64::from(!routed);
        }
        if unrouted > 0
            && let Some(l) = batch
                .first()
                .and_then(|m| self.syslog.listeners.get(&m.listener))
        {
            l.stats
                .unrouted
                .fetch_add(unrouted, std::sync::atomic::Ordering::Relaxed);
        }
        self.handle_decisions();
        self.count_in_fleet();
    }
}
