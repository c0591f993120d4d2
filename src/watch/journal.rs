//! The systemd journal as a source: the entries of one unit or syslog
//! identifier, their `MESSAGE` parsed by the jail's format.
//!
//! Read through `journalctl --follow --output=json`, the journal's own
//! reader: it knows every journal file format and rotation, follows new
//! files, and takes a cursor to resume from (`--after-cursor`), so a restart
//! neither loses nor repeats an entry. Linking libsystemd instead would tie
//! the build to a C library; the JSON costs a parse per entry, which is
//! small next to the line parse that follows.

use serde::Deserialize;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `journal = { unit = "nginx.service" }` in a jail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSpec {
    /// Entries of this unit (`_SYSTEMD_UNIT`).
    pub unit: Option<String>,
    /// Entries with this syslog identifier (`SYSLOG_IDENTIFIER`).
    pub identifier: Option<String>,
    /// A directory of journal files instead of the system journal (a
    /// container's, or `systemd-journal-remote`'s).
    pub directory: Option<PathBuf>,
}

impl std::fmt::Display for JournalSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("journal")?;
        if let Some(u) = &self.unit {
            write!(f, " unit={u}")?;
        }
        if let Some(i) = &self.identifier {
            write!(f, " identifier={i}")?;
        }
        if let Some(d) = &self.directory {
            write!(f, " directory={}", d.display())?;
        }
        Ok(())
    }
}

impl JournalSpec {
    /// Why this spec cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.unit.is_none() && self.identifier.is_none() {
            return Err("`journal` needs `unit` or `identifier` (every entry of the journal is not one log)".into());
        }
        let bad = |s: &String| s.is_empty() || s.chars().any(|c| c.is_control() || c == '=');
        if self.unit.as_ref().is_some_and(bad) || self.identifier.as_ref().is_some_and(bad) {
            return Err("`journal` unit and identifier must be plain names".into());
        }
        Ok(())
    }

    /// `journalctl`'s arguments: after `after` if there is a cursor, else
    /// the entries from `since` (unix seconds) on. A time rather than
    /// `--lines=0`: the journal's end as `journalctl` finds it once started
    /// would skip what was written while it started.
    fn args(&self, after: Option<&str>, since: u64) -> Vec<String> {
        let mut a: Vec<String> = [
            "--follow",
            "--output=json",
            "--all",
            "--no-pager",
            "--quiet",
        ]
        .map(String::from)
        .to_vec();
        match after {
            Some(c) => a.push(format!("--after-cursor={c}")),
            None => a.push(format!("--since=@{since}")),
        }
        if let Some(d) = &self.directory {
            a.push(format!("--directory={}", d.display()));
        }
        if let Some(u) = &self.unit {
            a.push(format!("_SYSTEMD_UNIT={u}"));
        }
        if let Some(i) = &self.identifier {
            a.push(format!("SYSLOG_IDENTIFIER={i}"));
        }
        a
    }
}

/// One entry: which reader, its message, and the cursor after it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub reader: usize,
    pub message: Vec<u8>,
    pub cursor: String,
    /// Read again after a restart to rebuild the jails' windows (counted
    /// before): it fills windows and never fires a jail by itself.
    pub warm: bool,
}

/// The entry's time in a cursor (`...;t=<hex µs>;...`).
pub fn cursor_time(cursor: &str) -> Option<u64> {
    cursor
        .split(';')
        .find_map(|f| f.strip_prefix("t="))
        .and_then(|t| u64::from_str_radix(t, 16).ok())
}

/// The message of a `journalctl -o json` line and its cursor. `MESSAGE` is a
/// string, or an array of bytes when it is not valid UTF-8.
pub fn parse_line(line: &[u8]) -> Option<(Vec<u8>, String, u64)> {
    #[derive(Deserialize)]
    struct Json {
        #[serde(rename = "MESSAGE")]
        message: Option<serde_json::Value>,
        #[serde(rename = "__CURSOR")]
        cursor: String,
        #[serde(rename = "__REALTIME_TIMESTAMP", default)]
        realtime: Option<String>,
    }
    let j: Json = serde_json::from_slice(line).ok()?;
    let message = match j.message? {
        serde_json::Value::String(s) => s.into_bytes(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()?,
        _ => return None,
    };
    let realtime = j.realtime.and_then(|t| t.parse().ok()).unwrap_or(0);
    Some((message, j.cursor, realtime))
}

/// Counters shared with `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    /// Lines `journalctl` wrote that were not an entry with a message.
    pub malformed: AtomicU64,
    /// Entries handed to the engine and not processed yet: past 100,000
    /// the reader waits (and `journalctl` with it; the journal keeps them).
    pub in_flight: AtomicU64,
}

