//! The decisions the bouncer API serves, and where each bouncer stands.
//!
//! One decision per banned address or network: when two jails ban the same
//! target, bouncers see the ban that lasts longest (they key their
//! enforcement by value, and a deletion of one of two decisions on a value
//! would lift the other's ban). When the longest changes (a re-ban with a
//! longer bantime, the longer of two bans lifted), the old decision is
//! withdrawn and a new one served, in the same answer: bouncers apply
//! `deleted` before `new`.
//!
//! Every change takes the next sequence number; a decision's id is the
//! sequence that made it. A bouncer's cursor is the sequence of its last
//! answer, so a poll costs what changed since (a range of a `BTreeMap` and
//! the tail of the withdrawn list), never a walk over every ban.
//!
//! A withdrawn decision is kept until every bouncer's copy of it has run
//! out (its `until`), not until every known bouncer was told: a bouncer
//! this book does not know (its cursor forgotten, this daemon restarted)
//! gets every active decision *and* every withdrawn one it may still hold,
//! so no lifted ban outlives a lost cursor. Served and withdrawn values are
//! also handed out for the state store ([`Book::take_persist`]), so a
//! restart remembers what bouncers may hold.

use crate::detect::Target;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

/// A cursor not seen for this long is forgotten: that bouncer's next poll
/// gets every active decision, as at its startup.
const CURSOR_TTL_SECS: i64 = 24 * 3600;
/// Bouncers remembered at most (one per API key, user agent and address).
const MAX_CURSORS: usize = 1024;
/// Withdrawn decisions kept at most (those whose copies may not have run
/// out yet); past it the oldest are dropped.
const MAX_WITHDRAWN: usize = 1_000_000;
/// Bouncers start a copy's clock when they receive it, a little after we
/// render it: a withdrawn decision is kept this much past its `until`.
const UNTIL_SLACK: i64 = 120;
/// The longest duration served. ipset (which bouncers' iptables modes
/// use) refuses a timeout over 2,147,483 s (24.8 days), and every bouncer
/// needs a duration: a longer or permanent ban is served for 20 days and
/// served again, fresh, [`RENEW_BEFORE`] before that runs out.
pub const MAX_SERVED_SECS: i64 = 20 * 24 * 3600;
const RENEW_BEFORE: i64 = 2 * 24 * 3600;

/// A decision as served.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The sequence that made it.
    seq: u64,
    /// Its id as served (`id_base + seq`, or the id it had before a restart).
    id: i64,
    net: IpNet,
    scenario: Arc<str>,
    /// Unix seconds; `None`: permanent.
    expires: Option<i64>,
    /// When bouncers' copies run out (`expires`, or [`MAX_SERVED_SECS`]
    /// after it was served if that is sooner).
    until: i64,
}

impl Decision {
    fn is_ip(&self) -> bool {
        self.net.prefix_len() == self.net.max_prefix_len()
    }

    fn scope(&self) -> &'static str {
        if self.is_ip() { "Ip" } else { "Range" }
    }

    fn value(&self) -> String {
        if self.is_ip() {
            self.net.addr().to_string()
        } else {
            self.net.to_string()
        }
    }

    /// Seconds bouncers hold it from `now`.
    fn left(&self, now: i64) -> i64 {
        self.until - now
    }

    /// When it is served again with a fresh duration, if it outlasts `until`.
    fn renew_at(&self) -> Option<i64> {
        (self.expires.is_none_or(|e| e > self.until)).then(|| self.until - RENEW_BEFORE)
    }
}

/// A ban held on a value, by one jail.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    jail: Arc<str>,
    expires: Option<i64>,
}

/// The ban that wins: the one that lasts longest (permanent beats any
/// expiry), then the first jail by name, so the choice never flaps.
fn winner(held: &[Held]) -> Option<&Held> {
    held.iter().max_by(|a, b| {
        let until = |h: &Held| h.expires.unwrap_or(i64::MAX);
        until(a).cmp(&until(b)).then_with(|| b.jail.cmp(&a.jail))
    })
}

#[derive(Debug)]
struct Entry {
    held: Vec<Held>,
    served: Decision,
}

#[derive(Debug)]
struct Withdrawn {
    /// The sequence that withdrew it.
    at: u64,
    decision: Decision,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    seq: u64,
    seen: i64,
}

