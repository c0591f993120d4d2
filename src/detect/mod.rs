//! The detect stage: events in, [`Decision`]s out.
//!
//! A [`Jail`] is a filter, a key (what is counted per), and a counter (matches
//! in a sliding window, or distinct values of a field). It fires on the event
//! that brings a key to the threshold within `findtime`, judged by the event
//! times in the log, so `replay` and the daemon decide identically.
//!
//! Memory per tracked address: 40 bytes in the map (48 counting distinct
//! values: a 16-byte key and a 24- or 32-byte counter holding up to two
//! one-second buckets, or one value, inline) plus hashbrown's control byte
//! and load-factor slack; a key with matches in more than two distinct
//! seconds inside its window adds 8 bytes a second on the heap (at most
//! `maxretry` seconds, as the jail fires at `maxretry`). Text keys (API key
//! ids) are held as 16-byte fingerprints in an `FpTable` (at most 5/8 full),
//! never as text. See the README's benchmark for measured totals.

mod evidence;
pub mod filter;
pub mod fingerprint;
mod fptable;
pub mod jail;
mod tracker;
pub mod window;

pub use filter::{Filter, FilterConfig};
pub use jail::{JailConfig, Severity, TargetKind};

use crate::parse::addr::{NetSet, key_to_net, masked_key};
use crate::parse::{Event, FieldRef, Millis, StdField, Wanted};
use evidence::EvidenceRing;
use fingerprint::TextKey;
use foldhash::fast::RandomState;
use hashbrown::HashMap;
use ipnet::IpNet;
use serde::Serialize;
use std::fmt::Write;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tracker::{KeyMap, Tracker};
use window::{Counter, DistinctValues, SlidingWindow};

/// A jail with defaults applied and names resolved, ready to compile.
#[derive(Debug, Clone)]
pub struct JailSpec {
    pub name: String,
    pub filter: FilterConfig,
    /// One or two of: `client`, `api_key`, any field name.
    pub key: Vec<String>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub maxretry: u32,
    pub findtime: Duration,
    pub bantime: Duration,
    pub distinct: Option<String>,
    pub target: TargetKind,
    pub severity: Severity,
    pub max_tracked: usize,
    /// Also counted across the fleet (`scope = "fleet"`).
    pub fleet: bool,
}

/// Who or what a decision acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    /// An address (/32, /128) or a prefix.
    Address(IpNet),
    /// An API key id.
    Key(String),
}

impl Target {
    /// Parses what an operator types: an address, a CIDR, or `key:ID`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(k) = s.strip_prefix("key:") {
            if k.is_empty() {
                return Err("empty key id".into());
            }
            return Ok(Target::Key(k.to_string()));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Target::Address(IpNet::from(ip.to_canonical())));
        }
        match s.parse::<IpNet>() {
            Ok(net) => Ok(Target::Address(crate::parse::addr::canonical_net(net))),
            Err(_) => Err(format!("`{s}` is not an address, a CIDR, or `key:ID`")),
        }
    }

    /// Whether this target lies inside `other` (an address inside a CIDR, or equal).
    pub fn within(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Address(a), Target::Address(b)) => b.contains(a),
            (a, b) => a == b,
        }
    }
}

impl Target {
    /// The target as the CLI takes it back (`203.0.113.5`, `key:ID`), raw:
    /// quote it with [`crate::text::shell_quote`] before printing a command.
    pub fn arg(&self) -> String {
        match self {
            Target::Key(k) => format!("key:{k}"),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            Target::Address(n) => write!(f, "{n}"),
            Target::Key(k) => write!(f, "key:{}", k.escape_debug()),
        }
    }
}

/// Whether key id `k` is in `ignore_keys`. Compared ASCII-case-insensitively,
/// the way nginx's `map` (the usual enforcement point) compares strings: a
/// revocation of `KEY_ADMIN` there also blocks `key_admin`.
pub fn key_allowlisted(ignore_keys: &[String], k: &str) -> bool {
    ignore_keys.iter().any(|i| i.eq_ignore_ascii_case(k))
}

/// Where a line came from, for evidence.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// Index into the driver's list of source names.
    pub source: u32,
    /// Byte offset of the line's start in its file.
    pub offset: u64,
}

/// A log line kept as evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub source: u32,
    pub offset: u64,
    pub line: String,
    /// The line's client, for enrichment (not shown: the line has it).
    #[serde(skip)]
    pub client: Option<std::net::IpAddr>,
    /// Country and network of the client, with `[geoip]`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "geo_info")]
    pub geo: Option<Arc<crate::enrich::Enriched>>,
}

/// A jail fired.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub jail: Arc<str>,
    pub target: Target,
    /// The counted key as text (differs from the target for composite keys).
    pub key: String,
    /// Event time of the line that crossed the threshold.
    pub time: Millis,
    /// Oldest match still inside the window (second resolution).
    pub first_seen: Millis,
    /// Matches (or distinct values) inside the window.
    pub count: u32,
    pub severity: Severity,
    #[serde(with = "secs")]
    pub bantime: Duration,
    /// The most recent matching lines of this key, oldest first.
    pub evidence: Vec<Evidence>,
}

