//! The event: what one access-log line says, in typed fields.
//!
//! An [`Event`] is reused from line to line: text fields are copied (and
//! unescaped) into one internal buffer and referenced by span, so parsing a
//! line allocates nothing once the buffer has grown to the longest line.

use std::net::IpAddr;

/// A field every format can provide. Names are what the config uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StdField {
    Time,
    Client,
    Method,
    Path,
    Protocol,
    Status,
    Bytes,
    UserAgent,
    Referer,
    RequestTime,
    ApiKey,
    Request,
    ForwardedFor,
    RemoteUser,
    Host,
    /// Enriched (see `crate::enrich`), never parsed from the line.
    Country,
    Region,
    Asn,
    AsOrg,
}

impl StdField {
    pub const ALL: [StdField; 19] = [
        StdField::Time,
        StdField::Client,
        StdField::Method,
        StdField::Path,
        StdField::Protocol,
        StdField::Status,
        StdField::Bytes,
        StdField::UserAgent,
        StdField::Referer,
        StdField::RequestTime,
        StdField::ApiKey,
        StdField::Request,
        StdField::ForwardedFor,
        StdField::RemoteUser,
        StdField::Host,
        StdField::Country,
        StdField::Region,
        StdField::Asn,
        StdField::AsOrg,
    ];

    /// Whether the field comes from enrichment, not from the line.
    pub fn is_enriched(self) -> bool {
        matches!(
            self,
            StdField::Country | StdField::Region | StdField::Asn | StdField::AsOrg
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            StdField::Time => "time",
            StdField::Client => "client",
            StdField::Method => "method",
            StdField::Path => "path",
            StdField::Protocol => "protocol",
            StdField::Status => "status",
            StdField::Bytes => "bytes",
            StdField::UserAgent => "user_agent",
            StdField::Referer => "referer",
            StdField::RequestTime => "request_time",
            StdField::ApiKey => "api_key",
            StdField::Request => "request",
            StdField::ForwardedFor => "forwarded_for",
            StdField::RemoteUser => "remote_user",
            StdField::Host => "host",
            StdField::Country => "country",
            StdField::Region => "region",
            StdField::Asn => "asn",
            StdField::AsOrg => "as_org",
        }
    }

    pub fn from_name(name: &str) -> Option<StdField> {
        StdField::ALL.into_iter().find(|f| f.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Fields stored as text spans (the others are typed values).
    fn text_slot(self) -> Option<usize> {
        match self {
            StdField::Method => Some(0),
            StdField::Path => Some(1),
            StdField::Protocol => Some(2),
            StdField::UserAgent => Some(3),
            StdField::Referer => Some(4),
            StdField::ApiKey => Some(5),
            StdField::Request => Some(6),
            StdField::ForwardedFor => Some(7),
            StdField::RemoteUser => Some(8),
            StdField::Host => Some(9),
            _ => None,
        }
    }
}

const TEXT_SLOTS: usize = 10;

/// A field named in config: a standard one, or a format-specific one by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FieldRef {
    Std(StdField),
    /// Index into [`Wanted::extras`].
    Extra(usize),
}

/// Which fields the jails need. Parsers skip (and never unescape) the rest.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    std: u32,
    /// Names of format-specific fields, by id.
    pub extras: Vec<String>,
}

impl Wanted {
    /// Everything: used by `replay` diagnostics and tests.
    pub fn all() -> Wanted {
        Wanted {
            std: u32::MAX,
            extras: Vec::new(),
        }
    }

    pub fn add_std(&mut self, f: StdField) {
        self.std |= f.bit();
    }

    /// Resolves a config field name, registering format-specific names.
    pub fn field(&mut self, name: &str) -> FieldRef {
        if let Some(f) = StdField::from_name(name) {
            self.add_std(f);
            return FieldRef::Std(f);
        }
        let id = match self.extras.iter().position(|n| n == name) {
            Some(id) => id,
            None => {
                self.extras.push(name.to_string());
                self.extras.len() - 1
            }
        };
        FieldRef::Extra(id)
    }