/// What a bouncer asks to see (`scopes`, `origins`, `scenarios_containing`,
/// `scenarios_not_containing`), as CrowdSec's Local API filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub ip: bool,
    pub range: bool,
    pub origins: Option<Vec<String>>,
    pub containing: Vec<String>,
    pub not_containing: Vec<String>,
}

impl Default for Filter {
    /// CrowdSec's default when a bouncer names no scopes: `ip,range`.
    fn default() -> Filter {
        Filter {
            ip: true,
            range: true,
            origins: None,
            containing: Vec::new(),
            not_containing: Vec::new(),
        }
    }
}

impl Filter {
    /// From the query's `(name, value)` pairs (values percent-decoded).
    pub fn from_query(query: &[(String, String)]) -> Filter {
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let mut f = Filter::default();
        for (k, v) in query {
            match k.as_str() {
                "scopes" => {
                    let scopes: Vec<String> =
                        list(v).iter().map(|s| s.to_ascii_lowercase()).collect();
                    f.ip = scopes.iter().any(|s| s == "ip");
                    f.range = scopes.iter().any(|s| s == "range");
                }
                "origins" => f.origins = Some(list(v)),
                "scenarios_containing" => f.containing = list(v),
                "scenarios_not_containing" => f.not_containing = list(v),
                _ => {}
            }
        }
        f
    }

    fn admits(&self, d: &Decision) -> bool {
        let scope = if d.is_ip() { self.ip } else { self.range };
        scope
            && self
                .origins
                .as_ref()
                .is_none_or(|o| o.iter().any(|o| o == super::ORIGIN))
            && (self.containing.is_empty()
                || self
                    .containing
                    .iter()
                    .any(|c| d.scenario.contains(c.as_str())))
            && !self
                .not_containing
                .iter()
                .any(|c| d.scenario.contains(c.as_str()))
    }
}

/// A live-mode query (`GET /v1/decisions?ip=...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub ip: Option<IpAddr>,
    pub range: Option<IpNet>,
    pub scope: Option<String>,
    pub value: Option<String>,
    pub kind: Option<String>,
    /// With `ip` or `range`: decisions that contain it (default) or, when
    /// false, that it contains.
    pub contains: bool,
}

impl Query {
    /// From the query's pairs; an unparsable `ip` or `range` is an error
    /// (CrowdSec answers 400).
    pub fn from_query(query: &[(String, String)]) -> Result<Query, String> {
        let mut q = Query {
            contains: true,
            ..Query::default()
        };
        for (k, v) in query {
            match k.as_str() {
                // `::ffff:a.b.c.d` (a dual-stack socket's view of an IPv4
                // client) is the IPv4 address, as CrowdSec reads it.
                "ip" => {
                    q.ip = Some(
                        v.parse::<IpAddr>()
                            .map_err(|_| format!("`ip`: not an address: {}", v.escape_debug()))?
                            .to_canonical(),
                    )
                }
                "range" => {
                    let net = v
                        .parse::<IpNet>()
                        .map_err(|_| format!("`range`: not a CIDR: {}", v.escape_debug()))?;
                    q.range = Some(canonical(net).trunc());
                }
                "scope" => q.scope = Some(v.to_ascii_lowercase()),
                "value" => q.value = Some(v.clone()),
                "type" => q.kind = Some(v.clone()),
                "contains" => q.contains = v != "false",
                _ => {}
            }
        }
        Ok(q)
    }
}

/// A store write: a value bouncers may hold, with its scenario and the
/// time their copies run out, or `None` once none can hold it.
pub type Persist = (IpNet, Option<(Arc<str>, i64, i64)>);

