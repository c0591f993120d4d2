//! Positional text formats (nginx `log_format`, Envoy format strings) compiled
//! into a list of literals and variables, and matched by byte scanning.
//!
//! Every byte of a value may have been written by an attacker, so where a
//! value ends is decided by what the value can hold, not only by where the
//! next literal first appears. Each variable has a [`Shape`]:
//!
//! - a `Token` (numbers, addresses, methods) never holds a space;
//! - `$time_local` is exactly 26 bytes;
//! - a `List` is what nginx writes for retries and upstream groups
//!   (`0.000, 0.001 : 0.002`): items without spaces or commas, joined by `, `
//!   or ` : `, nothing else;
//! - a `Free` value (headers, `$remote_user`, URIs) may hold spaces and even
//!   the next literal; nginx never writes a raw `"` inside a value (`\x22`, or
//!   `\"` with `escape=json`), so a free value ends at the latest before the
//!   next raw quote.
//!
//! The line is matched left to right; where a free value could end at several
//! places, the first place from which the *rest of the line* matches the rest
//! of the format wins (bounded backtracking). A user name like `a [b` is read
//! whole, because `b [23/Nov/...` is not a time, and a trailing key id after an
//! upstream list stays the key id.
//!
//! Envoy and `escape=none` do not escape at all: there a line with more `"`
//! than the format has is refused as ambiguous rather than guessed at, since a
//! forged quote in X-Forwarded-For could otherwise move another address into
//! the client position. It can hide its own line, never frame another.

use super::addr::{NetSet, resolve_client};
use super::event::{Event, StdField, Wanted};
use super::scan::find_byte;
use super::time::{TimeCache, TimeShape};
use super::{ParseError, reason};
use memchr::memmem;
use smallvec::SmallVec;

/// How a format escapes its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// nginx default: `"`, `\` and non-printable bytes as `\xHH`.
    Nginx,
    /// nginx `escape=json`: JSON string escapes.
    Json,
    /// No escaping (nginx `escape=none`, Envoy text formats).
    None,
}

/// What a variable's value means.
#[derive(Clone, Debug, PartialEq)]
pub enum Var {
    /// The connecting peer's address (may be a chain; see `resolve_client`).
    Peer,
    Time(TimeShape),
    /// A full request line, split into method, path and protocol.
    Request,
    Status,
    Bytes,
    /// Request duration in seconds (nginx `$request_time`).
    RequestSeconds,
    /// Request duration in milliseconds (Envoy `%DURATION%`).
    RequestMillis,
    Text(StdField),
    /// A format-specific field, by name.
    Extra(String),
}

/// What bytes a variable's value can hold (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Token,
    ClfTime,
    List,
    Free,
}

/// nginx variables that hold lists when a request was retried or passed
/// through several upstream groups.
const LIST_VARS: &[&str] = &[
    "upstream_addr",
    "upstream_status",
    "upstream_response_time",
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_response_length",
    "upstream_bytes_received",
    "upstream_bytes_sent",
    "upstream_cache_status",
];

/// Variables (nginx, Envoy, Traefik) whose values never hold a space. Anything
/// not named here or in [`LIST_VARS`] is taken to be free text.
const TOKEN_VARS: &[&str] = &[
    "request_length",
    "bytes_sent",
    "remote_port",
    "server_port",
    "server_addr",
    "scheme",
    "connection",
    "connection_requests",
    "pipe",
    "msec",
    "request_id",
    "req_id",
    "ssl_protocol",
    "ssl_cipher",
    "request_completion",
    "gzip_ratio",
    "hostname",
    "pid",
    "realip_remote_addr",
    "realip_remote_port",
    "proxy_upstream_name",
    "proxy_alternative_upstream_name",
    "response_flags",
    "bytes_received",
    "duration",
    "upstream_host",
    "upstream_cluster",
    "protocol",
    "response_code_details",
    "request_count",
    "request_duration",
];

impl Var {
    pub fn shape(&self) -> Shape {
        match self {
            Var::Peer => Shape::List,
            Var::Time(TimeShape::Clf) => Shape::ClfTime,
            Var::Time(TimeShape::Iso8601 | TimeShape::EpochSeconds | TimeShape::EpochMillis) => {
                Shape::Token
            }
            Var::Time(_) => Shape::Free,
            Var::Status | Var::Bytes | Var::RequestSeconds | Var::RequestMillis => Shape::Token,
            Var::Text(StdField::Method | StdField::Protocol) => Shape::Token,
            Var::Request | Var::Text(_) => Shape::Free,
            Var::Extra(name) if LIST_VARS.contains(&name.as_str()) => Shape::List,
            Var::Extra(name) if TOKEN_VARS.contains(&name.as_str()) => Shape::Token,
            Var::Extra(_) => Shape::Free,
        }
    }
}

/// One piece of a format before compilation.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Literal(String),
    Var(Var),
}

#[derive(Debug)]
enum Seg {
    Lit {
        text: String,
        finder: Box<memmem::Finder<'static>>,
        head: Head,
    },
    Var(Slot, Shape),
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Peer,
    Time(TimeShape),
    Request,
    Status,
    Bytes,
    RequestSeconds,
    RequestMillis,
    Text(StdField),
    Extra(usize),
    /// Always read, since it may carry the client; kept as a field if wanted.
    ForwardedFor {
        keep: bool,
    },
    Skip,
}

