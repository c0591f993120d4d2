//! Positional text formats (nginx `log_format`, Envoy format strings) compiled
//! into a list of literals and variables, and matched by byte scanning.
//!
//! A variable's value ends where the next literal starts. That is exact for
//! nginx, which escapes `"` inside values (`\x22`, or `\"` with `escape=json`).
//! Envoy and `escape=none` do not escape, so a value could contain the next
//! literal; there, a line with more `"` than the format has is refused as
//! ambiguous rather than guessed at: a forged quote in a user agent can hide
//! its own line, never shift the client address of another.

use super::addr::{NetSet, resolve_client};
use super::event::{Event, StdField, Wanted};
use super::time::{TimeCache, TimeShape};
use super::{ParseError, reason};
use memchr::memmem;

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
    },
    Var(Slot),
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
    escape: Escape,
    /// `"` characters in the literals; more in a line means ambiguity.
    literal_quotes: usize,
    has_peer: bool,
    has_time: bool,
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
                        Var::Request => Slot::Request,
                        Var::Status => Slot::Status,
                        Var::Bytes => Slot::Bytes,
                        Var::RequestSeconds => Slot::RequestSeconds,
                        Var::RequestMillis => Slot::RequestMillis,
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
                    segs.push(Seg::Var(slot));
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
            segs,
            escape,
            literal_quotes,
            has_peer,
            has_time,
        })
    }

    /// Whether lines carry their own time (else the wrapper's time is needed).
    pub fn has_time(&self) -> bool {
        self.has_time
    }

    /// Finds where a value starting at `from` ends: the next occurrence of
    /// `lit`, skipping `\"` when values are JSON-escaped.
    fn find_end(&self, line: &[u8], from: usize, lit: &Seg) -> Option<usize> {
        let Seg::Lit { text, finder } = lit else {
            unreachable!()
        };
        let mut at = from;
        loop {
            let i = at + finder.find(&line[at..])?;
            if self.escape == Escape::Json && text.starts_with('"') && escaped(line, from, i) {
                at = i + 1;
                continue;
            }
            return Some(i);
        }
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
        let mut pos = 0;
        let mut peer: Option<&str> = None;
        let mut xff: Option<&str> = None;
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Lit { text, .. } => {
                    if !b[pos..].starts_with(text.as_bytes()) {
                        return Err(reason::FORMAT_MISMATCH);
                    }
                    pos += text.len();
                }
                Seg::Var(slot) => {
                    let end = match self.segs.get(i + 1) {
                        Some(lit) => self.find_end(b, pos, lit).ok_or(reason::FORMAT_MISMATCH)?,
                        // Last in the format: up to a space; trailing fields are allowed.
                        None => memchr::memchr(b' ', &b[pos..]).map_or(b.len(), |n| pos + n),
                    };
                    let raw = &line[pos..end];
                    pos = end;
                    if raw == "-" || raw.is_empty() {
                        continue;
                    }
                    match *slot {
                        Slot::Peer => peer = Some(raw),
                        Slot::ForwardedFor { keep } => {
                            xff = Some(raw);
                            if keep {
                                self.store(ev, Target::Std(StdField::ForwardedFor), raw);
                            }
                        }
                        Slot::Time(shape) => {
                            ev.time = times.parse(raw, shape).ok_or(reason::BAD_TIME)?
                        }
                        Slot::Request => self.split_request(ev, raw),
                        Slot::Status => ev.status = Some(parse_status(raw)?),
                        Slot::Bytes => ev.bytes = raw.parse().ok(),
                        Slot::RequestSeconds => ev.request_time = raw.parse().ok(),
                        Slot::RequestMillis => {
                            ev.request_time = raw.parse::<f64>().ok().map(|ms| ms / 1000.0)
                        }
                        Slot::Text(f) => self.store(ev, Target::Std(f), raw),
                        Slot::Extra(id) => self.store(ev, Target::Extra(id), raw),
                        Slot::Skip => {}
                    }
                }
            }
        }
        if pos < b.len() && b[pos] != b' ' {
            return Err(reason::FORMAT_MISMATCH);
        }
        ev.client = Some(match (self.has_peer, peer, xff) {
            (true, Some(p), x) => resolve_client(p, x, trusted)?,
            // Envoy's default format: the hop Envoy appended is the peer.
            (false, _, Some(x)) => resolve_client(x, None, trusted)?,
            _ => return Err(reason::NO_CLIENT),
        });
        Ok(())
    }

    fn split_request(&self, ev: &mut Event, raw: &str) {
        ev.set_text(StdField::Request, raw);
        let Some((method, path, protocol)) = super::event::split_request(raw) else {
            return;
        };
        self.store(ev, Target::Std(StdField::Method), method);
        self.store(ev, Target::Std(StdField::Path), path);
        if let Some(p) = protocol {
            self.store(ev, Target::Std(StdField::Protocol), p);
        }
    }

    fn store(&self, ev: &mut Event, target: Target, raw: &str) {
        let escape = self.escape;
        let push = |buf: &mut String| unescape_into(raw, escape, buf);
        match target {
            Target::Std(f) => ev.set_text_with(f, push),
            Target::Extra(id) => ev.set_extra_with(id, push),
        }
    }
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

pub(crate) fn parse_status(raw: &str) -> Result<u16, ParseError> {
    let b = raw.as_bytes();
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
    if escape == Escape::None || memchr::memchr(b'\\', raw.as_bytes()).is_none() {
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

    #[test]
    fn status_is_three_digits() {
        assert_eq!(parse_status("404"), Ok(404));
        assert!(parse_status("4040").is_err());
        assert!(parse_status("4x4").is_err());
    }
}