/// An IPv4-mapped IPv6 prefix (`::ffff:192.0.2.0/120`) as the IPv4 one.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(a) => IpNet::new(IpAddr::V4(a), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Every decision served, what was withdrawn, and each bouncer's cursor.
#[derive(Debug)]
pub struct Book {
    seq: u64,
    id_base: i64,
    entries: HashMap<IpNet, Entry>,
    /// Served decisions by the sequence that made them.
    by_seq: BTreeMap<u64, IpNet>,
    /// Withdrawn decisions, in the order they were withdrawn.
    withdrawn: VecDeque<Withdrawn>,
    /// A cursor below this missed a withdrawal that was dropped (too many
    /// kept): it is answered as an unknown bouncer.
    horizon: u64,
    /// When to look for withdrawn decisions whose copies have all run out.
    compact_at: usize,
    /// Changes for the state store: a value served or withdrawn with the
    /// time bouncers may hold it until, or `None` once none may.
    persist: Vec<Persist>,
    cursors: HashMap<String, Cursor>,
    /// Served decisions by prefix length (IPv4, IPv6), so `?ip=` looks up
    /// only the lengths in use.
    lens: [[u32; 129]; 2],
    /// Decisions that outlast their served duration, by when to renew them.
    renewals: std::collections::BTreeSet<(i64, u64)>,
    /// The longest copy bouncers may hold of each value (what the store
    /// records): scenario, until, id.
    held_until: HashMap<IpNet, (Arc<str>, i64, i64)>,
    /// What was served before this start, as restored: a bouncer not known
    /// since may hold these with their old terms.
    before_restart: HashMap<IpNet, Decision>,
}

fn family(net: &IpNet) -> usize {
    usize::from(matches!(net, IpNet::V6(_)))
}

impl Book {
    /// `id_base`: added to every decision id, so ids stay unique across
    /// restarts (the daemon passes its start time in microseconds' worth of
    /// room: seconds × 10⁶, still exact in a JSON double).
    pub fn new(id_base: i64) -> Book {
        Book {
            seq: 0,
            id_base,
            entries: HashMap::new(),
            by_seq: BTreeMap::new(),
            withdrawn: VecDeque::new(),
            horizon: 0,
            compact_at: 1024,
            persist: Vec::new(),
            cursors: HashMap::new(),
            lens: [[0; 129]; 2],
            renewals: Default::default(),
            held_until: HashMap::new(),
            before_restart: HashMap::new(),
        }
    }

    /// Decisions served now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bouncers that polled within the last day: (who, last poll in unix seconds).
    pub fn bouncers(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = self
            .cursors
            .iter()
            .map(|(k, c)| (k.clone(), c.seen))
            .collect();
        out.sort();
        out
    }

    /// `jail` bans `target` until `expires`. Keys are not served (the
    /// action refuses them before they get here).
    pub fn ban(&mut self, jail: &str, target: &Target, expires: Option<i64>, now: i64) {
        let Target::Address(net) = target else { return };
        let net = net.trunc();
        let held = Held {
            jail: Arc::from(jail),
            expires,
        };
        let mut list = self
            .entries
            .get(&net)
            .map(|e| e.held.clone())
            .unwrap_or_default();
        match list.iter_mut().find(|h| h.jail == held.jail) {
            Some(h) => *h = held,
            None => list.push(held),
        }
        self.set(net, list, now);
    }

    /// `jail`'s ban on `target` ended (expired or lifted).
    pub fn unban(&mut self, jail: &str, target: &Target, now: i64) {
        let Target::Address(net) = target else { return };
        let net = net.trunc();
        let Some(e) = self.entries.get(&net) else {
            return;
        };
        let list: Vec<Held> = e
            .held
            .iter()
            .filter(|h| &*h.jail != jail)
            .cloned()
            .collect();
        self.set(net, list, now);
    }