/// A compiled positional format.
#[derive(Debug)]
pub struct Template {
    segs: Vec<Seg>,
    /// The one pass's plan (see [`Plan`]).
    plan: Plan,
    escape: Escape,
    /// `"` characters in the literals; more in a line means ambiguity.
    literal_quotes: usize,
    has_peer: bool,
    has_time: bool,
    /// Traefik 1.x writes an empty quoted field as a bare `-`.
    bare_dash: bool,
    /// Which of the request line's parts the jails read (request, method,
    /// path, protocol): the others are never copied or unescaped.
    request_parts: [bool; 4],
}

/// The one pass ([`Template::parse_fast`]) as decided at compile: the
/// format's leading literal, then per variable how its value ends and the
/// literal that must follow it. A line is then read with one dispatch a
/// field, where walking the segments matched each segment, looked at the
/// next one to learn how the value ends, and matched that literal again.
#[derive(Debug)]
struct Plan {
    lead: Option<Box<Lit>>,
    steps: Vec<Step>,
}

#[derive(Debug)]
struct Lit {
    text: Box<[u8]>,
    head: Head,
    finder: memmem::Finder<'static>,
}

#[derive(Debug)]
struct Step {
    slot: Slot,
    end: End,
    /// The literal after the value; `None` for a value ending the format.
    next: Option<Lit>,
}

/// How the one pass finds where a value ends: the first place its shape
/// and the following literal allow (what the backtracking matcher tries
/// first).
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// `$time_local`: 26 bytes, or a `-`.
    Clf,
    /// Up to the first space (or before the literal, when that does not
    /// start with a space and comes first).
    Token,
    /// A list of values (`0.1, 0.2 : 0.3`).
    List,
    /// Free text ending the format: the rest of the line, with no `"` in it.
    Rest,
    /// Free text before a literal starting with `"` (escaped formats): up
    /// to the first `"`, which nginx never writes raw inside a value.
    Quoted,
    /// Free text before another literal: its first occurrence, not past a `"`.
    Free,
}

impl Plan {
    fn of(segs: &[Seg], escape: Escape) -> Plan {
        let lit = |seg: Option<&Seg>| match seg {
            Some(Seg::Lit { text, finder, head }) => Some(Lit {
                text: text.as_bytes().into(),
                head: *head,
                finder: (**finder).clone(),
            }),
            _ => None,
        };
        let mut steps = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let Seg::Var(slot, shape) = seg else { continue };
            let next = lit(segs.get(i + 1));
            let end = match (shape, &next) {
                (Shape::ClfTime, _) => End::Clf,
                (Shape::Token, _) => End::Token,
                (Shape::List, _) => End::List,
                (Shape::Free, None) => End::Rest,
                (Shape::Free, Some(l)) if l.text[0] == b'"' && escape != Escape::Json => {
                    End::Quoted
                }
                (Shape::Free, Some(_)) => End::Free,
            };
            steps.push(Step {
                slot: *slot,
                end,
                next,
            });
        }
        Plan {
            lead: lit(segs.first()).map(Box::new),
            steps,
        }
    }
}

/// Where each variable of a line starts and ends, found before any field is
/// stored, so backtracking never has to undo a store.
struct Match<'a> {
    line: &'a str,
    b: &'a [u8],
    spans: SmallVec<[(u32, u32); 32]>,
    /// Split points left to try; a hostile line cannot make matching slow.
    budget: u32,
    /// The time and status as validated, so they are not parsed twice.
    time: Option<i64>,
    status: Option<u16>,
    /// Raw `"` positions (for `escape=json`, unescaped ones), found once:
    /// each split attempt asks where the next one is.
    quotes: Vec<u32>,
    /// Per literal segment, where it occurs in the line (overlaps included),
    /// listed on first use: each split attempt then asks for the next one
    /// by binary search, so a line costs a scan per literal, not per attempt.
    occurrences: Vec<Option<Vec<u32>>>,
}

impl Match<'_> {
    /// Where a free value starting at `from` must end at the latest.
    fn quote_limit(&self, from: usize) -> usize {
        let i = self.quotes.partition_point(|&q| (q as usize) < from);
        self.quotes.get(i).map_or(self.b.len(), |&q| q as usize)
    }

    /// The next occurrence at or after `at` of literal segment `seg`.
    fn find_lit(&mut self, seg: usize, finder: &memmem::Finder, at: usize) -> Option<usize> {
        let b = self.b;
        let occ = self.occurrences[seg].get_or_insert_with(|| {
            let mut out = Vec::new();
            let mut from = 0;
            while let Some(n) = finder.find(&b[from..]) {
                out.push((from + n) as u32);
                from += n + 1;
            }
            out
        });
        let i = occ.partition_point(|&o| (o as usize) < at);
        occ.get(i).map(|&o| o as usize)
    }
}

impl Template {
    /// The field names this format provides, for config validation.
    pub fn field_names(pieces: &[Piece]) -> Vec<String> {
        let mut names = vec!["client".to_string()];
        for p in pieces {
            match p {
                Piece::Literal(_) | Piece::Var(Var::Peer) => {}
                Piece::Var(Var::Time(_)) => names.push("time".into()),
                Piece::Var(Var::Request) => {
                    names.extend(["request", "method", "path", "protocol"].map(String::from))
                }
                Piece::Var(Var::Status) => names.push("status".into()),
                Piece::Var(Var::Bytes) => names.push("bytes".into()),
                Piece::Var(Var::RequestSeconds | Var::RequestMillis) => {
                    names.push("request_time".into())
                }
                Piece::Var(Var::Text(f)) => names.push(f.name().into()),
                Piece::Var(Var::Extra(n)) => names.push(n.clone()),
            }
        }
        names
    }