fn geo_info<S: serde::Serializer>(
    g: &Option<Arc<crate::enrich::Enriched>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    g.as_ref().map(|g| &g.info).serialize(s)
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// Counters a jail exposes to `replay` and `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JailStats {
    pub matches: u64,
    pub decisions: u64,
    /// Matches from allowlisted addresses or keys.
    pub ignored: u64,
    /// Matches of a key that already fired and is still banned.
    pub suppressed: u64,
    /// Matches without the key's fields (e.g. no API key on the line).
    pub keyless: u64,
    /// Events not looked at because a `[geoip]` database the jail reads is
    /// not loaded (missing or broken): without it, "no country" would read
    /// as "not in that country".
    pub no_database: u64,
    pub tracked: usize,
    pub evicted: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum KeyPart {
    Client,
    Field(FieldRef),
}

/// A client address masked to the jail's prefix (IPv4 in IPv4-mapped form):
/// a fixed-size key, never a hash. Two `u64`s, not a `u128`, so map entries
/// are 8-byte aligned (a `u128` would pad every entry to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey([u64; 2]);

impl tracker::Key for AddrKey {
    type Map<C: Default + 'static> = HashMap<AddrKey, C, RandomState>;
}

impl AddrKey {
    fn new(masked: u128) -> AddrKey {
        AddrKey([(masked >> 64) as u64, masked as u64])
    }

    fn bytes(&self) -> [u8; 16] {
        ((self.0[0] as u128) << 64 | self.0[1] as u128).to_be_bytes()
    }
}

const QUIET_SWEEP_MIN: usize = 100_000;

/// Per-jail state, for one key type.
#[derive(Debug)]
struct Keyed<K: tracker::Key, C: Default + 'static> {
    tracker: Tracker<K, C>,
    /// Keys that fired, until when (event second): not fired again meanwhile.
    quiet: K::Map<u32>,
    /// Size of `quiet` at which keys whose ban ran out are swept; doubled
    /// after a sweep that frees little, so a million live bans cost O(1)
    /// amortised per new ban, not a scan each.
    quiet_sweep_at: usize,
}

impl<K: tracker::Key, C: Counter + 'static> Keyed<K, C> {
    fn new(max_tracked: usize, findtime: u32) -> Keyed<K, C> {
        Keyed {
            tracker: Tracker::new(max_tracked, findtime),
            quiet: Default::default(),
            quiet_sweep_at: QUIET_SWEEP_MIN,
        }
    }
}

/// Keys are addresses (the common, compact case) or text; counters count
/// matches or distinct values.
#[derive(Debug)]
enum State {
    Addr(Keyed<AddrKey, SlidingWindow>),
    AddrDistinct(Keyed<AddrKey, DistinctValues>),
    Text(Keyed<TextKey, SlidingWindow>),
    TextDistinct(Keyed<TextKey, DistinctValues>),
}

impl State {
    fn new(by_addr: bool, distinct: bool, max_tracked: usize, findtime: u32) -> State {
        match (by_addr, distinct) {
            (true, false) => State::Addr(Keyed::new(max_tracked, findtime)),
            (true, true) => State::AddrDistinct(Keyed::new(max_tracked, findtime)),
            (false, false) => State::Text(Keyed::new(max_tracked, findtime)),
            (false, true) => State::TextDistinct(Keyed::new(max_tracked, findtime)),
        }
    }

    fn by_addr(&self) -> bool {
        matches!(self, State::Addr(_) | State::AddrDistinct(_))
    }

    /// Asks for a text key's entries to be brought into the cache, without
    /// waiting for them.
    fn prefetch(&self, key: &TextKey) {
        match self {
            State::Text(k) => k.tracker.prefetch(key),
            State::TextDistinct(k) => k.tracker.prefetch(key),
            _ => {}
        }
    }

    fn sizes(&self) -> (usize, u64) {
        match self {
            State::Addr(k) => (k.tracker.len(), k.tracker.evicted),
            State::AddrDistinct(k) => (k.tracker.len(), k.tracker.evicted),
            State::Text(k) => (k.tracker.len(), k.tracker.evicted),
            State::TextDistinct(k) => (k.tracker.len(), k.tracker.evicted),
        }
    }
}

/// A compiled jail with its state.
#[derive(Debug)]
pub struct Jail {
    pub name: Arc<str>,
    filter: Filter,
    parts: Vec<KeyPart>,
    v4: u8,
    v6: u8,
    threshold: u32,
    distinct: Option<FieldRef>,
    /// The distinct values are regions, which nest (`fingerprint::nested`).
    nested: bool,
    findtime: u32,
    bantime: Duration,
    target: TargetKind,
    severity: Severity,
    state: State,
    ring: EvidenceRing,
    stats: JailStats,
    fleet: bool,
    /// Jails with the same key parts and prefixes share a class (set by
    /// [`Detector::new`]): their text keys are equal for every event.
    key_class: u32,
    /// The `[geoip]` databases whose fields the jail reads (bits of
    /// `enrich::geo::Role::bit`).
    geo_needs: u8,
    /// The key part a key target revokes (see [`Jail::revoked_part`]).
    revoked: Option<usize>,
}