    pub fn has(&self, f: StdField) -> bool {
        self.std & f.bit() != 0
    }

    /// Whether any enriched field is wanted.
    pub fn has_enriched(&self) -> bool {
        StdField::ALL
            .into_iter()
            .any(|f| f.is_enriched() && self.has(f))
    }

    pub fn extra_id(&self, name: &str) -> Option<usize> {
        self.extras.iter().position(|n| n == name)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    end: u32,
}

/// A request line's parts: `GET /path HTTP/1.1` → method, path, protocol.
/// The path runs to the last space before `HTTP/...`, so a path with spaces
/// (as nginx logs a malformed request) stays whole; no space: no parts.
pub fn split_request(raw: &str) -> Option<(&str, &str, Option<&str>)> {
    // Byte searches: `split_once(' ')` and `rsplit_once(' ')` went through
    // str's generic pattern searchers, a visible share of parsing.
    let b = raw.as_bytes();
    let sp = super::scan::find_byte(b' ', b)?;
    let (method, rest) = (&raw[..sp], &raw[sp + 1..]);
    Some(match last_space(rest.as_bytes()) {
        Some(i) if rest[i + 1..].starts_with("HTTP/") => (method, &rest[..i], Some(&rest[i + 1..])),
        _ => (method, rest, None),
    })
}

/// The last space of a request line's rest: where the usual 8-byte
/// protocol (`HTTP/1.1`) begins, checked first, else searched for.
#[inline]
fn last_space(b: &[u8]) -> Option<usize> {
    if let Some((head, proto)) = b.split_last_chunk::<9>().map(|(h, t)| (h.len(), t))
        && proto[0] == b' '
        && !proto[1..].contains(&b' ')
    {
        return Some(head);
    }
    memchr::memrchr(b' ', b)
}

/// Event time in milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// One parsed line. See the module docs for the buffer reuse.
///
/// In declared order (`repr(C)`), what counting reads of every event first
/// (up to `buf`), so that a parallel replay fetches those few cache lines
/// of an event another thread parsed, not all of it
/// (`pipeline::Preparsed::prefetch`).
#[derive(Debug, Default)]
#[repr(C)]
pub struct Event {
    /// The text key the detect stage built for this event ahead of counting
    /// it (`Detector::prefetch`); cleared with the event.
    pub key_hint: Option<crate::detect::KeyHint>,
    pub time: Millis,
    pub client: Option<IpAddr>,
    pub status: Option<u16>,
    /// `[geoip]` databases that are configured and not loaded (bits of
    /// `enrich::geo::Role::bit`): jails reading their fields skip the event.
    pub geo_missing: u8,
    text: [Option<Span>; TEXT_SLOTS],
    extras: Vec<Option<Span>>,
    buf: String,
    // Read by some jails only.
    /// The country's and region's fingerprints from `geo`, copied into the
    /// event so that counting reads the event, not memory another thread
    /// (the one that parsed it) keeps writing reference counts beside.
    pub geo_fp: [Option<crate::detect::fingerprint::TextKey>; 2],
    /// What the enrich stage found about the client (country, network).
    pub geo: Option<std::sync::Arc<crate::enrich::Enriched>>,
    pub bytes: Option<u64>,
    /// Seconds, as the proxy wrote it.
    pub request_time: Option<f64>,
}

impl Event {
    /// The bytes at its start that counting reads of every event.
    pub const HOT_BYTES: usize = std::mem::offset_of!(Event, geo_fp);
}

/// Text bytes an event keeps between lines; a larger buffer (a line of
/// long fields) is freed whole. Replay keeps thousands of events in its
/// pools, and each may be reused for a long line once: at 64 KiB, a file
/// of 34 KB lines at ever other places held memory the size of the file
/// (1 GB for a 1 GB file; an attacking session). Freed whole, not shrunk:
/// a shrunk buffer left a hole just too small for the next long line, and
/// memory still grew with the file. Real lines' text is a few hundred
/// bytes.
const BUF_KEEP: usize = 4 * 1024;

impl Event {
    pub fn new(wanted: &Wanted) -> Event {
        Event {
            extras: vec![None; wanted.extras.len()],
            ..Event::default()
        }
    }

