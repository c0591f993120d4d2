//! The parse stage: one line of text in, one [`Event`] out.
//!
//! A [`FormatSpec`] is what config says (an nginx `log_format`, an Envoy format
//! string, a JSON mapping, a regex); [`LineParser`] is that spec compiled once
//! for the fields the jails on a source actually read. A line that does not
//! parse yields a [`ParseError`] with a stable reason, to be counted and skipped.

pub mod addr;
pub mod envoy;
pub mod event;
pub mod json;
pub mod nginx;
pub mod regex_format;
pub mod scan;
pub mod template;
pub mod time;
pub mod wrap;

pub use event::{Event, FieldRef, Millis, StdField, Wanted};

use addr::{ClientError, NetSet};
use json::JsonFormat;
use regex::Regex;
use regex_format::RegexFormat;
use std::collections::BTreeMap;
use template::{Escape, Piece, Template};
use time::TimeCache;
use wrap::{Unwrapped, Unwrapper, Wrap};

/// Why a line was not turned into an event. The text is a stable, short reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParseError(pub &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The reasons a line can be refused.
pub mod reason {
    use super::ParseError;
    pub const FORMAT_MISMATCH: ParseError = ParseError("does not match the format");
    pub const AMBIGUOUS_QUOTES: ParseError =
        ParseError("more quotes than the format has (a value may contain a forged field)");
    pub const TOO_AMBIGUOUS: ParseError =
        ParseError("too many ways to split the line into the format's fields");
    pub const BAD_TIME: ParseError = ParseError("missing or invalid time");
    pub const BAD_STATUS: ParseError = ParseError("invalid status");
    pub const BAD_CLIENT: ParseError = ParseError("invalid client address");
    pub const BAD_FORWARDED_FOR: ParseError = ParseError("invalid X-Forwarded-For hop");
    pub const NO_CLIENT: ParseError = ParseError("no client address");
    pub const NOT_JSON: ParseError = ParseError("not a JSON object");
    pub const NO_MATCH: ParseError = ParseError("regex does not match");
    pub const BAD_WRAPPER: ParseError = ParseError("invalid container-runtime wrapper");
    pub const TOO_LONG: ParseError = ParseError("line longer than max_line_bytes");
    pub const FUTURE_TIME: ParseError =
        ParseError("time ahead of the clock (counted at the newest time seen from the source)");
    pub const INVALID_UTF8: ParseError = ParseError("invalid UTF-8 (decoded lossily)");
}

impl From<ClientError> for ParseError {
    fn from(e: ClientError) -> ParseError {
        match e {
            ClientError::BadPeer => reason::BAD_CLIENT,
            ClientError::BadForwardedFor => reason::BAD_FORWARDED_FOR,
        }
    }
}

/// A format as configured, before it is compiled for a set of wanted fields.
#[derive(Debug, Clone)]
pub enum FormatSpec {
    Template {
        pieces: Vec<Piece>,
        escape: Escape,
        /// A bare `-` may stand for a quoted field (Traefik 1.x CLF).
        bare_dash: bool,
    },
    Json(BTreeMap<String, Vec<String>>),
    Regex {
        re: Regex,
        time_format: Option<String>,
    },
}

/// Names of the formats that need no config.
pub const BUILTIN_FORMATS: [&str; 8] = [
    "combined",
    "traefik_clf",
    "api_audit",
    "envoy",
    "envoy_json",
    "traefik_json",
    "kong_json",
    "nginx_error",
];