impl Jail {
    /// Compiles a jail, registering the fields it reads in `wanted`.
    pub fn compile(spec: &JailSpec, wanted: &mut Wanted) -> Jail {
        let filter = Filter::compile(&spec.filter, wanted);
        let parts: Vec<KeyPart> = spec
            .key
            .iter()
            .map(|k| match k.as_str() {
                "client" => KeyPart::Client,
                name => KeyPart::Field(wanted.field(name)),
            })
            .collect();
        wanted.add_std(StdField::Client);
        let distinct = spec.distinct.as_deref().map(|d| wanted.field(d));
        let findtime = spec.findtime.as_secs().clamp(1, u32::MAX as u64) as u32;
        let by_addr = matches!(parts.as_slice(), [KeyPart::Client]);
        let revoked = Jail::revoked_part(&parts);
        let state = State::new(by_addr, distinct.is_some(), spec.max_tracked, findtime);
        Jail {
            name: spec.name.as_str().into(),
            filter,
            parts,
            v4: spec.ipv4_prefix,
            v6: spec.ipv6_prefix,
            threshold: spec.maxretry.max(1),
            nested: distinct == Some(FieldRef::Std(StdField::Region)),
            distinct,
            findtime,
            bantime: spec.bantime,
            target: spec.target,
            severity: spec.severity,
            state,
            ring: EvidenceRing::new(128),
            stats: JailStats::default(),
            fleet: spec.fleet,
            key_class: 0,
            revoked,
            geo_needs: spec
                .filter
                .field_names()
                .into_iter()
                .chain(spec.key.iter().map(String::as_str))
                .chain(spec.distinct.as_deref())
                .filter_map(crate::enrich::geo::role_of)
                .fold(0, |m, r| m | r.bit()),
        }
    }

    /// Takes over another jail's counting state (reload of an unchanged jail).
    pub fn take_state_from(&mut self, old: &mut Jail) {
        std::mem::swap(&mut self.state, &mut old.state);
        std::mem::swap(&mut self.ring, &mut old.ring);
        std::mem::swap(&mut self.stats, &mut old.stats);
    }

    /// Forgets that `target` fired, so it can fire again (after a manual unban).
    pub fn forget(&mut self, target: &Target) {
        let text = match target {
            Target::Address(net) => {
                let key = AddrKey::new(masked_key(net.addr(), self.v4, self.v6));
                match &mut self.state {
                    State::Addr(k) => KeyMap::remove(&mut k.quiet, &key),
                    State::AddrDistinct(k) => KeyMap::remove(&mut k.quiet, &key),
                    _ => {}
                };
                return;
            }
            Target::Key(k) => k.as_str(),
        };
        match &mut self.state {
            State::Text(k) => KeyMap::remove(&mut k.quiet, &fingerprint::of(text.as_bytes())),
            State::TextDistinct(k) => {
                KeyMap::remove(&mut k.quiet, &fingerprint::of(text.as_bytes()))
            }
            _ => {}
        };
    }

    pub fn stats(&self) -> JailStats {
        let (tracked, evicted) = self.state.sizes();
        JailStats {
            tracked,
            evicted,
            ..self.stats.clone()
        }
    }

    /// Writes the text key into `out`; `false` if a part is absent.
    fn text_key(&self, ev: &Event, out: &mut String, scratch: &mut String) -> bool {
        write_text_key(&self.parts, (self.v4, self.v6), ev, out, scratch)
    }

    /// The key's fingerprint on `ev` (`buf` is scratch: see [`make_hint`]).
    fn hint(&self, ev: &Event, buf: &mut String, scratch: &mut String) -> KeyHint {
        make_hint(
            self.key_class,
            &self.parts,
            (self.v4, self.v6),
            ev,
            buf,
            scratch,
        )
    }

    /// The key part a key target revokes: `api_key` when the key has it
    /// (`key = ["user_agent", "api_key"]` revokes the key, never a user
    /// agent a client chose); else the first part that is neither the client
    /// nor an enriched field (`["country", "consumer"]` revokes the
    /// consumer, not `US`); else, for a key of enriched fields only (`key =
    /// "asn"`, which the config lets only alert), the first of those.
    fn revoked_part(parts: &[KeyPart]) -> Option<usize> {
        let field = |p: &KeyPart| match p {
            KeyPart::Field(f) => Some(f.clone()),
            KeyPart::Client => None,
        };
        let enriched = |f: &FieldRef| matches!(f, FieldRef::Std(sf) if sf.is_enriched());
        parts
            .iter()
            .position(|p| field(p) == Some(FieldRef::Std(StdField::ApiKey)))
            .or_else(|| {
                parts
                    .iter()
                    .position(|p| field(p).is_some_and(|f| !enriched(&f)))
            })
            .or_else(|| parts.iter().position(|p| field(p).is_some()))
    }

    /// The target of a decision the fleet made on this jail's key text
    /// (`part|part` for a composite key, its parts escaped as in
    /// `text_key`): `None` when the text does not split into the key's parts
    /// (a host of an older version wrote it), rather than a guess.
    pub fn target_from_key_text(&self, text: &str) -> Option<Target> {
        let pieces: Vec<String> = if self.parts.len() == 1 {
            vec![text.to_string()]
        } else {
            split_key_text(text)?
        };
        if pieces.len() != self.parts.len() {
            return None;
        }
        match self.target {
            TargetKind::Address => {
                let i = self
                    .parts
                    .iter()
                    .position(|p| matches!(p, KeyPart::Client))?;
                Target::parse(&pieces[i]).ok()
            }
            TargetKind::Key => Some(Target::Key(pieces[self.revoked?].clone())),
        }
    }

    fn target_of(&self, ev: &Event, scratch: &mut String) -> Option<Target> {
        match self.target {
            TargetKind::Address => {
                let ip = ev.client?;
                Some(Target::Address(key_to_net(
                    masked_key(ip, self.v4, self.v6),
                    self.v4,
                    self.v6,
                )))
            }
            TargetKind::Key => self
                .revoked_value(ev, scratch)
                .map(|v| Target::Key(v.to_string())),
        }
    }

    /// The value a key target would revoke, on this event.
    fn revoked_value<'a>(&self, ev: &'a Event, scratch: &'a mut String) -> Option<&'a str> {
        let KeyPart::Field(f) = &self.parts[self.revoked?] else {
            return None;
        };
        ev.value(f, scratch)
    }
}