    /// Whether the format names the connecting peer (else the client comes
    /// from X-Forwarded-For's right-most hop; see `forwarded_for_has_peer`).
    pub fn pieces_have_peer(pieces: &[Piece]) -> bool {
        pieces.iter().any(|p| matches!(p, Piece::Var(Var::Peer)))
    }

    pub fn compile(pieces: &[Piece], escape: Escape, wanted: &Wanted) -> Result<Template, String> {
        let mut segs = Vec::with_capacity(pieces.len());
        let mut literal_quotes = 0;
        let (mut has_peer, mut has_time, mut has_xff) = (false, false, false);
        let mut prev_var = false;
        for p in pieces {
            match p {
                Piece::Literal(text) if text.is_empty() => continue,
                Piece::Literal(text) => {
                    literal_quotes += memchr::memchr_iter(b'"', text.as_bytes()).count();
                    let finder = Box::new(memmem::Finder::new(text.as_bytes()).into_owned());
                    segs.push(Seg::Lit {
                        text: text.clone(),
                        finder,
                        head: Head::of(text.as_bytes()),
                    });
                    prev_var = false;
                    continue;
                }
                Piece::Var(v) => {
                    if prev_var {
                        return Err("two variables follow each other with nothing between \
                                    them, so a line cannot be split into fields"
                            .into());
                    }
                    prev_var = true;
                    let slot = match v {
                        Var::Peer if has_peer => Slot::Skip,
                        Var::Peer => {
                            has_peer = true;
                            Slot::Peer
                        }
                        Var::Time(_) if has_time => Slot::Skip,
                        Var::Time(shape) => {
                            has_time = true;
                            Slot::Time(*shape)
                        }
                        // Typed values no jail reads are neither parsed nor
                        // stored (their shape still splits the line).
                        Var::Request if REQUEST_PARTS.iter().any(|f| wanted.has(*f)) => {
                            Slot::Request
                        }
                        Var::Request => Slot::Skip,
                        Var::Status => Slot::Status,
                        Var::Bytes if wanted.has(StdField::Bytes) => Slot::Bytes,
                        Var::RequestSeconds if wanted.has(StdField::RequestTime) => {
                            Slot::RequestSeconds
                        }
                        Var::RequestMillis if wanted.has(StdField::RequestTime) => {
                            Slot::RequestMillis
                        }
                        Var::Bytes | Var::RequestSeconds | Var::RequestMillis => Slot::Skip,
                        // Always read: it may carry the client address.
                        Var::Text(StdField::ForwardedFor) => {
                            has_xff = true;
                            Slot::ForwardedFor {
                                keep: wanted.has(StdField::ForwardedFor),
                            }
                        }
                        Var::Text(f) if wanted.has(*f) => Slot::Text(*f),
                        Var::Text(_) => Slot::Skip,
                        Var::Extra(name) => match wanted.extra_id(name) {
                            Some(id) => Slot::Extra(id),
                            None => Slot::Skip,
                        },
                    };
                    segs.push(Seg::Var(slot, v.shape()));
                }
            }
        }
        if !has_peer && !has_xff {
            return Err(
                "the format has no client address (nginx `$remote_addr`, Envoy \
                        `%DOWNSTREAM_REMOTE_ADDRESS%` or `%REQ(X-FORWARDED-FOR)%`)"
                    .into(),
            );
        }
        Ok(Template {
            plan: Plan::of(&segs, escape),
            segs,
            escape,
            literal_quotes,
            has_peer,
            has_time,
            bare_dash: false,
            request_parts: REQUEST_PARTS.map(|f| wanted.has(f)),
        })
    }

    /// Accepts a bare `-` where a quoted field stands (Traefik 1.x CLF).
    pub fn with_bare_dash(mut self) -> Template {
        self.bare_dash = true;
        self
    }

    /// Whether lines carry their own time (else the wrapper's time is needed).
    pub fn has_time(&self) -> bool {
        self.has_time
    }

    /// Where a free value starting at `from` must end at the latest: the first
    /// `"` that is not part of the value (nginx never writes a raw one).
    fn quote_limit(&self, b: &[u8], from: usize) -> usize {
        let mut at = from;
        loop {
            let Some(i) = find_byte(b'"', &b[at..]).map(|n| at + n) else {
                return b.len();
            };
            if self.escape == Escape::Json && escaped(b, from, i) {
                at = i + 1;
                continue;
            }
            return i;
        }
    }

    /// Checks the value `start..end` against what its slot can hold (cheap,
    /// and only for slots whose shape does not already decide it); keeps
    /// the parsed time and status.
    fn valid(slot: Slot, m: &mut Match, start: usize, end: usize, times: &mut TimeCache) -> bool {
        // Only a fixed-width time can cut inside a character.
        let Some(raw) = m.line.get(start..end) else {
            return false;
        };
        if raw == "-" || raw.is_empty() {
            return true;
        }
        match slot {
            Slot::Status => match parse_status(raw) {
                Ok(s) => {
                    m.status = Some(s);
                    true
                }
                Err(_) => false,
            },
            Slot::Time(shape) => match times.parse(raw, shape) {
                Some(t) => {
                    m.time = Some(t);
                    true
                }
                None => false,
            },
            _ => true,
        }
    }