/// A `journalctl` process being read, started again (after the last
/// cursor) whenever it ends; killed when dropped.
pub struct JournalReader {
    pub spec: JournalSpec,
    pub stats: Arc<Stats>,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock()
            && let Some(mut c) = c.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How long to wait before starting `journalctl` again after it ended (it
/// ends at once when there is no entry of this boot yet).
const RESTART_AFTER: Duration = Duration::from_secs(1);

impl JournalReader {
    /// Starts `journalctl` after `cursor` (or at the start time) and hands
    /// each entry to `deliver` from a thread of its own. With a cursor, the
    /// `rewind` seconds before it are read first as warm entries, so the
    /// jails' windows are whole again after a restart, as a file's are.
    pub fn start(
        spec: JournalSpec,
        reader: usize,
        cursor: Option<&str>,
        rewind: u64,
        deliver: impl Fn(Entry) + Send + 'static,
    ) -> Result<JournalReader, String> {
        // A missing journalctl is an error now, not a retry loop.
        Command::new("journalctl")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{spec}: cannot run journalctl: {e}"))?;
        let stats = Arc::new(Stats::default());
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, ch, sp, sp2) = (stats.clone(), child.clone(), stop.clone(), spec.clone());
        let mut cursor = cursor.map(String::from);
        let mut since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Warm until the saved cursor's entry (or anything newer) comes by.
        let mut warm_until = cursor
            .as_deref()
            .and_then(|c| Some((c.to_string(), cursor_time(c)?)));
        if let Some((_, t)) = &warm_until {
            since = (t / 1_000_000).saturating_sub(rewind);
            cursor = None;
        }
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                while !sp.load(Ordering::SeqCst) {
                    let spawned = Command::new("journalctl")
                        .args(sp2.args(cursor.as_deref(), since))
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn();
                    let mut c = match spawned {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(source = %sp2, "cannot run journalctl: {e}");
                            std::thread::sleep(RESTART_AFTER * 5);
                            continue;
                        }
                    };
                    let stdout = c.stdout.take().expect("piped");
                    if let Ok(mut slot) = ch.lock() {
                        *slot = Some(c);
                    }
                    // Stopped between the check and the spawn: do not read.
                    if sp.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut r = std::io::BufReader::new(stdout);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        st.received.fetch_add(1, Ordering::Relaxed);
                        match parse_line(&line) {
                            Some((message, c, realtime)) => {
                                let warm = match &warm_until {
                                    Some((saved, _)) if *saved == c => {
                                        warm_until = None;
                                        true
                                    }
                                    Some((_, t)) if realtime > *t => {
                                        warm_until = None;
                                        false
                                    }
                                    Some(_) => true,
                                    None => false,
                                };
                                cursor = Some(c.clone());
                                st.in_flight.fetch_add(1, Ordering::Relaxed);
                                deliver(Entry {
                                    reader,
                                    message,
                                    cursor: c,
                                    warm,
                                });
                                while st.in_flight.load(Ordering::Relaxed) > 100_000
                                    && !sp.load(Ordering::SeqCst)
                                {
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            }
                            None => {
                                st.malformed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if let Ok(mut slot) = ch.lock()
                        && let Some(mut c) = slot.take()
                    {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    tracing::debug!(source = %sp2, "journalctl ended; starting it again");
                    std::thread::sleep(RESTART_AFTER);
                }
            })
            .map_err(|e| format!("{spec}: cannot start its thread: {e}"))?;
        Ok(JournalReader {
            spec,
            stats,
            child,
            stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines() {
        let (m, c, t) =
            parse_line(br#"{"MESSAGE":"hello","__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"42"}"#)
                .unwrap();
        assert_eq!(
            (m.as_slice(), c.as_str(), t),
            (&b"hello"[..], "s=1;i=2", 42)
        );
        assert_eq!(
            cursor_time("s=ab;i=3;b=cd;m=0;t=660fc11632800;x=1"),
            Some(0x660fc11632800)
        );
        let (m, _, _) = parse_line(br#"{"MESSAGE":[104,255,10],"__CURSOR":"c"}"#).unwrap();
        assert_eq!(m, vec![104, 255, 10]);
        assert!(parse_line(br#"{"__CURSOR":"c"}"#).is_none());
        assert!(parse_line(br#"{"MESSAGE":[300],"__CURSOR":"c"}"#).is_none());
        assert!(parse_line(b"not json").is_none());
    }

    #[test]
    fn specs_must_name_what_to_read() {
        let s = |u: Option<&str>, i: Option<&str>| JournalSpec {
            unit: u.map(String::from),
            identifier: i.map(String::from),
            directory: None,
        };
        assert!(s(None, None).check().is_err());
        assert!(s(Some("a=b"), None).check().is_err());
        assert!(s(Some("nginx.service"), None).check().is_ok());
        let args = s(Some("nginx.service"), Some("api")).args(Some("s=1"), 0);
        assert!(args.contains(&"--after-cursor=s=1".to_string()));
        assert!(args.contains(&"_SYSTEMD_UNIT=nginx.service".to_string()));
        assert!(args.contains(&"SYSLOG_IDENTIFIER=api".to_string()));
    }
}