/// Writes the text key of `parts` into `out`; `false` if a part is absent.
fn write_text_key(
    parts: &[KeyPart],
    (v4, v6): (u8, u8),
    ev: &Event,
    out: &mut String,
    scratch: &mut String,
) -> bool {
    out.clear();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        match part {
            KeyPart::Client => match ev.client {
                Some(ip) => {
                    let _ = write!(out, "{}", key_to_net(masked_key(ip, v4, v6), v4, v6));
                }
                None => return false,
            },
            KeyPart::Field(f) => match ev.value(f, scratch) {
                // A composite key's parts are escaped (`\|`, `\\`), so that
                // the text splits back into them whatever a client wrote
                // (a user agent holding `|`); a lone part stays raw.
                Some(v) if parts.len() > 1 => {
                    for c in v.chars() {
                        if c == '|' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                }
                Some(v) => out.push_str(v),
                None => return false,
            },
        }
    }
    true
}

/// The jail of `which` whose text key is made ahead of counting: the first
/// text-keyed one, unless its key holds the time.
fn hinted_jail<'a>(jails: &'a [Jail], which: &[usize]) -> Option<&'a Jail> {
    let j = which.iter().find(|&&j| !jails[j].state.by_addr())?;
    Some(&jails[*j]).filter(|jail| hintable(&jail.parts))
}

/// Whether a key's text can be made before the event is counted: not when
/// it holds the time, which counting may still clamp (a time in the future).
fn hintable(parts: &[KeyPart]) -> bool {
    !parts.contains(&KeyPart::Field(FieldRef::Std(StdField::Time)))
}

/// How one key class's text key is made from an event, for threads that
/// parse lines for a [`Detector`]: they make each event's [`KeyHint`] while
/// the event is in their cache, and the counting thread only fetches the
/// entries (in a parallel replay, reading the key's text from the parsing
/// thread's memory cost the counting thread a tenth of its time).
#[derive(Debug, Clone)]
pub struct KeyPlan {
    class: u32,
    parts: Vec<KeyPart>,
    prefixes: (u8, u8),
}

impl KeyPlan {
    /// Sets `ev`'s key hint; `buf` and `scratch` are reused buffers.
    pub fn hint(&self, ev: &mut Event, buf: &mut String, scratch: &mut String) {
        let hint = make_hint(self.class, &self.parts, self.prefixes, ev, buf, scratch);
        ev.key_hint = Some(hint);
    }
}

/// The hint of `ev` for the key of `parts` in key class `class`: its text
/// fingerprinted (what every path that counts or prefetches a text key
/// makes, so they agree). The text is written into `buf` first, unless the
/// key is one field's text, which is its text as it stands (the usual
/// `key = "api_key"`: no copy); so `buf` holds nothing a caller may read.
fn make_hint(
    class: u32,
    parts: &[KeyPart],
    prefixes: (u8, u8),
    ev: &Event,
    buf: &mut String,
    scratch: &mut String,
) -> KeyHint {
    let fp = match parts {
        [KeyPart::Field(f)] => ev.value(f, scratch).map(|v| fingerprint::of(v.as_bytes())),
        _ => write_text_key(parts, prefixes, ev, buf, scratch)
            .then(|| fingerprint::of(buf.as_bytes())),
    };
    KeyHint { class, fp }
}

/// A composite key's text split into its parts (`\|` and `\\` unescaped);
/// `None` for a dangling escape.
fn split_key_text(text: &str) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut()?.push(chars.next()?),
            '|' => parts.push(String::new()),
            c => parts.last_mut()?.push(c),
        }
    }
    Some(parts)
}

/// An event's text key for one key class, made by [`Detector::prefetch`]
/// ahead of [`Detector::process`]: its fingerprint (`None`: the event lacks
/// a part of the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHint {
    class: u32,
    fp: Option<TextKey>,
}

/// Shared inputs of one `observe` call.
struct Seen<'a> {
    sec: u32,
    /// The distinct-counted field's value, for distinct jails.
    value: Option<TextKey>,
    /// The values are regions (`fingerprint::nested`).
    nested: bool,
    line: &'a [u8],
    origin: Origin,
    client: Option<std::net::IpAddr>,
    /// The key as bytes, to match evidence lines to it.
    ring_key: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    threshold: u32,
    findtime: u32,
    bantime: u32,
}

/// Lines a decision carries as evidence: the last matches of its key.
///
/// Only a match within this many of the threshold is copied into the ring:
/// a count grows by at most one a match (a window's new second, a distinct
/// value new to the key), so the last `EVIDENCE_LINES` matches before a
/// jail fires all had a count of at least `threshold - (EVIDENCE_LINES - 1)`,
/// and a line counted lower can never be among them. Under a steady load of
/// keys far below their threshold (an API key seen from one client), that
/// spares a copy of every line, and the ring keeps the lines that matter
/// for longer.
const EVIDENCE_LINES: usize = 5;

