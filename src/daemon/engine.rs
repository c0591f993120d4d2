//! The engine: one thread that owns every piece of state (tails, pipeline,
//! ledger, store) and runs the loop. Nothing on the hot path takes a lock;
//! the control socket, inotify and actions reach it through one channel.

mod fleet;
mod geo;
mod journal;
mod lists;
mod status;
mod syslog;

use super::actions::{adopt_enforced, build_actions, jails_using, one_line};
use crate::act::supervise::Supervisor;
use crate::act::{Action, Change, Dispatcher, Holding, Outcome};
use crate::config::{Config, ConfigFiles, JailEntry};
use crate::control::server::Envelope;
use crate::control::{Request, Response, view};
use crate::decide::{Ban, Ledger, Policy, Verdict};
use crate::detect::jail::ReadFrom;
use crate::detect::{Decision, Target};
use crate::pipeline::{Pipeline, select_jails};
use crate::state::incidents::{ActionRecord, EvidenceLine, Incident, RETENTION};
use crate::state::{Store, Table, Write};
use crate::watch::lines::Line;
use crate::watch::tail::{Position, Tail, TailEvent};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Everything that wakes the engine.
pub enum Msg {
    /// A watched directory changed.
    Wake,
    Control(Envelope),
    /// SIGHUP.
    Reload,
    /// SIGTERM / SIGINT.
    Shutdown,
    ActionDone(Outcome),
    /// A Prometheus scrape: the text exposition.
    Metrics(tokio::sync::oneshot::Sender<String>),
    /// Something from the fleet (another host's decision, a fleet-wide count).
    Fleet(Box<crate::fleet::FromFleet>),
    /// Messages from a syslog socket.
    Syslog(Vec<crate::watch::syslog::Received>),
    /// An entry of a journal source.
    Journal(crate::watch::journal::Entry),
}

const TICK: Duration = Duration::from_millis(250);
const PERSIST_EVERY: Duration = Duration::from_secs(1);
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// How often actions check their enforcement is still in place.
const VERIFY_EVERY: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) use crate::now_secs;

struct Followed {
    tail: Tail,
    source: u32,
}

pub struct Engine {
    config_dir: Option<PathBuf>,
    config: Config,
    pipeline: Pipeline,
    followed: Vec<Followed>,
    ledger: Ledger,
    store: Arc<Store>,
    dispatcher: Dispatcher,
    actions: Vec<Arc<dyn Action>>,
    tx: Sender<Msg>,
    last_decision: HashMap<String, (i64, Target)>,
    /// Health and retries of every action (never fatal; see `act::supervise`).
    supervisor: Supervisor,
    started: Instant,
    last_held_alert: Option<Instant>,
    new_incidents: u64,
    /// Store writes waiting for the next `persist`.
    pending: Vec<Write>,
    /// Commits store writes off this thread (see `state::Writer`).
    writer: crate::state::Writer,
    latency: prometheus_client::metrics::histogram::Histogram,
    /// When the line behind each not-yet-enforced incident was read.
    read_at: HashMap<String, Instant>,
    /// When the current poll started reading.
    poll_started: Instant,
    fleet: Option<crate::fleet::Fleet>,
    /// The bouncer API's shared book, when `[bouncer_api]` was set at start.
    bouncer: Option<Arc<crate::act::bouncer::Api>>,
    /// Syslog sockets and where their messages go.
    syslog: syslog::Syslog,
    /// Journal readers and where their entries go.
    journal: journal::Journal,
}

/// Paths to follow, each with the indices of the jails reading it.
fn sources_of(jails: &[JailEntry]) -> BTreeMap<PathBuf, Vec<usize>> {
    let mut out: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, j) in jails.iter().enumerate() {
        for p in crate::watch::expand(&j.logpath) {
            out.entry(p).or_default().push(i);
        }
    }
    out
}

fn position_key(p: &Path) -> String {
    p.display().to_string()
}