impl FormatSpec {
    pub fn builtin(name: &str) -> Option<FormatSpec> {
        let api_key_var = "http_x_api_key_id";
        let nginx = |f: &str| {
            let (pieces, escape) = nginx::compile(f, Escape::Nginx, api_key_var).expect("built-in");
            FormatSpec::Template {
                pieces,
                escape,
                bare_dash: false,
            }
        };
        Some(match name {
            "combined" => nginx(nginx::COMBINED),
            "api_audit" => nginx(nginx::API_AUDIT),
            "traefik_clf" => {
                let (mut pieces, escape) =
                    nginx::compile(nginx::TRAEFIK_CLF, Escape::Nginx, api_key_var)
                        .expect("built-in");
                for p in &mut pieces {
                    if *p == Piece::Var(template::Var::Extra("request_duration".into())) {
                        *p = Piece::Var(template::Var::RequestMillis);
                    }
                }
                FormatSpec::Template {
                    pieces,
                    escape,
                    bare_dash: true,
                }
            }
            "envoy" => FormatSpec::Template {
                pieces: envoy::compile(envoy::DEFAULT, "x-api-key-id").expect("built-in"),
                escape: Escape::None,
                bare_dash: false,
            },
            "nginx_error" => FormatSpec::Regex {
                re: Regex::new(regex_format::NGINX_ERROR).expect("built-in"),
                time_format: None,
            },
            other => FormatSpec::Json(json::builtin(other)?),
        })
    }

    /// Whether the format has no peer address, so the client must come from
    /// X-Forwarded-For's right-most hop (see `forwarded_for_has_peer`).
    pub fn lacks_peer(&self) -> bool {
        matches!(self, FormatSpec::Template { pieces, .. } if !Template::pieces_have_peer(pieces))
    }

    /// Every field name a line of this format can provide.
    pub fn field_names(&self) -> Vec<String> {
        match self {
            FormatSpec::Template { pieces, .. } => Template::field_names(pieces),
            FormatSpec::Json(map) => JsonFormat::field_names(map),
            FormatSpec::Regex { re, .. } => RegexFormat::field_names(re),
        }
    }

    pub fn compile(&self, wanted: &Wanted) -> Result<Format, String> {
        Ok(match self {
            FormatSpec::Template {
                pieces,
                escape,
                bare_dash,
            } => {
                let t = Template::compile(pieces, *escape, wanted)?;
                Format::Template(if *bare_dash { t.with_bare_dash() } else { t })
            }
            FormatSpec::Json(map) => Format::Json(JsonFormat::compile(map, wanted)?),
            FormatSpec::Regex { re, time_format } => {
                Format::Regex(RegexFormat::compile(re, time_format.as_deref(), wanted)?)
            }
        })
    }
}

#[derive(Debug)]
pub enum Format {
    Template(Template),
    Json(JsonFormat),
    Regex(RegexFormat),
}

/// What became of one physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Event,
    /// A partial container-runtime record; the event comes with a later line.
    Pending,
}

/// A compiled format plus its per-source state (unwrapping, time cache).
#[derive(Debug)]
pub struct LineParser {
    format: Format,
    unwrapper: Unwrapper,
    times: TimeCache,
    trusted: NetSet,
}

impl LineParser {
    pub fn new(format: Format, wrap: Wrap, trusted: NetSet, max_line: usize) -> LineParser {
        LineParser {
            format,
            unwrapper: Unwrapper::new(wrap, max_line),
            times: TimeCache::default(),
            trusted,
        }
    }

    /// Believes X-Forwarded-For from these proxies from now on.
    pub fn set_trusted(&mut self, trusted: NetSet) {
        self.trusted = trusted;
    }

    /// Parses one line (without its newline) into `ev`.
    pub fn parse(&mut self, line: &str, ev: &mut Event) -> Result<Outcome, ParseError> {
        ev.clear();
        let (text, wrapper_time) = match self.unwrapper.unwrap(line)? {
            Unwrapped::Pending => return Ok(Outcome::Pending),
            Unwrapped::Line { text, time } => (text, time),
        };
        let (times, trusted) = (&mut self.times, &self.trusted);
        match &self.format {
            Format::Template(t) => {
                t.parse(text, ev, trusted, times)?;
                if !t.has_time() {
                    ev.time = wrapper_time.ok_or(reason::BAD_TIME)?;
                }
            }
            Format::Json(j) => j.parse(text, ev, trusted, times)?,
            Format::Regex(r) => r.parse(text, ev, trusted, times)?,
        }
        Ok(Outcome::Event)
    }
}

#[cfg(test)]
mod tests;