    /// The longest end of a list starting at `from` (the first of
    /// [`Template::list_ends`], without the others); `None` when not even
    /// one item starts there, as `list_ends` then has none either.
    fn list_end(b: &[u8], from: usize, limit: usize) -> Option<usize> {
        let mut at = from;
        loop {
            let n = b[at..limit]
                .iter()
                .take_while(|c| !matches!(c, b' ' | b',' | b'"'))
                .count();
            if n == 0 {
                // `a, ` with nothing after the separator ends at `a`.
                return (at > from).then_some(at);
            }
            at += n;
            let rest = &b[at..limit];
            let sep = if starts_with(rest, b", ") {
                2
            } else if starts_with(rest, b" : ") {
                3
            } else {
                return Some(at);
            };
            if b[at + sep..limit]
                .first()
                .is_none_or(|c| matches!(c, b' ' | b',' | b'"'))
            {
                return Some(at);
            }
            at += sep;
        }
    }

    /// The ends a list starting at `from` can have, longest first.
    fn list_ends(b: &[u8], from: usize, limit: usize) -> SmallVec<[usize; 4]> {
        let item = |at: usize| {
            b[at..limit]
                .iter()
                .take_while(|c| !matches!(c, b' ' | b',' | b'"'))
                .count()
        };
        let mut ends = SmallVec::new();
        let mut at = from;
        loop {
            let n = item(at);
            if n == 0 {
                break;
            }
            at += n;
            ends.push(at);
            let sep = if b[at..limit].starts_with(b", ") {
                2
            } else if b[at..limit].starts_with(b" : ") {
                3
            } else {
                break;
            };
            at += sep;
        }
        ends.reverse();
        ends
    }

    /// Matches segments `seg..` from byte `pos`; records variable spans.
    fn go(&self, m: &mut Match, seg: usize, pos: usize, times: &mut TimeCache) -> bool {
        let b = m.b;
        let Some(s) = self.segs.get(seg) else {
            // Trailing fields after the format's end are allowed after a space.
            return pos == b.len() || b[pos] == b' ';
        };
        match s {
            Seg::Lit { text, .. } => self.lit(m, seg, pos, text, times),
            Seg::Var(slot, shape) => {
                let next = match self.segs.get(seg + 1) {
                    Some(Seg::Lit { text, finder, .. }) => Some((text, finder)),
                    _ => None,
                };
                let try_end = |m: &mut Match, end: usize, times: &mut TimeCache| {
                    if m.budget == 0 {
                        return false;
                    }
                    m.budget -= 1;
                    if !Template::valid(*slot, m, pos, end, times) {
                        return false;
                    }
                    m.spans[seg] = (pos as u32, end as u32);
                    self.go(m, seg + 1, end, times)
                };
                match (shape, next) {
                    (Shape::ClfTime, _) => {
                        let end = pos + 26;
                        end <= b.len()
                            && next.is_none_or(|(t, _)| b[end..].starts_with(t.as_bytes()))
                            && try_end(m, end, times)
                            || (b[pos..].starts_with(b"-") && try_end(m, pos + 1, times))
                    }
                    (Shape::Token, None) => {
                        let end = find_byte(b' ', &b[pos..]).map_or(b.len(), |n| pos + n);
                        try_end(m, end, times)
                    }
                    (Shape::Token, Some((text, finder))) => {
                        // A token ends at its first space at the latest (where a
                        // bare `-` may stand for a quoted field).
                        let limit = find_byte(b' ', &b[pos..]).map_or(b.len(), |n| pos + n);
                        let end = if text.starts_with(' ') {
                            limit
                        } else {
                            let window = (limit + finder.needle().len()).min(b.len());
                            finder.find(&b[pos..window]).map_or(limit, |n| pos + n)
                        };
                        try_end(m, end, times)
                    }
                    (Shape::List, next) => {
                        let limit = m.quote_limit(pos);
                        let mut ends = Template::list_ends(b, pos, limit);
                        if b[pos..].starts_with(b"-") && !ends.contains(&(pos + 1)) {
                            ends.push(pos + 1);
                        }
                        ends.into_iter().any(|end| {
                            next.is_none_or(|(t, _)| b[end..].starts_with(t.as_bytes()))
                                && try_end(m, end, times)
                        })
                    }
                    (Shape::Free, None) => {
                        let end = m.quote_limit(pos);
                        end == b.len() && try_end(m, end, times)
                    }
                    (Shape::Free, Some((text, finder))) => {
                        // A free value never holds a raw quote (module docs).
                        let limit = m.quote_limit(pos);
                        if text.starts_with('"') && self.escape != Escape::Json {
                            // A quoted field: it ends at that quote or nowhere.
                            return b[limit..].starts_with(text.as_bytes())
                                && try_end(m, limit, times);
                        }
                        let json_quote = self.escape == Escape::Json && text.starts_with('"');
                        let mut at = pos;
                        while let Some(end) = m.find_lit(seg + 1, finder, at) {
                            if end > limit || m.budget == 0 {
                                return false;
                            }
                            if !(json_quote && escaped(b, pos, end)) && try_end(m, end, times) {
                                return true;
                            }
                            at = end + 1;
                        }
                        false
                    }
                }
            }
        }
    }

    /// Matches literal segment `seg` (whose text is `text`) at `pos`.
    fn lit(
        &self,
        m: &mut Match,
        seg: usize,
        pos: usize,
        text: &str,
        times: &mut TimeCache,
    ) -> bool {
        if m.b[pos..].starts_with(text.as_bytes()) {
            return self.go(m, seg + 1, pos + text.len(), times);
        }
        self.bare_dash && self.dash_for_quoted(m, seg, pos, text, times)
    }