    /// Makes the book hold exactly `bans` (jail, target, expiry): what a
    /// start or reload found. Only differences become changes, so bouncers
    /// polling across a reload see nothing move.
    pub fn reconcile<'a>(
        &mut self,
        bans: impl IntoIterator<Item = (&'a str, &'a Target, Option<i64>)>,
        now: i64,
    ) {
        let mut want: HashMap<IpNet, Vec<Held>> = HashMap::new();
        for (jail, target, expires) in bans {
            let Target::Address(net) = target else {
                continue;
            };
            let list = want.entry(net.trunc()).or_default();
            let held = Held {
                jail: Arc::from(jail),
                expires,
            };
            match list.iter_mut().find(|h| h.jail == held.jail) {
                Some(h) => *h = held,
                None => list.push(held),
            }
        }
        let gone: Vec<IpNet> = self
            .entries
            .keys()
            .filter(|n| !want.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            self.set(net, Vec::new(), now);
        }
        for (net, list) in want {
            self.set(net, list, now);
        }
    }

    /// Sets the bans held on `net` and serves the winner, withdrawing what
    /// was served before if it differs.
    fn set(&mut self, net: IpNet, held: Vec<Held>, now: i64) {
        let best = winner(&held).cloned();
        let old = self.entries.get(&net).map(|e| &e.served);
        let unchanged = match (old, &best) {
            (Some(d), Some(b)) => d.expires == b.expires && d.scenario == b.jail,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            if let Some(e) = self.entries.get_mut(&net) {
                e.held = held;
            }
            return;
        }
        self.withdraw(net);
        if let Some(b) = best {
            self.serve(net, held, b.jail, b.expires, now);
        }
        self.compact(now);
    }

    /// Takes the decision on `net` off the served list, remembering it for
    /// the bouncers that have it; returns what it held.
    fn withdraw(&mut self, net: IpNet) -> Option<Vec<Held>> {
        let e = self.entries.remove(&net)?;
        self.seq += 1;
        self.by_seq.remove(&e.served.seq);
        if let Some(at) = e.served.renew_at() {
            self.renewals.remove(&(at, e.served.seq));
        }
        self.lens[family(&net)][usize::from(net.prefix_len())] -= 1;
        self.withdrawn.push_back(Withdrawn {
            at: self.seq,
            decision: e.served,
        });
        Some(e.held)
    }

    fn serve(
        &mut self,
        net: IpNet,
        held: Vec<Held>,
        scenario: Arc<str>,
        expires: Option<i64>,
        now: i64,
    ) {
        self.seq += 1;
        let cap = now + MAX_SERVED_SECS;
        let served = Decision {
            seq: self.seq,
            id: self.id_base + self.seq as i64,
            net,
            scenario,
            expires,
            until: expires.map_or(cap, |e| e.min(cap)),
        };
        if let Some(at) = served.renew_at() {
            self.renewals.insert((at, served.seq));
        }
        // Bouncers may hold a longer copy from before (a ban lifted, then a
        // shorter one): the record keeps the longest.
        let longest = self.held_until.get(&net).map_or(0, |h| h.1);
        if served.until > longest {
            self.held_until
                .insert(net, (served.scenario.clone(), served.until, served.id));
            self.persist.push((
                net,
                Some((served.scenario.clone(), served.until, served.id)),
            ));
        }
        self.by_seq.insert(self.seq, net);
        self.lens[family(&net)][usize::from(net.prefix_len())] += 1;
        self.entries.insert(net, Entry { held, served });
    }

    /// Serves again, with a fresh duration, every decision whose served
    /// duration is about to run out while its ban goes on.
    fn renew(&mut self, now: i64) {
        while let Some(&(at, seq)) = self.renewals.first() {
            if at > now {
                break;
            }
            self.renewals.pop_first();
            let Some(&net) = self.by_seq.get(&seq) else {
                continue;
            };
            let Some(e) = self.entries.get(&net) else {
                continue;
            };
            let (scenario, expires) = (e.served.scenario.clone(), e.served.expires);
            if let Some(held) = self.withdraw(net) {
                self.serve(net, held, scenario, expires, now);
            }
        }
    }

    /// The stream answer for bouncer `who`: with `startup` (or for a
    /// bouncer not seen before, or one too far behind) every active
    /// decision; otherwise what was served and withdrawn since its last
    /// poll. Moves its cursor to now.
    pub fn stream(&mut self, who: &str, startup: bool, filter: &Filter, now: i64) -> Vec<u8> {
        self.forget_idle(now);
        self.renew(now);
        self.before_restart
            .retain(|_, d| d.until + UNTIL_SLACK > now);
        let cursor = self
            .cursors
            .get(who)
            .map(|c| c.seq)
            .filter(|&c| !startup && c >= self.horizon);
        let mut out = Stream::default();
        match cursor {
            None => {
                for e in self.entries.values() {
                    self.push_new(&mut out, &e.served, filter, now);
                }
                // What it may still hold of what was withdrawn (a bouncer
                // deletes what it does not have without complaint; CrowdSec
                // sends its expired decisions at startup too).
                let mut seen = std::collections::HashSet::new();
                for w in self.withdrawn.iter().rev() {
                    let d = &w.decision;
                    if d.until + UNTIL_SLACK > now
                        && !self.entries.contains_key(&d.net)
                        && seen.insert(d.net)
                        && filter.admits(d)
                    {
                        out.deleted.push(self.render(d, d.left(now).max(0)));
                    }
                }
                // Served again since a restart with another term: its old
                // copy goes first (deleted, then new), or a bouncer that
                // keeps an element's first timeout would drop it early.
                for (net, d) in &self.before_restart {
                    let again = self.entries.get(net).map(|e| e.served.until);
                    if again.is_some_and(|u| u != d.until)
                        && d.until + UNTIL_SLACK > now
                        && filter.admits(d)
                    {
                        out.deleted.push(self.render(d, d.left(now).max(0)));
                    }
                }
            }
            Some(c) => {
                for net in self.by_seq.range(c + 1..).map(|(_, n)| n) {
                    self.push_new(&mut out, &self.entries[net].served, filter, now);
                }
                let from = self.withdrawn.partition_point(|w| w.at <= c);
                for w in self.withdrawn.range(from..) {
                    // One served and withdrawn since the last poll was never seen.
                    if w.decision.seq <= c && filter.admits(&w.decision) {
                        out.deleted
                            .push(self.render(&w.decision, w.decision.left(now).max(0)));
                    }
                }
            }
        }
        let body = serde_json::to_vec(&out).unwrap_or_default();
        drop(out);
        if self.cursors.len() >= MAX_CURSORS && !self.cursors.contains_key(who) {
            // Forget the bouncer that polled least recently.
            if let Some(oldest) = self
                .cursors
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(k, _)| k.clone())
            {
                self.cursors.remove(&oldest);
            }
        }
        self.cursors.insert(
            who.to_string(),
            Cursor {
                seq: self.seq,
                seen: now,
            },
        );
        body
    }

    fn push_new<'a>(&self, out: &mut Stream<'a>, d: &'a Decision, filter: &Filter, now: i64) {
        let left = d.left(now);
        // An expired ban the ledger has not swept yet is not news.
        if left > 0 && filter.admits(d) {
            out.new.push(self.render(d, left));
        }
    }

    /// The live-mode answer: matching decisions, or JSON `null` when none
    /// (as CrowdSec answers, and as live bouncers expect).
    pub fn query(&self, q: &Query, now: i64) -> Vec<u8> {
        let mut found: Vec<&Decision> = Vec::new();
        let kind_ok = q.kind.as_deref().is_none_or(|k| k == "ban");
        if kind_ok {
            let want = |d: &&Decision| -> bool {
                q.scope
                    .as_deref()
                    .is_none_or(|s| s == d.scope().to_ascii_lowercase())
                    && q.value.as_deref().is_none_or(|v| v == d.value())
                    && d.expires.is_none_or(|e| e > now)
            };
            match (q.ip, q.range) {
                (Some(ip), _) => {
                    let net = IpNet::from(ip);
                    if q.contains {
                        found.extend(self.containing(net).filter(want));
                    } else {
                        found.extend(self.entries.get(&net).map(|e| &e.served).filter(want));
                    }
                }
                (None, Some(range)) => {
                    if q.contains {
                        found.extend(self.containing(range).filter(want));
                    } else {
                        found.extend(
                            self.entries
                                .values()
                                .map(|e| &e.served)
                                .filter(|d| range.contains(&d.net))
                                .filter(want),
                        );
                    }
                }
                (None, None) => found.extend(self.entries.values().map(|e| &e.served).filter(want)),
            }
        }
        if found.is_empty() {
            return b"null".to_vec();
        }
        found.sort_by_key(|d| d.seq);
        // Live bouncers cache what they get for its duration: capped too.
        let out: Vec<Out> = found
            .iter()
            .map(|d| {
                self.render(
                    d,
                    d.expires
                        .map_or(MAX_SERVED_SECS, |e| e - now)
                        .min(MAX_SERVED_SECS),
                )
            })
            .collect();
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// Served decisions whose network contains `net`: one lookup per prefix
    /// length in use, at most 33 (IPv4) or 129 (IPv6).
    fn containing(&self, net: IpNet) -> impl Iterator<Item = &Decision> {
        let lens = &self.lens[family(&net)];
        (0..=net.prefix_len())
            .filter(move |&l| lens[usize::from(l)] > 0)
            .filter_map(move |l| {
                let n = IpNet::new(net.addr(), l).ok()?.trunc();
                self.entries.get(&n).map(|e| &e.served)
            })
    }

    fn render<'a>(&self, d: &'a Decision, left: i64) -> Out<'a> {
        Out {
            duration: go_duration(left),
            id: d.id,
            origin: super::ORIGIN,
            scenario: &d.scenario,
            scope: d.scope(),
            kind: "ban",
            value: d.value(),
        }
    }

    fn forget_idle(&mut self, now: i64) {
        self.cursors.retain(|_, c| now - c.seen < CURSOR_TTL_SECS);
    }

    /// Drops withdrawn decisions no bouncer can hold any more (their
    /// `until` passed), once the list has doubled since the last look
    /// (amortised: a constant cost per withdrawal), then the oldest past
    /// [`MAX_WITHDRAWN`].
    fn compact(&mut self, now: i64) {
        if self.withdrawn.len() < self.compact_at {
            return;
        }
        let mut dropped = Vec::new();
        self.withdrawn.retain(|w| {
            let keep = w.decision.until + UNTIL_SLACK > now;
            if !keep {
                dropped.push(w.decision.net);
            }
            keep
        });
        while self.withdrawn.len() > MAX_WITHDRAWN {
            if let Some(w) = self.withdrawn.pop_front() {
                self.horizon = self.horizon.max(w.at);
                dropped.push(w.decision.net);
            }
        }
        if !dropped.is_empty() {
            let kept: std::collections::HashSet<IpNet> =
                self.withdrawn.iter().map(|w| w.decision.net).collect();
            for net in dropped {
                let ran_out = self
                    .held_until
                    .get(&net)
                    .is_none_or(|h| h.1 + UNTIL_SLACK <= now);
                if !self.entries.contains_key(&net) && !kept.contains(&net) && ran_out {
                    self.held_until.remove(&net);
                    self.persist.push((net, None));
                }
            }
        }
        self.compact_at = (self.withdrawn.len() * 2).max(1024);
    }

    /// What bouncers may hold from before this start (the state store's
    /// record): withdrawn decisions, so an unknown bouncer is told to delete
    /// any of them this start does not serve again.
    /// Each is (value, scenario, until, id as served then).
    pub fn restore(
        &mut self,
        held: impl IntoIterator<Item = (IpNet, Arc<str>, i64, i64)>,
        now: i64,
    ) {
        for (net, scenario, until, id) in held {
            if until + UNTIL_SLACK <= now {
                self.persist.push((net, None));
                continue;
            }
            let decision = Decision {
                seq: 0,
                id,
                net,
                scenario: scenario.clone(),
                expires: Some(until),
                until,
            };
            self.held_until.insert(net, (scenario, until, id));
            self.before_restart.insert(net, decision.clone());
            // Sequence 0: before every change of this run, so the list stays
            // in order whatever was done before.
            self.withdrawn.push_front(Withdrawn { at: 0, decision });
        }
        self.compact_at = (self.withdrawn.len() * 2).max(1024);
    }

    /// Store writes since the last call: each value served (with the time
    /// bouncers may hold it until), or forgotten (`None`).
    pub fn take_persist(&mut self) -> Vec<Persist> {
        std::mem::take(&mut self.persist)
    }

    #[cfg(test)]
    pub fn withdrawn_len(&mut self, now: i64) -> usize {
        self.compact_at = 0;
        self.compact(now);
        self.withdrawn.len()
    }
}

/// A decision in CrowdSec's JSON (`models.Decision`).
#[derive(Debug, Serialize)]
struct Out<'a> {
    duration: String,
    id: i64,
    origin: &'static str,
    scenario: &'a str,
    scope: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: String,
}

/// `GET /v1/decisions/stream`'s answer (`models.DecisionsStreamResponse`).
#[derive(Debug, Default, Serialize)]
struct Stream<'a> {
    deleted: Vec<Out<'a>>,
    new: Vec<Out<'a>>,
}

/// Seconds as Go's `time.Duration` prints them (`3h59m50s`, `1m0s`, `0s`):
/// every bouncer parses durations with `time.ParseDuration`.
pub fn go_duration(secs: i64) -> String {
    if secs <= 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}