/// Feeds tail events into the pipeline.
fn feed(pipeline: &mut Pipeline, source: u32) -> impl FnMut(TailEvent) + '_ {
    move |ev| match ev {
        TailEvent::Line(Line::Complete { bytes, offset }) => {
            pipeline.line(source, offset, bytes, false)
        }
        TailEvent::WarmLine(Line::Complete { bytes, offset }) => {
            pipeline.line(source, offset, bytes, true)
        }
        TailEvent::OldLine {
            line: Line::Complete { bytes, offset },
            warm,
        } => pipeline.line_in(source, offset, bytes, warm, true),
        TailEvent::Line(Line::TooLong { offset })
        | TailEvent::WarmLine(Line::TooLong { offset })
        | TailEvent::OldLine {
            line: Line::TooLong { offset },
            ..
        } => pipeline.too_long(source, offset),
        TailEvent::Reopened => pipeline.sources[source as usize].file_rotated(),
    }
}

impl Engine {
    /// Loads state, re-applies active bans in one batch, opens every source.
    pub fn start(
        config_dir: Option<PathBuf>,
        config: Config,
        tx: Sender<Msg>,
        recover: bool,
        bouncer: Option<Arc<crate::act::bouncer::Api>>,
    ) -> Result<Engine, String> {
        let t = Instant::now();
        let opened = crate::state::Store::open_checked(&config.state_dir(), recover)?;
        let fresh = opened.fresh;
        let raw_bans = opened.bans;
        let store = Arc::new(opened.store);
        let mut ledger = Ledger::new(
            config.ignore.clone(),
            config.main.ignore_keys.clone(),
            config.main.max_bans_per_minute.unwrap_or(300),
        );
        let bans: Vec<(String, Ban)> = crate::state::Store::decode(raw_bans);
        let offences: Vec<(String, u32)> = store.load(Table::Offences)?;
        let mut active = ledger.restore(bans, offences, now_secs());
        // A new store knows no bans, but the kernel may hold many: adopt
        // them, so starting without a store never shrinks enforcement.
        let mut skip_reconcile = Vec::new();
        if fresh {
            let (adopted, failed) = adopt_enforced(&config, &mut ledger);
            active.extend(adopted);
            skip_reconcile = failed;
        }
        store.apply(&ledger.take_writes())?;
        tracing::info!(
            bans = active.len(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            "loaded active bans"
        );
        let mut supervisor = Supervisor::default();
        let writer = crate::state::Writer::new(Arc::clone(&store));
        let (dispatcher, actions) = build_actions(
            &config,
            &tx,
            active.into(),
            &writer.reader(),
            &mut supervisor,
            &skip_reconcile,
            bouncer.as_ref(),
        )?;
        let jails = select_jails(&config, &[])?;
        let mut engine = Engine {
            writer,
            config_dir,
            pipeline: Pipeline::new(&config, jails),
            config,
            followed: Vec::new(),
            ledger,
            store,
            dispatcher,
            actions,
            tx,
            last_decision: HashMap::new(),
            supervisor,
            started: Instant::now(),
            last_held_alert: None,
            new_incidents: 0,
            pending: Vec::new(),
            latency: super::metrics::latency_histogram(),
            read_at: HashMap::new(),
            poll_started: Instant::now(),
            fleet: None,
            bouncer,
            syslog: Default::default(),
            journal: Default::default(),
        };
        engine.start_fleet()?;
        engine.start_geo();
        let _ = engine.store.prune(Table::Incidents, RETENTION);
        // File positions; cursors (the fleet's, journals') sit beside them
        // under keys starting with NUL.
        let saved: HashMap<String, Position> = engine
            .store
            .load_where(Table::Positions, |k| !k.starts_with('\u{0}'))?
            .into_iter()
            .collect();
        engine.open_sources(&saved, &mut HashMap::new())?;
        engine.open_syslog(true)?;
        engine.open_journal(true)?;
        Ok(engine)
    }

    /// Creates pipeline sources and tails for every path; reuses `kept` tails (reload).
    fn open_sources(
        &mut self,
        saved: &HashMap<String, Position>,
        kept: &mut HashMap<PathBuf, (Tail, crate::pipeline::Source)>,
    ) -> Result<(), String> {
        let now_ms = now_secs() * 1000;
        for (path, jails) in sources_of(&self.pipeline.entries) {
            let source =
                self.pipeline
                    .add_source(&path.display().to_string(), &jails, None, None)?;
            if let Some((tail, old_source)) = kept.remove(&path) {
                self.pipeline.sources[source as usize].adopt(&old_source);
                self.followed.push(Followed { tail, source });
                continue;
            }
            let read_from = jails
                .iter()
                .map(|&j| self.pipeline.entries[j].read_from)
                .max()
                .unwrap_or_default();
            let mut tail = Tail::new(path.clone(), self.pipeline.max_line());
            let pos = saved.get(&position_key(&path));
            if pos.is_none() && read_from == ReadFrom::Findtime {
                let ft = self.pipeline.sources[source as usize].max_findtime() as i64;
                self.pipeline.sources[source as usize].skip_before = Some(now_ms - ft * 1000);
            }
            tail.start(
                pos,
                read_from != ReadFrom::End,
                &mut feed(&mut self.pipeline, source),
            );
            tail.poll(&mut feed(&mut self.pipeline, source));
            self.pipeline.sources[source as usize].skip_before = None;
            self.followed.push(Followed { tail, source });
        }
        // A key that fired again while re-reading is "already banned" only if
        // the ledger still says so: one unbanned by hand since can fire again.
        for (jail, target) in self.pipeline.take_warm_fired() {
            if !self.ledger.is_banned(&jail, &target)
                && let Some(i) = self.pipeline.jail_index(&jail)
            {
                self.pipeline.detector.jails[i].forget(&target);
            }
        }
        // Decisions from a first read (`read_from = start/findtime`) are real.
        self.handle_decisions();
        Ok(())
    }

    /// Directory patterns to watch with inotify.
    pub fn patterns(&self) -> Vec<String> {
        self.pipeline
            .entries
            .iter()
            .flat_map(|j| j.logpath.clone())
            .collect()
    }

    fn policy(&self, jail: &str) -> Option<&Policy> {
        self.pipeline
            .entries
            .iter()
            .find(|j| j.spec.name == jail)
            .map(|j| &j.policy)
    }

    fn dispatch(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let entries = &self.pipeline.entries;
        let default = ["log".to_string()];
        self.dispatcher.dispatch(changes, |jail| {
            entries
                .iter()
                .find(|j| j.spec.name == jail)
                .map_or(&default[..], |j| &j.actions[..])
        });
    }

    /// Writes what is pending in one transaction; `false` if the store
    /// refused (a full disk): the writes are then kept, oldest first, and
    /// retried with the next persist (every second at least), so nothing
    /// decided is lost once the store works again. The store logs and counts.
    /// Hands the writes made so far to the store writer (never blocks).
    fn persist(&mut self, extra: Vec<Write>) {
        let mut writes = std::mem::take(&mut self.pending);
        writes.append(&mut self.ledger.take_writes());
        writes.extend(extra);
        self.writer.submit(writes);
    }

    fn handle_decisions(&mut self) {
        let decisions = self.pipeline.take_decisions();
        if decisions.is_empty() {
            return;
        }
        let now = now_secs();
        let mut changes = Vec::new();
        for d in decisions {
            self.decide(d, now, &mut changes);
        }
        // Enforcement first, then the fsync: a crash in between loses
        // nothing, since the saved read position still precedes the line
        // that decided, which is read (and decides) again at the restart.
        self.dispatch(&changes);
        self.persist(Vec::new());
    }

    fn incident_for(&self, d: &Decision) -> Incident {
        let detected_at = now_ms();
        let evidence = d
            .evidence
            .iter()
            .map(|e| EvidenceLine {
                file: self
                    .pipeline
                    .sources
                    .get(e.source as usize)
                    .map_or_else(|| "?".into(), |s| s.name.clone()),
                offset: e.offset,
                line: e.line.clone(),
                geo: e.geo.as_ref().map(|g| g.info.clone()),
            })
            .collect();
        Incident {
            id: Incident::new_id(detected_at),
            jail: d.jail.to_string(),
            kind: if matches!(d.target, Target::Key(_)) {
                "revoke"
            } else {
                "ban"
            }
            .into(),
            severity: d.severity,
            target: d.target.clone(),
            detected_at,
            first_seen: Some(d.first_seen),
            last_seen: Some(d.time),
            count: d.count,
            evidence,
            actions: Vec::new(),
            resolved_at: None,
            resolution: None,
        }
    }

    fn decide(&mut self, d: Decision, now: i64, changes: &mut Vec<Change>) {
        let Some(policy) = self.policy(&d.jail).cloned() else {
            return;
        };
        let (jail, target, count) = (d.jail.to_string(), d.target.to_string(), d.count);
        let incident = self.incident_for(&d);
        match self
            .ledger
            .decide_with_incident(d, &policy, now, Some(incident.id.clone()))
        {
            Verdict::Banned(ban) => {
                if let Some(f) = &self.fleet {
                    f.publish("ban", &ban.jail, &ban.target, ban.expires, ban.count);
                }
                self.last_decision.insert(jail, (now, ban.target.clone()));
                if self.read_at.len() >= 100_000 {
                    self.read_at.clear();
                }
                self.read_at.insert(incident.id.clone(), self.poll_started);
                self.record_incident(&incident);
                changes.push(Change::Add(ban));
            }
            Verdict::DryRun => tracing::warn!(jail, target, count, "dry run: would ban"),
            Verdict::Held => {
                if self
                    .last_held_alert
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    self.last_held_alert = Some(Instant::now());
                    tracing::error!(
                        jail,
                        target,
                        held = self.ledger.stats().held,
                        "ALERT: ban rate over max_bans_per_minute; holding decisions (is a log format broken?)"
                    );
                }
            }
            Verdict::Allowlisted => tracing::info!(jail, target, "not banned: allowlisted"),
            Verdict::AlreadyBanned => {}
        }
    }