    /// Traefik 1.x: `... 200 45 - "agent"` where the format says `"$referer"`
    /// (also for several such fields in a row).
    fn dash_for_quoted(
        &self,
        m: &mut Match,
        seg: usize,
        pos: usize,
        open: &str,
        times: &mut TimeCache,
    ) -> bool {
        let (Some(Seg::Var(..)), Some(Seg::Lit { text: close, .. })) =
            (self.segs.get(seg + 1), self.segs.get(seg + 2))
        else {
            return false;
        };
        let (Some(head), Some(tail)) = (open.strip_suffix('"'), close.strip_prefix('"')) else {
            return false;
        };
        let b = m.b;
        let dash = pos + head.len();
        if !b[pos..].starts_with(head.as_bytes()) || b.get(dash) != Some(&b'-') {
            return false;
        }
        m.spans[seg + 1] = (dash as u32, dash as u32 + 1);
        self.lit(m, seg + 2, dash + 1, tail, times)
    }

    pub fn parse(
        &self,
        line: &str,
        ev: &mut Event,
        trusted: &NetSet,
        times: &mut TimeCache,
    ) -> Result<(), ParseError> {
        let b = line.as_bytes();
        if self.escape == Escape::None && memchr::memchr_iter(b'"', b).count() > self.literal_quotes
        {
            return Err(reason::AMBIGUOUS_QUOTES);
        }
        if let Some((peer, xff)) = self.parse_fast(line, ev, times) {
            return self.finish(ev, peer, xff, trusted);
        }
        self.parse_matched(line, ev, trusted, times)
    }

    /// [`Template::parse`] by the backtracking matcher alone (what a line
    /// the one pass cannot take goes through).
    fn parse_matched(
        &self,
        line: &str,
        ev: &mut Event,
        trusted: &NetSet,
        times: &mut TimeCache,
    ) -> Result<(), ParseError> {
        let b = line.as_bytes();
        ev.clear();
        let mut m = Match {
            line,
            b,
            spans: SmallVec::from_elem((0, 0), self.segs.len()),
            budget: 256 + b.len() as u32,
            time: None,
            status: None,
            quotes: memchr::memchr_iter(b'"', b)
                .filter(|&i| !(self.escape == Escape::Json && escaped(b, 0, i)))
                .map(|i| i as u32)
                .collect(),
            occurrences: vec![None; self.segs.len()],
        };
        if !self.go(&mut m, 0, 0, times) {
            return Err(if m.budget == 0 {
                reason::TOO_AMBIGUOUS
            } else {
                self.diagnose(line, times)
            });
        }
        let mut peer: Option<&str> = None;
        let mut xff: Option<&str> = None;
        for (seg, &(start, end)) in self.segs.iter().zip(m.spans.iter()) {
            let Seg::Var(slot, _) = seg else { continue };
            let raw = line
                .get(start as usize..end as usize)
                .ok_or(reason::FORMAT_MISMATCH)?;
            if raw == "-" || raw.is_empty() {
                // Counted at no time (1970, before) it would fall in no
                // window that matters; refused and counted under its reason.
                if let Slot::Time(_) = slot {
                    return Err(reason::BAD_TIME);
                }
                continue;
            }
            self.put(ev, *slot, raw, m.time, m.status, &mut peer, &mut xff)?;
        }
        self.finish(ev, peer, xff, trusted)
    }

