//! The decide stage: the ban ledger.
//!
//! Every decision from detect becomes a [`Ban`] (an address or prefix) or a
//! revocation (an API key) with an expiry, after the safety rails: the
//! allowlist is checked again (a prefix ban that would cover an allowlisted
//! address is refused), `dry_run` logs and acts on nothing, and a global cap on
//! bans per minute holds decisions past it, so a broken log format cannot ban
//! half the internet. Repeat offenders get longer bans (fail2ban's
//! `bantime.increment`). Wall-clock time drives expiry.

use crate::detect::{Decision, Target};
use crate::parse::addr::NetSet;
use crate::state::{Table, Write};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// `bantime = "permanent"` is stored as this many seconds.
pub const PERMANENT: u64 = u64::MAX;

/// An active ban or revocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    pub jail: String,
    pub target: Target,
    /// Unix seconds.
    pub since: i64,
    /// Unix seconds; `None` for a permanent ban.
    pub expires: Option<i64>,
    /// Matches (or distinct values) that triggered it; 0 for a manual ban.
    pub count: u32,
    /// 1 for a first ban of this target in this jail, 2 for the next, ...
    pub offence: u32,
    pub manual: bool,
    /// The incident record this ban opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The fleet host that decided it; `None`: this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Ban {
    pub fn key(&self) -> String {
        ban_key(&self.jail, &self.target)
    }
}

fn ban_key(jail: &str, target: &Target) -> String {
    format!("{jail}\u{1f}{target}")
}

/// How a jail's decisions become bans.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub bantime: Duration,
    /// Each further offence multiplies the ban by this (1 = no escalation).
    pub factor: f64,
    pub max: Option<Duration>,
    pub dry_run: bool,
}

impl Policy {
    fn duration(&self, offence: u32) -> Option<Duration> {
        if self.bantime.as_secs() == PERMANENT {
            return None;
        }
        let secs =
            self.bantime.as_secs_f64() * self.factor.powi(offence.saturating_sub(1).min(64) as i32);
        let mut d = Duration::from_secs_f64(secs.min(1e12));
        if let Some(max) = self.max {
            d = d.min(max);
        }
        Some(d)
    }
}

/// The widest networks a ban may cover: a /8 of IPv4, a /16 of IPv6.
pub const MIN_V4_PREFIX: u8 = 8;
pub const MIN_V6_PREFIX: u8 = 16;

/// What became of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Banned(Ban),
    AlreadyBanned,
    /// `dry_run`: logged, nothing done.
    DryRun,
    /// Over the ban-rate cap: queued until the rate allows.
    Held,
    /// The target is (or covers) an allowlisted address or key.
    Allowlisted,
}

/// Counters for `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerStats {
    pub active: usize,
    pub held: usize,
    pub held_total: u64,
    pub dropped_held: u64,
    pub refused_allowlisted: u64,
    pub dry_run: u64,
}

pub struct Ledger {
    bans: BTreeMap<String, Ban>,
    offences: HashMap<String, u32>,
    ignore: NetSet,
    ignore_keys: Vec<String>,
    cap_per_minute: usize,
    recent: VecDeque<i64>,
    held: VecDeque<Decision>,
    writes: Vec<Write>,
    stats: LedgerStats,
}

const MAX_HELD: usize = 100_000;

impl Ledger {
    pub fn new(ignore: NetSet, ignore_keys: Vec<String>, cap_per_minute: usize) -> Ledger {
        Ledger {
            bans: BTreeMap::new(),
            offences: HashMap::new(),
            ignore,
            ignore_keys,
            cap_per_minute: cap_per_minute.max(1),
            recent: VecDeque::new(),
            held: VecDeque::new(),
            writes: Vec::new(),
            stats: LedgerStats::default(),
        }
    }

    /// New allowlist and cap (reload); bans are kept.
    pub fn reconfigure(&mut self, ignore: NetSet, ignore_keys: Vec<String>, cap_per_minute: usize) {
        self.ignore = ignore;
        self.ignore_keys = ignore_keys;
        self.cap_per_minute = cap_per_minute.max(1);
    }

    /// A new allowlist (its file changed); nothing else changes.
    pub fn set_ignore(&mut self, ignore: NetSet) {
        self.ignore = ignore;
    }

    /// Loads persisted bans (with their store keys, [`Ban::key`]) and offence
    /// counts; expired bans are dropped (and deleted from the store). Returns
    /// the active bans, to re-apply in one batch.
    pub fn restore(
        &mut self,
        bans: Vec<(String, Ban)>,
        offences: Vec<(String, u32)>,
        now: i64,
    ) -> Vec<Ban> {
        self.offences.extend(offences);
        let mut active = Vec::with_capacity(bans.len());
        let mut kept = Vec::with_capacity(bans.len());
        for (key, ban) in bans {
            if ban.expires.is_some_and(|e| e <= now) {
                self.writes.push(Write::Delete(Table::Bans, key));
            } else {
                active.push(ban.clone());
                kept.push((key, ban));
            }
        }
        // The store yields keys in order, and a map built from sorted
        // entries is built in one pass (a million bans: no rebalancing).
        if self.bans.is_empty() {
            self.bans = kept.into_iter().collect();
        } else {
            self.bans.extend(kept);
        }
        active
    }

