//! What the engine tells `portcullis status`, a metrics scrape and an
//! `unban` that found nothing: read-only views of its state, kept apart
//! from the loop.

use super::Engine;
use crate::control::cli::unban_command;
use crate::control::{Response, view};
use crate::decide::Ban;
use crate::detect::Target;
use crate::text::printable;
use serde_json::json;

impl Engine {
    /// Why `unban TARGET` found nothing: an address inside a banned network
    /// is still blocked, and the operator must be told by what and how to
    /// lift each (whatever `--jail` said: the address stays blocked).
    pub(super) fn not_banned(&self, target: &Target, jail: Option<&str>) -> String {
        if let Some(j) = jail
            && self.pipeline.jail_index(j).is_none()
        {
            return format!("no jail named `{}`", printable(j));
        }
        let Target::Address(net) = target else {
            return format!("{target} is not banned");
        };
        let covering: Vec<&Ban> = self
            .ledger
            .bans()
            .filter(|b| matches!(&b.target, Target::Address(n) if n != net && n.contains(net)))
            .take(10)
            .collect();
        if covering.is_empty() {
            return format!("{target} is not banned");
        }
        let list: Vec<String> = covering
            .iter()
            .map(|b| format!("{} (jail {})", b.target, printable(&b.jail)))
            .collect();
        let commands: Vec<String> = covering
            .iter()
            .map(|b| format!("`{}`", unban_command(&b.target.to_string(), &b.jail)))
            .collect();
        format!(
            "{target} has no ban of its own, but it is inside {}, which stay(s) enforced; \
             to lift that, run {} (this unbans the whole network)",
            list.join(", "),
            commands.join(" and "),
        )
    }

    pub(super) fn status(&self, only: Option<&str>) -> Response {
        if let Some(j) = only
            && self.pipeline.jail_index(j).is_none()
        {
            return Response::err(format!("no jail named `{j}`"));
        }
        let mut jails = Vec::new();
        // Every source, with what its kind adds: a file's lag, a socket's or
        // a journal's counters.
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let files = self
            .followed
            .iter()
            .map(|f| (f.source, "lag_bytes", json!(f.tail.lag())));
        let journals = self.journal.sources().map(|(source, r)| {
            let extra = json!({
                "received": load(&r.stats.received),
                "malformed": load(&r.stats.malformed),
            });
            (source, "journal", extra)
        });
        let sockets = self.syslog.sources().map(|(source, l)| {
            let s = &l.stats;
            let extra = json!({
                "received": load(&s.received),
                "malformed": load(&s.malformed),
                "dropped": load(&s.dropped),
                "unrouted": load(&s.unrouted),
                "refused_connections": load(&s.refused),
            });
            (source, "syslog", extra)
        });
        let kinds: Vec<(u32, &str, serde_json::Value)> =
            files.chain(journals).chain(sockets).collect();
        for (i, entry) in self.pipeline.entries.iter().enumerate() {
            if only.is_some_and(|j| j != entry.spec.name) {
                continue;
            }
            let stats = self.pipeline.detector.jails[i].stats();
            let mut sources = Vec::new();
            let (mut lines, mut parsed, mut unparsed) = (0, 0, 0);
            for (source, key, extra) in &kinds {
                let src = &self.pipeline.sources[*source as usize];
                if src.has_jail(i) {
                    let st = src.jail_stats(i);
                    lines += st.lines;
                    parsed += st.parsed;
                    unparsed += st.unparsed;
                    let mut v = json!({ "path": src.name, "parse": st });
                    v[*key] = extra.clone();
                    sources.push(v);
                }
            }
            let bans = self
                .ledger
                .bans()
                .filter(|b| b.jail == entry.spec.name)
                .count();
            let last = self
                .last_decision
                .get(&entry.spec.name)
                .map(|(t, target)| json!({ "time": t, "target": view::target(target) }));
            jails.push(json!({
                "name": entry.spec.name,
                "enabled": entry.enabled,
                "dry_run": entry.policy.dry_run,
                "sources": sources,
                "lines": lines,
                "parsed": parsed,
                "unparsed": unparsed,
                "matches": stats.matches,
                "ignored": stats.ignored,
                "no_database": stats.no_database,
                "tracked": stats.tracked,
                "evicted": stats.evicted,
                "decisions": stats.decisions,
                "active_bans": bans,
                "last_decision": last,
            }));
        }
        Response::ok(json!({
            "uptime_secs": self.started.elapsed().as_secs(),
            "jails": jails,
            "ledger": self.ledger.stats(),
            "actions": self.supervisor.health(),
            "action_names": self.dispatcher.names().collect::<Vec<_>>(),
            "fleet": self.fleet.as_ref().map(|f| f.status()),
            "bouncer_api": self.bouncer.as_ref().map(|b| b.status()),
            "geoip": self.geo_status(),
            "store": {
                "health": self.store.health(),
                "unsaved_writes": self.writer.unsaved(),
                "failing_since": self.writer.failing_since(),
            },
        }))
    }