    /// Stores one value of `slot` (neither `-` nor empty). `time` and
    /// `status` are what the caller parsed for those slots; the client's
    /// parts come back through `peer` and `xff`.
    #[allow(clippy::too_many_arguments)]
    fn put<'l>(
        &self,
        ev: &mut Event,
        slot: Slot,
        raw: &'l str,
        time: Option<i64>,
        status: Option<u16>,
        peer: &mut Option<&'l str>,
        xff: &mut Option<&'l str>,
    ) -> Result<(), ParseError> {
        match slot {
            Slot::Peer => *peer = Some(raw),
            Slot::ForwardedFor { keep } => {
                *xff = Some(raw);
                if keep {
                    self.store(ev, Target::Std(StdField::ForwardedFor), raw);
                }
            }
            Slot::Time(_) => ev.time = time.ok_or(reason::BAD_TIME)?,
            Slot::Request => self.split_request(ev, raw),
            Slot::Status => ev.status = Some(status.ok_or(reason::BAD_STATUS)?),
            Slot::Bytes => ev.bytes = raw.parse().ok(),
            Slot::RequestSeconds => ev.request_time = raw.parse().ok(),
            Slot::RequestMillis => ev.request_time = raw.parse::<f64>().ok().map(|ms| ms / 1000.0),
            Slot::Text(f) => self.store(ev, Target::Std(f), raw),
            Slot::Extra(id) => self.store(ev, Target::Extra(id), raw),
            Slot::Skip => {}
        }
        Ok(())
    }

    /// Sets the client from the peer and X-Forwarded-For values.
    fn finish(
        &self,
        ev: &mut Event,
        peer: Option<&str>,
        xff: Option<&str>,
        trusted: &NetSet,
    ) -> Result<(), ParseError> {
        ev.client = Some(match (self.has_peer, peer, xff) {
            (true, Some(p), x) => resolve_client(p, x, trusted)?,
            // Envoy's default format: the hop Envoy appended is the peer.
            (false, _, Some(x)) => resolve_client(x, None, trusted)?,
            _ => return Err(reason::NO_CLIENT),
        });
        Ok(())
    }

    /// The common case in one pass: every value ends at the first place its
    /// shape allows (what [`Template::go`] tries first), stored as it is
    /// found. `None` when that does not match, and the caller falls back to
    /// the backtracking matcher (after clearing the event).
    fn parse_fast<'l>(
        &self,
        line: &'l str,
        ev: &mut Event,
        times: &mut TimeCache,
    ) -> Option<(Option<&'l str>, Option<&'l str>)> {
        let b = line.as_bytes();
        let (mut peer, mut xff) = (None, None);
        let mut pos = 0;
        if let Some(lead) = &self.plan.lead {
            if !lead.head.starts(b, &lead.text) {
                return None;
            }
            pos = lead.text.len();
        }
        for step in &self.plan.steps {
            let next = step.next.as_ref();
            let end = match step.end {
                End::Clf if b[pos..].starts_with(b"-") => {
                    // A second time in the format (not read, so any 26 bytes
                    // pass): the matcher tries 26 bytes first.
                    if let Slot::Skip = step.slot {
                        return None;
                    }
                    pos + 1
                }
                End::Clf => pos + 26,
                End::Token => {
                    let limit = find_byte(b' ', &b[pos..]).map_or(b.len(), |n| pos + n);
                    match next {
                        Some(l) if l.text[0] != b' ' => {
                            let window = (limit + l.text.len()).min(b.len());
                            l.finder.find(&b[pos..window]).map_or(limit, |n| pos + n)
                        }
                        _ => limit,
                    }
                }
                // Items stop at any `"`, and what follows an item is checked for
                // one: the quote limit would not change the end, so it is not
                // searched for (the backtracking matcher still uses it).
                End::List => Template::list_end(b, pos, b.len())?,
                End::Rest => {
                    if self.quote_limit(b, pos) != b.len() {
                        return None;
                    }
                    b.len()
                }
                // A free value that is `-` (no user, no referer) right
                // before its literal: the first place the literal occurs.
                End::Quoted | End::Free
                    if b.get(pos) == Some(&b'-')
                        && next.is_some_and(|l| {
                            l.text[0] != b'-' && starts_with(&b[pos + 1..], &l.text)
                        }) =>
                {
                    pos + 1
                }
                End::Quoted => self.quote_limit(b, pos),
                End::Free => {
                    let l = next.expect("a free value before a literal");
                    let limit = self.quote_limit(b, pos);
                    let end = pos + l.finder.find(&b[pos..])?;
                    if end > limit
                        || (self.escape == Escape::Json
                            && l.text[0] == b'"'
                            && escaped(b, pos, end))
                    {
                        return None;
                    }
                    end
                }
            };
            if let Slot::Skip = step.slot {
                // Only a fixed-width time can cut inside a character.
                if step.end == End::Clf && !line.is_char_boundary(end) {
                    return None;
                }
            } else {
                let raw = line.get(pos..end)?;
                if raw == "-" || raw.is_empty() {
                    // A line without its time is refused (the matcher says why).
                    if let Slot::Time(_) = step.slot {
                        return None;
                    }
                } else {
                    // The slots every line has, stored here; `put` stores
                    // the others (a call with its arguments cost more than
                    // these).
                    match step.slot {
                        Slot::Peer => peer = Some(raw),
                        Slot::Time(shape) => ev.time = times.parse(raw, shape)?,
                        Slot::Status => ev.status = Some(parse_status(raw).ok()?),
                        slot => self
                            .put(ev, slot, raw, None, None, &mut peer, &mut xff)
                            .ok()?,
                    }
                }
            }
            pos = end;
            if let Some(l) = next {
                if !l.head.starts(&b[pos..], &l.text) {
                    return None;
                }
                pos += l.text.len();
            }
        }
        (pos == b.len() || b[pos] == b' ').then_some((peer, xff))
    }

    /// The reason a line that did not match is refused: a first-occurrence
    /// scan names the first typed field (time, status) that is invalid.
    fn diagnose(&self, line: &str, times: &mut TimeCache) -> ParseError {
        let b = line.as_bytes();
        let mut m = Match {
            line,
            b,
            spans: SmallVec::new(),
            budget: 0,
            time: None,
            status: None,
            quotes: Vec::new(),
            occurrences: Vec::new(),
        };
        let mut pos = 0;
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Lit { text, .. } => {
                    if !b[pos..].starts_with(text.as_bytes()) {
                        break;
                    }
                    pos += text.len();
                }
                Seg::Var(slot, shape) => {
                    let end = match (shape, self.segs.get(i + 1)) {
                        (Shape::ClfTime, _) => (pos + 26).min(b.len()),
                        (_, Some(Seg::Lit { finder, .. })) => match finder.find(&b[pos..]) {
                            Some(n) => pos + n,
                            None => break,
                        },
                        _ => find_byte(b' ', &b[pos..]).map_or(b.len(), |n| pos + n),
                    };
                    match slot {
                        Slot::Time(_) if !Template::valid(*slot, &mut m, pos, end, times) => {
                            return reason::BAD_TIME;
                        }
                        Slot::Status if !Template::valid(*slot, &mut m, pos, end, times) => {
                            return reason::BAD_STATUS;
                        }
                        Slot::Peer
                            if resolve_client(as_str(&b[pos..end]), None, &NetSet::default())
                                .is_err() =>
                        {
                            return reason::BAD_CLIENT;
                        }
                        _ => {}
                    }
                    pos = end;
                }
            }
        }
        reason::FORMAT_MISMATCH
    }

    fn split_request(&self, ev: &mut Event, raw: &str) {
        let [request, method, path, protocol] = self.request_parts;
        if request {
            ev.set_text(StdField::Request, raw);
        }
        if !(method || path || protocol) {
            return;
        }
        let Some((m, p, proto)) = super::event::split_request(raw) else {
            return;
        };
        if method {
            self.store(ev, Target::Std(StdField::Method), m);
        }
        if path {
            self.store(ev, Target::Std(StdField::Path), p);
        }
        if let Some(proto) = proto.filter(|_| protocol) {
            self.store(ev, Target::Std(StdField::Protocol), proto);
        }
    }

    #[inline]
    fn store(&self, ev: &mut Event, target: Target, raw: &str) {
        let escape = self.escape;
        let push = |buf: &mut String| unescape_into(raw, escape, buf);
        match target {
            Target::Std(f) => ev.set_text_with(f, push),
            Target::Extra(id) => ev.set_extra_with(id, push),
        }
    }
}

