//! JSON-lines access logs with a field mapping (Envoy JSON, Traefik, Kong, or
//! nginx `escape=json` formats written as JSON).
//!
//! A mapping names, for each event field, one or more JSON paths; the first
//! present wins. A path is tried as a literal key first (`"request_User-Agent"`,
//! `":authority"`), then split on dots (`response.status`).

use super::addr::{NetSet, resolve_client};
use super::event::{Event, StdField, Wanted};
use super::time::{TimeCache, TimeShape};
use super::{ParseError, reason};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Target {
    Peer,
    Time,
    Status,
    Bytes,
    RequestSeconds,
    Text(StdField),
    Extra(usize),
}

#[derive(Debug)]
pub struct JsonFormat {
    fields: Vec<(Target, Vec<String>)>,
    has_peer: bool,
    has_xff: bool,
}

/// Built-in mappings, by format name.
pub fn builtin(name: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let pairs: &[(&str, &[&str])] = match name {
        "envoy_json" => &[
            (
                "client",
                &[
                    "downstream_direct_remote_address",
                    "downstream_remote_address",
                ],
            ),
            ("time", &["start_time"]),
            ("method", &["method", ":method"]),
            (
                "path",
                &[
                    "x-envoy-origin-path",
                    "x-envoy-original-path",
                    "path",
                    ":path",
                ],
            ),
            ("protocol", &["protocol"]),
            ("status", &["response_code"]),
            ("bytes", &["bytes_sent"]),
            ("user_agent", &["user-agent", "user_agent"]),
            ("referer", &["referer"]),
            ("forwarded_for", &["x-forwarded-for", "x_forwarded_for"]),
            ("host", &[":authority", "authority"]),
            ("api_key", &["x-api-key-id"]),
            ("response_flags", &["response_flags"]),
        ],
        "traefik_json" => &[
            // The TCP peer. ClientHost is Traefik's reading of forwarded
            // headers; trust those with `trusted_proxies` instead.
            ("client", &["ClientAddr"]),
            ("time", &["StartUTC", "time"]),
            ("method", &["RequestMethod"]),
            ("path", &["RequestPath"]),
            ("protocol", &["RequestProtocol"]),
            ("status", &["DownstreamStatus"]),
            ("bytes", &["DownstreamContentSize"]),
            ("user_agent", &["request_User-Agent"]),
            ("referer", &["request_Referer"]),
            ("forwarded_for", &["request_X-Forwarded-For"]),
            ("host", &["RequestHost"]),
            ("api_key", &["request_X-Api-Key-Id"]),
            ("router", &["RouterName"]),
        ],
        "kong_json" => &[
            ("client", &["client_ip"]),
            ("time", &["started_at"]),
            ("method", &["request.method"]),
            ("path", &["request.uri"]),
            ("status", &["response.status"]),
            ("bytes", &["response.size"]),
            ("user_agent", &["request.headers.user-agent"]),
            ("referer", &["request.headers.referer"]),
            ("forwarded_for", &["request.headers.x-forwarded-for"]),
            ("host", &["request.headers.host"]),
            // Kong's authenticated consumer first: a header the client sent
            // must never win over the credential Kong verified.
            ("api_key", &["consumer.id", "request.headers.x-api-key-id"]),
            ("service", &["service.name"]),
        ],
        _ => return None,
    };
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect(),
    )
}

impl JsonFormat {
    pub fn field_names(map: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let mut names: Vec<String> = map.keys().cloned().collect();
        if map.contains_key("request") {
            names.extend(["method", "path", "protocol"].map(String::from));
        }
        names
    }

    pub fn compile(
        map: &BTreeMap<String, Vec<String>>,
        wanted: &Wanted,
    ) -> Result<JsonFormat, String> {
        let mut fields = Vec::new();
        for (name, paths) in map {
            if paths.is_empty() || paths.iter().any(|p| p.is_empty()) {
                return Err(format!("field `{name}` maps to an empty JSON path"));
            }
            let target = match StdField::from_name(name) {
                Some(StdField::Client) => Target::Peer,
                Some(StdField::Time) => Target::Time,
                Some(StdField::Status) => Target::Status,
                Some(StdField::Bytes) => Target::Bytes,
                Some(StdField::RequestTime) => Target::RequestSeconds,
                Some(StdField::ForwardedFor) => Target::Text(StdField::ForwardedFor),
                Some(f) if wanted.has(f) || f == StdField::Request => Target::Text(f),
                Some(_) => continue,
                None => match wanted.extra_id(name) {
                    Some(id) => Target::Extra(id),
                    None => continue,
                },
            };
            fields.push((target, paths.clone()));
        }
        let has_peer = map.contains_key("client");
        let has_xff = map.contains_key("forwarded_for");
        if !has_peer && !has_xff {
            return Err("the JSON mapping has no `client` (or `forwarded_for`) field".into());
        }
        if !map.contains_key("time") {
            return Err("the JSON mapping has no `time` field".into());
        }
        Ok(JsonFormat {
            fields,
            has_peer,
            has_xff,
        })
    }

    pub fn parse(
        &self,
        line: &str,
        ev: &mut Event,
        trusted: &NetSet,
        times: &mut TimeCache,
    ) -> Result<(), ParseError> {
        let v: Value = serde_json::from_str(line).map_err(|_| reason::NOT_JSON)?;
        if !v.is_object() {
            return Err(reason::NOT_JSON);
        }
        let mut peer: Option<String> = None;
        let mut xff: Option<String> = None;
        let mut scratch = String::new();
        for (target, paths) in &self.fields {
            let Some(val) = paths.iter().find_map(|p| lookup(&v, p)) else {
                continue;
            };
            scratch.clear();
            if !as_text(val, &mut scratch) {
                continue;
            }
            let text = scratch.as_str();
            match target {
                Target::Peer => peer = Some(text.to_string()),
                Target::Time => {
                    ev.time = times.parse(text, TimeShape::Auto).ok_or(reason::BAD_TIME)?
                }
                Target::Status => ev.status = Some(super::template::parse_status(text)?),
                Target::Bytes => ev.bytes = text.parse().ok(),
                Target::RequestSeconds => ev.request_time = text.parse().ok(),
                Target::Text(StdField::ForwardedFor) => {
                    xff = Some(text.to_string());
                    ev.set_text(StdField::ForwardedFor, text);
                }
                Target::Text(StdField::Request) => ev.set_request(text),
                Target::Text(f) => ev.set_text(*f, text),
                Target::Extra(id) => ev.set_extra_with(*id, |b| b.push_str(text)),
            }
        }
        if ev.time == 0 {
            return Err(reason::BAD_TIME);
        }
        ev.client = Some(match (self.has_peer, peer, xff) {
            (true, Some(p), x) => resolve_client(&p, x.as_deref(), trusted)?,
            (_, None, Some(x)) if self.has_xff => resolve_client(&x, None, trusted)?,
            _ => return Err(reason::NO_CLIENT),
        });
        Ok(())
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(found) = v.get(path) {
        return Some(found);
    }
    if !path.contains('.') {
        return None;
    }
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

/// Writes a scalar as text; `false` for null, `-` and containers.
fn as_text(v: &Value, out: &mut String) -> bool {
    use std::fmt::Write;
    match v {
        Value::String(s) if s.is_empty() || s == "-" => false,
        Value::String(s) => {
            out.push_str(s);
            true
        }
        Value::Number(n) => write!(out, "{n}").is_ok(),
        Value::Bool(b) => write!(out, "{b}").is_ok(),
        _ => false,
    }
}
