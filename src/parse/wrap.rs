//! Lines wrapped by a container runtime, unwrapped before parsing.
//!
//! - CRI (containerd, CRI-O, `/var/log/pods`): `<rfc3339> <stream> <P|F> <text>`;
//!   `P` marks a partial line continued by the next record.
//! - Docker json-file: `{"log":"<text>\n","stream":"stdout","time":"..."}`; a
//!   `log` without the trailing newline is continued by the next record.
//!
//! - Syslog (`syslog`): a file of raw syslog messages, one a line (what
//!   rsyslog writes when it stores nginx's `syslog:` output, or a capture of
//!   the daemon's socket): the RFC 3164 or 5424 header is taken off, as the
//!   syslog source does.
//! - Journal (`journal`): `journalctl -o json` output, one entry a line: its
//!   `MESSAGE`, as the journal source reads it.
//!
//! The runtime's timestamp is kept as the event time for formats whose lines
//! have none.

use super::event::Millis;
use super::time::{TimeShape, parse_time};
use super::{ParseError, reason};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrap {
    #[default]
    None,
    Cri,
    Docker,
    Syslog,
    Journal,
}

/// The outcome of unwrapping one physical line.
pub enum Unwrapped<'a> {
    Line {
        text: &'a str,
        time: Option<Millis>,
    },
    /// A partial record was buffered; wait for the rest.
    Pending,
}

#[derive(Debug)]
pub struct Unwrapper {
    wrap: Wrap,
    partial: String,
    /// `partial` holds a line already handed out; clear it before reuse.
    joined: bool,
    max_len: usize,
}

#[derive(Deserialize)]
struct JournalRecord {
    #[serde(rename = "MESSAGE")]
    message: serde_json::Value,
    #[serde(rename = "__REALTIME_TIMESTAMP", default)]
    realtime: Option<String>,
}

#[derive(Deserialize)]
struct DockerRecord<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(default)]
    time: Option<std::borrow::Cow<'a, str>>,
}

impl Unwrapper {
    pub fn new(wrap: Wrap, max_len: usize) -> Unwrapper {
        Unwrapper {
            wrap,
            partial: String::new(),
            joined: false,
            max_len,
        }
    }

    pub fn unwrap<'a>(&'a mut self, line: &'a str) -> Result<Unwrapped<'a>, ParseError> {
        if self.joined {
            self.partial.clear();
            self.joined = false;
        }
        match self.wrap {
            Wrap::None => Ok(Unwrapped::Line {
                text: line,
                time: None,
            }),
            Wrap::Cri => {
                let mut it = line.splitn(4, ' ');
                let (Some(ts), Some(_stream), Some(tag), Some(text)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return Err(reason::BAD_WRAPPER);
                };
                let time = parse_time(ts, TimeShape::Iso8601);
                match tag {
                    "P" => self.append(text).map(|_| Unwrapped::Pending),
                    "F" => self.finish(text, time),
                    _ => Err(reason::BAD_WRAPPER),
                }
            }
            Wrap::Syslog => {
                let m = crate::watch::syslog::parse(line.as_bytes()).ok_or(reason::BAD_WRAPPER)?;
                // The body is a tail of the line, cut at ASCII: a str still.
                let start = m.body.as_ptr() as usize - line.as_ptr() as usize;
                let text = line
                    .get(start..start + m.body.len())
                    .ok_or(reason::BAD_WRAPPER)?;
                Ok(Unwrapped::Line { text, time: None })
            }
            Wrap::Journal => {
                let rec: JournalRecord =
                    serde_json::from_str(line).map_err(|_| reason::BAD_WRAPPER)?;
                let time = rec
                    .realtime
                    .as_deref()
                    .and_then(|t| t.parse::<i64>().ok())
                    .map(|us| us / 1000);
                match rec.message {
                    serde_json::Value::String(s) => self.append(&s)?,
                    // Not UTF-8: an array of bytes (as the journal source
                    // gets it; parsed lossily here).
                    serde_json::Value::Array(a) => {
                        let bytes: Vec<u8> = a
                            .iter()
                            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                            .collect::<Option<_>>()
                            .ok_or(reason::BAD_WRAPPER)?;
                        self.append(&String::from_utf8_lossy(&bytes))?
                    }
                    _ => return Err(reason::BAD_WRAPPER),
                }
                Ok(Unwrapped::Line {
                    text: self.take_line(),
                    time,
                })
            }
            Wrap::Docker => {
                let rec: DockerRecord =
                    serde_json::from_str(line).map_err(|_| reason::BAD_WRAPPER)?;
                let time = rec
                    .time
                    .as_deref()
                    .and_then(|t| parse_time(t, TimeShape::Iso8601));
                match rec.log.strip_suffix('\n') {
                    Some(text) => {
                        let text = text.strip_suffix('\r').unwrap_or(text);
                        self.append(text)?;
                        Ok(Unwrapped::Line {
                            text: self.take_line(),
                            time,
                        })
                    }
                    None => self.append(&rec.log).map(|_| Unwrapped::Pending),
                }
            }
        }
    }