    fn poll_files(&mut self) {
        self.poll_started = Instant::now();
        for f in &mut self.followed {
            f.tail.poll(&mut feed(&mut self.pipeline, f.source));
        }
        self.handle_decisions();
        self.count_in_fleet();
    }

    fn positions(&self) -> Vec<Write> {
        self.followed
            .iter()
            .filter_map(|f| {
                let src = &self.pipeline.sources[f.source as usize];
                let pos = f
                    .tail
                    .position(|cur| src.warm_from(cur), |prev| src.prev_warm_from(prev))?;
                Some(Write::put(
                    Table::Positions,
                    position_key(&f.tail.path),
                    &pos,
                ))
            })
            .chain(self.journal.positions())
            .collect()
    }

    fn tick(&mut self) {
        let now = now_secs();
        let expired = self.ledger.expire(now);
        self.resolve(&expired, "expired");
        let mut changes: Vec<Change> = expired
            .into_iter()
            .map(|ban| Change::Remove {
                ban,
                reason: "expired",
            })
            .collect();
        for d in self.ledger.release_held(now) {
            self.decide(d, now, &mut changes);
        }
        self.persist(Vec::new());
        self.dispatch(&changes);
        let due = self.supervisor.due(Instant::now());
        if !due.is_empty() {
            let all: Arc<[Ban]> = self.ledger.bans().cloned().collect();
            for name in due {
                let holding = Holding {
                    all: all.clone(),
                    jails: jails_using(&self.config, &name),
                };
                tracing::info!(
                    action = name,
                    bans = holding.bans().count(),
                    "retrying a failing action"
                );
                self.dispatcher.reconcile(&name, holding);
            }
        }
    }