    /// Store writes accumulated since the last call, for one transaction.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            active: self.bans.len(),
            held: self.held.len(),
            ..self.stats.clone()
        }
    }

    /// Whether `target` is actively banned in `jail`.
    pub fn is_banned(&self, jail: &str, target: &Target) -> bool {
        self.bans.contains_key(&ban_key(jail, target))
    }

    pub fn bans(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// A network so wide a ban of it is a mistake (a typo, `0.0.0.0/0`) or
    /// an attack (through the fleet), whatever the allowlist says.
    fn too_broad(target: &Target) -> bool {
        match target {
            Target::Address(ipnet::IpNet::V4(n)) => n.prefix_len() < MIN_V4_PREFIX,
            Target::Address(ipnet::IpNet::V6(n)) => n.prefix_len() < MIN_V6_PREFIX,
            Target::Key(_) => false,
        }
    }

    fn allowlisted(&self, target: &Target) -> bool {
        match target {
            Target::Address(net) => {
                // Refuse a prefix that would cover an allowlisted address, too.
                self.ignore.contains(net.addr()) || self.ignore.overlaps(net)
            }
            Target::Key(k) => crate::detect::key_allowlisted(&self.ignore_keys, k),
        }
    }

    /// Turns a decision into a ban, after the safety rails.
    pub fn decide(&mut self, d: Decision, policy: &Policy, now: i64) -> Verdict {
        self.decide_with_incident(d, policy, now, None)
    }

    /// As [`Ledger::decide`], recording the incident id in the ban.
    pub fn decide_with_incident(
        &mut self,
        d: Decision,
        policy: &Policy,
        now: i64,
        incident: Option<String>,
    ) -> Verdict {
        if self.allowlisted(&d.target) {
            self.stats.refused_allowlisted += 1;
            return Verdict::Allowlisted;
        }
        if self.bans.contains_key(&ban_key(&d.jail, &d.target)) {
            return Verdict::AlreadyBanned;
        }
        if policy.dry_run {
            self.stats.dry_run += 1;
            return Verdict::DryRun;
        }
        while self.recent.front().is_some_and(|t| *t <= now - 60) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.cap_per_minute {
            self.stats.held_total += 1;
            if self.held.len() >= MAX_HELD {
                self.stats.dropped_held += 1;
            } else {
                self.held.push_back(d);
            }
            return Verdict::Held;
        }
        self.recent.push_back(now);
        let okey = ban_key(&d.jail, &d.target);
        let offence = self.offences.get(&okey).copied().unwrap_or(0) + 1;
        self.offences.insert(okey.clone(), offence);
        self.writes
            .push(Write::put(Table::Offences, okey, &offence));
        let ban = Ban {
            jail: d.jail.to_string(),
            target: d.target,
            since: now,
            expires: policy
                .duration(offence)
                .map(|dur| now.saturating_add(dur.as_secs() as i64)),
            count: d.count,
            offence,
            manual: false,
            incident,
            origin: None,
        };
        self.insert(ban.clone());
        Verdict::Banned(ban)
    }

    /// Held decisions that the rate now allows, oldest first.
    pub fn release_held(&mut self, now: i64) -> Vec<Decision> {
        while self.recent.front().is_some_and(|t| *t <= now - 60) {
            self.recent.pop_front();
        }
        let room = self
            .cap_per_minute
            .saturating_sub(self.recent.len())
            .min(self.held.len());
        self.held.drain(..room).collect()
    }

    fn insert(&mut self, ban: Ban) {
        self.writes.push(Write::put(Table::Bans, ban.key(), &ban));
        self.bans.insert(ban.key(), ban);
    }

    /// A ban by hand. Refused for allowlisted targets.
    pub fn manual_ban(
        &mut self,
        target: Target,
        jail: &str,
        dur: Option<Duration>,
        now: i64,
        incident: Option<String>,
    ) -> Result<Ban, String> {
        if Self::too_broad(&target) {
            return Err(format!(
                "{target} is too wide to ban: at most a /{MIN_V4_PREFIX} (IPv4) or a /{MIN_V6_PREFIX} (IPv6)"
            ));
        }
        if self.allowlisted(&target) {
            return Err(format!(
                "{target} is allowlisted (`ignore`/`ignore_keys`); remove it there first"
            ));
        }
        let ban = Ban {
            jail: jail.to_string(),
            target,
            since: now,
            expires: dur.map(|d| now.saturating_add(d.as_secs() as i64)),
            count: 0,
            offence: 1,
            manual: true,
            incident,
            origin: None,
        };
        self.insert(ban.clone());
        Ok(ban)
    }

    /// A ban decided by another fleet host. `false` if this host already has it.
    pub fn remote_ban(&mut self, ban: Ban) -> bool {
        if Self::too_broad(&ban.target) {
            tracing::warn!(target = %ban.target, jail = %ban.jail, "refused a ban from elsewhere: too wide a network");
            return false;
        }
        if self.bans.contains_key(&ban.key()) || self.allowlisted(&ban.target) {
            return false;
        }
        self.insert(ban);
        true
    }

    /// Removes bans whose target lies within `target` (all if `None`), in
    /// `jail` (all jails if `None`).
    pub fn unban(&mut self, target: Option<&Target>, jail: Option<&str>) -> Vec<Ban> {
        let keys: Vec<String> = self
            .bans
            .iter()
            .filter(|(_, b)| {
                jail.is_none_or(|j| b.jail == j) && target.is_none_or(|t| b.target.within(t))
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.remove_keys(keys)
    }

    /// Removes bans that have expired by `now`.
    pub fn expire(&mut self, now: i64) -> Vec<Ban> {
        let keys: Vec<String> = self
            .bans
            .iter()
            .filter(|(_, b)| b.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        self.remove_keys(keys)
    }

    fn remove_keys(&mut self, keys: Vec<String>) -> Vec<Ban> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(b) = self.bans.remove(&k) {
                self.writes.push(Write::Delete(Table::Bans, k));
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