    /// Asks for the text this event's fields point into, once the event
    /// itself is in cache (its first [`Event::HOT_BYTES`] fetched some lines
    /// earlier: finding the text reads the fields, which would otherwise
    /// wait for them right here).
    pub fn prefetch_text(&self) {
        crate::prefetch::bytes(self.buf.as_ptr(), self.buf.len(), 4);
    }

    /// Where this event keeps its text and its extra fields' spans, as
    /// (address, bytes): for the replay to drop them from the caches
    /// (`replay::evict`).
    pub fn heap(&self) -> [(*const u8, usize); 2] {
        [
            (self.buf.as_ptr(), self.buf.len()),
            (
                self.extras.as_ptr() as *const u8,
                std::mem::size_of_val(self.extras.as_slice()),
            ),
        ]
    }

    /// Forgets the line and gives back the text buffer if a long line grew
    /// it: one long line must not leave every reused event holding its
    /// size. Replay keeps thousands of them, and calls this once an event
    /// is counted: [`Event::clear`] (which gives it back too) runs only
    /// when the slot is used again, maybe never.
    pub fn give_back_long(&mut self) {
        if self.buf.capacity() > BUF_KEEP {
            self.clear();
        }
    }

    /// Forgets the previous line; keeps the allocations.
    pub fn clear(&mut self) {
        self.time = 0;
        self.client = None;
        self.status = None;
        self.bytes = None;
        self.request_time = None;
        self.geo = None;
        self.geo_fp = [None; 2];
        self.geo_missing = 0;
        self.key_hint = None;
        self.buf.clear();
        if self.buf.capacity() > BUF_KEEP {
            self.buf = String::new();
        }
        self.text = [None; TEXT_SLOTS];
        self.extras.iter_mut().for_each(|e| *e = None);
    }

    /// Appends text to the buffer and returns its span; `push` writes the bytes.
    fn push_with(&mut self, push: impl FnOnce(&mut String)) -> Span {
        let start = self.buf.len() as u32;
        push(&mut self.buf);
        Span {
            start,
            end: self.buf.len() as u32,
        }
    }

    /// Stores a standard text field. Numeric and address fields have their own setters.
    pub fn set_text_with(&mut self, f: StdField, push: impl FnOnce(&mut String)) {
        if let Some(slot) = f.text_slot() {
            let span = self.push_with(push);
            self.text[slot] = Some(span);
        }
    }

    pub fn set_text(&mut self, f: StdField, value: &str) {
        self.set_text_with(f, |b| b.push_str(value));
    }

    /// Stores a request line and its method, path and protocol.
    pub fn set_request(&mut self, raw: &str) {
        self.set_text(StdField::Request, raw);
        if let Some((method, path, protocol)) = split_request(raw) {
            self.set_text(StdField::Method, method);
            self.set_text(StdField::Path, path);
            if let Some(p) = protocol {
                self.set_text(StdField::Protocol, p);
            }
        }
    }

    pub fn set_extra_with(&mut self, id: usize, push: impl FnOnce(&mut String)) {
        if id < self.extras.len() {
            let span = self.push_with(push);
            self.extras[id] = Some(span);
        }
    }