    fn rescan(&mut self) {
        let known: Vec<PathBuf> = self.followed.iter().map(|f| f.tail.path.clone()).collect();
        let new: Vec<(PathBuf, Vec<usize>)> = sources_of(&self.pipeline.entries)
            .into_iter()
            .filter(|(p, _)| !known.contains(p))
            .collect();
        for (path, jails) in new {
            tracing::info!(path = %path.display(), "new log file matches a logpath; following it from its start");
            match self
                .pipeline
                .add_source(&path.display().to_string(), &jails, None, None)
            {
                Ok(source) => {
                    let mut tail = Tail::new(path, self.pipeline.max_line());
                    tail.start(None, true, &mut feed(&mut self.pipeline, source));
                    self.followed.push(Followed { tail, source });
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    /// Runs until shutdown. `wake_pending` is cleared before each poll so
    /// inotify bursts collapse into one wake-up.
    pub fn run(mut self, rx: Receiver<Msg>, wake_pending: Arc<std::sync::atomic::AtomicBool>) {
        let (mut last_tick, mut last_persist, mut last_rescan, mut last_verify) = (
            Instant::now(),
            Instant::now(),
            Instant::now(),
            Instant::now(),
        );
        let watchdog = super::notify::watchdog_interval();
        let mut last_watchdog = Instant::now();
        loop {
            let timeout = TICK.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(timeout) {
                Ok(Msg::Wake) => {
                    wake_pending.store(false, std::sync::atomic::Ordering::SeqCst);
                    self.poll_files();
                }
                Ok(Msg::Control((req, reply))) => {
                    self.poll_files();
                    let resp = self.control(req);
                    let _ = reply.send(resp);
                }
                Ok(Msg::Reload) => {
                    if let Err(e) = self.reload() {
                        tracing::error!("reload refused, keeping the running config:\n{e}");
                    }
                    super::notify::notify("READY=1");
                }
                Ok(Msg::ActionDone(o)) => self.action_done(o),
                Ok(Msg::Fleet(m)) => self.fleet_message(*m),
                Ok(Msg::Syslog(batch)) => self.syslog_lines(batch),
                Ok(Msg::Journal(e)) => self.journal_entry(e),
                Ok(Msg::Metrics(reply)) => {
                    let _ = reply.send(self.metrics());
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.watch_lists();
                self.poll_files();
                self.tick();
            }
            // Keep-alives come from this loop, so a wedged engine is noticed.
            if let Some(every) = watchdog
                && last_watchdog.elapsed() >= every
            {
                last_watchdog = Instant::now();
                super::notify::notify("WATCHDOG=1");
            }
            if last_persist.elapsed() >= PERSIST_EVERY {
                last_persist = Instant::now();
                let p = self.positions();
                self.persist(p);
            }
            if last_verify.elapsed() >= VERIFY_EVERY {
                last_verify = Instant::now();
                self.dispatcher.verify();
            }
            if last_rescan.elapsed() >= RESCAN_EVERY {
                last_rescan = Instant::now();
                self.rescan();
            }
        }
        self.poll_files();
        let p = self.positions();
        self.persist(p);
        if !self.writer.flush() {
            tracing::error!(
                unsaved = self.writer.unsaved(),
                "stopping with state writes the store refused; bans stay in the kernel and \
                 the logs are read again from the last saved position"
            );
        }
        for a in &self.actions {
            a.shutdown();
        }
        tracing::info!("stopped; bans stay in place and are re-applied at the next start");
    }

    /// Queues an incident for the next `persist`, which commits it with
    /// the ban in one transaction (10,000 bans are one fsync, not 10,000).
    fn record_incident(&mut self, incident: &Incident) {
        self.new_incidents += 1;
        self.pending
            .push(Write::put(Table::Incidents, incident.id.clone(), incident));
        if self.new_incidents.is_multiple_of(10_000) {
            let _ = self.store.prune(Table::Incidents, RETENTION);
        }
    }

    /// Applies `edit` to stored incidents, in one transaction.
    fn update_incidents(&mut self, ids: &[String], edit: impl Fn(&mut Incident)) {
        let mut writes = Vec::new();
        for id in ids {
            if let Ok(Some(mut inc)) = self.writer.get::<Incident>(Table::Incidents, id) {
                edit(&mut inc);
                writes.push(Write::put(Table::Incidents, id.clone(), &inc));
            }
        }
        self.writer.submit(writes);
    }

    fn resolve(&mut self, bans: &[Ban], how: &str) {
        let ids: Vec<String> = bans.iter().filter_map(|b| b.incident.clone()).collect();
        let at = now_ms();
        self.update_incidents(&ids, |inc| {
            inc.resolved_at = Some(at);
            inc.resolution = Some(how.to_string());
        });
    }

    fn action_done(&mut self, o: Outcome) {
        let at = now_ms();
        if o.result.is_ok() {
            for (id, kind) in &o.incidents {
                if *kind == "ban"
                    && let Some(t) = self.read_at.remove(id)
                {
                    self.latency.observe(t.elapsed().as_secs_f64());
                }
            }
        }
        for kind in ["ban", "unban"] {
            let ids: Vec<String> = o
                .incidents
                .iter()
                .filter(|(_, k)| *k == kind)
                .map(|(i, _)| i.clone())
                .collect();
            let record = ActionRecord {
                action: o.action.clone(),
                change: kind.into(),
                ok: o.result.is_ok(),
                error: o.result.as_ref().err().cloned(),
                at,
            };
            self.update_incidents(&ids, |inc| inc.actions.push(record.clone()));
        }
        if o.reconcile {
            // A re-apply may skip thousands: one line for all of them.
            if let Some(last) = o.refused.last() {
                tracing::warn!(
                    action = o.action,
                    refused = o.refused.len(),
                    last = %last.target,
                    "active bans this action cannot express are skipped by it: {}",
                    last.reason
                );
            }
        } else {
            for r in &o.refused {
                tracing::warn!(
                    action = o.action,
                    target = %r.target,
                    "target refused by this action (skipped; other actions and detection go on): {}",
                    r.reason
                );
            }
        }
        let refused_at: Vec<(String, String)> = o
            .refused
            .iter()
            .filter_map(|r| r.incident.clone().map(|i| (i, r.reason.clone())))
            .collect();
        for (id, reason) in refused_at {
            let record = ActionRecord {
                action: o.action.clone(),
                change: "ban".into(),
                ok: false,
                error: Some(format!("refused: {reason}")),
                at,
            };
            self.update_incidents(&[id], |inc| inc.actions.push(record.clone()));
        }
        let repairs = self.dispatcher.repairs_by_reconcile(&o.action);
        self.supervisor.record(&o, repairs);
        if let Err(e) = &o.result {
            tracing::error!(
                action = o.action,
                changes = o.changes,
                reconcile = o.reconcile,
                "action failed: {}",
                one_line(e)
            );
        }
    }

    /// Re-reads the config. An invalid one is refused whole; unchanged jails
    /// keep their counters; bans are kept.
    fn reload(&mut self) -> Result<serde_json::Value, String> {
        let files = match &self.config_dir {
            Some(dir) => ConfigFiles::read_dir(dir).map_err(|e| e.to_string())?,
            None => crate::config::embedded::files(),
        };
        let mut config = Config::load(&files).map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        self.prepare_geo(&mut config)?;
        let jails = select_jails(&config, &[])?;
        let active: Arc<[Ban]> = self.ledger.bans().cloned().collect();
        let (dispatcher, actions) = build_actions(
            &config,
            &self.tx,
            active,
            &self.writer.reader(),
            &mut self.supervisor,
            &[],
            self.bouncer.as_ref(),
        )?;
        let mut pipeline = Pipeline::new(&config, jails);
        let kept_jails = pipeline.adopt_unchanged(&mut self.pipeline);
        // Keep open tails (and their positions) for paths still followed.
        let mut old = std::mem::replace(&mut self.pipeline, pipeline);
        let mut kept: HashMap<PathBuf, (Tail, crate::pipeline::Source)> = HashMap::new();
        let mut sources: Vec<Option<crate::pipeline::Source>> =
            old.sources.drain(..).map(Some).collect();
        for f in self.followed.drain(..) {
            if let Some(src) = sources[f.source as usize].take() {
                kept.insert(f.tail.path.clone(), (f.tail, src));
            }
        }
        self.ledger.reconfigure(
            config.ignore.clone(),
            config.main.ignore_keys.clone(),
            config.main.max_bans_per_minute.unwrap_or(300),
        );
        self.dispatcher = dispatcher;
        self.actions = actions;
        self.config = config;
        self.start_geo();
        self.open_sources(&HashMap::new(), &mut kept)?;
        self.open_syslog(false)?;
        self.open_journal(false)?;
        tracing::info!(kept = kept_jails.join(","), "config reloaded");
        Ok(json!({ "jails": self.pipeline.entries.len(), "kept_counters": kept_jails }))
    }

    fn unban(
        &mut self,
        target: Option<&Target>,
        jail: Option<&str>,
        reason: &'static str,
    ) -> Vec<Ban> {
        let removed = self.ledger.unban(target, jail);
        // By hand (or flush): unbanned everywhere in the fleet.
        if let Some(f) = &self.fleet {
            for b in &removed {
                f.publish("unban", &b.jail, &b.target, b.expires, b.count);
            }
        }
        self.resolve(&removed, reason);
        for b in &removed {
            if let Some(i) = self.pipeline.jail_index(&b.jail) {
                self.pipeline.detector.jails[i].forget(&b.target);
            }
        }
        self.persist(Vec::new());
        let changes: Vec<Change> = removed
            .iter()
            .cloned()
            .map(|ban| Change::Remove { ban, reason })
            .collect();
        self.dispatch(&changes);
        removed
    }

    fn control(&mut self, req: Request) -> Response {
        match req {
            Request::Status { jail } => self.status(jail.as_deref()),
            Request::Bans { jail } => {
                if let Some(j) = &jail
                    && self.pipeline.jail_index(j).is_none()
                {
                    return Response::err(format!("no jail named `{j}`"));
                }
                let bans: Vec<&Ban> = self
                    .ledger
                    .bans()
                    .filter(|b| jail.as_ref().is_none_or(|j| &b.jail == j))
                    .collect();
                Response::ok(view::bans(bans))
            }
            Request::Unban { target, jail, all } => {
                let target = match (&target, all) {
                    (Some(t), false) => match Target::parse(t) {
                        Ok(t) => Some(t),
                        Err(e) => return Response::err(e),
                    },
                    (None, true) => None,
                    _ => return Response::err("name a target, or use --all"),
                };
                let removed = self.unban(target.as_ref(), jail.as_deref(), "unbanned by hand");
                if removed.is_empty() {
                    return Response::err(match &target {
                        Some(t) => self.not_banned(t, jail.as_deref()),
                        None => "no matching ban".into(),
                    });
                }
                Response::ok(view::bans(&removed))
            }
            Request::Ban {
                target,
                jail,
                duration,
            } => {
                let Some(policy) = self.policy(&jail).cloned() else {
                    return Response::err(format!("no jail named `{jail}`"));
                };
                let target = match Target::parse(&target) {
                    Ok(t) => t,
                    Err(e) => return Response::err(e),
                };
                let dur = match duration {
                    Some(d) => match crate::config::de::parse_duration(&d) {
                        Ok(d) => Some(d),
                        Err(e) => return Response::err(e),
                    },
                    None if policy.bantime.as_secs() == crate::decide::PERMANENT => None,
                    None => Some(policy.bantime),
                };
                let detected_at = now_ms();
                let incident = Incident {
                    id: Incident::new_id(detected_at),
                    jail: jail.clone(),
                    kind: "manual".into(),
                    severity: self
                        .pipeline
                        .jail_index(&jail)
                        .map_or_else(Default::default, |i| self.pipeline.entries[i].spec.severity),
                    target: target.clone(),
                    detected_at,
                    first_seen: None,
                    last_seen: None,
                    count: 0,
                    evidence: Vec::new(),
                    actions: Vec::new(),
                    resolved_at: None,
                    resolution: None,
                };
                match self.ledger.manual_ban(
                    target,
                    &jail,
                    dur,
                    now_secs(),
                    Some(incident.id.clone()),
                ) {
                    Ok(ban) => {
                        if let Some(f) = &self.fleet {
                            f.publish("ban", &ban.jail, &ban.target, ban.expires, ban.count);
                        }
                        self.record_incident(&incident);
                        self.dispatch(&[Change::Add(ban.clone())]);
                        self.persist(Vec::new());
                        let saved = self.writer.flush();
                        let mut v = view::ban(&ban);
                        // The caller must know when a restart would lose it.
                        v["persisted"] = json!(saved);
                        if !saved {
                            v["store_error"] = json!(self.store.health().last_error);
                        }
                        Response::ok(v)
                    }
                    Err(e) => Response::err(e),
                }
            }
            Request::Reload => match self.reload() {
                Ok(v) => Response::ok(v),
                Err(e) => {
                    Response::err(format!("reload refused, the running config is kept:\n{e}"))
                }
            },
            Request::Incidents { since } => {
                let cutoff = match since.as_deref().map(crate::config::de::parse_duration) {
                    Some(Ok(d)) => now_ms() - d.as_millis() as i64,
                    Some(Err(e)) => return Response::err(e),
                    None => 0,
                };
                // Queued writes first, so the list is current.
                self.writer.flush();
                match self.store.load::<Incident>(Table::Incidents) {
                    Ok(all) => {
                        let mut list: Vec<Incident> = all
                            .into_iter()
                            .map(|(_, i)| i)
                            .filter(|i| i.detected_at >= cutoff)
                            .collect();
                        list.reverse();
                        Response::ok(list.iter().map(view::incident).collect())
                    }
                    Err(e) => Response::err(e),
                }
            }
            Request::Incident { id } => match self.writer.get::<Incident>(Table::Incidents, &id) {
                Ok(Some(i)) => Response::ok(view::incident(&i)),
                Ok(None) => Response::err(format!("no incident `{id}`")),
                Err(e) => Response::err(e),
            },
            Request::Flush => {
                let removed = self.unban(None, None, "flushed");
                Response::ok(json!({ "removed": removed.len() }))
            }
        }
    }
}