/// Counts one match for `key`; returns `(count, first_seen_sec)` when the jail fires.
fn observe<K: tracker::Key, C: Counter + 'static>(
    keyed: &mut Keyed<K, C>,
    ring: &mut EvidenceRing,
    key: &K,
    seen: &Seen,
    limits: Limits,
    stats: &mut JailStats,
) -> Option<(u32, u32)> {
    if keyed.quiet.len() > 0
        && let Some(&until) = keyed.quiet.get(key)
    {
        if seen.sec < until {
            stats.suppressed += 1;
            return None;
        }
        keyed.quiet.remove(key);
    }
    let counter = keyed.tracker.counter(key, seen.sec);
    let count = counter.add(seen.sec, seen.value, limits.findtime, seen.nested);
    if count.saturating_add(EVIDENCE_LINES as u32 - 1) >= limits.threshold {
        ring.record(seen.ring_key, seen.sec, seen.origin, seen.client, seen.line);
    }
    if count < limits.threshold {
        return None;
    }
    let first = counter.oldest();
    keyed.tracker.remove(key);
    if keyed.quiet.len() >= keyed.quiet_sweep_at {
        // Bounded: forget keys whose ban has run out.
        keyed.quiet.retain(|until| *until > seen.sec);
        keyed.quiet_sweep_at = (keyed.quiet.len() * 2).max(QUIET_SWEEP_MIN);
    }
    *keyed.quiet.get_or_default(key) = seen.sec.saturating_add(limits.bantime);
    Some((count, first))
}

/// What a fleet-scoped jail counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FleetKey {
    Addr(AddrKey),
    Text(String),
}

/// One match of a fleet-scoped jail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FleetMatch {
    pub jail: usize,
    pub key: FleetKey,
    pub sec: u32,
}

/// Runs every jail over events.
#[derive(Debug)]
pub struct Detector {
    pub jails: Vec<Jail>,
    /// Per key class: whether two or more text-keyed jails share it.
    shared_class: Vec<bool>,
    ignore: NetSet,
    ignore_keys: Vec<String>,
    key_buf: String,
    value_buf: String,
    scratch: String,
    /// Matches of fleet-scoped jails since the last take.
    fleet_matches: Vec<FleetMatch>,
}

impl Detector {
    /// Never counts these addresses from now on.
    pub fn set_ignore(&mut self, ignore: NetSet) {
        self.ignore = ignore;
    }

    pub fn new(mut jails: Vec<Jail>, ignore: NetSet, ignore_keys: Vec<String>) -> Detector {
        let mut classes: Vec<(Vec<KeyPart>, u8, u8)> = Vec::new();
        let mut text_jails: Vec<u32> = Vec::new();
        for j in &mut jails {
            let this = (j.parts.clone(), j.v4, j.v6);
            j.key_class = match classes.iter().position(|c| *c == this) {
                Some(i) => i as u32,
                None => {
                    classes.push(this);
                    text_jails.push(0);
                    (classes.len() - 1) as u32
                }
            };
            if !j.state.by_addr() {
                text_jails[j.key_class as usize] += 1;
            }
        }
        let shared_class = text_jails.iter().map(|&n| n > 1).collect();
        Detector {
            jails,
            shared_class,
            ignore,
            ignore_keys,
            key_buf: String::new(),
            value_buf: String::new(),
            scratch: String::new(),
            fleet_matches: Vec::new(),
        }
    }

    /// Matches of fleet-scoped jails since the last call.
    pub fn take_fleet_matches(&mut self) -> Vec<FleetMatch> {
        std::mem::take(&mut self.fleet_matches)
    }

    /// The text of a fleet key, as the fleet counters and targets name it.
    pub fn fleet_key_text(&self, m: &FleetMatch) -> String {
        match &m.key {
            FleetKey::Addr(k) => {
                let jail = &self.jails[m.jail];
                let full = (k.0[0] as u128) << 64 | k.0[1] as u128;
                key_to_net(full, jail.v4, jail.v6).to_string()
            }
            FleetKey::Text(t) => t.clone(),
        }
    }

    /// Like [`Detector::process`] for a line re-read after a restart: windows
    /// and "already fired" state are rebuilt, counters are left as they are
    /// (the line was counted in the run that first read it).
    pub fn process_warm(
        &mut self,
        which: &[usize],
        ev: &Event,
        line: &[u8],
        origin: Origin,
        out: &mut Vec<Decision>,
    ) {
        let saved: smallvec::SmallVec<[JailStats; 8]> =
            which.iter().map(|&j| self.jails[j].stats.clone()).collect();
        let fleet = self.fleet_matches.len();
        self.process(which, ev, line, origin, out);
        for (&j, st) in which.iter().zip(saved) {
            self.jails[j].stats = st;
        }
        // Already counted in the fleet when first read.
        self.fleet_matches.truncate(fleet);
    }

    /// Readies `ev` for [`Detector::process`] by the jails `which`, a line or
    /// more ahead: builds its text key (for the first text-keyed jail's key
    /// class), keeps the fingerprint in the event, and asks the CPU to fetch
    /// the entries of that key, without waiting. Counts nothing.
    ///
    /// Why: a jail per API key holds more keys than a core's cache, so
    /// counting would wait for memory on nearly every line; fetched while
    /// the next line is parsed, the entry is there when it is counted.
    pub fn prefetch(&mut self, which: &[usize], ev: &mut Event) {
        let hint = match ev.key_hint {
            // Made by the thread that parsed the event.
            Some(hint) => hint,
            None => {
                let Some(jail) = hinted_jail(&self.jails, which) else {
                    return;
                };
                let hint = jail.hint(ev, &mut self.key_buf, &mut self.scratch);
                ev.key_hint = Some(hint);
                hint
            }
        };
        if let Some(fp) = hint.fp {
            for &o in which {
                if self.jails[o].key_class == hint.class {
                    self.jails[o].state.prefetch(&fp);
                }
            }
        }
    }

    /// What [`Detector::prefetch`] builds for the jails `which`: the text key
    /// of the first text-keyed jail (`None`: no jail has one).
    pub fn key_plan(&self, which: &[usize]) -> Option<KeyPlan> {
        let jail = hinted_jail(&self.jails, which)?;
        Some(KeyPlan {
            class: jail.key_class,
            parts: jail.parts.clone(),
            prefixes: (jail.v4, jail.v6),
        })
    }