    fn append(&mut self, text: &str) -> Result<(), ParseError> {
        if self.partial.len() + text.len() > self.max_len {
            self.partial.clear();
            return Err(reason::TOO_LONG);
        }
        self.partial.push_str(text);
        Ok(())
    }

    fn finish<'a>(
        &'a mut self,
        text: &'a str,
        time: Option<Millis>,
    ) -> Result<Unwrapped<'a>, ParseError> {
        if self.partial.is_empty() {
            return Ok(Unwrapped::Line { text, time });
        }
        self.append(text)?;
        Ok(Unwrapped::Line {
            text: self.take_line(),
            time,
        })
    }

    /// The joined line, cleared at the next `unwrap`.
    fn take_line(&mut self) -> &str {
        self.joined = true;
        &self.partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(u: &mut Unwrapper, line: &str) -> Option<(String, Option<Millis>)> {
        match u.unwrap(line).unwrap() {
            Unwrapped::Line { text, time } => Some((text.to_string(), time)),
            Unwrapped::Pending => None,
        }
    }

    #[test]
    fn cri_full_and_partial() {
        let mut u = Unwrapper::new(Wrap::Cri, 1000);
        let (t, time) = text(&mut u, "2025-01-01T00:00:00.5Z stdout F hello world").unwrap();
        assert_eq!(t, "hello world");
        assert_eq!(time, Some(1_735_689_600_500));
        assert!(text(&mut u, "2025-01-01T00:00:00Z stdout P hel").is_none());
        assert_eq!(
            text(&mut u, "2025-01-01T00:00:00Z stdout F lo").unwrap().0,
            "hello"
        );
        assert_eq!(
            text(&mut u, "2025-01-01T00:00:00Z stdout F next")
                .unwrap()
                .0,
            "next"
        );
        assert!(u.unwrap("garbage").is_err());
    }

    #[test]
    fn docker_json_file() {
        let mut u = Unwrapper::new(Wrap::Docker, 1000);
        let (t, _) = text(
            &mut u,
            r#"{"log":"a \"q\"\n","stream":"stdout","time":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(t, "a \"q\"");
        assert!(text(&mut u, r#"{"log":"part1 ","stream":"stdout"}"#).is_none());
        assert_eq!(
            text(&mut u, r#"{"log":"part2\n","stream":"stdout"}"#)
                .unwrap()
                .0,
            "part1 part2"
        );
        assert!(u.unwrap("not json").is_err());
    }

    #[test]
    fn syslog_and_journal_captures() {
        let mut u = Unwrapper::new(Wrap::Syslog, 1000);
        assert_eq!(
            text(&mut u, "<190>Nov 24 02:00:01 web1 api: a b c")
                .unwrap()
                .0,
            "a b c"
        );
        assert!(u.unwrap("no header").is_err());
        let mut u = Unwrapper::new(Wrap::Journal, 1000);
        let (t, time) = text(
            &mut u,
            r#"{"MESSAGE":"x \"y\"","__REALTIME_TIMESTAMP":"1735689600500000","__CURSOR":"c"}"#,
        )
        .unwrap();
        assert_eq!((t.as_str(), time), ("x \"y\"", Some(1_735_689_600_500)));
        assert_eq!(
            text(&mut u, r#"{"MESSAGE":[104,105],"__CURSOR":"c"}"#)
                .unwrap()
                .0,
            "hi"
        );
        assert!(u.unwrap(r#"{"__CURSOR":"c"}"#).is_err());
    }

    #[test]
    fn partial_lines_are_bounded() {
        let mut u = Unwrapper::new(Wrap::Cri, 8);
        assert!(text(&mut u, "2025-01-01T00:00:00Z stdout P 12345").is_none());
        assert!(u.unwrap("2025-01-01T00:00:00Z stdout P 67890").is_err());
        assert_eq!(
            text(&mut u, "2025-01-01T00:00:00Z stdout F ok").unwrap().0,
            "ok"
        );
    }
}