/// A literal of up to 8 bytes as one word, so that checking it at a place
/// in the line is one load and compare (most literals are 1-4 bytes: ` `,
/// `" "`, ` - `).
#[derive(Debug, Clone, Copy)]
struct Head {
    word: u64,
    mask: u64,
}

impl Head {
    fn of(lit: &[u8]) -> Head {
        let mut bytes = [0u8; 8];
        let n = lit.len().min(8);
        bytes[..n].copy_from_slice(&lit[..n]);
        Head {
            word: u64::from_le_bytes(bytes),
            mask: if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            },
        }
    }

    /// Whether `hay` starts with `lit` (this head's literal).
    #[inline]
    fn starts(&self, hay: &[u8], lit: &[u8]) -> bool {
        match hay.first_chunk::<8>() {
            Some(first) if lit.len() <= 8 => u64::from_le_bytes(*first) & self.mask == self.word,
            _ => starts_with(hay, lit),
        }
    }
}

/// `hay` starts with `lit`, compared inline: the format's literals are a few
/// bytes (`" `, ` - - [`), where a call to `memcmp` per literal per line
/// cost a tenth of parsing.
#[inline]
fn starts_with(hay: &[u8], lit: &[u8]) -> bool {
    hay.len() >= lit.len() && hay.iter().zip(lit).all(|(a, b)| a == b)
}

/// The fields taken from a request line, in `Template::request_parts` order.
const REQUEST_PARTS: [StdField; 4] = [
    StdField::Request,
    StdField::Method,
    StdField::Path,
    StdField::Protocol,
];

/// A span's text; a span cut inside a character (only a fixed-width time
/// can be) is no valid value.
fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

enum Target {
    Std(StdField),
    Extra(usize),
}

/// Whether the byte at `i` is preceded by an odd run of backslashes (within `from..i`).
fn escaped(b: &[u8], from: usize, i: usize) -> bool {
    let n = b[from..i].iter().rev().take_while(|&&c| c == b'\\').count();
    n % 2 == 1
}

