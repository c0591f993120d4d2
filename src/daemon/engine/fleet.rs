//! Fleet glue: joining the fleet at start, sending fleet-scoped matches to
//! its counters, and applying what other hosts decided (see [`crate::fleet`]).

use super::{Engine, Msg, now_secs};
use crate::act::Change;
use crate::decide::Ban;
use crate::detect::Decision;
use crate::state::{Table, Write};
use std::sync::Arc;

/// Where the fleet stream's last read id is kept (in the positions table).
const FLEET_CURSOR: &str = "\u{0}fleet-stream-id";

impl Engine {
    /// Joins the fleet when `[fleet]` is set, resuming its stream where
    /// this host left it.
    pub(super) fn start_fleet(&mut self) -> Result<(), String> {
        let Some(cfg) = self.config.main.fleet.clone() else {
            return Ok(());
        };
        let cursor: Option<String> = self.store.get(Table::Positions, FLEET_CURSOR)?;
        let tx = Arc::new(std::sync::Mutex::new(self.tx.clone()));
        let to_engine = move |m: crate::fleet::FromFleet| {
            let _ = tx.lock().map(|t| t.send(Msg::Fleet(Box::new(m))));
        };
        self.fleet = Some(crate::fleet::Fleet::start(&cfg, cursor, to_engine)?);
        Ok(())
    }

    /// Sends the matches of fleet-scoped jails to the fleet counters.
    pub(super) fn count_in_fleet(&mut self) {
        let matches = self.pipeline.detector.take_fleet_matches();
        let Some(fleet) = &self.fleet else { return };
        // One item per (jail, key, sub-bucket): the fleet counts in buckets of
        // findtime/10, so formatting and sending happen once per bucket, not per line.
        let width = |j: usize| {
            (self.pipeline.entries[j].spec.findtime.as_secs() / 10).clamp(1, u32::MAX as u64) as u32
        };
        let mut per_bucket: hashbrown::HashMap<
            (usize, crate::detect::FleetKey, u32),
            (u32, u32),
            foldhash::fast::RandomState,
        > = hashbrown::HashMap::default();
        for m in matches {
            let e = per_bucket
                .entry((m.jail, m.key, m.sec / width(m.jail)))
                .or_insert((0, m.sec));
            e.0 += 1;
            e.1 = e.1.max(m.sec);
        }
        let detector = &self.pipeline.detector;
        let items = per_bucket
            .into_iter()
            .map(|((jail, key, _), (n, sec))| {
                let spec = &self.pipeline.entries[jail].spec;
                let m = crate::detect::FleetMatch { jail, key, sec };
                crate::fleet::CountItem {
                    jail: spec.name.clone(),
                    key: detector.fleet_key_text(&m),
                    sec,
                    n,
                    findtime: spec.findtime.as_secs().clamp(1, u32::MAX as u64) as u32,
                    maxretry: spec.maxretry,
                }
            })
            .collect();
        fleet.count(items);
    }

    pub(super) fn fleet_message(&mut self, m: crate::fleet::FromFleet) {
        use crate::fleet::FromFleet;
        let now = now_secs();
        let mut changes = Vec::new();
        match m {
            FromFleet::Remote(ev, id) => {
                self.pending
                    .push(Write::put(Table::Positions, FLEET_CURSOR.into(), &id));
                if ev.kind == "ban" {
                    let ban = Ban {
                        jail: ev.jail.clone(),
                        target: ev.target.clone(),
                        since: ev.at_ms / 1000,
                        expires: ev.expires,
                        count: ev.count,
                        offence: 1,
                        manual: false,
                        incident: None,
                        origin: Some(ev.origin.clone()),
                    };
                    if ban.expires.is_none_or(|e| e > now) && self.ledger.remote_ban(ban.clone()) {
                        tracing::info!(jail = ev.jail, target = %ev.target, origin = ev.origin, "ban from the fleet");
                        changes.push(Change::Add(ban));
                    }
                } else {
                    let removed = self.ledger.unban(Some(&ev.target), Some(&ev.jail));
                    self.resolve(&removed, "unbanned on another host");
                    for b in &removed {
                        if let Some(i) = self.pipeline.jail_index(&b.jail) {
                            self.pipeline.detector.jails[i].forget(&b.target);
                        }
                    }
                    changes.extend(removed.into_iter().map(|ban| Change::Remove {
                        ban,
                        reason: "unbanned on another host",
                    }));
                }
            }
            FromFleet::Fire {
                jail,
                key,
                total,
                sec,
            } => {
                let Some(i) = self.pipeline.jail_index(&jail) else {
                    return;
                };
                let entry = &self.pipeline.entries[i];
                // The key part the jail acts on, as its own decisions do (a
                // composite key's text is `part|part`).
                let Some(target) = self.pipeline.detector.jails[i].target_from_key_text(&key)
                else {
                    tracing::warn!(
                        jail = %crate::text::printable(&jail),
                        key = %crate::text::printable(&key),
                        "the fleet's count reached the threshold for a key whose text does not split into the jail's key parts (written by a host of another version?): not acted on"
                    );
                    return;
                };
                let d = Decision {
                    jail: self.pipeline.detector.jails[i].name.clone(),
                    target,
                    key,
                    time: sec as i64 * 1000,
                    first_seen: (sec as i64 - entry.spec.findtime.as_secs() as i64 + 1) * 1000,
                    count: total,
                    severity: entry.spec.severity,
                    bantime: entry.spec.bantime,
                    evidence: Vec::new(),
                };
                self.decide(d, now, &mut changes);
            }
        }
        self.persist(Vec::new());
        self.dispatch(&changes);
    }
}