    /// The metrics exposition for one scrape.
    pub(super) fn metrics(&self) -> String {
        use crate::daemon::metrics::{Snapshot, labels};
        let m = Snapshot::new(&self.latency, self.fleet.is_some());
        for f in &self.followed {
            let src = &self.pipeline.sources[f.source as usize];
            for (format, st) in src.stats() {
                let l = labels(&[("source", &src.name), ("format", &format)]);
                m.lines.get_or_create(&l).inc_by(st.lines);
                m.parsed.get_or_create(&l).inc_by(st.parsed);
                m.unparsed.get_or_create(&l).inc_by(st.unparsed);
            }
            m.lag
                .get_or_create(&labels(&[("file", &src.name)]))
                .set(f.tail.lag() as i64);
        }
        // Syslog and journal sources count like files (no lag: nothing waits
        // unread in a file); a syslog socket also reports the kernel's drops.
        let sockets = self.syslog.sources().map(|(s, l)| (s, Some(l)));
        let journals = self.journal.sources().map(|(s, _)| (s, None));
        let mut counted = std::collections::HashSet::new();
        for (source, listener) in sockets.chain(journals) {
            let src = &self.pipeline.sources[source as usize];
            for (format, st) in src.stats() {
                let l = labels(&[("source", &src.name), ("format", &format)]);
                m.lines.get_or_create(&l).inc_by(st.lines);
                m.parsed.get_or_create(&l).inc_by(st.parsed);
                m.unparsed.get_or_create(&l).inc_by(st.unparsed);
            }
            if let Some(l) = listener.filter(|l| counted.insert(l.listen.to_string())) {
                let dropped = l.stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
                m.syslog_dropped
                    .get_or_create(&labels(&[("socket", &l.listen.to_string())]))
                    .inc_by(dropped);
            }
        }
        for j in &self.pipeline.detector.jails {
            let st = j.stats();
            let l = labels(&[("jail", &j.name)]);
            m.matches.get_or_create(&l).inc_by(st.matches);
            m.decisions.get_or_create(&l).inc_by(st.decisions);
            m.tracked.get_or_create(&l).set(st.tracked as i64);
        }
        for (name, a) in self.supervisor.health() {
            let l = labels(&[("action", name)]);
            m.action_refused.get_or_create(&l).inc_by(a.refused_targets);
            m.action_failing.get_or_create(&l).set(a.failing() as i64);
            m.action_drift.get_or_create(&l).inc_by(a.drifts);
            m.actions
                .get_or_create(&labels(&[("action", name), ("result", "ok")]))
                .inc_by(a.batches_ok);
            m.actions
                .get_or_create(&labels(&[("action", name), ("result", "failed")]))
                .inc_by(a.batches_failed);
        }
        if let Some(g) = &self.config.geo {
            for db in g.status() {
                m.geoip_problem
                    .get_or_create(&labels(&[("db", db.role)]))
                    .set(db.problem.is_some() as i64);
            }
        }
        let store = self.store.health();
        m.store_errors.inc_by(store.errors);
        m.store_unsaved.set(self.writer.unsaved() as i64);
        let ledger = self.ledger.stats();
        m.active_bans.set(ledger.active as i64);
        m.held.set(ledger.held as i64);
        if let Some(f) = &self.fleet {
            let st = f.status();
            m.fleet_link.set(st.link_up as i64);
            m.fleet_lag_ms.set(st.last_lag_ms.unwrap_or(0));
            m.fleet_outbox.set(st.outbox as i64);
            m.fleet_published.inc_by(st.published);
            m.fleet_applied.inc_by(st.applied);
        }
        m.encode()
    }
}