    /// Feeds one event to the jails `which`; decisions are appended to `out`.
    pub fn process(
        &mut self,
        which: &[usize],
        ev: &Event,
        line: &[u8],
        origin: Origin,
        out: &mut Vec<Decision>,
    ) {
        let sec = (ev.time / 1000).clamp(0, u32::MAX as i64) as u32;
        // Jails keyed alike (two jails per API key) build the text key and
        // its fingerprint once per event: (key class, fingerprint or `None`
        // for an event without the key).
        let mut memo: Option<(u32, Option<TextKey>)> = None;
        // The key class whose text `key_buf` holds.
        let mut text_class: Option<u32> = None;
        for &j in which {
            let jail = &mut self.jails[j];
            if jail.geo_needs & ev.geo_missing != 0 {
                jail.stats.no_database += 1;
                continue;
            }
            if jail.filter.rejects_status(ev)
                || !jail.filter.matches_past_status(ev, &mut self.scratch)
            {
                continue;
            }
            jail.stats.matches += 1;
            let allowlisted = match jail.target {
                TargetKind::Address => ev.client.is_some_and(|ip| self.ignore.contains(ip)),
                // What would be revoked: the API key, or the part that
                // stands for it (`key = "consumer"`), as the ledger checks.
                TargetKind::Key => {
                    !self.ignore_keys.is_empty()
                        && jail
                            .revoked_value(ev, &mut self.scratch)
                            .is_some_and(|k| key_allowlisted(&self.ignore_keys, k))
                }
            };
            if allowlisted {
                jail.stats.ignored += 1;
                continue;
            }
            let value = match &jail.distinct {
                None => None,
                // Distinct clients are counted by the jail's prefixes: an IPv6
                // /64 (one subscriber) is one client, not 2^64 of them.
                Some(FieldRef::Std(StdField::Client)) => match ev.client {
                    Some(ip) => Some(fingerprint::of_addr(masked_key(ip, jail.v4, jail.v6))),
                    None => {
                        jail.stats.keyless += 1;
                        continue;
                    }
                },
                // Made once per distinct answer by the enrich stage.
                Some(FieldRef::Std(f @ (StdField::Region | StdField::Country))) => {
                    let fp = match f {
                        StdField::Region => ev.geo_fp[1],
                        _ => ev.geo_fp[0],
                    };
                    match fp {
                        Some(fp) => Some(fp),
                        None => {
                            jail.stats.keyless += 1;
                            continue;
                        }
                    }
                }
                Some(f) => match ev.value(f, &mut self.value_buf) {
                    Some(v) => Some(fingerprint::of(v.as_bytes())),
                    None => {
                        jail.stats.keyless += 1;
                        continue;
                    }
                },
            };
            let limits = Limits {
                threshold: jail.threshold,
                findtime: jail.findtime,
                bantime: jail.bantime.as_secs().min(u32::MAX as u64) as u32,
            };
            // Build the key before borrowing the state mutably.
            let by_addr = jail.state.by_addr();
            let addr_key = match ev.client {
                Some(ip) if by_addr => Some(AddrKey::new(masked_key(ip, jail.v4, jail.v6))),
                _ => None,
            };
            // A text key counts by its fingerprint; its text (in `key_buf`)
            // is made only when the fleet or a decision needs it.
            let text_fp = if by_addr {
                None
            } else {
                let class = jail.key_class;
                match memo {
                    Some((c, fp)) if c == class => fp,
                    _ => {
                        // Made (and its entries fetched) by `prefetch`.
                        let hinted = ev.key_hint.filter(|h| h.class == class);
                        let fp = match hinted {
                            Some(hint) => hint.fp,
                            None => jail.hint(ev, &mut self.key_buf, &mut self.scratch).fp,
                        };
                        if let Some(k) = fp
                            && hinted.is_none()
                            && self.shared_class[class as usize]
                        {
                            // Another jail counts this key too: fetch its
                            // entry now, so that the two cache misses
                            // overlap instead of following each other.
                            for &o in which.iter().filter(|&&o| o != j) {
                                if self.jails[o].key_class == class {
                                    self.jails[o].state.prefetch(&k);
                                }
                            }
                        }
                        memo = Some((class, fp));
                        fp
                    }
                }
            };
            let jail = &mut self.jails[j];
            if addr_key.is_none() && text_fp.is_none() {
                jail.stats.keyless += 1;
                continue;
            }
            let mut key_text = |jail: &Jail, buf: &mut String, scratch: &mut String| {
                if text_class != Some(jail.key_class) {
                    jail.text_key(ev, buf, scratch);
                    text_class = Some(jail.key_class);
                }
            };
            if jail.fleet {
                let key = match addr_key {
                    // Formatted later, once per distinct key (see `fleet_key_text`).
                    Some(k) if by_addr => FleetKey::Addr(k),
                    _ => {
                        key_text(jail, &mut self.key_buf, &mut self.scratch);
                        FleetKey::Text(self.key_buf.clone())
                    }
                };
                self.fleet_matches.push(FleetMatch { jail: j, key, sec });
            }
            // Evidence lines are matched to their key by these bytes.
            let ring_key: [u8; 16] = match (addr_key, text_fp) {
                (Some(k), _) if by_addr => k.bytes(),
                (_, Some(fp)) => fp.bytes(),
                _ => unreachable!("checked above"),
            };
            let seen = Seen {
                sec,
                value,
                nested: jail.nested,
                line,
                origin,
                client: ev.client,
                ring_key: &ring_key,
            };
            let (ring, stats) = (&mut jail.ring, &mut jail.stats);
            let fired = match (&mut jail.state, addr_key, text_fp) {
                (State::Addr(k), Some(key), _) => observe(k, ring, &key, &seen, limits, stats),
                (State::AddrDistinct(k), Some(key), _) => {
                    observe(k, ring, &key, &seen, limits, stats)
                }
                (State::Text(k), _, Some(key)) => observe(k, ring, &key, &seen, limits, stats),
                (State::TextDistinct(k), _, Some(key)) => {
                    observe(k, ring, &key, &seen, limits, stats)
                }
                _ => unreachable!("the key matches the state"),
            };
            let Some((count, first)) = fired else {
                continue;
            };
            let Some(target) = jail.target_of(ev, &mut self.scratch) else {
                jail.stats.keyless += 1;
                continue;
            };
            jail.stats.decisions += 1;
            let key = if by_addr {
                target.to_string()
            } else {
                key_text(jail, &mut self.key_buf, &mut self.scratch);
                self.key_buf.clone()
            };
            out.push(Decision {
                jail: jail.name.clone(),
                target,
                key,
                time: ev.time,
                first_seen: first as i64 * 1000,
                count,
                severity: jail.severity,
                bantime: jail.bantime,
                evidence: jail.ring.take_for(&ring_key, first, EVIDENCE_LINES),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(key: &[&str], target: TargetKind) -> Jail {
        Jail::compile(&spec(key, target), &mut Wanted::default())
    }

    fn spec(key: &[&str], target: TargetKind) -> JailSpec {
        JailSpec {
            name: "j".into(),
            filter: FilterConfig::default(),
            key: key.iter().map(|k| k.to_string()).collect(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            maxretry: 3,
            findtime: Duration::from_secs(60),
            bantime: Duration::from_secs(60),
            distinct: None,
            target,
            severity: Severity::Medium,
            max_tracked: 100,
            fleet: true,
        }
    }

    /// A detector of the one jail `spec` compiles to, and an event of its fields.
    fn one_jail(spec: JailSpec, ignore_keys: Vec<String>) -> (Detector, Event, Wanted) {
        let mut wanted = Wanted::default();
        let j = Jail::compile(&spec, &mut wanted);
        let d = Detector::new(vec![j], NetSet::default(), ignore_keys);
        (d, Event::new(&wanted), wanted)
    }

    /// `ignore_keys` spares what a key target would revoke, whichever part
    /// of the key that is (here a `consumer` field, the event having no
    /// API key at all), as the ledger does: replay must not print a
    /// revocation the daemon would refuse.
    #[test]
    fn ignore_keys_spares_the_revoked_part() {
        let (mut d, mut ev, mut wanted) = one_jail(
            JailSpec {
                maxretry: 1,
                ..spec(&["consumer"], TargetKind::Key)
            },
            vec!["C1".into()],
        );
        let consumer = wanted.field("consumer");
        let mut out = Vec::new();
        for (who, fires) in [("c1", false), ("c2", true)] {
            ev.clear();
            let FieldRef::Extra(id) = consumer else {
                panic!("an extra field")
            };
            ev.set_extra_with(id, |b| b.push_str(who));
            ev.time = 1_000;
            out.clear();
            d.process(&[0], &ev, b"line", Origin::default(), &mut out);
            assert_eq!(out.len(), fires as usize, "{who}");
        }
        assert_eq!(d.jails[0].stats().ignored, 1);
    }

    /// A decision carries the last five lines of its key, however many
    /// lines of other keys (each far below the threshold) matched since:
    /// only lines within five of the threshold take a place in the ring.
    /// Before, 128 one-line keys between pushed the evidence out.
    #[test]
    fn evidence_survives_a_flood_of_keys_far_below_the_threshold() {
        let (mut d, mut ev, _) = one_jail(
            JailSpec {
                maxretry: 20,
                max_tracked: 10_000,
                ..spec(&["api_key"], TargetKind::Key)
            },
            Vec::new(),
        );
        let mut out = Vec::new();
        let mut line = 0u64;
        let mut feed = |d: &mut Detector, key: &str, out: &mut Vec<Decision>| {
            ev.clear();
            ev.set_text(StdField::ApiKey, key);
            ev.time = 1_000_000;
            line += 1;
            let origin = Origin {
                source: 0,
                offset: line,
            };
            d.process(&[0], &ev, format!("{key} {line}").as_bytes(), origin, out);
        };
        for n in 0..19 {
            feed(&mut d, "victim", &mut out);
            // Between each of the victim's lines, a flood of fresh keys.
            for k in 0..200 {
                feed(&mut d, &format!("spoof{n}_{k}"), &mut out);
            }
        }
        assert!(out.is_empty());
        feed(&mut d, "victim", &mut out);
        assert_eq!(out.len(), 1);
        let lines: Vec<&str> = out[0].evidence.iter().map(|e| e.line.as_str()).collect();
        // The victim's 16th to 20th lines (every 201st line).
        let want: Vec<String> = (15..20)
            .map(|n| format!("victim {}", n * 201 + 1))
            .collect();
        assert_eq!(lines, want);
    }

    /// A key of one field is fingerprinted from the field's text as it
    /// stands, with no copy: the same fingerprint as the key's written text
    /// (what decisions and the fleet name), for text, typed and
    /// format-specific fields, and none when the field is absent.
    #[test]
    fn a_lone_field_key_hints_as_its_written_text() {
        let mut wanted = Wanted::default();
        let fields = [
            wanted.field("api_key"),
            wanted.field("status"),
            wanted.field("consumer"),
            wanted.field("user_agent"),
        ];
        let mut ev = Event::new(&wanted);
        ev.set_text(StdField::ApiKey, "key_8814d121");
        ev.status = Some(404);
        let FieldRef::Extra(id) = fields[2] else {
            panic!("an extra field")
        };
        ev.set_extra_with(id, |b| b.push_str("c|1"));
        let (mut buf, mut scratch) = (String::new(), String::new());
        for f in &fields {
            let parts = [KeyPart::Field(f.clone())];
            let hint = make_hint(0, &parts, (32, 64), &ev, &mut buf, &mut scratch);
            let mut text = String::new();
            let want = write_text_key(&parts, (32, 64), &ev, &mut text, &mut scratch)
                .then(|| fingerprint::of(text.as_bytes()));
            assert_eq!(hint.fp, want, "{f:?}");
            assert_eq!(hint.fp.is_some(), *f != fields[3], "{f:?}");
        }
    }

    /// A decision's evidence is the key's lines in the window that fired:
    /// a second decision does not reach back past it to lines the first
    /// left in the ring (a helper session's finding), nor does a first one
    /// to lines that fell out of the window before it filled.
    #[test]
    fn evidence_is_the_window_that_fired() {
        let (mut d, mut ev, _) = one_jail(
            JailSpec {
                maxretry: 3,
                findtime: Duration::from_secs(30),
                bantime: Duration::from_secs(30),
                ..spec(&["api_key"], TargetKind::Key)
            },
            Vec::new(),
        );
        let mut out = Vec::new();
        for (offset, sec) in [0u64, 40, 80, 200, 201, 202, 300, 301, 302]
            .into_iter()
            .enumerate()
        {
            ev.clear();
            ev.set_text(StdField::ApiKey, "k");
            ev.time = 1_000_000_000 + sec as i64 * 1000;
            let origin = Origin {
                source: 0,
                offset: offset as u64,
            };
            d.process(&[0], &ev, format!("at {sec}").as_bytes(), origin, &mut out);
        }
        let evidence: Vec<Vec<&str>> = out
            .iter()
            .map(|d| d.evidence.iter().map(|e| e.line.as_str()).collect())
            .collect();
        assert_eq!(
            evidence,
            [
                ["at 200", "at 201", "at 202"],
                ["at 300", "at 301", "at 302"]
            ]
        );
    }

    /// A key holding the time gets no key plan: counting may still clamp
    /// the time (one from the future), so its text is made only then.
    #[test]
    fn a_key_with_the_time_is_made_when_counted() {
        let with_time = jail(&["api_key", "time"], TargetKind::Key);
        let plain = jail(&["api_key"], TargetKind::Key);
        let d = Detector::new(vec![with_time, plain], NetSet::default(), Vec::new());
        assert!(d.key_plan(&[0]).is_none());
        assert!(d.key_plan(&[1]).is_some());
    }

    /// A key target revokes the API key whatever else the key holds (a
    /// user agent a client chose, a country), in any order; the fleet's
    /// decisions on a composite key's text do the same.
    #[test]
    fn key_targets_revoke_the_api_key_part() {
        let key = |t: Option<Target>| t.map(|t| t.to_string());
        for parts in [
            &["user_agent", "api_key"][..],
            &["api_key", "user_agent"],
            &["country", "api_key"],
            &["api_key", "country"],
        ] {
            let j = jail(parts, TargetKind::Key);
            let text = parts
                .iter()
                .map(|p| if *p == "api_key" { "victim" } else { "other" })
                .collect::<Vec<_>>()
                .join("|");
            assert_eq!(
                key(j.target_from_key_text(&text)),
                Some("key:victim".into()),
                "{parts:?}"
            );
        }
        // Other fields before enriched ones; enriched ones only when alone.
        assert_eq!(
            key(jail(&["country", "consumer"], TargetKind::Key).target_from_key_text("US|c1")),
            Some("key:c1".into())
        );
        assert_eq!(
            key(jail(&["asn"], TargetKind::Key).target_from_key_text("15169")),
            Some("key:15169".into())
        );
        // Parts are escaped: a user agent holding `|` (or `\`) still splits.
        let j = jail(&["user_agent", "api_key"], TargetKind::Key);
        assert_eq!(
            key(j.target_from_key_text(r"evil\|ua\\|victim")),
            Some("key:victim".into())
        );
        // An unescaped extra `|` (an older host's text) decides nothing.
        assert_eq!(j.target_from_key_text("evil|ua|victim"), None);
        // The text a jail makes of such a line splits back into its parts.
        let mut wanted = Wanted::default();
        wanted.add_std(StdField::UserAgent);
        wanted.add_std(StdField::ApiKey);
        let mut ev = Event::new(&wanted);
        ev.set_text(StdField::UserAgent, "evil|ua\\");
        ev.set_text(StdField::ApiKey, "victim");
        let (mut text, mut scratch) = (String::new(), String::new());
        assert!(j.text_key(&ev, &mut text, &mut scratch));
        assert_eq!(text, r"evil\|ua\\|victim");
        assert_eq!(
            key(j.target_from_key_text(&text)),
            Some("key:victim".into())
        );
        // Address targets take the client part.
        let j = jail(&["client", "api_key"], TargetKind::Address);
        assert_eq!(
            key(j.target_from_key_text("203.0.113.5/32|k")),
            Some("203.0.113.5".into())
        );
    }
}