    /// Whether the field has a value: [`Event::value`]`.is_some()`, without
    /// making the text of a text field (`scratch` formats typed ones).
    #[inline]
    pub fn has(&self, f: &FieldRef, scratch: &mut String) -> bool {
        match f {
            FieldRef::Extra(id) => self.extras.get(*id).is_some_and(Option::is_some),
            FieldRef::Std(sf) => match sf.text_slot() {
                Some(i) => self.text[i].is_some(),
                None => self.value(f, scratch).is_some(),
            },
        }
    }

    pub fn text(&self, f: StdField) -> Option<&str> {
        let span = self.text[f.text_slot()?]?;
        Some(&self.buf[span.start as usize..span.end as usize])
    }

    pub fn extra(&self, id: usize) -> Option<&str> {
        let span = (*self.extras.get(id)?)?;
        Some(&self.buf[span.start as usize..span.end as usize])
    }

    pub fn method(&self) -> Option<&str> {
        self.text(StdField::Method)
    }
    pub fn path(&self) -> Option<&str> {
        self.text(StdField::Path)
    }
    pub fn user_agent(&self) -> Option<&str> {
        self.text(StdField::UserAgent)
    }
    pub fn api_key(&self) -> Option<&str> {
        self.text(StdField::ApiKey)
    }

    /// Any field as text, for `field` conditions and text keys.
    /// Typed fields are formatted into `scratch`.
    pub fn value<'a>(&'a self, f: &FieldRef, scratch: &'a mut String) -> Option<&'a str> {
        use std::fmt::Write;
        match f {
            FieldRef::Extra(id) => self.extra(*id),
            FieldRef::Std(sf) => {
                if sf.text_slot().is_some() {
                    return self.text(*sf);
                }
                scratch.clear();
                match sf {
                    StdField::Client => write!(scratch, "{}", self.client?).ok()?,
                    StdField::Status => write!(scratch, "{}", self.status?).ok()?,
                    StdField::Bytes => write!(scratch, "{}", self.bytes?).ok()?,
                    StdField::RequestTime => write!(scratch, "{}", self.request_time?).ok()?,
                    StdField::Time => write!(scratch, "{}", self.time).ok()?,
                    StdField::Asn => write!(scratch, "{}", self.geo.as_ref()?.asn?).ok()?,
                    StdField::Country => return self.geo.as_ref()?.country.as_deref(),
                    StdField::Region => return self.geo.as_ref()?.region.as_deref(),
                    StdField::AsOrg => return self.geo.as_ref()?.as_org.as_deref(),
                    _ => return None,
                }
                Some(scratch.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last space, looked for where the usual protocol begins first,
    /// is the last space, whatever the line.
    #[test]
    fn last_space_is_the_last_space() {
        for s in [
            "",
            " ",
            "/a",
            "/a HTTP/1.1",
            "/a b HTTP/1.1",
            "/a HTTP/1.1 ",
            "/a HTTP/ 1.1",
            "/a  HTTP/1.",
            " HTTP/2.0",
            "HTTP/1.1",
            "/a\x20HTTP/1.1",
            "/abcdefgh",
            "/ab cdefgh",
            "/abc defgh",
            "/a HTTP/10.0",
            "/a x",
            "         ",
        ] {
            assert_eq!(last_space(s.as_bytes()), s.rfind(' '), "{s:?}");
        }
    }

    /// A reused event gives back a buffer one long line grew, and keeps a
    /// common one (no allocation per line).
    #[test]
    fn clear_gives_back_a_long_lines_buffer() {
        let mut ev = Event::new(&Wanted::default());
        ev.set_text(StdField::UserAgent, &"A".repeat(200_000));
        assert!(ev.buf.capacity() >= 200_000);
        ev.clear();
        assert!(ev.buf.capacity() <= BUF_KEEP, "{}", ev.buf.capacity());
        ev.set_text(StdField::UserAgent, &"A".repeat(1_000));
        let kept = ev.buf.capacity();
        ev.clear();
        assert_eq!(ev.buf.capacity(), kept);
        assert_eq!(ev.text(StdField::UserAgent), None);
    }
}
