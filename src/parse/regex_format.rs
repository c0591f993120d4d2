//! Logs that are not access logs (an nginx error log's `limiting requests`,
//! an app's auth failures), read with a regex whose named captures are event
//! fields. Uses the linear-time `regex` crate, so a hostile line cannot make
//! matching slow.

use super::addr::{NetSet, resolve_client};
use super::event::{Event, StdField, Wanted};
use super::time::{TimeCache, TimeShape};
use super::{ParseError, reason};
use regex::Regex;

/// A built-in for nginx's error log: rate-limit, auth and access denials.
pub const NGINX_ERROR: &str = r"^(?P<time>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(?P<level>\w+)\] \d+#\d+: (?:\*\d+ )?(?P<message>.*?), client: (?P<client>[0-9A-Fa-f.:]+)(?:, server: (?P<server>[^,]*))?(?:, request: .(?P<request>[^\x22]*).)?";

#[derive(Debug)]
enum Slot {
    Peer,
    Time,
    Status,
    Bytes,
    Request,
    Text(StdField),
    Extra(usize),
    Skip,
}

#[derive(Debug)]
pub struct RegexFormat {
    re: Regex,
    slots: Vec<Slot>,
    time_format: Option<String>,
}

impl RegexFormat {
    pub fn field_names(re: &Regex) -> Vec<String> {
        let mut names: Vec<String> = re.capture_names().flatten().map(String::from).collect();
        if names.iter().any(|n| n == "request") {
            names.extend(["method", "path", "protocol"].map(String::from));
        }
        names
    }

    /// `time_format` is a chrono strftime string; without it the shape is guessed.
    pub fn compile(
        re: &Regex,
        time_format: Option<&str>,
        wanted: &Wanted,
    ) -> Result<RegexFormat, String> {
        let names: Vec<Option<&str>> = re.capture_names().collect();
        if !names.contains(&Some("client")) {
            return Err("the regex has no `(?P<client>...)` capture".into());
        }
        if !names.contains(&Some("time")) {
            return Err("the regex has no `(?P<time>...)` capture".into());
        }
        let slots = names
            .iter()
            .map(|n| match n.map(|n| (n, StdField::from_name(n))) {
                None => Slot::Skip,
                Some((_, Some(StdField::Client))) => Slot::Peer,
                Some((_, Some(StdField::Time))) => Slot::Time,
                Some((_, Some(StdField::Status))) => Slot::Status,
                Some((_, Some(StdField::Bytes))) => Slot::Bytes,
                Some((_, Some(StdField::Request))) => Slot::Request,
                Some((_, Some(f))) if wanted.has(f) => Slot::Text(f),
                Some((_, Some(_))) => Slot::Skip,
                Some((name, None)) => wanted.extra_id(name).map_or(Slot::Skip, Slot::Extra),
            })
            .collect();
        Ok(RegexFormat {
            re: re.clone(),
            slots,
            time_format: time_format.map(String::from),
        })
    }

    pub fn parse(
        &self,
        line: &str,
        ev: &mut Event,
        trusted: &NetSet,
        times: &mut TimeCache,
    ) -> Result<(), ParseError> {
        let caps = self.re.captures(line).ok_or(reason::NO_MATCH)?;
        let mut peer = None;
        for (slot, m) in self.slots.iter().zip(caps.iter()) {
            let Some(m) = m else { continue };
            let text = m.as_str();
            if text.is_empty() || text == "-" {
                continue;
            }
            match slot {
                Slot::Peer => peer = Some(text),
                Slot::Time => ev.time = self.time(text, times).ok_or(reason::BAD_TIME)?,
                Slot::Status => ev.status = Some(super::template::parse_status(text)?),
                Slot::Bytes => ev.bytes = text.parse().ok(),
                Slot::Request => ev.set_request(text),
                Slot::Text(f) => ev.set_text(*f, text),
                Slot::Extra(id) => ev.set_extra_with(*id, |b| b.push_str(text)),
                Slot::Skip => {}
            }
        }
        ev.client = Some(resolve_client(
            peer.ok_or(reason::NO_CLIENT)?,
            None,
            trusted,
        )?);
        Ok(())
    }

    fn time(&self, text: &str, times: &mut TimeCache) -> Option<i64> {
        let Some(fmt) = &self.time_format else {
            return times.parse(text, TimeShape::Auto);
        };
        if let Ok(dt) = chrono::DateTime::parse_from_str(text, fmt) {
            return Some(dt.timestamp_millis());
        }
        chrono::NaiveDateTime::parse_from_str(text, fmt)
            .ok()
            .map(|dt| dt.and_utc().timestamp_millis())
    }
}