/// Three digits, or Envoy's `0` (the client went away before a response).
pub(crate) fn parse_status(raw: &str) -> Result<u16, ParseError> {
    let b = raw.as_bytes();
    if b == b"0" {
        return Ok(0);
    }
    if b.len() != 3 || !b.iter().all(u8::is_ascii_digit) {
        return Err(reason::BAD_STATUS);
    }
    Ok((b[0] - b'0') as u16 * 100 + (b[1] - b'0') as u16 * 10 + (b[2] - b'0') as u16)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes a value into `out`. Bytes that do not form UTF-8 after decoding
/// become U+FFFD. Fast path: no backslash, plain copy.
pub fn unescape_into(raw: &str, escape: Escape, out: &mut String) {
    if escape == Escape::None || find_byte(b'\\', raw.as_bytes()).is_none() {
        out.push_str(raw);
        return;
    }
    let b = raw.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            bytes.push(b[i]);
            i += 1;
            continue;
        }
        match (escape, b[i + 1]) {
            (Escape::Nginx, b'x') => {
                match (
                    b.get(i + 2).copied().and_then(hex),
                    b.get(i + 3).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        bytes.push(h << 4 | l);
                        i += 4;
                    }
                    _ => {
                        bytes.push(b'\\');
                        i += 1;
                    }
                }
            }
            (Escape::Json, c) => {
                let simple = match c {
                    b'"' => Some(b'"'),
                    b'\\' => Some(b'\\'),
                    b'/' => Some(b'/'),
                    b'n' => Some(b'\n'),
                    b't' => Some(b'\t'),
                    b'r' => Some(b'\r'),
                    b'b' => Some(8),
                    b'f' => Some(12),
                    _ => None,
                };
                if let Some(s) = simple {
                    bytes.push(s);
                    i += 2;
                } else if c == b'u' && i + 6 <= b.len() {
                    let cp = raw
                        .get(i + 2..i + 6)
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                        .unwrap_or('\u{fffd}');
                    let mut tmp = [0u8; 4];
                    bytes.extend_from_slice(cp.encode_utf8(&mut tmp).as_bytes());
                    i += 6;
                } else {
                    bytes.push(b'\\');
                    i += 1;
                }
            }
            _ => {
                bytes.push(b'\\');
                i += 1;
            }
        }
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_end_is_the_longest_of_list_ends() {
        for line in [
            "1.2.3.4, 5.6.7.8 - x",
            "1.2.3.4,5.6.7.8 x",
            "a, b, c\" z",
            "a, , b",
            "a,  b",
            "a : b : c d",
            "a, ",
            "a,",
            ", a",
            "",
            "\"x",
            "a : ",
            " a",
            ",a",
        ] {
            let b = line.as_bytes();
            let limit = b.iter().position(|&c| c == b'"').unwrap_or(b.len());
            let want = Template::list_ends(b, 0, limit).first().copied();
            assert_eq!(Template::list_end(b, 0, limit), want, "{line:?}");
        }
    }

    #[test]
    fn nginx_hex_escapes() {
        let mut s = String::new();
        unescape_into(r"a\x22b\x5Cc\xZZ\x4", Escape::Nginx, &mut s);
        assert_eq!(s, "a\"b\\c\\xZZ\\x4");
        s.clear();
        unescape_into(r#"say \"hi\" \u00e9\n"#, Escape::Json, &mut s);
        assert_eq!(s, "say \"hi\" é\n");
        s.clear();
        unescape_into(r"\xC3\xA9", Escape::Nginx, &mut s);
        assert_eq!(s, "é");
    }

    /// The one pass ([`Template::parse_fast`], with its shortcuts) must
    /// read every line exactly as the backtracking matcher does: the same
    /// fields, or the same refusal. Lines are the formats' own with hostile
    /// bytes spliced in at every place.
    #[test]
    fn one_pass_reads_as_the_matcher_does() {
        use crate::parse::{envoy, nginx};
        let api = "log_format a '$remote_addr - $remote_user [$time_local] \"$request\" $status \
                   $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length \
                   $request_time $upstream_response_time $http_x_api_key_id';";
        let two_times =
            "log_format t '$remote_addr [$time_local] [$time_local] $http_x_api_key_id';";
        let json = r#"log_format j escape=json '{"ip":"$remote_addr","u":"$remote_user","r":"$request","s":$status,"ua":"$http_user_agent","up":"$upstream_addr","t":"$time_local"}';"#;
        let mut formats = Vec::new();
        for (f, base) in [
            (
                api,
                r#"10.2.34.211 - - [18/Nov/2026:11:06:40 +0000] "GET /v1/orders?q=a+b HTTP/1.1" 200 2589 "-" "python-requests/2.31.0" 386 0.788 0.788, 0.001 key_8814d121"#,
            ),
            (
                json,
                r#"{"ip":"10.0.0.1","u":"-","r":"GET / HTTP/1.1","s":200,"ua":"curl/8","up":"10.0.0.2:80, 10.0.0.3:80","t":"18/Nov/2026:11:06:40 +0000"}"#,
            ),
            (
                two_times,
                "1.2.3.4 [22/Nov/2026:08:00:00 +0000] [-] AAAAAAAAAAAAAAAAAAAAAAA] key_b",
            ),
        ] {
            let (pieces, escape) = nginx::compile(f, Escape::Nginx, "http_x_api_key_id").unwrap();
            formats.push((pieces, escape, base.to_string()));
        }
        let envoy_line = r#"[2026-11-18T11:06:40.000Z] "GET /v1/x HTTP/1.1" 200 - 0 12 3 2 "203.0.113.7" "curl/8" "id-1" "api.example" "10.0.0.2:80" key_1"#;
        formats.push((
            envoy::compile(envoy::DEFAULT, "x-api-key-id").unwrap(),
            Escape::None,
            envoy_line.to_string(),
        ));
        let hostile = [
            "-", " ", "\"", "\\", " [", "] ", "- ", ", ", " : ", "é", "\\x22", "-\"",
        ];
        let mut wanted = Wanted::all();
        wanted.field("upstream_response_time");
        wanted.field("upstream_addr");
        let (mut times, trusted) = (TimeCache::default(), NetSet::default());
        let mut checked = 0;
        for (pieces, escape, base) in &formats {
            let t = Template::compile(pieces, *escape, &wanted).unwrap();
            let mut lines = vec![base.clone()];
            for at in (0..=base.len()).filter(|&i| base.is_char_boundary(i)) {
                for h in hostile {
                    lines.push(format!("{}{h}{}", &base[..at], &base[at..]));
                    // Replacing a byte, too (a `-` value, a lost space).
                    if let Some(c) = base[at..].chars().next() {
                        let rest = &base[at + c.len_utf8()..];
                        lines.push(format!("{}{h}{rest}", &base[..at]));
                    }
                }
            }
            for line in &lines {
                let (mut fast, mut slow) = (Event::new(&wanted), Event::new(&wanted));
                let a = t.parse(line, &mut fast, &trusted, &mut times);
                if a == Err(reason::AMBIGUOUS_QUOTES) {
                    // Refused before either matcher runs.
                    continue;
                }
                let b = t.parse_matched(line, &mut slow, &trusted, &mut times);
                assert_eq!(a, b, "{line}");
                if a.is_ok() {
                    assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{line}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "only {checked} lines parsed");
    }

    #[test]
    fn a_literal_head_compares_as_the_bytes_do() {
        let hays: [&[u8]; 6] = [
            b"",
            b" - - [x",
            b" - - [10/Oct",
            b"\" \"abcdefgh",
            b"\xff\x00 ",
            b" ",
        ];
        for lit in [
            &b" "[..],
            b" - ",
            b"\" \"",
            b"] \"",
            b" - - [",
            b"12345678",
            b"123456789",
            b"\x00",
        ] {
            let head = Head::of(lit);
            for hay in hays {
                for cut in 0..=hay.len() {
                    let h = &hay[cut..];
                    assert_eq!(head.starts(h, lit), h.starts_with(lit), "{lit:?} {h:?}");
                }
                let mut longer = lit.to_vec();
                longer.extend_from_slice(hay);
                assert!(head.starts(&longer, lit), "{lit:?} {longer:?}");
            }
        }
    }

    #[test]
    fn status_is_three_digits() {
        assert_eq!(parse_status("404"), Ok(404));
        assert!(parse_status("4040").is_err());
        assert!(parse_status("4x4").is_err());
    }
}
